"""Where a Hopper kernel's time goes: the dispatched kernel timed beside copies of it with
one part of the step loop taken out (the exponentials, the whole online softmax, the S
GEMM or the P V GEMM), on the long benchmark shapes. Those copies compute wrong outputs
on purpose; only their times mean something: what is left when a part costs nothing
bounds what making that part cheaper can win. One more copy changes the schedule instead
(no ping-pong turns). The library's kernel is untouched:
the copies live in this process only. Kernels under 30 us are timed by CUDA-graph replay.
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

EMPTY_GROUP = "wgmma_fence(); wgmma_commit();"   # keeps wait_group's counts as they were
# (label, [(file, text, replacement)]): each text must occur in the shipped sources.
VARIANTS = [
    ("as shipped", []),
    # every score's exponential, in the exact and the lazy update (not alpha's)
    ("exp2 -> FFMA only (no MUFU)", [("softmax.cuh", "fast_exp2(fmaf(", "(fmaf(")]),
    ("no online softmax (P = S)",
     [("flash_fwd_sm90.cu", "softmax_update_lazy<T, BLOCK_N / 8, H>(s, a, m, l, alpha, p.scale_log2);",
       "pack_p<T, BLOCK_N / 8, H>(a, s[0]); alpha[0][0] = alpha[0][1] = 1.f;")]),
    ("no P V GEMM",
     [("flash_fwd_sm90.cu", "pv_wgmma<T, HEAD_DIM, BLOCK_N>(o[0], a, v_tile(prev));", EMPTY_GROUP),
      ("flash_fwd_sm90.cu", "pv_wgmma<T, HEAD_DIM, BLOCK_N>(o[0], a, v_tile(last));", EMPTY_GROUP)]),
    ("no S GEMM",
     [("flash_fwd_sm90.cu", "qk_wgmma<T, Tile, HEAD_DIM, BLOCK_N>(s[0], q_desc, k_tile(r));", EMPTY_GROUP)]),
    ("schedule: no ping-pong turns",
     [("flash_fwd_sm90.cu", "auto await_turn = [&] { if constexpr (PINGPONG)",
       "auto await_turn = [&] { if constexpr (false)"),
      ("flash_fwd_sm90.cu", "if constexpr (PINGPONG)\n            if (!(last_turn",
       "if constexpr (false)\n            if (!(last_turn"),
      ("flash_fwd_sm90.cu", "if (PINGPONG && consumer == CONSUMERS - 1 && n_blocks > 0) named_barrier_arrive(1, 256);",
       "")]),
]
_GRAPH_BELOW_US = 30   # kernels shorter than this are timed by CUDA-graph replay


def variant_source(edits) -> str:
    files = {name: (loader.KERNEL_DIR / name).read_text() for name in ("flash_fwd_sm90.cu", "softmax.cuh")}
    for name, text, new in edits:
        assert text in files[name], f"{name}: {text!r} not found (kernel edited?)"
        files[name] = files[name].replace(text, new)
    return files["flash_fwd_sm90.cu"].replace('#include "softmax.cuh"', files["softmax.cuh"])


def variant_launch(launch, edits):
    function, module = loader.variant_function(launch.config, launch.device, "sm_90a", variant_source(edits))
    return dataclasses.replace(launch, function=function, _blocks={}), module


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
        launch = api.prepared_launch(q, k, v, causal=shape.causal, out=out)
        print(f"\n{name} ({launch.config}):")
        base = None
        for label, edits in VARIANTS:
            if args.variant and edits and not any(text in label for text in args.variant):
                continue
            run, _module = variant_launch(launch, edits)
            out.fill(np.nan)
            run(q, k, v, out, None)
            err = verify(shape, q, k, v, out, rng)[0]   # the whole output's   # only the schedule copies should pass
            t = time_throughput(lambda i: run(q, k, v, out, None), 10).p50
            if t < _GRAPH_BELOW_US:   # back-to-back launches would time the host
                t = time_graph_replay(lambda: run(q, k, v, out, None)).p50
            base = base or t
            print(f"  {label:<32} {t:9.1f} us  {t / base:5.2f}x  "
                  f"{shape.flops / (t * 1e-6) / 1e12:6.1f} TFLOP/s  err {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
