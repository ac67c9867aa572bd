"""Probe: the Hopper KV cache's gathered pages (cp.async rows, seq "paged") against its TMA boxes
(seq "paged_tiles") and the contiguous cache, on decode rows of the benchmark list at several
page sizes: GB/s of each as CUDA-graph replays (time_graph_replay: the host out of it), its
error against the reference in float64 on a sample of heads, and which kernel ran.

Page sizes a TMA box tiles run both ways (kvcache.sm90_gathers_pages patched to force the gather);
the others only gathered (or on the portable kernel where the plan refuses them). --define SWITCH
(a -D name of the kernels, e.g. FLASHCORE_GATHER_ONE_WARP) times each paged case again with the
Hopper cache kernel built with it, beside the shipped build.

  PYTHONPATH=$PWD python3 scripts/dev/gather_probe.py [--row NAME] [--pages 1,3,8,16,64] [--dtype fp16] [--define SWITCH]
"""

import argparse
import contextlib

import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import kvcache, launch, reference, timing, workload
from flashcore_cupy.shapes import bench_shapes


def main():
    import cupy

    ap = argparse.ArgumentParser()
    ap.add_argument("--row", default="decode-b8-h32kv8-s8k-d128")
    ap.add_argument("--pages", default="1,3,8,16,64")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--define", action="append", default=[])
    args = ap.parse_args()
    s = {x.name: x for x in bench_shapes()}[args.row]
    b, hq, hkv, sk, d = s.batch, s.heads_q, s.heads_kv, s.seqlen_k, s.head_dim
    rng = np.random.default_rng(0)
    dt = workload.np_dtype(args.dtype)
    q = cupy.asarray(rng.standard_normal((b, 1, hq, d)).astype(dt))
    k, v = (cupy.asarray(rng.standard_normal((b, sk, hkv, d)).astype(dt)) for _ in range(2))
    seqlens = cupy.full((b,), sk, np.int32)
    nbytes = (2 * q.size + k.size + v.size) * q.itemsize
    want = reference.attention(q[:2].get(), k[:2].get(), v[:2].get(), layout="bshd")   # two sequences: the check
    out = cupy.empty_like(q)

    def run(kc, vc, **kw):
        return "; ".join(f"{label}: {run_built(kc, vc, defines, **kw)}" for label, defines in builds)

    builds = [("shipped", ())] + [(d, (d,)) for d in args.define]

    def run_built(kc, vc, defines, **kw):
        with _defines(defines):
            return _run(kc, vc, **kw)

    def _run(kc, vc, **kw):
        kvcache._plans.clear()   # (and the calls' cache of plans by signature: a forced gather replans)
        kvcache._calls.clear()
        call = lambda: fc.attention_kvcache(q, kc, vc, cache_seqlens=seqlens, out=out, **kw)  # noqa: E731
        out[...] = np.nan
        call()
        err = reference.rel_error(out[:2], want)
        plan = next(iter(kvcache._plans.values()))
        us = timing.time_graph_replay(call).p50
        return f"{nbytes / us / 1e3:6.0f} GB/s ({us:6.1f} us, {plan.config.seq}, splits {plan.splits}), err {err:.1e}"

    print(f"{args.row} {args.dtype}: contiguous {run(k, v)}", flush=True)
    base = kvcache.sm90_gathers_pages
    for size in (int(x) for x in args.pages.split(",")):
        per_seq = -(-sk // size)
        table = rng.permutation(b * per_seq).reshape(b, per_seq).astype(np.int32)
        kc, vc = (cupy.zeros((b * per_seq, size, hkv, d), dt) for _ in range(2))
        for x, pages in ((k, kc), (v, vc)):   # sequence b's position t at page table[b, t // size]
            padded = cupy.zeros((b, per_seq * size, hkv, d), dt)
            padded[:, :sk] = x
            pages[cupy.asarray(table.reshape(-1))] = padded.reshape(b * per_seq, size, hkv, d)
        bt = cupy.asarray(table)
        print(f"  page {size:4d}: {run(kc, vc, block_table=bt)}", flush=True)
        if not base(size, 128):
            try:
                kvcache.sm90_gathers_pages = lambda page_size, block_n: True   # noqa: E731
                print(f"  page {size:4d} gathered: {run(kc, vc, block_table=bt)}", flush=True)
            finally:
                kvcache.sm90_gathers_pages = base


@contextlib.contextmanager
def _defines(defines: tuple[str, ...]):
    """Sm90SeqLaunch.build_seq (the Hopper KV-cache launch) built with `defines` inside."""
    base = launch.Sm90SeqLaunch.build_seq.__func__
    if defines:
        launch.Sm90SeqLaunch.build_seq = classmethod(
            lambda cls, *a, **kw: base(cls, *a, **{**kw, "defines": tuple(kw.get("defines", ())) + defines}))
    try:
        yield
    finally:
        launch.Sm90SeqLaunch.build_seq = classmethod(base)


if __name__ == "__main__":
    main()
