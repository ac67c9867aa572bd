"""Probe: streamed work tiles (kernels/flash_fwd_sm90.cu's stream_items) A/B. A streamed consumer
holds a tile's last P V back to issue it with the next tile's first S GEMM (Q' in a second slot)
and stores the tile after that pair, so that a persistent CTA's tiles run as one chain of turns.
The shipped build streams a dense batch's whole tiles (v51: 1.01-1.05x); each is set beside the
same tile unstreamed (-DFLASHCORE_STREAM_ITEMS=0), and attention_varlen's tiles (shipped
unstreamed: 0.94-0.99x streamed, v51) beside them streamed (=2).

First the edge cases, both builds: the whole output and LSE against the float64 reference
(flashcore_cupy.reference), outputs poisoned with NaN before each run, fresh inputs, and each
build run twice for bitwise equal results. They cover several tiles a CTA (more tiles than SMs),
tiles whose last consumers have no rows, tiles of no key tiles (rows that see no key: the chain
closes and opens again), causal tiles (a CTA a tile: every tile closes), GQA, the bshd layout,
D64, D96 and D128, windows with ALiBi and a softcap, and packed sequences (the dynamic deal:
empty sequences, a sequence of one query, windows) against attention_varlen's reference. Then
the timed rows (shape list names), both builds side by side (dense rows with SDPA cuDNN;
throughput, CUDA events, medians), each checked first (dense: sampled rows; varlen: against the
reference where it is small, and bitwise repeats).

Usage: PYTHONPATH=$PWD python3 scripts/dev/stream_probe.py [--dtype fp16,bf16] [--samples 11]
           [--skip-edges] [SHAPE ...]
"""

import argparse
import contextlib
import dataclasses
import functools

import cupy
import numpy as np

from flashcore_cupy import api, bench, configs, launch, loader, reference
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_side_by_side
from flashcore_cupy.workload import np_dtype, random_inputs, verify, within_tolerance

class Rebuilt(configs.Sm90FwdConfig):
    """A config built with the other choice of streaming: a dense batch's tiles unstreamed
    (FLASHCORE_STREAM_ITEMS=0: one Q slot), packed sequences' streamed (=2: a second Q slot where
    it fits, as the kernel's q_slots)."""

    @property
    def define(self) -> str:
        return "FLASHCORE_STREAM_ITEMS=" + ("0" if self.seq == "dense" else "2")

    @property
    def label(self) -> str:
        return "unstreamed" if self.seq == "dense" else "streamed"

    @property
    def STREAMED_SEQS(self) -> tuple[str, ...]:   # (the kernel's q_slots follows: where a second fits)
        return () if self.seq == "dense" else ("varlen",)


launch._LAUNCH_CLASSES[Rebuilt] = launch.Sm90FwdLaunch   # launches as the Hopper forward


@functools.lru_cache(maxsize=None)
def rebuilt(config) -> Rebuilt:
    """`config` with the other choice of streaming, its shared memory first held to that build's
    own count (loader.check_smem_bytes: a compile on the CPU)."""
    cfg = Rebuilt(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    loader.check_smem_bytes([cfg], cfg.arch, (cfg.define,))
    return cfg


def plans(q, k, v, out, **options):
    """(label, plan) of the shipped kernel dispatch chooses and of that tile rebuilt."""
    shipped = api.plan(q, k, v, out=out, **options)
    other = rebuilt(shipped.config)
    return [("shipped", shipped), (other.label, api.plan(q, k, v, out=out, config=other, defines=(other.define,),
                                                          **options))]


# (name, B, Hq, Hkv, Sq, Sk, D, options): see the module's text
EDGES = [
    ("plain s1000 d64", 4, 16, 16, 1000, 1000, 64, {}),
    ("plain gqa bshd s777/1500 d128", 3, 16, 4, 777, 1500, 128, dict(layout="bshd")),
    ("plain s1100 d96", 4, 8, 8, 1100, 1100, 96, {}),
    ("window(200,0) sq1500 sk700 d128", 2, 16, 16, 1500, 700, 128, dict(causal=True, window=(200, 0))),
    ("window(300,50) alibi softcap gqa d128", 2, 16, 4, 900, 900, 128,
     dict(window=(300, 50), softcap=30.0, alibi=True)),
    ("window(64,64) sq300 sk2000 d64", 4, 16, 16, 300, 2000, 64, dict(window=(64, 64))),
    ("top-left window(500,-1) d128", 2, 16, 16, 1200, 2500, 128, dict(causal="top_left", window=(500, -1))),
    ("causal s700 d128", 2, 16, 16, 700, 700, 128, dict(causal=True)),
]


def edge_case(name, b, hq, hkv, sq, sk, d, options, dtype, rng) -> bool:
    opts = dict(options)
    alibi = opts.pop("alibi", False)
    layout = opts.get("layout", "bhsd")
    npdt = np_dtype(dtype)
    shape = lambda h, s: (b, h, s, d) if layout == "bhsd" else (b, s, h, d)   # noqa: E731
    host = [rng.standard_normal(shape(h, s)).astype(npdt) for h, s in ((hq, sq), (hkv, sk), (hkv, sk))]
    q, k, v = (cupy.asarray(x) for x in host)
    slopes = (2.0 ** (-8.0 * (np.arange(hq) + 1) / hq)).astype(np.float32) if alibi else None
    extra = dict(alibi_slopes=cupy.asarray(slopes)) if alibi else {}
    ref_out, ref_lse = reference.attention(*(x.astype(np.float64) for x in host), return_lse=True,
                                           alibi_slopes=slopes, **opts)
    ok = True
    out = cupy.empty(q.shape, q.dtype)
    for label, plan in plans(q, k, v, out, return_lse=True, **extra, **opts):
        results = []
        for _ in range(2):
            out.fill(np.nan)
            o, lse = plan.run(q, k, v, out=out, **extra)
            results.append((cupy.asnumpy(o).astype(np.float64), cupy.asnumpy(lse).astype(np.float64)))
        (o, lse), (o2, lse2) = results
        err = float(np.linalg.norm(o - ref_out) / max(np.linalg.norm(ref_out), 1e-30)) if np.isfinite(o).all() \
            else float("nan")
        finite = np.isfinite(ref_lse)
        lse_ok = (np.array_equal(np.isinf(lse), np.isinf(ref_lse)) and
                  np.allclose(lse[finite], ref_lse[finite], atol=2e-2, rtol=0))
        same = np.array_equal(o, o2) and np.array_equal(lse, lse2)
        good = err <= (2e-3 if dtype == "fp16" else 1e-2) and lse_ok and same
        ok &= good
        print(f"  {name:<40} {label:<10} {plan.config}  err {err:.1e}  lse {'ok' if lse_ok else 'WRONG'}"
              f"  repeat {'same' if same else 'DIFFERS'}{'' if good else '  FAILED'}", flush=True)
    return ok


def varlen_builds(q, k, v, cu, causal, window=None):
    """(label, call) of attention_varlen's Hopper launch (its dynamic deal) and of that tile
    streamed (rebuilt): each call returns out."""
    from flashcore_cupy import validation, varlen

    problem, _ = validation.check_varlen(*(api._spec(a, n) for a, n in (
        (q, "q"), (k, "k"), (v, "v"), (cu, "cu_seqlens_q"), (cu, "cu_seqlens_k"))),
        causal=causal, scale=None, window=window, softcap=0.0, alibi_slopes=None)
    shipped = configs.sm90_varlen_config(problem.dtype, problem.head_dim, problem.kernel_variant)
    builds = []
    other = rebuilt(shipped)
    for label, config, defines in (("shipped", shipped, ()), (other.label, other, (other.define,))):
        out = cupy.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
        launch = varlen._sm90_launch(problem, config, (out.strides[1] // 2, out.strides[0] // 2), "sm_90a",
                                     api.device_info(0).num_sms, defines)
        ptrs = dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr, cu_seqlens_q=cu.data.ptr,
                    cu_seqlens_k=cu.data.ptr)
        builds.append((label, config, (lambda launch, ptrs, out: lambda i: launch.start(
            ptrs, cupy.cuda.get_current_stream().ptr) or out)(launch, ptrs, out)))
    return builds


def varlen_case(name, lengths, hq, hkv, d, causal, window, dtype, rng, samples=0) -> bool:
    """Packed sequences: both builds against attention_varlen's float64 reference (poisoned
    outputs, two runs bitwise equal; rows too large for it: the rebuilt against shipped), then
    (samples > 0) timed side by side."""
    npdt = np_dtype(dtype)
    total = sum(lengths)
    cu = cupy.asarray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    host = [rng.standard_normal((total, h, d)).astype(npdt) for h in (hq, hkv, hkv)]
    q, k, v = (cupy.asarray(x) for x in host)
    ok, fns, shipped_out = True, {}, None
    ref = None
    if samples == 0 or total * hq <= 1 << 20:
        cu_h = cupy.asnumpy(cu)
        ref = reference.attention_varlen(*(x.astype(np.float64) for x in host), cu_h, cu_h, causal=causal,
                                         window=window)
    for label, config, call in varlen_builds(q, k, v, cu, causal, window):
        outs = []
        for _ in range(2):
            out = call(0)
            out.fill(np.nan)
            outs.append(cupy.asnumpy(call(0)).astype(np.float64))
        same = np.array_equal(outs[0], outs[1])
        against = ref if ref is not None else shipped_out
        err = 0.0 if against is None else (
            float(np.linalg.norm(outs[0] - against) / max(np.linalg.norm(against), 1e-30))
            if np.isfinite(outs[0]).all() else float("inf"))
        good = same and err <= (2e-3 if dtype == "fp16" else 1e-2) and np.isfinite(outs[0]).all()
        if label == "shipped":
            shipped_out = outs[0]
        ok &= good
        print(f"  {name:<40} {label:<10} {config}  err {err:.1e}  repeat {'same' if same else 'DIFFERS'}"
              f"{'' if good else '  FAILED'}", flush=True)
        if good:
            fns[label] = (call, contextlib.nullcontext)
    if samples and fns:
        time_and_print(name, fns, samples)
    return ok


# packed sequences: (name, lengths, Hq, Hkv, D, causal, window)
VARLEN_EDGES = [
    ("varlen causal 0/1/700/33/2100", (0, 1, 700, 33, 2100, 0, 450), 16, 4, 128, True, None),
    ("varlen window(100,0) sq=sk", (900, 17, 1300, 64), 8, 8, 128, True, (100, 0)),
    ("varlen d64 non-causal", (300, 1000, 5, 640), 16, 16, 64, False, None),
]


def timed_row(name, dtype, samples, rng) -> bool:
    shape = parse_shape(name)
    q, k, v = random_inputs(shape, dtype, rng)
    arrays = bench.variant_arrays(shape, dtype, rng)
    opts = bench.attention_options(shape, arrays)
    fns, ok = {}, True
    for label, plan in plans(q, k, v, cupy.empty(q.shape[:-1] + (v.shape[-1],), q.dtype), **opts):
        out = cupy.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
        run = (lambda plan, out: lambda i: plan.run(q, k, v, out=out, **arrays))(plan, out)
        out.fill(np.nan)
        run(0)
        err, row_err = verify(shape, q, k, v, out, rng, rows=64, options=opts)
        good = within_tolerance(dtype, err, row_err)
        ok &= good
        print(f"{name:<34} {label:<10} {plan.config}  smem {plan.config.smem_bytes}"
              f"  grid {plan.launch._dims[0]}  err {err:.1e}{'' if good else '  FAILED'}", flush=True)
        if good:
            fns[label] = (run, contextlib.nullcontext)
    peer = bench.peer_call(shape, "sdpa_cudnn", q, k, v, arrays, dtype)
    if peer is not None:
        fns["sdpa_cudnn"] = peer
    time_and_print(name, fns, samples)
    return ok


def time_and_print(name, fns, samples) -> None:
    """The calls side by side (20 a sample), each row's median against the shipped kernel's."""
    t = time_side_by_side(fns, samples, 20, warmup_s=0.0, rounds=samples)
    ref = t["shipped"].p50 if "shipped" in t else None
    for impl, timing in t.items():
        ratio = f"{ref / timing.p50:5.3f}x shipped's speed" if ref else ""
        print(f"{name:<34} {impl:<11} p50 {timing.p50:8.1f} us  p90 {timing.p90:8.1f}  {ratio}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shapes", nargs="*")
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--samples", type=int, default=11)
    ap.add_argument("--skip-edges", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng()
    ok = True
    print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    for dtype in args.dtype.split(","):
        print(f"# {dtype}")
        if not args.skip_edges:
            for case in EDGES:
                ok &= edge_case(*case, dtype, rng)
            for case in VARLEN_EDGES:
                ok &= varlen_case(*case, dtype, rng)
        for name in args.shapes:
            shape = parse_shape(name)
            if shape.kind == "varlen":
                ok &= varlen_case(name, shape.seqlens, shape.heads_q, shape.heads_kv, shape.head_dim, shape.causal,
                                  shape.window, dtype, rng, args.samples)
            else:
                ok &= timed_row(name, dtype, args.samples, rng)
    print("stream_probe:", "every check passed" if ok else "SOME CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
