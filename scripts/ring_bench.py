"""Ring attention's benchmark (issue 27), one process per GPU under the launcher:

  python -m flashcore_cupy.distributed.launch --nproc N scripts/ring_bench.py [--seqlen 131072,262144]
      [--iters 10] [--out FILE.json]

B1, H32/8, D128, causal, bf16, zigzag shards. Per whole sequence length S: the ring's forward,
and its forward and backward together, per step (CUDA events around each on every rank after a
warm-up, the slowest rank's, median over --iters); then, on rank 0 alone, the one-GPU time at the
same per-GPU work: attention (and its backward) on one causal sequence of S / sqrt(N) (causal
work grows with S^2 and the ring divides it over N ranks). Scaling efficiency is that one-GPU
time over the ring's. Rank 0 prints a table and writes the JSON (the device named in it).
"""

import argparse
import json
import math
import sys

import cupy
import cupyx.distributed
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy.distributed import ring_attention, ring_attention_backward
from flashcore_cupy.distributed.launch import rank_from_env

HQ, HKV, D = 32, 8, 128


def _draw(shape, rng):
    import ml_dtypes
    return cupy.asarray(rng.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16))


def _time(fn, iters: int, sync=lambda: None) -> list[float]:
    """Milliseconds of fn() per call, CUDA events on the current stream, after one warm-up call;
    sync() (a barrier across ranks) before each call."""
    fn()
    start, end, times = cupy.cuda.Event(), cupy.cuda.Event(), []
    for _ in range(iters):
        sync()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", default="131072,262144,524288")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rank, world = rank_from_env()
    cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()
    group = cupyx.distributed.init_process_group(world, rank)
    rng = np.random.default_rng(rank)
    slowest = cupy.zeros(1, np.float64)

    def worst(ms: list[float]) -> float:   # the slowest rank's median
        slowest[0] = float(np.median(ms))
        group.all_reduce(slowest, slowest, op="max")
        return float(slowest.get()[0])

    def ring_times(seqlen: int) -> tuple[float, float]:
        local = seqlen // world
        q, dout = _draw((1, local, HQ, D), rng), _draw((1, local, HQ, D), rng)
        k, v = _draw((1, local, HKV, D), rng), _draw((1, local, HKV, D), rng)
        opts = dict(group=group, causal=True)

        def fwd_bwd():
            out, lse = ring_attention(q, k, v, return_lse=True, **opts)
            ring_attention_backward(dout, q, k, v, out, lse, **opts)
        return (worst(_time(lambda: ring_attention(q, k, v, **opts), args.iters, group.barrier)),
                worst(_time(fwd_bwd, args.iters, group.barrier)))

    def one_gpu_times(s1: int) -> tuple[float, float]:   # one GPU, the same causal work as one rank
        q, dout = _draw((1, s1, HQ, D), rng), _draw((1, s1, HQ, D), rng)
        k, v = _draw((1, s1, HKV, D), rng), _draw((1, s1, HKV, D), rng)
        opts = dict(causal=True, layout="bshd")

        def fwd_bwd():
            out, lse = fc.attention(q, k, v, return_lse=True, **opts)
            fc.attention_backward(dout, q, k, v, out, lse, **opts)
        return (float(np.median(_time(lambda: fc.attention(q, k, v, **opts), args.iters))),
                float(np.median(_time(fwd_bwd, args.iters))))

    rows = []
    for seqlen in (int(s) for s in args.seqlen.split(",")):
        fwd, both = ring_times(seqlen)
        if rank == 0:
            s1 = max(256, round(seqlen / math.sqrt(world) / 256) * 256)
            one, one_fb = one_gpu_times(s1)
            rows.append(dict(seqlen=seqlen, world=world, forward_ms=fwd, fwd_bwd_ms=both, one_gpu_seqlen=s1,
                             one_gpu_forward_ms=one, one_gpu_fwd_bwd_ms=one_fb, efficiency_forward=one / fwd,
                             efficiency_fwd_bwd=one_fb / both))
            print(f"S {seqlen} on {world} GPUs: forward {fwd:.2f} ms, fwd+bwd {both:.2f} ms; one GPU at S {s1}: "
                  f"{one:.2f} / {one_fb:.2f} ms; efficiency {one / fwd:.1%} / {one_fb / both:.1%}", flush=True)
        group.barrier()
    if rank == 0 and args.out:
        dev = cupy.cuda.runtime.getDeviceProperties(0)
        with open(args.out, "w") as f:
            json.dump(dict(device=dev["name"].decode(), world=world, heads=(HQ, HKV), head_dim=D, dtype="bf16",
                           causal=True, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
