"""Probe: attention_kvcache's Hopper decode tile candidates on the decode and paged rows, timed
as CUDA graphs of 20 calls (host time out of the measurement), next to SDPA cuDNN on the same
contiguous cache (events around 20 back-to-back calls) and a device copy of the cache; and each
call's host time (perf_counter over 200 calls, no sync). GB/s: Q, K, V read and O written.

  PYTHONPATH=$PWD python3 scripts/dev/kvcache_tile_probe.py [--rows NAME,...] [--dtype fp16]
"""

import argparse
import time

import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import configs, kvcache, workload
from flashcore_cupy.shapes import bench_shapes

C = configs.Sm90FwdConfig
CANDIDATES = {   # D128 tiles: keys a tile, ring slots, consumers (all split, two producer threads)
    "n128 s2 c2": dict(block_n=128, stages=2, consumers=2),
    "n64 s4 c2": dict(block_n=64, stages=4, consumers=2),
    "n64 s6 c2": dict(block_n=64, stages=6, consumers=2),
    "n64 s6 c3": dict(block_n=64, stages=6, consumers=3),
}


def events_us(fn, reps=10, stream=None):
    import cupy
    times = []
    for _ in range(reps):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b) * 1e3)
    return float(np.median(times))


def main():
    import cupy
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="decode-b8-h32kv8-s8k-d128,decode-b1-h32kv8-s128k-d128,"
                                      "decode-b64-h32kv8-s2k-d128,paged16-decode-b8-h32kv8-s8k-d128")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--splits", default="0", help="num_splits values to time (0: the automatic choice)")
    args = ap.parse_args()
    shapes = {s.name: s for s in bench_shapes()}
    rng = np.random.default_rng(0)
    dt = workload.np_dtype(args.dtype)
    base = kvcache.sm90_cache_config
    for name in args.rows.split(","):
        s = shapes[name]
        b, hq, hkv, sk, d = s.batch, s.heads_q, s.heads_kv, s.seqlen_k, s.head_dim
        q = cupy.asarray(rng.standard_normal((b, 1, hq, d)).astype(dt))
        k, v = (cupy.asarray(rng.standard_normal((b, sk, hkv, d)).astype(dt)) for _ in range(2))
        seqlens = cupy.full((b,), sk, np.int32)
        nbytes = (2 * q.size + k.size + v.size) * 2
        out = cupy.empty_like(q)
        kw = dict(cache_seqlens=seqlens, out=out)
        kc, vc = k, v
        if s.page_size:
            per_seq = sk // s.page_size
            table = rng.permutation(b * per_seq).reshape(b, per_seq).astype(np.int32)
            kc, vc = (cupy.empty((b * per_seq, s.page_size, hkv, d), dt) for _ in range(2))
            for x, pages in ((k, kc), (v, vc)):
                pages[cupy.asarray(table.reshape(-1))] = x.reshape(b * per_seq, s.page_size, hkv, d)
            kw["block_table"] = cupy.asarray(table)
        copy_dst = cupy.empty_like(k)
        copy_us = events_us(lambda: [copy_dst.__setitem__(Ellipsis, k) for _ in range(5)]) / 5
        tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)  # noqa: E731
            for _ in range(5):
                sdpa()
            cudnn_us = events_us(lambda: [sdpa() for _ in range(20)]) / 20
        want = cupy.asarray(torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)
                            .transpose(1, 2).contiguous())
        print(f"{name} {args.dtype}: copy {2 * k.nbytes / copy_us / 1e3:.0f} GB/s (read+write), "
              f"cuDNN {nbytes / cudnn_us / 1e3:.0f} GB/s ({cudnn_us:.1f} us)", flush=True)
        for cand, splits in [(c, int(n)) for c in args.candidates.split(",") for n in args.splits.split(",")]:
            kw["num_splits"] = splits
            tile = CANDIDATES[cand]
            kvcache.sm90_cache_config = lambda dtype, hd, paged, gather=False, tile=tile: C(  # noqa: E731
                dtype, hd, pingpong=False, split=True, producers=2,
                seq=("paged" if gather else "paged_tiles") if paged else "cache", **tile)
            kvcache._plans.clear()
            kvcache._calls.clear()
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                fc.attention_kvcache(q, kc, vc, **kw)
                stream.synchronize()
                err = float(cupy.abs(out.astype(np.float32) - want.astype(np.float32)).max())
                t0 = time.perf_counter()
                for _ in range(200):
                    fc.attention_kvcache(q, kc, vc, **kw)
                host_us = (time.perf_counter() - t0) / 200 * 1e6
                stream.synchronize()
                stream.begin_capture()
                for _ in range(20):
                    fc.attention_kvcache(q, kc, vc, **kw)
                graph = stream.end_capture()
                graph.launch(stream)
                stream.synchronize()
                us = events_us(lambda: graph.launch(stream), stream=stream) / 20
            plan = next(iter(kvcache._plans.values()))
            parts = {}   # host time of the call's parts (us), 200 calls each
            workspace = {}
            if plan.workspace is not None:   # split: the partials and the tiles' counters
                o_acc, lse_acc, counters = plan.workspace.get(stream.ptr)
                workspace = dict(o_accum=o_acc.data.ptr, lse_accum=lse_acc.data.ptr, split_count=counters.data.ptr)
            arrays = dict(cache_seqlens=seqlens, block_table=kw.get("block_table"), k_new=None, v_new=None,
                          alibi_slopes=None)
            for part, fn in (("signature", lambda: kvcache._signature(q, kc, vc, seqlens, kw.get("block_table"), None,
                                                                      None, None, out, (False,))),
                             ("run", lambda: plan.run(q, kc, vc, out, None, arrays, stream)),
                             ("attention.start", lambda: plan.attention.start(dict(
                                 q=q.data.ptr, k=kc.data.ptr, v=vc.data.ptr, o=out.data.ptr,
                                 seqused_k=seqlens.data.ptr, block_table=0 if not s.page_size else
                                 kw["block_table"].data.ptr, **workspace), stream.ptr))):
                t0 = time.perf_counter()
                for _ in range(200):
                    fn()
                parts[part] = (time.perf_counter() - t0) / 200 * 1e6
            stream.synchronize()
            print(f"  {cand:12s} splits {plan.splits:3d}: {nbytes / us / 1e3:6.0f} GB/s ({us:6.1f} us, "
                  f"{cudnn_us / us:.2f}x cuDNN), host {host_us:.1f} us/call "
                  f"({', '.join(f'{n} {t:.1f}' for n, t in parts.items())}), max err vs cuDNN {err:.1e}", flush=True)
        kvcache.sm90_cache_config = base


if __name__ == "__main__":
    main()
