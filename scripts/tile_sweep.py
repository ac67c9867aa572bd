"""Time candidate tile configs of both kernels on a few shapes (throughput mode; kernels
under 30 us by CUDA-graph replay, as back-to-back launches would time the host), beside
SDPA's cuDNN backend when torch is there; a variant row with its options (top-left causal).

Each candidate is validated against the float64 reference before it is timed.
Usage: python3 scripts/tile_sweep.py [--family sm80|sm90|all] [--dtype fp16|bf16]
       [--shape NAME ...] [--out FILE.json]
"""

import argparse
import json

import cupy
import numpy as np

from flashcore_cupy import api, bench
from flashcore_cupy.bench import peer_call
from flashcore_cupy.configs import Sm80FwdConfig, Sm90FwdConfig
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_kernel, time_throughput
from flashcore_cupy.workload import random_inputs, verify

SM80 = {   # shape -> (warps, m_tiles, block_n, stages)
    "b2-h16-s4k-d64": [(4, 2, 64, 2), (4, 2, 64, 3)],
    "b2-h16-s4k-d128": [(4, 2, 32, 3), (4, 2, 64, 2), (4, 2, 64, 3)],
    "b2-h16-s4k-d128-causal": [(4, 2, 32, 3), (4, 2, 64, 2)],
    "mission": [(4, 1, 64, 2), (4, 1, 64, 3)],
}
SM90 = {   # shape -> (block_n, stages, consumers, pingpong[, split[, producers[, warp_rows]]])
    "b4-h16-s1k-d64": [(128, 2, 3, True), (128, 2, 3, False), (128, 2, 2, True), (192, 2, 2, True),
                       (176, 2, 2, True), (64, 4, 3, True)],
    "b2-h16-s4k-d64": [(128, 2, 3, True), (128, 3, 3, True), (128, 2, 3, False), (192, 2, 2, True),
                       (192, 3, 2, True), (64, 4, 3, True)],
    "b2-h16-s4k-d128": [(192, 2, 2, True), (128, 2, 2, True), (128, 3, 2, True)],
    "b2-h16-s4k-d128-causal": [(192, 2, 2, True), (128, 2, 2, True)],
    "b1-h16-s16k-d128": [(192, 2, 2, True), (128, 2, 2, True)],
    "b1-h16-s16k-d128-causal": [(192, 2, 2, True), (128, 2, 2, True)],
    "gqa-b2-h32kv8-s4k-d128-causal": [(192, 2, 2, True), (128, 2, 2, True)],
    "mission": [(128, 2, 1, False), (128, 4, 2, False, True), (64, 8, 4, False, True),
                (64, 6, 3, False, True), (64, 4, 2, False, True), (128, 4, 2, False, True, 1, 8)],
    # grids where 32-row split tiles (8-row warps) fit in one wave, against 64-row ones
    "1,8,512,128": [(128, 2, 2, False, True, 2), (128, 2, 2, False, True, 2, 8)],
    "1,4,1024,64": [(128, 4, 2, False, True), (128, 4, 2, False, True, 1, 8)],
    "1,2,2048,128": [(128, 2, 2, False, True, 2), (128, 2, 2, False, True, 2, 8)],
    "1,1,4096,64": [(128, 4, 2, False, True), (128, 4, 2, False, True, 1, 8)],
    # short causal tiles, a CTA each (issue 22's top-left bar: 1.0x cuDNN; the held-out S1k causal row)
    "topleft-b4-h16-sq1k-sk4k-d128-causal": [(128, 2, 2, True), (192, 2, 2, True), (176, 2, 2, True),
                                             (128, 3, 2, True), (64, 4, 2, True)],
    "held-b16-h12-s1k-d64-causal": [(128, 2, 3, True), (128, 2, 2, True), (192, 2, 2, True), (64, 4, 3, True),
                                    (176, 2, 2, True)],
    "decode-b8-h32kv8-s8k-d128": [(128, 2, 2, False, True, 2), (128, 2, 2, False, True), (64, 4, 2, False, True),
                                  (64, 4, 2, False, True, 2), (64, 3, 3, False, True, 2)],
}
FAMILIES = {"sm80": (SM80, Sm80FwdConfig), "sm90": (SM90, Sm90FwdConfig)}


def cudnn_us(shape, q, k, v, arrays, dtype):
    peer = peer_call(shape, "sdpa_cudnn", q, k, v, arrays, dtype)
    if peer is None:
        return None
    fn, context = peer
    with context():
        try:
            return time_throughput(fn, 10).p50
        except RuntimeError as e:   # cuDNN refuses some shapes: time ours alone
            print(f"{shape.name}: no cuDNN peer ({str(e).splitlines()[0]})")
            return None


parser = argparse.ArgumentParser()
parser.add_argument("--family", choices=[*FAMILIES, "all"], default="sm80")
parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
parser.add_argument("--shape", action="append", help="only these shapes (repeatable)")
parser.add_argument("--out")
args = parser.parse_args()
families = list(FAMILIES.values()) if args.family == "all" else [FAMILIES[args.family]]
sweep = [(name, tiles, cls) for candidates, cls in families for name, tiles in candidates.items()
         if not args.shape or name in args.shape]

rng = np.random.default_rng()
results = []
for name, tiles, config_cls in sweep:
    shape = parse_shape(name)
    q, k, v = random_inputs(shape, args.dtype, rng)
    arrays = bench.variant_arrays(shape, args.dtype, rng)
    opts = bench.attention_options(shape, arrays)   # a variant row's options (top-left causal, ...)
    out = cupy.empty_like(q)
    peer = cudnn_us(shape, q, k, v, arrays, args.dtype)
    if peer:
        print(f"{name:<26} {'sdpa_cudnn':<30} {peer:9.1f} us {shape.flops / (peer * 1e-6) / 1e12:7.1f} TFLOP/s")
    for tile in tiles:
        cfg = config_cls(args.dtype, shape.head_dim, *tile)
        try:
            plan = api.plan(q, k, v, out=out, config=cfg, **opts)
        except Exception as e:   # noqa: BLE001 - a candidate that cannot build is reported
            print(f"{name:<26} {str(cfg):<30} failed to build: {e}")
            continue
        run = lambda: plan.run(q, k, v, out=out, **arrays)   # noqa: E731
        out.fill(np.nan)
        run()
        err = verify(shape, q, k, v, out, rng, options=opts)[0]   # the whole output's
        t = time_kernel(run)
        tf = shape.flops / (t.p50 * 1e-6) / 1e12
        ratio = f"  {peer / t.p50:.2f}x cuDNN" if peer else ""
        results.append(dict(shape=name, config=str(cfg), tile=tile, us_p50=t.p50, tflops=tf,
                            rel_err=err, cudnn_us=peer))
        print(f"{name:<26} {str(cfg):<30} {t.p50:9.1f} us {tf:7.1f} TFLOP/s  err {err:.1e}{ratio}",
              flush=True)
if args.out:
    json.dump(results, open(args.out, "w"), indent=1)
