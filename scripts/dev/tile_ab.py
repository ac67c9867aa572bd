"""Hopper tiles against each other and cuDNN, timed as the benchmark times long cases.

For each shape: every candidate tile (prepared launch) and SDPA's cuDNN backend on the same
inputs, validated first, then timed side by side with time_side_by_side the way bench.py
times calls of 100 us or more (one sample per turn after one untimed round: all meet the
GPU's clock alike), in latency and throughput mode, with more samples than the benchmark.
A variant row (a window, ALiBi, top-left, ...) runs with its options and arrays, as the
benchmark's; each candidate is its plain tile, which the variant's config derives from.
Usage: python3 scripts/dev/tile_ab.py [--dtype fp16|bf16] [--samples N] SHAPE...
       [--tile BLOCK_N,STAGES,CONSUMERS,PINGPONG ...]
"""

import argparse
import contextlib

import cupy
import numpy as np

from flashcore_cupy import api
from flashcore_cupy.bench import attention_options, peer_call, variant_arrays
from flashcore_cupy.configs import Sm90FwdConfig
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_side_by_side
from flashcore_cupy.workload import within_tolerance, random_inputs, verify

parser = argparse.ArgumentParser()
parser.add_argument("shapes", nargs="+")
parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
parser.add_argument("--samples", type=int, default=20)
parser.add_argument("--tile", action="append", help="block_n,stages,consumers,pingpong (0/1)")
args = parser.parse_args()
tiles = [tuple(int(x) for x in t.split(",")) for t in (args.tile or ["192,2,2,1", "128,2,2,1"])]
rng = np.random.default_rng()

print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} {args.dtype}")
for name in args.shapes:
    shape = parse_shape(name)
    q, k, v = random_inputs(shape, args.dtype, rng)
    arrays = variant_arrays(shape, args.dtype, rng)
    opts = attention_options(shape, arrays)
    fns = {}
    for block_n, stages, consumers, pingpong in tiles:
        cfg = Sm90FwdConfig(args.dtype, shape.head_dim, block_n, stages, consumers, bool(pingpong))
        out = cupy.empty_like(q)
        plan = api.plan(q, k, v, out=out, config=cfg, **opts)
        out.fill(np.nan)
        plan.run(q, k, v, out=out, **arrays)
        err, row_err = verify(shape, q, k, v, out, rng, rows=64, options=opts)
        assert within_tolerance(args.dtype, err, row_err), (name, str(cfg), err, row_err)
        fns[str(plan.config)] = (lambda i, plan=plan, out=out: plan.run(q, k, v, out=out, **arrays),
                                 contextlib.nullcontext)
    fns["sdpa_cudnn"] = peer_call(shape, "sdpa_cudnn", q, k, v, arrays, args.dtype) or \
        parser.error("the cuDNN peer needs torch")
    for mode, calls in (("latency", 1), ("throughput", 20)):
        n = args.samples if mode == "throughput" else 2 * args.samples
        t = time_side_by_side(fns, n, calls, warmup_s=0.0, rounds=n)
        peer = t["sdpa_cudnn"].p50
        for impl, timing in t.items():
            print(f"{name:<30} {mode:<10} {impl:<34} p50 {timing.p50:8.1f} us  p90 {timing.p90:8.1f}  "
                  f"{peer / timing.p50:5.3f}x cuDNN", flush=True)
