"""Probe: the inference ops on the decode, paged and varlen rows of the shape list, timed side by
side (throughput, CUDA events, medians) before the benchmark has their modes.

decode / paged rows: attention_kvcache (contiguous cache; paged rows at their page size, a
shuffled block table) against dense flashcore on the same contiguous cache, SDPA's cuDNN and
flash backends (enable_gqa), and a device copy of the cache's bytes; reported as GB/s (Q, K, V
read, O written). varlen rows: attention_varlen against SDPA on jagged nested tensors (K/V
expanded to Hq heads) and dense flashcore's causal b2-h16-s4k-d128, as TFLOP/s. Each
implementation's output is checked against flashcore's first.

  PYTHONPATH=$PWD python3 scripts/dev/inference_probe.py [--shapes NAME,...] [--dtype fp16,bf16]
      [--define NAME[=VALUE] ...] [--varlen-tile BLOCK_N:STAGES[:CONSUMERS] ...]

Varlen rows, Hopper: --define adds a row per define, the varlen kernel built with it (a probe
build); --varlen-tile a row per tile (the dispatched config with that key tile, ring and
consumers); each checked against the default's output.
"""

import argparse
import contextlib

import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import reference, timing, workload
from flashcore_cupy.shapes import bench_shapes


def _gbps(nbytes: int, us: float) -> float:
    return nbytes / us / 1e3


def decode_row(s, dtype, samples, rng, results):
    import cupy
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = workload.np_dtype(dtype)
    b, hq, hkv, sq, sk, d = s.batch, s.heads_q, s.heads_kv, s.seqlen_q, s.seqlen_k, s.head_dim
    q = cupy.asarray(rng.standard_normal((b, sq, hq, d)).astype(dt))
    k, v = (cupy.asarray(rng.standard_normal((b, sk, hkv, d)).astype(dt)) for _ in range(2))
    seqlens = cupy.full((b,), sk, np.int32)
    nbytes = (q.size + k.size + v.size + q.size) * 2
    fns, ctx = {}, {}
    page = s.page_size
    if page:
        per_seq = sk // page
        table = cupy.asarray(rng.permutation(b * per_seq).reshape(b, per_seq).astype(np.int32))
        k_pages, v_pages = (cupy.empty((b * per_seq, page, hkv, d), dt) for _ in range(2))
        tab = table.get()
        for x, pages in ((k, k_pages), (v, v_pages)):
            pages[tab.reshape(-1)] = x.reshape(b * per_seq, page, hkv, d)
        fns["flashcore_paged"] = lambda i: fc.attention_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens,
                                                                block_table=table, causal=s.causal)
    fns["flashcore_kvcache"] = lambda i: fc.attention_kvcache(q, k, v, cache_seqlens=seqlens, causal=s.causal)
    for splits in (1,):
        fns[f"flashcore_kvcache_s{splits}"] = (lambda n: lambda i: fc.attention_kvcache(
            q, k, v, cache_seqlens=seqlens, causal=s.causal, num_splits=n))(splits)
    fns["flashcore_dense"] = lambda i: fc.attention(q, k, v, layout="bshd", causal=s.causal)
    tq, tk, tv = (torch.from_dlpack(x).transpose(1, 2) for x in (q, k, v))
    for peer, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(s.causal), enable_gqa=True)
        except RuntimeError as e:
            print(f"  {peer}: {str(e).splitlines()[0][:80]}")
            continue
        fns[peer] = lambda i: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(s.causal),
                                                                                enable_gqa=True)
        ctx[peer] = (lambda be: lambda: sdpa_kernel(be))(backend)
    dst = cupy.empty_like(k)
    fns["copy"] = lambda i: (cupy.copyto(dst, k), cupy.copyto(dst, v))
    ref = fns["flashcore_dense"](0)
    for name, fn in fns.items():
        if name == "copy":
            continue
        with ctx.get(name, contextlib.nullcontext)():
            got = fn(0)
        got = cupy.from_dlpack(got.transpose(1, 2).contiguous()) if hasattr(got, "is_cuda") else got
        err = reference.rel_error(got, ref)
        if not err < 5e-3:
            print(f"  {name}: rel err {err:.2e} against flashcore_dense: WRONG")
    res = timing.time_side_by_side({n: (fns[n], ctx.get(n, contextlib.nullcontext)) for n in fns}, samples, calls=5)
    copy_gbps = _gbps(2 * (k.size + v.size) * 2, res["copy"].p50)
    line = {n: _gbps(nbytes, t.p50) for n, t in res.items() if n != "copy"}
    best_peer = max((line[n] for n in line if n.startswith("sdpa")), default=float("nan"))
    main = "flashcore_paged" if page else "flashcore_kvcache"
    print(f"{s.name} {dtype}: copy {copy_gbps:.0f} GB/s | " + " ".join(f"{n} {g:.0f}" for n, g in line.items())
          + f" | {main}/best sdpa {line[main] / best_peer:.2f}, /copy {line[main] / copy_gbps:.2f}", flush=True)
    results.append((s.name, dtype, line, copy_gbps))


def _varlen_build(q, k, v, cu, causal, define=None, tile=None):
    """attention_varlen's Hopper launch of this call built with `define`, or with `tile`'s
    (block_n, stages, consumers): its start as a row's call."""
    import dataclasses

    import cupy

    from flashcore_cupy import api, configs, validation, varlen

    problem, _ = validation.check_varlen(*(api._spec(a, n) for a, n in (
        (q, "q"), (k, "k"), (v, "v"), (cu, "cu_seqlens_q"), (cu, "cu_seqlens_k"))),
        causal=causal, scale=None, window=None, softcap=0.0, alibi_slopes=None)
    cfg = configs.sm90_varlen_config(problem.dtype, problem.head_dim)
    if tile:
        cfg = dataclasses.replace(cfg, block_n=tile[0], stages=tile[1], consumers=tile[2] if len(tile) > 2 else cfg.consumers)
    out = cupy.empty(q.shape, q.dtype)
    launch = varlen._sm90_launch(problem, cfg, (out.strides[1] // 2, out.strides[0] // 2), "sm_90a",
                                 api.device_info(0).num_sms, (define,) if define else ())
    ptrs = dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr, cu_seqlens_q=cu.data.ptr,
                cu_seqlens_k=cu.data.ptr)
    return lambda i: launch.start(ptrs, cupy.cuda.get_current_stream().ptr) or out


def varlen_row(s, dtype, samples, rng, results, defines=(), tiles=()):
    import cupy
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dt = workload.np_dtype(dtype)
    lengths = list(s.seqlens)
    total, hq, hkv, d = sum(lengths), s.heads_q, s.heads_kv, s.head_dim
    cu = cupy.asarray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    q = cupy.asarray(rng.standard_normal((total, hq, d)).astype(dt))
    k, v = (cupy.asarray(rng.standard_normal((total, hkv, d)).astype(dt)) for _ in range(2))
    flops = sum(4 * hq * d * reference.visible_pairs(n, n, causal=s.causal) for n in lengths)
    longest = max(lengths)
    fns, ctx = {}, {}
    fns["flashcore_varlen"] = lambda i: fc.attention_varlen(q, k, v, cu, cu, max_seqlen_q=longest, max_seqlen_k=longest,
                                                            causal=s.causal)
    builds = [(f"varlen+{d}", dict(define=d)) for d in defines]
    builds += [("varlen_" + "x".join(map(str, t)), dict(tile=t)) for t in tiles]
    for name, how in builds:
        fns[name] = _varlen_build(q, k, v, cu, bool(s.causal), **how)
        diff = float(cupy.abs(fns[name](0).astype(np.float32) - fns["flashcore_varlen"](0).astype(np.float32)).max())
        print(f"  {name}: max |diff| to the default's output {diff:.3g}", flush=True)
        assert diff < 1e-2, name
    offsets = torch.from_dlpack(cu).to(torch.int64)
    group = hq // hkv
    tq = torch.nested.nested_tensor_from_jagged(torch.from_dlpack(q), offsets).transpose(1, 2)
    tk, tv = (torch.nested.nested_tensor_from_jagged(torch.from_dlpack(x).repeat_interleave(group, dim=1), offsets)
              .transpose(1, 2) for x in (k, v))
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(s.causal))
        fns["torch_nested"] = lambda i: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(s.causal))
    except RuntimeError as e:
        print(f"  torch_nested: {str(e).splitlines()[0][:100]}")
    dq = cupy.asarray(rng.standard_normal((2, 16, 4096, 128)).astype(dt))
    fns["flashcore_dense_s4k"] = lambda i: fc.attention(dq, dq, dq, causal=True)
    dense_flops = 4 * 2 * 16 * 128 * reference.visible_pairs(4096, 4096, causal=True)
    res = timing.time_side_by_side({n: (fns[n], ctx.get(n, contextlib.nullcontext)) for n in fns}, samples, calls=3)
    tf = {n: (dense_flops if n == "flashcore_dense_s4k" else flops) / t.p50 / 1e6 for n, t in res.items()}
    nested = tf.get("torch_nested", float("nan"))
    print(f"{s.name} {dtype}: " + " ".join(f"{n} {x:.0f} TFLOP/s" for n, x in tf.items())
          + f" | varlen/nested {tf['flashcore_varlen'] / nested:.2f}, varlen/dense {tf['flashcore_varlen'] / tf['flashcore_dense_s4k']:.2f}",
          flush=True)
    results.append((s.name, dtype, tf, None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--define", action="append", default=[], help="varlen rows: a build with this define too")
    ap.add_argument("--varlen-tile", action="append", default=[], help="varlen rows: BLOCK_N:STAGES[:CONSUMERS] too")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = [s for s in bench_shapes() if s.kind in ("decode", "paged", "varlen")]
    if args.shapes:
        wanted = args.shapes.split(",")
        rows = [s for s in rows if s.name in wanted]
    results = []
    for dtype in args.dtype.split(","):
        for s in rows:
            if s.kind == "varlen":
                varlen_row(s, dtype, args.samples, rng, results, tuple(args.define),
                           tuple(tuple(int(x) for x in t.split(":")) for t in args.varlen_tile))
            else:
                decode_row(s, dtype, args.samples, rng, results)


if __name__ == "__main__":
    main()
