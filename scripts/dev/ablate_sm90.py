"""Where a Hopper kernel's time goes: the dispatched kernel timed beside copies of it with
one part of the step loop taken out (the exponentials, the whole online softmax, the S
GEMM or the P V GEMM), on the long benchmark shapes. Those copies compute wrong outputs
on purpose; only their times mean something: what is left when a part costs nothing
bounds what making that part cheaper can win. One more copy changes the schedule instead
(no ping-pong turns). The copies are builds with the -D switches of kernels/diagnostics.cuh
(FLASHCORE_ABLATE_*); without them the shipped kernel is unchanged. Kernels under 30 us are
timed by CUDA-graph replay.
Variant rows of the shape list run with their options (window, ALiBi, bias, softcap); --window
L times such a row again with the window (L, 0), and --alibi-scale X with its slopes times X.
Usage: python3 scripts/dev/ablate_sm90.py [--shape NAME ...] [--variant TEXT ...] (copies whose
label contains TEXT, beside the shipped kernel) [--window L ...] [--alibi-scale X]
"""

import argparse
import dataclasses

import cupy
import numpy as np

from flashcore_cupy import api, bench
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_kernel
from flashcore_cupy.workload import random_inputs, verify

# (label, the -D switches of kernels/diagnostics.cuh that build the copy)
VARIANTS = [
    ("as shipped", ()),
    # every score's exponential, in the exact and the lazy update (not alpha's)
    ("exp2 -> FFMA only (no MUFU)", ("FLASHCORE_ABLATE_NO_EXP2",)),
    ("no online softmax (P = S)", ("FLASHCORE_ABLATE_NO_SOFTMAX",)),
    ("no P V GEMM", ("FLASHCORE_ABLATE_NO_PV",)),
    ("no S GEMM", ("FLASHCORE_ABLATE_NO_QK",)),
    ("no O stores (the epilogue's)", ("FLASHCORE_ABLATE_NO_STORE",)),
    ("O stored 4 bytes a lane (v47's)", ("FLASHCORE_O_STORE32",)),   # also checks that path's output
    ("schedule: no ping-pong turns", ("FLASHCORE_ABLATE_NO_TURNS",)),
    ("schedule: key tiles ascending", ("FLASHCORE_ABLATE_ASCENDING",)),   # only ALiBi's differ
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", action="append")
    parser.add_argument("--variant", action="append", help="only copies whose label contains this")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument("--window", type=int, action="append", default=[],
                        help="a window row again with the window (L, 0)")
    parser.add_argument("--alibi-scale", type=float, default=1.0, help="ALiBi slopes times this")
    args = parser.parse_args()
    rng = np.random.default_rng()
    print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    shapes = [parse_shape(name) for name in args.shape or ["b4-h16-s1k-d64", "b2-h16-s4k-d64", "b2-h16-s4k-d128"]]
    shapes += [dataclasses.replace(shape, name=f"{shape.name} window ({left}, 0)", window=(left, 0))
               for shape in list(shapes) if shape.window is not None for left in args.window]
    for shape in shapes:
        q, k, v = random_inputs(shape, args.dtype, rng)
        arrays = bench.variant_arrays(shape, args.dtype, rng)
        if "alibi_slopes" in arrays:
            arrays["alibi_slopes"] *= args.alibi_scale
        opts = bench.attention_options(shape, arrays)
        out = cupy.empty_like(q)
        print(f"\n{shape.name} ({api.plan(q, k, v, out=out, **opts).config}):")
        base = None
        for label, defines in VARIANTS:
            if args.variant and defines and not any(text in label for text in args.variant):
                continue
            plan = api.plan(q, k, v, out=out, defines=defines, **opts)
            run = lambda: plan.run(q, k, v, out=out, **arrays)   # noqa: E731
            out.fill(np.nan)
            run()
            # the whole output's; only the schedule copies should pass
            err = verify(shape, q, k, v, out, rng, options=opts)[0]
            t = time_kernel(run).p50
            base = base or t
            print(f"  {label:<32} {t:9.1f} us  {t / base:5.2f}x  "
                  f"{shape.flops / (t * 1e-6) / 1e12:6.1f} TFLOP/s  err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
