"""Where a Hopper kernel's time goes: the dispatched kernel timed beside copies of it with
one part of the step loop taken out (the exponentials, the whole online softmax, the S
GEMM or the P V GEMM), on the long benchmark shapes. Those copies compute wrong outputs
on purpose; only their times mean something: what is left when a part costs nothing
bounds what making that part cheaper can win. One more copy changes the schedule instead
(no ping-pong turns). The copies are builds with the -D switches of kernels/diagnostics.cuh
(FLASHCORE_ABLATE_*); without them the shipped kernel is unchanged. Kernels under 30 us are
timed by CUDA-graph replay.
Usage: python3 scripts/dev/ablate_sm90.py [--shape NAME ...] [--variant TEXT ...] (copies whose
label contains TEXT, beside the shipped kernel)
"""

import argparse
import dataclasses

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api, loader
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_graph_replay, time_throughput
from flashcore_cupy.workload import random_inputs, verify

# (label, the -D switches of kernels/diagnostics.cuh that build the copy)
VARIANTS = [
    ("as shipped", ()),
    # every score's exponential, in the exact and the lazy update (not alpha's)
    ("exp2 -> FFMA only (no MUFU)", ("FLASHCORE_ABLATE_NO_EXP2",)),
    ("no online softmax (P = S)", ("FLASHCORE_ABLATE_NO_SOFTMAX",)),
    ("no P V GEMM", ("FLASHCORE_ABLATE_NO_PV",)),
    ("no S GEMM", ("FLASHCORE_ABLATE_NO_QK",)),
    ("schedule: no ping-pong turns", ("FLASHCORE_ABLATE_NO_TURNS",)),
]
_GRAPH_BELOW_US = 30   # kernels shorter than this are timed by CUDA-graph replay


def variant_launch(launch, defines):
    """`launch` with its kernel built with `defines` (the shipped one for ())."""
    function = loader.get_function(launch.config, launch.device, "sm_90a", defines)
    return dataclasses.replace(launch, function=function, _blocks={})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", action="append")
    parser.add_argument("--variant", action="append", help="only copies whose label contains this")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = parser.parse_args()
    rng = np.random.default_rng()
    print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
    for name in args.shape or ["b4-h16-s1k-d64", "b2-h16-s4k-d64", "b2-h16-s4k-d128"]:
        shape = parse_shape(name)
        q, k, v = random_inputs(shape, args.dtype, rng)
        out = cupy.empty_like(q)
        fc.attention(q, k, v, causal=shape.causal, out=out)
        launch = api.plan(q, k, v, causal=shape.causal, out=out).launch
        print(f"\n{name} ({launch.config}):")
        base = None
        for label, defines in VARIANTS:
            if args.variant and defines and not any(text in label for text in args.variant):
                continue
            run = variant_launch(launch, defines)
            out.fill(np.nan)
            run(q, k, v, out, None)
            err = verify(shape, q, k, v, out, rng)[0]   # the whole output's; only the schedule copy should pass
            t = time_throughput(lambda i: run(q, k, v, out, None), 10).p50
            if t < _GRAPH_BELOW_US:   # back-to-back launches would time the host
                t = time_graph_replay(lambda: run(q, k, v, out, None)).p50
            base = base or t
            print(f"  {label:<32} {t:9.1f} us  {t / base:5.2f}x  "
                  f"{shape.flops / (t * 1e-6) / 1e12:6.1f} TFLOP/s  err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
