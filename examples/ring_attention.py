"""Ring attention across the GPUs of one host, checked against one GPU:

  python -m flashcore_cupy.distributed.launch --nproc N examples/ring_attention.py [--seqlen S] [--causal]

Every rank draws the same whole sequence (one seed), keeps its shard (zigzag when causal), runs
ring_attention and ring_attention_backward over the NCCL ring, and compares its shards of the
output, LSE and gradients with attention / attention_backward of the whole sequence on its own
GPU. Exits 1 on a result outside the bounds.
"""

import argparse
import sys

import cupy
import cupyx.distributed
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import reference, workload
from flashcore_cupy.distributed import ring_attention, ring_attention_backward, shard
from flashcore_cupy.distributed.launch import rank_from_env


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--heads", default="8,2", help="Hq,Hkv")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="bf16")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--window", default=None, help="left,right")
    args = ap.parse_args()
    rank, world = rank_from_env()
    cupy.cuda.Device(rank % cupy.cuda.runtime.getDeviceCount()).use()
    group = cupyx.distributed.init_process_group(world, rank)
    hq, hkv = (int(x) for x in args.heads.split(","))
    window = None if args.window is None else tuple(int(x) for x in args.window.split(","))
    rng = np.random.default_rng(0)   # the same whole sequence on every rank
    dt = workload.np_dtype(args.dtype)
    draw = lambda h: cupy.asarray(rng.standard_normal((1, args.seqlen, h, args.head_dim)).astype(dt))  # noqa: E731
    q, k, v, dout = draw(hq), draw(hkv), draw(hkv), draw(hq)
    opts = dict(causal=args.causal, window=window, layout="bshd")
    cut = lambda x: shard(x, rank, world, axis=1, zigzag=args.causal)  # noqa: E731

    out, lse = ring_attention(cut(q), cut(k), cut(v), group=group, return_lse=True, **opts)
    grads = ring_attention_backward(cut(dout), cut(q), cut(k), cut(v), out, lse, group=group, **opts)

    whole_out, whole_lse = fc.attention(q, k, v, return_lse=True, **opts)
    whole_grads = fc.attention_backward(dout, q, k, v, whole_out, whole_lse, **opts)
    ok = True
    err = reference.rel_error(out, cut(whole_out))
    lse_err = float(cupy.abs(lse - shard(whole_lse, rank, world, axis=2, zigzag=args.causal)).max())
    ok &= err <= workload.TOLERANCE[args.dtype] and lse_err <= 1e-3
    line = [f"rank {rank}/{world}: out rel err {err:.2e} (vs one GPU), lse max diff {lse_err:.1e}"]
    for name, got, want in zip(("dq", "dk", "dv"), grads, whole_grads):
        e = reference.rel_error(got, cut(want))
        ok &= e <= workload.GRAD_TOLERANCE[args.dtype]
        line.append(f"{name} {e:.2e}")
    print(", ".join(line), "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
