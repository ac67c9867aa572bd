"""Benchmark: the shape list, side by side with the peers, in one process.

For each shape and dtype: validate every implementation against the float64
reference (sampled query rows), then time them in two modes:
  latency     CUDA events around one call after the GPU is idle (host cost included)
  throughput  CUDA events around 20 back-to-back calls, divided by 20
side by side: the implementations take turns (timing.time_side_by_side), in blocks of
samples where a call is short enough that its host path's warmth matters, one sample per
turn where every call is long, so that all of them meet the GPU's clock alike (see turn_plan).
Inputs rotate over several sets when one set would sit in L2.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import workload
from .shapes import Shape, bench_shapes
from .timing import time_latency, time_side_by_side

IMPLS = ("flashcore", "flashcore_sm80", "naive_cupy", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
_SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
                  "sdpa_efficient": "EFFICIENT_ATTENTION"}
_LONG_US = 10_000   # runs longer than this get fewer repeats
_CLOCK_BOUND_US = 100   # cases whose every call takes this long take turns sample by sample
_BLOCKS, _BLOCK_WARMUP_S = 5, 0.05


@dataclass
class Row:
    shape: str
    dtype: str
    impl: str
    mode: str
    us_p50: float
    us_p90: float
    us_p99: float
    tflops: float
    rel_err: float


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _identity(q, k, v):
    return q, k, v


def _impls(shape: Shape, torch) -> dict[str, tuple[Callable, Callable, Callable]]:
    """name -> (fn(*inputs) -> output (bhsd), prepare(q, k, v) -> inputs, context).

    Work a user would do once stays out of the timed calls: `prepare` converts
    each input set once (DLPack to torch for SDPA), and SDPA's backend is pinned
    by a context manager entered once around all of that backend's calls.
    """
    from . import api, naive

    none = contextlib.nullcontext
    fns: dict[str, tuple[Callable, Callable, Callable]] = {
        "flashcore": (lambda q, k, v: api.attention(q, k, v, causal=shape.causal), _identity, none),
        "flashcore_sm80": (lambda q, k, v: api.attention(q, k, v, causal=shape.causal,
                                                         backend="sm80"), _identity, none),
    }
    if workload.naive_fits(shape):
        fns["naive_cupy"] = (lambda q, k, v: naive.attention(q, k, v, causal=shape.causal),
                             _identity, none)
    if torch is None:
        return fns
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mask = None
    if shape.causal and shape.seqlen_q != shape.seqlen_k:   # SDPA's is_causal is top-left
        i = torch.arange(shape.seqlen_q, device="cuda")[:, None]
        mask = torch.arange(shape.seqlen_k, device="cuda")[None, :] <= i + shape.seqlen_k - shape.seqlen_q
    gqa = shape.heads_q != shape.heads_kv
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fn(q, k, v):
        return sdpa(q, k, v, attn_mask=mask, is_causal=shape.causal and mask is None, enable_gqa=gqa)

    def to_torch(q, k, v):   # zero-copy views
        return torch.from_dlpack(q), torch.from_dlpack(k), torch.from_dlpack(v)

    for name, backend in _SDPA_BACKENDS.items():
        fns[name] = (fn, to_torch, functools.partial(sdpa_kernel, getattr(SDPBackend, backend)))
    return fns


def peer_call(shape: Shape, impl: str, q, k, v) -> tuple[Callable, Callable] | None:
    """(fn(i), context) calling peer `impl` (one of IMPLS, e.g. "sdpa_cudnn") on q, k, v as
    the benchmark does (fn's calls inside context()), for scripts that time a peer beside
    our kernels; None where it cannot run here (no torch)."""
    impls = _impls(shape, _torch())
    if impl not in impls:
        return None
    fn, prepare, context = impls[impl]
    inputs = prepare(q, k, v)
    return (lambda i: fn(*inputs)), context


def _rel_err(shape: Shape, out, q, k, v, rng) -> float:
    import cupy

    out = out if isinstance(out, cupy.ndarray) else cupy.from_dlpack(out.contiguous())
    return workload.verify(shape, q, k, v, out, rng)


def run_case(shape: Shape, dtype: str, impls: list[str], iters: int, rng, torch) -> list[Row]:
    """Validate each implementation, then time them all side by side (time_side_by_side)."""
    fns = _impls(shape, torch)
    sets = workload.input_sets(shape, "fp16" if dtype == "float16" else "bf16", rng)
    q, k, v = sets[0]
    timed, errors, quick = {}, {}, {}
    for impl in impls:
        if impl not in fns:
            continue
        fn, prepare, context = fns[impl]
        inputs = [prepare(*s) for s in sets]
        with context():
            try:
                errors[impl] = _rel_err(shape, fn(*inputs[0]), q, k, v, rng)
            except RuntimeError as e:   # an SDPA backend that does not support this case
                print(f"  {shape.name} {dtype} {impl}: not available ({str(e).splitlines()[0][:80]})")
                continue
            call = functools.partial(_rotating_call, fn, inputs)
            quick[impl] = time_latency(call, 3, warmup=1).p50
        timed[impl] = (call, context)
    if not timed:   # every implementation asked for was unavailable here
        return []
    n = iters if max(quick.values()) < _LONG_US else max(10, iters // 5)
    rows = []
    for mode, samples, calls in (("latency", n, 1), ("throughput", max(10, n // 5), 20)):
        blocks, warmup_s = turn_plan(min(quick.values()), samples)
        timings = time_side_by_side(timed, samples, calls, warmup_s, blocks)
        for impl, t in timings.items():
            rows.append(Row(shape.name, dtype, impl, mode, t.p50, t.p90, t.p99,
                            shape.flops / (t.p50 * 1e-6) / 1e12, errors[impl]))
    return rows


def turn_plan(fastest_us: float, samples: int) -> tuple[int, float]:
    """(blocks, warm-up seconds per turn) for time_side_by_side.

    Under a long load the H200 lowers its SM clock within tens of milliseconds (1980 to
    ~1640 MHz at S = 4k D128, the time of a call following the clock: correlation -0.97,
    PERF_NOTES v20), so an implementation timed in a block right after a light one met a
    higher clock than one timed after a heavy one. Where every call takes _CLOCK_BOUND_US
    or more, each turn is one sample after one untimed round of the same calls (its host
    path warm), and the implementations alternate sample by sample through the same clock
    states. Shorter calls keep blocks of samples after a 50 ms warm-up: there the host
    path's warmth is what varies (sampled call by call in turn, each ran cold, v19)."""
    if fastest_us >= _CLOCK_BOUND_US:
        return samples, 0.0
    return _BLOCKS, _BLOCK_WARMUP_S


def _rotating_call(fn: Callable, inputs: list, i: int):
    return fn(*inputs[i % len(inputs)])


def environment(torch) -> dict:
    import cupy

    from . import api, loader

    dev = cupy.cuda.Device().id
    props = cupy.cuda.runtime.getDeviceProperties(dev)
    sha = os.environ.get("FLASHCORE_GIT_SHA")   # the device's copy of the tree has no .git
    if not sha:
        try:
            r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                               cwd=Path(__file__).parent)
            sha = r.stdout.strip() if r.returncode == 0 else None
        except OSError:
            sha = None
    return {
        "schema": 1, "git_sha": sha,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": props["name"].decode(), "arch": api.device_info(dev).arch,
        "versions": {"cupy": cupy.__version__, "cuda": cupy.cuda.runtime.runtimeGetVersion(),
                     "nvrtc": loader.nvrtc_version(),
                     "torch": None if torch is None else torch.__version__,
                     # what ran, even where git_sha cannot be trusted (a copied tree's .git)
                     "kernels": loader.source_hash()},
    }


def format_table(rows: list[Row]) -> str:
    """One line per (shape, dtype, impl, mode); `x fc` = this impl's time / flashcore's."""
    base = {(r.shape, r.dtype, r.mode): r.us_p50 for r in rows if r.impl == "flashcore"}
    lines = [f"{'shape':<30} {'dtype':<9} {'impl':<15} {'mode':<10} {'p50 us':>9} {'p90 us':>9} "
             f"{'TFLOP/s':>8} {'rel err':>8} {'x fc':>6}"]
    for r in rows:
        ratio = r.us_p50 / base[(r.shape, r.dtype, r.mode)] if (r.shape, r.dtype, r.mode) in base else float("nan")
        lines.append(f"{r.shape:<30} {r.dtype:<9} {r.impl:<15} {r.mode:<10} {r.us_p50:>9.1f} "
                     f"{r.us_p90:>9.1f} {r.tflops:>8.1f} {r.rel_err:>8.1e} {ratio:>6.2f}")
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = {s.name: s for s in bench_shapes()}
    dtypes = sorted({r.dtype for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        order = sorted({r.shape for r in rows if r.dtype == dtype},
                       key=lambda n: (shapes[n].seqlen_k, n) if n in shapes else (0, n))
        for impl in IMPLS:
            pts = {r.shape: r.tflops for r in rows
                   if r.dtype == dtype and r.impl == impl and r.mode == "throughput"}
            if pts:
                ax.plot([order.index(n) for n in pts], list(pts.values()), "o-", label=impl)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{n}\n(S={shapes[n].seqlen_k})" if n in shapes else n for n in order],
                           rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("TFLOP/s (throughput mode)")
        ax.set_title(f"{dtype}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(shape_names: list[str] | None, dtypes: list[str], impls: list[str], iters: int,
         out_path: str | None, plot_path: str | None) -> dict:
    import cupy

    torch = _torch()
    rng = np.random.default_rng()
    shapes = [s for s in bench_shapes() if not shape_names or s.name in shape_names]
    result = environment(torch)
    print(f"# {result['gpu']} ({result['arch']}), CuPy {result['versions']['cupy']}, "
          f"NVRTC {result['versions']['nvrtc']}, torch {result['versions']['torch']}")
    rows: list[Row] = []
    for shape in shapes:
        for dtype in dtypes:
            rows += run_case(shape, dtype, impls, iters, rng, torch)
            cupy.get_default_memory_pool().free_all_blocks()
            print(f"  done {shape.name} {dtype}", flush=True)
    print(format_table(rows))
    result["rows"] = [r.__dict__ for r in rows]
    if out_path:
        Path(out_path).write_text(json.dumps(result, indent=1))
    if plot_path:
        plot(rows, plot_path)
    return result
