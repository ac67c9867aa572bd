"""Probe: the variant rows of ../shared/bench_shapes.json (version 2), timed side by side
(throughput, CUDA events, medians): flashcore with the variant, flashcore_plain (the same
shape with the variant's options off, causal kept) on the auto and portable backends, and
SDPA through an explicit mask (cuDNN, memory-efficient; top-left causal through is_causal).
TFLOP/s count visible (query, key) pairs: 2 * pairs * (D + Dv). Until the benchmark runs
these rows itself (bench_shapes v2), this is how they are measured.

  PYTHONPATH=$PWD python3 scripts/dev/variant_probe.py [--shapes NAME,...] [--dtype fp16]
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import reference, timing

SHAPES = Path(__file__).resolve().parents[2] / "flashcore_cupy" / "bench_shapes.json"
VARIANT_KEYS = ("window", "softcap", "alibi", "bias", "causal_align")


def variant_rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())["shapes"]
    return [r for r in rows if r.get("kind", "dense") == "dense" and any(k in r for k in VARIANT_KEYS)]


def options(row: dict, dtype, cupy) -> dict:
    """attention's variant options for a row (alibi: slopes 2^(-8(h+1)/Hq); bias: (1, Hq, Sq, Sk)
    in the input dtype)."""
    opts = {}
    if row.get("causal"):
        opts["causal"] = "top_left" if row.get("causal_align") == "top_left" else True
    if "window" in row:
        opts["window"] = tuple(row["window"])
    if row.get("softcap"):
        opts["softcap"] = float(row["softcap"])
    if row.get("alibi"):
        h = np.arange(row["Hq"])
        opts["alibi_slopes"] = cupy.asarray((2.0 ** (-8.0 * (h + 1) / row["Hq"])).astype(np.float32))
    if row.get("bias"):
        rng = np.random.default_rng(0)
        host = rng.standard_normal((1, row["Hq"], row["Sq"], row["Sk"]), dtype=np.float32)
        opts["bias"] = cupy.asarray(host.astype(dtype))
    return opts


def visible_pairs(row: dict, opts: dict) -> int:
    sq, sk = row["Sq"], row["Sk"]
    pairs = 0
    for start in range(0, sq, 2048):
        rows = np.arange(start, min(sq, start + 2048))
        pairs += int(reference.visible(rows, sq, sk, opts.get("causal", False), opts.get("window")).sum())
    return pairs * row["B"] * row["Hq"]


def sdpa_mask(row: dict, opts: dict, torch, dtype):
    """SDPA's attn_mask for the row (None with is_causal for top-left), and is_causal."""
    sq, sk = row["Sq"], row["Sk"]
    if opts.get("causal") == "top_left" and "window" not in opts:
        return None, True
    keep = torch.from_numpy(reference.visible(np.arange(sq), sq, sk, opts.get("causal", False),
                                              opts.get("window"))).cuda()
    if "alibi_slopes" not in opts and "bias" not in opts:
        return keep, False
    off = 0 if opts.get("causal") == "top_left" else sk - sq
    mask = torch.zeros((1, row["Hq"], sq, sk), device="cuda", dtype=torch.float32)
    if "alibi_slopes" in opts:
        slopes = torch.from_dlpack(opts["alibi_slopes"]).float()
        dist = (torch.arange(sq, device="cuda")[:, None] + off - torch.arange(sk, device="cuda")[None, :]).abs()
        mask -= slopes[None, :, None, None] * dist[None, None].float()
    if "bias" in opts:
        mask += torch.from_dlpack(opts["bias"]).float()
    return mask.masked_fill(~keep, float("-inf")).to(dtype), False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--samples", type=int, default=10)
    args = ap.parse_args()
    import cupy
    import ml_dtypes

    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        torch = None
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}; git {fc.__dict__.get('__version__', '')}")
    wanted = set(filter(None, args.shapes.split(",")))
    for row in variant_rows(SHAPES):
        if wanted and row["name"] not in wanted:
            continue
        for dt in args.dtype.split(","):
            dtype = np.float16 if dt == "fp16" else ml_dtypes.bfloat16
            rng = np.random.default_rng(1)
            b, hq, hkv, sq, sk, d = row["B"], row["Hq"], row["Hkv"], row["Sq"], row["Sk"], row["D"]
            q = cupy.asarray(rng.standard_normal((b, hq, sq, d), dtype=np.float32).astype(dtype))
            k = cupy.asarray(rng.standard_normal((b, hkv, sk, d), dtype=np.float32).astype(dtype))
            v = cupy.asarray(rng.standard_normal((b, hkv, sk, d), dtype=np.float32).astype(dtype))
            opts = options(row, dtype, cupy)
            plain = {"causal": opts["causal"]} if "causal" in opts else {}
            if plain.get("causal") == "top_left" and sq != sk:
                plain = {"causal": True}   # flashcore_plain keeps the causal mask, bottom-right
            fns = {
                "flashcore": lambda i: fc.attention(q, k, v, **opts),
                "flashcore_plain": lambda i: fc.attention(q, k, v, **plain),
                "flashcore_plain_sm80": lambda i: fc.attention(q, k, v, backend="sm80", **plain),
            }
            ctx = {name: contextlib.nullcontext for name in fns}
            if torch is not None and "softcap" not in opts:
                tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
                mask, is_causal = sdpa_mask(row, opts, torch, tq.dtype)
                for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                                      ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
                    call = lambda i: torch.nn.functional.scaled_dot_product_attention(   # noqa: E731
                        tq, tk, tv, attn_mask=mask, is_causal=is_causal, enable_gqa=hq != hkv)
                    try:
                        with sdpa_kernel(backend):
                            call(0)
                        torch.cuda.synchronize()
                    except RuntimeError as e:
                        print(f"  {name}: unavailable ({str(e).splitlines()[0][:80]})")
                        continue
                    fns[name] = call
                    ctx[name] = (lambda be: lambda: sdpa_kernel(be))(backend)
            for fn in fns.values():
                fn(0)
            cupy.cuda.Device().synchronize()
            result = timing.time_side_by_side({n: (fns[n], ctx[n]) for n in fns}, args.samples, calls=5,
                                              warmup_s=0.05, rounds=5)
            pairs = visible_pairs(row, opts)
            flops = 2 * pairs * (d + row.get("Dv", d))
            ours = result["flashcore"].p50
            print(f"{row['name']} {dt}: visible pairs {pairs / (b * hq * sq * sk):.3f} of all")
            for name, t in result.items():
                print(f"  {name:22s} {t.p50:10.1f} us  {flops / t.p50 / 1e6:7.1f} TFLOP/s  flashcore x{t.p50 / ours:.2f}")
            sys.stdout.flush()
            fns.clear()
            cupy.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
