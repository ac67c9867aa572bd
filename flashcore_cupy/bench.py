"""Benchmark: the shape list, side by side with the peers, in one process.

The list is bench_shapes.json (version 2): dense and decode rows, plain and with variants
(window, top-left causal, softcap, ALiBi, bias), paged and varlen rows; the backward directions
skip V head dims other than q's with their reason (shapes.Shape.unsupported). Varlen rows time
attention_varlen (flashcore_varlen) against SDPA on jagged nested tensors (torch_nested, K and V
expanded to Hq heads outside the timed calls), checked on sampled packed rows. Decode and paged rows
also time attention_kvcache (flashcore_kvcache on the contiguous cache; on paged rows
flashcore_paged at the row's page size and flashcore_contiguous), report GB/s (Q, K and V read,
O written) beside TFLOP/s, and the case records copy_gbps, a device copy of the cache's bytes
timed in the same run. On a variant row the peers
are flashcore_plain (the same shape with the variant's options off, causal kept) and SDPA
through an explicit mask (boolean for windows and bottom-right causal with Sq != Sk, float for
ALiBi and bias; is_causal for top-left; softcap has none). TFLOP/s count visible pairs.

For each shape and dtype:
  1. every implementation runs once on every input set and is checked against the float64
     reference of that set (sampled query rows; both the whole-output and the worst-row
     bound). A flashcore implementation that raises or misses a bound is a failure: the
     case records it, the run goes on, and `flashcore-cupy bench` exits 1. A peer that
     raises (an SDPA backend refusing the case) is recorded as unavailable, with the reason.
  2. the implementations are timed side by side (timing.time_side_by_side) in two modes:
       latency     CUDA events around one call after the GPU is idle (host cost included)
       throughput  CUDA events around back-to-back calls, per call
     and on the graph rows (graph_row: the dense plain rows of Sq and Sk <= 1024, the mission
     shape's kind, where the host's cost per call is the kernel's order) in a third:
       graph       each input set's call captured once in a CUDA graph (ours into an out=
                   buffer; SDPA through torch.cuda.graph) and replayed back to back, per
                   call; every set's replayed output is checked as the call's was
     in the balanced order of timing.balanced_orders (every implementation follows every
     other equally often; the order is in the JSON), with the sample counts of sample_plan.
Inputs rotate over input sets that hold at least workload.ROTATE_BYTES together, one set
per call, so no call finds its inputs in L2 (the same for every implementation).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from . import workload
from .shapes import Shape, bench_shapes
from .timing import balanced_orders, predecessors, time_latency, time_side_by_side, turns

KVCACHE_IMPLS = ("flashcore_kvcache", "flashcore_contiguous", "flashcore_paged")   # decode and paged rows
IMPLS = ("flashcore", "flashcore_sm80", "flashcore_plain", *KVCACHE_IMPLS, "flashcore_varlen", "naive_cupy",
         "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "torch_nested")
OURS = ("flashcore", "flashcore_sm80", "flashcore_plain", "flashcore_deterministic",
        *KVCACHE_IMPLS, "flashcore_varlen")   # their failures fail the run
BACKWARD_IMPLS = ("flashcore", "flashcore_deterministic", "flashcore_sm80", "sdpa_flash", "sdpa_cudnn",
                  "sdpa_efficient")
_SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
                  "sdpa_efficient": "EFFICIENT_ATTENTION"}
SCHEMA = 2
LATENCY_SAMPLES, THROUGHPUT_SAMPLES, THROUGHPUT_CALLS = 50, 30, 20   # per implementation
_LONG_US = 10_000        # an implementation slower than this per call takes the counts below
_SLOW_SAMPLES, _SLOW_THROUGHPUT_CALLS = 10, 2
_CLOCK_BOUND_US = 100    # cases whose every call takes this long take turns sample by sample
_BLOCK_WARMUP_S = 0.05
_CHECK_ROW_BUDGET = 8 * workload.CHECK_ROWS   # reference rows per case, over all its sets
_MIN_CHECK_ROWS = 32


class Impl(NamedTuple):
    fn: Callable        # fn(*inputs) -> output (bhsd)
    prepare: Callable   # prepare(q, k, v) -> inputs, once per input set
    context: Callable   # context() entered around a turn of calls (pins an SDPA backend)
    plain: bool = False   # computes shape.plain() (flashcore_plain): checked and counted as that


class Checker(NamedTuple):
    """How a direction checks an implementation's result against a set's reference."""
    errors: Callable   # errors(result, reference) -> (relative L2 error, worst row's)
    ok: Callable       # ok(dtype, err, row_err) -> within the bounds (NaN never)
    flops: float = 1.0   # the shape's FLOPs times this (the backward: 2.5)


FORWARD = Checker(lambda out, ref: workload.errors(_as_checkable(out), *ref), workload.within_tolerance)


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
    rel_err: float    # the largest over the input sets
    row_err: float    # the worst row's, over the input sets
    samples: int
    calls: int        # back-to-back calls per sample
    gbps: float | None = None   # decode and paged rows: Q, K, V read and O written per second


@dataclass
class Case:
    rows: list[Row] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)      # flashcore's: fail the run
    unavailable: list[dict] = field(default_factory=list)   # peers that cannot run this case
    plan: dict = field(default_factory=dict)                # what was timed how, per mode


class Plan(NamedTuple):
    samples: dict[str, int]
    calls: dict[str, int]
    rounds: int
    warmup_s: float


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _identity(q, k, v):
    return q, k, v


def variant_arrays(shape: Shape, dtype: str, rng) -> dict:
    """A row's ALiBi slopes (2^(-8(h+1)/Hq), float32) and bias ((1, Hq, Sq, Sk) normal, in the
    input dtype) on the GPU, the same for every input set of the case; {} for neither."""
    import cupy

    arrays = {}
    if shape.alibi:
        h = np.arange(shape.heads_q)
        arrays["alibi_slopes"] = cupy.asarray((2.0 ** (-8.0 * (h + 1) / shape.heads_q)).astype(np.float32))
    if shape.bias:
        host = rng.standard_normal((1, shape.heads_q, shape.seqlen_q, shape.seqlen_k), dtype=np.float32)
        arrays["bias"] = cupy.asarray(host.astype(workload.np_dtype(dtype)))
    return arrays


def attention_options(shape: Shape, arrays: dict) -> dict:
    """attention's keyword arguments for a row (its mask, softcap and the variant arrays)."""
    opts = dict(causal=shape.causal_arg, **arrays)
    if shape.window is not None:
        opts["window"] = shape.window
    if shape.softcap:
        opts["softcap"] = shape.softcap
    return opts


def sdpa_mask(shape: Shape, arrays: dict, torch, dtype):
    """(attn_mask, is_causal) giving SDPA the row's function: is_causal alone where its top-left
    alignment is the row's; else a boolean mask of the visible keys, or with ALiBi or a bias a
    float mask holding them (-inf where hidden). None where SDPA cannot (softcap)."""
    from .reference import visible

    if shape.softcap:
        return None
    sq, sk = shape.seqlen_q, shape.seqlen_k
    top_left_ok = shape.causal_arg == "top_left" or (shape.causal and sq == sk)
    if shape.window is None and not shape.alibi and not shape.bias and (top_left_ok or not shape.causal):
        return None, bool(shape.causal)
    keep = torch.from_numpy(visible(np.arange(sq), sq, sk, shape.causal_arg, shape.window)).cuda()
    if not shape.alibi and not shape.bias:
        return keep, False
    mask = torch.zeros((1, shape.heads_q, sq, sk), device="cuda", dtype=torch.float32)
    if shape.alibi:
        off = 0 if shape.causal_arg == "top_left" else sk - sq
        dist = (torch.arange(sq, device="cuda")[:, None] + off - torch.arange(sk, device="cuda")[None, :]).abs()
        mask -= torch.from_dlpack(arrays["alibi_slopes"]).float()[None, :, None, None] * dist.float()
    if shape.bias:
        mask += torch.from_dlpack(arrays["bias"]).float()
    return mask.masked_fill(~keep, float("-inf")).to(dtype), False


def _impls(shape: Shape, torch, arrays: dict | None = None, dtype: str = "fp16") -> dict[str, Impl]:
    """name -> Impl(fn(*inputs) -> output (bhsd), prepare(q, k, v) -> inputs, context, plain).

    Work a user would do once stays out of the timed calls: `prepare` converts
    each input set once (DLPack to torch for SDPA), and SDPA's backend is pinned
    by a context manager entered once around all of that backend's calls.
    arrays: the row's variant arrays (variant_arrays), the same for every call.
    """
    from . import api, naive

    none = contextlib.nullcontext
    opts = attention_options(shape, arrays or {})
    fns: dict[str, Impl] = {
        "flashcore": Impl(lambda q, k, v, out=None: api.attention(q, k, v, out=out, **opts), _identity, none),
        "flashcore_sm80": Impl(lambda q, k, v, out=None: api.attention(q, k, v, backend="sm80", out=out, **opts),
                               _identity, none),
    }
    if shape.kind in ("decode", "paged"):
        fns.update(kvcache_impls(shape, opts))
    if shape.is_variant:
        plain = attention_options(shape.plain(), {})
        fns["flashcore_plain"] = Impl(lambda q, k, v: api.attention(q, k, v, **plain), _identity, none, True)
    elif workload.naive_fits(shape):
        fns["naive_cupy"] = Impl(lambda q, k, v: naive.attention(q, k, v, causal=shape.causal),
                                 _identity, none)
    if torch is None:
        return fns
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    given = sdpa_mask(shape, arrays or {}, torch, torch_dtype)
    if given is None:   # no SDPA peer for this row (softcap)
        return fns
    mask, is_causal = given
    gqa = shape.heads_q != shape.heads_kv
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fn(q, k, v):
        return sdpa(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)

    def to_torch(q, k, v):   # zero-copy views
        return torch.from_dlpack(q), torch.from_dlpack(k), torch.from_dlpack(v)

    for name, backend in _SDPA_BACKENDS.items():
        fns[name] = Impl(fn, to_torch, functools.partial(sdpa_kernel, getattr(SDPBackend, backend)))
    return fns


def kvcache_impls(shape: Shape, opts: dict) -> dict[str, Impl]:
    """attention_kvcache on a decode or paged row's inputs (q, k, v in bhsd): the cache is k and
    v as (B, Sk, Hkv, D) views, every sequence full (cache_seqlens = Sk); a paged row's pages
    (page_size keys) are copied into a pool in a shuffled order once per input set. The outputs
    are returned as bhsd views, as the other implementations'."""
    from . import kvcache

    causal = bool(opts.get("causal", False))
    extra = {n: opts[n] for n in ("window", "softcap", "alibi_slopes") if n in opts}

    def contiguous(q, k, v):
        import cupy
        bshd = [x.transpose(0, 2, 1, 3) for x in (q, k, v)]
        return (*bshd, cupy.full((q.shape[0],), k.shape[2], np.int32), None)

    def paged(q, k, v):
        import cupy
        b, hkv, sk, d = k.shape
        page = shape.page_size
        per_seq = -(-sk // page)
        order = np.random.default_rng(0).permutation(b * per_seq)
        table = cupy.asarray(order.reshape(b, per_seq).astype(np.int32))
        pools = []
        for x in (k, v):
            pool = cupy.zeros((b * per_seq, page, hkv, d), x.dtype)
            padded = cupy.zeros((b, per_seq * page, hkv, d), x.dtype)
            padded[:, :sk] = x.transpose(0, 2, 1, 3)
            pool[cupy.asarray(order)] = padded.reshape(b * per_seq, page, hkv, d)
            pools.append(pool)
        return (q.transpose(0, 2, 1, 3), *pools, cupy.full((b,), sk, np.int32), table)

    def run(q, k_cache, v_cache, seqlens, table):
        out = kvcache.attention_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, block_table=table,
                                        causal=causal, **extra)
        return out.transpose(0, 2, 1, 3)

    none = contextlib.nullcontext
    if shape.kind == "decode":
        return {"flashcore_kvcache": Impl(run, contiguous, none)}
    return {"flashcore_paged": Impl(run, paged, none), "flashcore_contiguous": Impl(run, contiguous, none)}


def copy_gbps(sets: list[tuple]) -> float:
    """GB/s of a device copy of the first input set's K and V (the bytes a decode call reads),
    throughput of back-to-back copies: the roof the decode and paged rows are read against."""
    import cupy

    from .timing import time_throughput

    _, k, v = sets[0][:3]
    dst = cupy.empty_like(k), cupy.empty_like(v)

    def copy(i):
        cupy.copyto(dst[0], k)
        cupy.copyto(dst[1], v)

    t = time_throughput(copy, 20, calls=5)
    return 2 * (k.nbytes + v.nbytes) / (t.p50 * 1e-6) / 1e9


def _backward_errors(grads, ref) -> tuple[float, float]:
    """The worst of dq's (on the reference's rows), dk's and dv's (on its keys) errors: relative
    L2, and the worst row's against the typical row (reference.grad_row_error)."""
    from . import reference

    rows, keys, (dq, dk, dv) = ref
    got = [_as_checkable(g) for g in grads]
    pairs = ((got[0][:, :, rows.tolist()], dq), (got[1][:, :, keys.tolist()], dk), (got[2][:, :, keys.tolist()], dv))
    return (max(reference.rel_error(g, r) for g, r in pairs), max(reference.grad_row_error(g, r) for g, r in pairs))


BACKWARD = Checker(_backward_errors, workload.within_grad_tolerance, 2.5)   # FLOPs: 2.5x the forward's
FWD_BWD = Checker(_backward_errors, workload.within_grad_tolerance, 3.5)    # the forward's and the backward's


def _gradient_impls(shape: Shape, torch, arrays: dict | None = None, dtype: str = "fp16", *,
                    with_forward: bool = False) -> dict[str, Impl]:
    """The implementations of the backward (with_forward=False) or of the forward and backward
    together: fn(*inputs) -> (dq, dk, dv) (bhsd), prepare(q, k, v, dout, out, lse) -> inputs.
    The backward: flashcore from our forward's out and LSE (the input set holds them), SDPA's
    backends autograd's backward of their own forward, made once per input set under the pinned
    backend (its graph kept for every call). Together: flashcore's attention(...,
    return_lse=True) then attention_backward, SDPA's forward then autograd's backward, per call."""
    from . import api, backward

    none = contextlib.nullcontext
    opts = attention_options(shape, arrays or {})

    def ours(**kw):
        if not with_forward:
            return Impl(lambda *x: backward.attention_backward(*x, **kw, **opts),
                        lambda q, k, v, dout, out, lse: (dout, q, k, v, out, lse), none)
        fwd = {"backend": kw["backend"]} if "backend" in kw else {}

        def fn(q, k, v, dout):
            out, lse = api.attention(q, k, v, return_lse=True, **fwd, **opts)
            return backward.attention_backward(dout, q, k, v, out, lse, **kw, **opts)
        return Impl(fn, lambda q, k, v, dout, out, lse: (q, k, v, dout), none)

    fns = {"flashcore": ours(), "flashcore_deterministic": ours(deterministic=True),
           "flashcore_sm80": ours(backend="sm80")}
    if torch is None:
        return fns
    from torch.nn.attention import SDPBackend, sdpa_kernel

    given = sdpa_mask(shape, arrays or {}, torch, torch.float16 if dtype == "fp16" else torch.bfloat16)
    if given is None:
        return fns
    mask, is_causal = given
    gqa = shape.heads_q != shape.heads_kv

    def forward(x):
        return torch.nn.functional.scaled_dot_product_attention(*x, attn_mask=mask, is_causal=is_causal,
                                                                enable_gqa=gqa)

    def leaves(q, k, v):
        return tuple(torch.from_dlpack(t).detach().requires_grad_() for t in (q, k, v))

    for name, backend in _SDPA_BACKENDS.items():
        context = functools.partial(sdpa_kernel, getattr(SDPBackend, backend))
        if with_forward:
            fns[name] = Impl(lambda q, k, v, g: torch.autograd.grad(forward((q, k, v)), (q, k, v), g),
                             lambda q, k, v, dout, out, lse: (*leaves(q, k, v), torch.from_dlpack(dout)), context)
            continue

        def prepare(q, k, v, dout, out, lse, context=context):
            x = leaves(q, k, v)
            with context():
                o = forward(x)
            return o, x, torch.from_dlpack(dout)
        fns[name] = Impl(lambda o, x, g: torch.autograd.grad(o, x, g, retain_graph=True), prepare, context)
    return fns


def _backward_case_inputs(shape: Shape, dtype: str, rng, arrays: dict) -> tuple[list[tuple], list[tuple], None]:
    """(input sets (q, k, v, dout, out, lse: out and LSE from our forward), their references:
    (rows, keys, float64 dq on those rows and dk, dv on those keys, from that out and LSE), None)."""
    from . import api, reference

    opts = attention_options(shape, arrays)
    sets, refs = [], []
    qkv_sets = workload.input_sets(shape, dtype, rng)
    n = check_rows_per_set(len(qkv_sets))
    for q, k, v in qkv_sets:
        dout = workload.random_inputs(shape, dtype, rng)[0]
        out, lse = api.attention(q, k, v, return_lse=True, **opts)
        rows, keys = workload.check_rows(shape.seqlen_q, rng, n), workload.check_rows(shape.seqlen_k, rng, n)
        refs.append((rows, keys, reference.attention_backward_sampled(dout, q, k, v, out, lse, rows, keys, **opts)))
        sets.append((q, k, v, dout, out, lse))
    return sets, refs, None


def peer_call(shape: Shape, impl: str, q, k, v, arrays: dict | None = None,
              dtype: str = "fp16") -> tuple[Callable, Callable] | None:
    """(fn(i), context) calling peer `impl` (one of IMPLS, e.g. "sdpa_cudnn") on q, k, v as
    the benchmark does (fn's calls inside context(); arrays: a variant row's, variant_arrays),
    for scripts that time a peer beside our kernels; None where it cannot run here (no torch,
    or no such peer for the row)."""
    impls = _impls(shape, _torch(), arrays, dtype)
    if impl not in impls:
        return None
    chosen = impls[impl]
    inputs = chosen.prepare(q, k, v)
    return (lambda i: chosen.fn(*inputs)), chosen.context


def _as_checkable(out):
    """An output as an array the reference can read: CuPy and NumPy as they are, torch through
    DLPack."""
    if type(out).__module__.startswith("torch"):
        import cupy
        return cupy.from_dlpack(out.contiguous())
    return out


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def check_rows_per_set(n_sets: int) -> int:
    """Query rows checked per input set: every set is checked, the reference's cost bounded."""
    return max(_MIN_CHECK_ROWS, min(workload.CHECK_ROWS, _CHECK_ROW_BUDGET // n_sets))


def sample_plan(names: list[str], quick_us: dict[str, float], mode: str, iters: int) -> Plan:
    """How many samples of how many calls each of a group of implementations takes, over how
    many rounds. run_case times the implementations faster than _LONG_US a call as one group
    and the slower ones (naive CuPy, SDPA's memory-efficient backend at 16k) as another, after:
    within a group every implementation samples in every round, so the balanced order holds.

    A fast group takes `iters` (default 50) latency samples and 3/5 of that (30) throughput
    samples of THROUGHPUT_CALLS calls each; a slow group _SLOW_SAMPLES of fewer calls. Rounds
    are a multiple of the balanced order's cycle.

    Under a long load the H200 lowers its SM clock within tens of milliseconds (1980 to
    ~1640 MHz at S = 4k D128, the time of a call following the clock: correlation -0.97,
    PERF_HISTORY v20). Where every call takes _CLOCK_BOUND_US or more, each turn is one sample
    after one untimed round of the same calls, and the implementations alternate sample by
    sample through the same clock states. Shorter cases take blocks of samples after
    _BLOCK_WARMUP_S of warm-up: there the host path's warmth is what varies."""
    cycle = len(balanced_orders(names))
    slow = min(quick_us[n] for n in names) >= _LONG_US
    if mode == "latency":
        want, calls = (_SLOW_SAMPLES if slow else iters), 1
    else:
        want = _SLOW_SAMPLES if slow else max(3, iters * THROUGHPUT_SAMPLES // LATENCY_SAMPLES)
        calls = _SLOW_THROUGHPUT_CALLS if slow else THROUGHPUT_CALLS
    if min(quick_us[n] for n in names) >= _CLOCK_BOUND_US:
        rounds = -(-want // cycle) * cycle
        return Plan(dict.fromkeys(names, rounds), dict.fromkeys(names, calls), rounds, 0.0)
    return Plan(dict.fromkeys(names, want), dict.fromkeys(names, calls), cycle, _BLOCK_WARMUP_S)


def speed_groups(quick_us: dict[str, float]) -> list[list[str]]:
    """The implementations timed side by side: those faster than _LONG_US a call, then the
    slower ones (each group non-empty)."""
    fast = [n for n, t in quick_us.items() if t < _LONG_US]
    slow = [n for n, t in quick_us.items() if t >= _LONG_US]
    return [g for g in (fast, slow) if g]


def run_case(shape: Shape, dtype: str, impls: dict[str, Impl], sets: list[tuple],
             references: list[tuple], iters: int, plain_references: list[tuple] | None = None,
             checker: Checker = FORWARD) -> Case:
    """Check each implementation on every input set, then time the ones that passed side by
    side. dtype: "fp16" or "bf16"; references[i]: what checker.errors takes for sets[i] (the
    forward: query rows and their float64 reference, workload.sampled_reference);
    plain_references: the same of shape.plain(), for the implementations that compute it
    (flashcore_plain)."""
    case = Case()
    errors, timed, quick, prepared = {}, {}, {}, {}
    for name, impl in impls.items():
        ours = name in OURS
        try:
            inputs = [impl.prepare(*s) for s in sets]
            with impl.context():
                refs = plain_references if impl.plain else references
                errs = [checker.errors(impl.fn(*x), ref) for x, ref in zip(inputs, refs)]
                err, row_err = max(e for e, _ in errs), max(r for _, r in errs)
                if ours and not checker.ok(dtype, err, row_err):
                    case.failures.append(dict(shape=shape.name, dtype=dtype, impl=name,
                                              reason=f"rel err {err:.2e}, worst row {row_err:.2e} "
                                                     f"over the bounds"))
                    continue
                if checker is not FORWARD:
                    case.plan.setdefault("peak_bytes", {})[name] = _peak_bytes(name, impl.fn, inputs[0])
                call = functools.partial(_rotating_call, impl.fn, inputs)
                quick[name] = time_latency(call, 3, warmup=1).p50
        except Exception as e:   # ours: a failure of the run; a peer: not available for this case
            (case.failures if ours else case.unavailable).append(
                dict(shape=shape.name, dtype=dtype, impl=name, reason=_reason(e)))
            if not ours:
                print(f"  {shape.name} {dtype} {name}: not available ({_reason(e)[:100]})")
            continue
        errors[name] = (err, row_err)
        timed[name] = (call, impl.context)
        prepared[name] = inputs
    if not timed:   # every implementation asked for failed or was unavailable here
        return case
    modes = {"latency": timed, "throughput": timed}
    if checker is FORWARD and graph_row(shape):
        modes["graph"] = _graphed_calls(shape, dtype, impls, prepared, references, case, {n: quick[n] for n in timed})
    for mode, calls in modes.items():
        case.plan[mode] = []
        for group in speed_groups({n: quick[n] for n in calls}):
            plan = sample_plan(group, quick, "latency" if mode == "latency" else "throughput", iters)
            try:
                timings = time_side_by_side({n: calls[n] for n in group}, plan.samples, plan.calls,
                                            plan.warmup_s, plan.rounds)
            except Exception as e:   # nothing was recorded for this group: the run fails
                case.failures.append(dict(shape=shape.name, dtype=dtype, impl="timing",
                                          reason=f"{mode} {group}: {_reason(e)}"))
                continue
            order = turns(group, plan.samples, plan.rounds)
            case.plan[mode].append(dict(
                impls=group, rounds=plan.rounds, warmup_s=plan.warmup_s, samples=plan.samples[group[0]],
                calls=plan.calls[group[0]], orders=[[name for name, _ in r] for r in order],
                predecessors={f"{a}>{b}": n for (a, b), n in sorted(predecessors(order).items())}))
            for name, t in timings.items():
                err, row_err = errors[name]
                flops = checker.flops * (shape.plain().flops if impls[name].plain else shape.flops)
                gbps = shape.bytes_moved / (t.p50 * 1e-6) / 1e9 if shape.kind in ("decode", "paged") else None
                case.rows.append(Row(shape.name, dtype, name, mode, t.p50, t.p90, t.p99,
                                     flops / (t.p50 * 1e-6) / 1e12, err, row_err,
                                     plan.samples[name], plan.calls[name], gbps))
    case.plan["sets"] = len(sets)
    case.plan["check_rows"] = int(len(references[0][0])) if references else 0
    return case


def graph_row(shape: Shape) -> bool:
    """The rows timed in graph mode too: dense, no variant, Sq and Sk at most 1024 (the mission
    shape and the S1k rows)."""
    return shape.kind == "dense" and not shape.is_variant and max(shape.seqlen_q, shape.seqlen_k) <= 1024


def _graphed_calls(shape: Shape, dtype: str, impls: dict[str, Impl], prepared: dict[str, list],
                   references: list[tuple], case: Case, quick: dict[str, float]) -> dict:
    """name -> (fn(i), context) replaying input set i's call captured in a CUDA graph, for the
    implementations that capture (ours with an out= buffer, the SDPA ones; others are left out),
    each set's replayed output checked; a failure to capture or check is ours' failure, a peer's
    unavailability (in graph mode)."""
    graphed = {}
    for name in quick:
        impl, ours = impls[name], name in OURS
        if not (name.startswith("sdpa") or name in ("flashcore", "flashcore_sm80")):
            continue
        try:
            with impl.context():
                replay, outs = (_capture_torch if name.startswith("sdpa") else _capture_cupy)(impl.fn, prepared[name])
                for i, (out, ref) in enumerate(zip(outs, references)):
                    _poison(out)   # the replay must write every element
                    replay(i)
                    err, row_err = FORWARD.errors(out, ref)
                    if not FORWARD.ok(dtype, err, row_err):
                        raise ValueError(f"graph replay of set {i}: rel err {err:.2e}, worst row {row_err:.2e}")
        except Exception as e:
            (case.failures if ours else case.unavailable).append(
                dict(shape=shape.name, dtype=dtype, impl=name, reason=f"graph mode: {_reason(e)}"))
            continue
        graphed[name] = (replay, impl.context)
    return graphed


def _poison(out) -> None:
    """NaN over an output (a CuPy array or a torch tensor)."""
    if hasattr(out, "fill_"):
        out.fill_(float("nan"))
    else:
        out.fill(np.nan)


def _capture_cupy(fn: Callable, inputs: list) -> tuple[Callable, list]:
    """fn(*x, out=buffer) captured once per input set on a side stream (after a call that
    compiles and plans); replay(i) launches set i's graph on the current stream."""
    import cupy

    side, graphs, outs = cupy.cuda.Stream(non_blocking=True), [], []
    with side:
        for x in inputs:
            out = fn(*x)
            fn(*x, out=out)
            side.begin_capture()
            fn(*x, out=out)
            graphs.append(side.end_capture())
            outs.append(out)
    side.synchronize()
    return (lambda i: graphs[i % len(graphs)].launch(cupy.cuda.get_current_stream())), outs


def _capture_torch(fn: Callable, inputs: list) -> tuple[Callable, list]:
    """fn(*x) captured by torch.cuda.graph once per input set (after warm-up calls on a side
    stream, as torch asks); replay(i) replays set i's graph on torch's current stream."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x in inputs:
            fn(*x)
    torch.cuda.current_stream().wait_stream(side)
    graphs, outs = [], []
    for x in inputs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs.append(fn(*x))
        graphs.append(g)
    return (lambda i: graphs[i % len(graphs)].replay()), outs


def _peak_bytes(name: str, fn: Callable, inputs: tuple) -> int | None:
    """The most device memory one call held at once beyond what was allocated before it (its
    workspace and its outputs, the gradients): ours through a hook on CuPy's pool, SDPA's from
    torch's allocator statistics; None where neither applies (stand-ins without a GPU)."""
    if name.startswith("sdpa"):
        try:
            import torch
        except ImportError:
            return None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*inputs)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    import cupy

    class Peak(cupy.cuda.MemoryHook):
        name = "flashcore_peak"

        def __init__(self):
            self.now = self.peak = 0

        def malloc_postprocess(self, **kw):   # CuPy passes device_id, size, mem_size, mem_ptr, pmem_id
            self.now += kw["mem_size"]
            self.peak = max(self.peak, self.now)

        def free_postprocess(self, **kw):
            self.now -= kw["mem_size"]

    hook = Peak()
    with hook:
        result = fn(*inputs)
    del result
    return hook.peak


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
        "schema": SCHEMA, "git_sha": sha,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": props["name"].decode(), "arch": api.device_info(dev).arch,
        "l2_bytes": props["l2CacheSize"],
        "versions": {"cupy": cupy.__version__, "cuda": cupy.cuda.runtime.runtimeGetVersion(),
                     "nvrtc": loader.nvrtc_version(),
                     "torch": None if torch is None else torch.__version__,
                     # what ran, even where git_sha cannot be trusted (a copied tree's .git)
                     "kernels": loader.source_hash()},
    }


def format_table(rows: list[Row]) -> str:
    """One line per (shape, dtype, impl, mode); `x fc` = this impl's time / flashcore's."""
    base = {(r.shape, r.dtype, r.mode): r.us_p50 for r in rows if r.impl == "flashcore"}
    lines = [f"{'shape':<30} {'dtype':<5} {'impl':<15} {'mode':<10} {'p50 us':>9} {'p90 us':>9} "
             f"{'TFLOP/s':>8} {'rel err':>8} {'row err':>8} {'n':>3} {'x fc':>6}"]
    for r in rows:
        ratio = r.us_p50 / base[(r.shape, r.dtype, r.mode)] if (r.shape, r.dtype, r.mode) in base else float("nan")
        lines.append(f"{r.shape:<30} {r.dtype:<5} {r.impl:<15} {r.mode:<10} {r.us_p50:>9.1f} "
                     f"{r.us_p90:>9.1f} {r.tflops:>8.1f} {r.rel_err:>8.1e} {r.row_err:>8.1e} "
                     f"{r.samples:>3} {ratio:>6.2f}")
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


def _case_inputs(shape: Shape, dtype: str, rng, arrays: dict) -> tuple[list[tuple], list[tuple], list | None]:
    """(input sets, their sampled float64 references, those of shape.plain() for a variant
    row, else None) for one case on the GPU; arrays: the row's variant arrays."""
    sets = workload.input_sets(shape, dtype, rng)
    rows = check_rows_per_set(len(sets))
    refs = [workload.sampled_reference(shape, *s, rng, rows, options=attention_options(shape, arrays))
            for s in sets]
    plain = None
    if shape.is_variant:
        plain = [workload.sampled_reference(shape, *s, rng, rows, options=attention_options(shape.plain(), {}))
                 for s in sets]
    return sets, refs, plain



def varlen_impls(shape: Shape, torch, arrays: dict | None = None, dtype: str = "fp16") -> dict[str, Impl]:
    """A varlen row's implementations on packed inputs (q, k, v, cu_seqlens): attention_varlen
    with the max_seqlen hints, and SDPA on jagged nested tensors (K and V expanded to Hq heads in
    `prepare`, once per input set), whose output is returned packed."""
    from .varlen import attention_varlen

    longest = max(shape.seqlens)
    none = contextlib.nullcontext
    fns = {"flashcore_varlen": Impl(lambda q, k, v, cu: attention_varlen(q, k, v, cu, cu, max_seqlen_q=longest,
                                                                        max_seqlen_k=longest, causal=shape.causal),
                                    lambda *x: x, none)}
    if torch is None:
        return fns
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = shape.heads_q // shape.heads_kv

    def nested(q, k, v, cu):
        offsets = torch.from_dlpack(cu).to(torch.int64)
        jagged = [torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2)
                  for x in (torch.from_dlpack(q), torch.from_dlpack(k).repeat_interleave(group, dim=1),
                            torch.from_dlpack(v).repeat_interleave(group, dim=1))]
        return tuple(jagged)

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=shape.causal).transpose(1, 2).values()

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    fns["torch_nested"] = Impl(sdpa, nested, functools.partial(sdpa_kernel, backends))
    return fns


def _varlen_case_inputs(shape: Shape, dtype: str, rng, arrays: dict) -> tuple[list[tuple], list[tuple], None]:
    """A varlen row's input sets (q, k, v packed, int32 cu_seqlens) and, per set, sampled packed
    rows with their float64 reference (each row against its own sequence's keys)."""
    import cupy

    from . import reference

    cu = np.concatenate([[0], np.cumsum(shape.seqlens)]).astype(np.int32)
    total, d, dt = int(cu[-1]), shape.head_dim, workload.np_dtype(dtype)
    set_bytes = 2 * d * total * (shape.heads_q + 2 * shape.heads_kv)
    sets, refs = [], []
    for _ in range(max(1, min(16, -(-workload.ROTATE_BYTES // set_bytes)))):
        q = cupy.asarray(rng.standard_normal((total, shape.heads_q, d), dtype=np.float32).astype(dt))
        k, v = (cupy.asarray(rng.standard_normal((total, shape.heads_kv, d), dtype=np.float32).astype(dt))
                for _ in range(2))
        sets.append((q, k, v, cupy.asarray(cu)))
    for q, k, v, _ in sets:
        picked = workload.check_rows(total, rng, check_rows_per_set(len(sets)))
        want = np.empty((len(picked), shape.heads_q, d))
        seq_of = np.searchsorted(cu, picked, side="right") - 1
        for b in np.unique(seq_of):
            at = np.nonzero(seq_of == b)[0]
            lo, hi = int(cu[b]), int(cu[b + 1])
            out = reference.attention(q[lo:hi][None], k[lo:hi][None], v[lo:hi][None], layout="bshd",
                                      causal=shape.causal, q_positions=picked[at] - lo)
            want[at] = out[0]
        refs.append((picked, want))
    return sets, refs, None


def _varlen_errors(out, ref) -> tuple[float, float]:
    from . import reference

    picked, want = ref
    got = _as_checkable(out)[picked.tolist()]
    return reference.rel_error(got, want), reference.row_rel_error(got, want)


VARLEN = Checker(_varlen_errors, workload.within_tolerance)

DIRECTIONS = ("forward", "backward", "fwd_bwd")


def direction_parts(direction: str) -> tuple[Callable, Callable, Checker]:
    """A direction's implementations' builder, case inputs and checker (looked up per call)."""
    backward = functools.partial(_gradient_impls, with_forward=False)
    fwd_bwd = functools.partial(_gradient_impls, with_forward=True)
    return {"forward": (_impls, _case_inputs, FORWARD),
            "backward": (backward, _backward_case_inputs, BACKWARD),
            "fwd_bwd": (fwd_bwd, _backward_case_inputs, FWD_BWD)}[direction]


def _free() -> None:
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()


def _write(path: str, result: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def main(shape_names: list[str] | None, dtypes: list[str], impls: list[str], iters: int,
         out_path: str | None, plot_path: str | None, direction: str = "forward") -> dict:
    """Run the cases (dtypes: "fp16", "bf16"); print the table; write the JSON (and plot).
    The result's "failures" lists every flashcore failure: the caller exits non-zero on any.
    direction "backward": dq, dk, dv from a saved forward, on the rows with Sq > 1; "fwd_bwd":
    the forward and the backward together, the same rows and checks (the gradients' reference
    takes our forward's out and LSE, which the forward direction checks)."""
    torch = _torch()
    rng = np.random.default_rng()
    backward = direction != "forward"
    build, inputs, checker = direction_parts(direction)
    shapes = []
    for s in bench_shapes():
        if shape_names is not None and s.name not in shape_names:
            continue
        if s.unsupported(backward):
            print(f"  skipped {s.name}: {s.unsupported(backward)}")
            continue
        shapes.append(s)
    result = environment(torch)
    result["direction"] = direction
    result["method"] = dict(latency_samples=iters, throughput_samples=max(3, iters * THROUGHPUT_SAMPLES // LATENCY_SAMPLES),
                            throughput_calls=THROUGHPUT_CALLS, slow_us=_LONG_US, slow_samples=_SLOW_SAMPLES,
                            clock_bound_us=_CLOCK_BOUND_US, rotate_bytes=workload.ROTATE_BYTES,
                            order="timing.balanced_orders (Williams design), cycled per round, each round "
                                  "after the same standard load; implementations over slow_us a call "
                                  "timed as a group of their own after the others")
    print(f"# {result['gpu']} ({result['arch']}), CuPy {result['versions']['cupy']}, "
          f"NVRTC {result['versions']['nvrtc']}, torch {result['versions']['torch']}")
    rows: list[Row] = []
    result.update(failures=[], unavailable=[], cases=[])
    for shape in shapes:
        for dtype in dtypes:
            arrays = variant_arrays(shape, dtype, rng)
            row_parts = (varlen_impls, _varlen_case_inputs, VARLEN) if shape.kind == "varlen" else (build, inputs, checker)
            fns = {name: impl for name, impl in row_parts[0](shape, torch, arrays, dtype).items() if name in impls}
            sets, refs, plain_refs = row_parts[1](shape, dtype, rng, arrays)
            case = run_case(shape, dtype, fns, sets, refs, iters, plain_refs, row_parts[2])
            if shape.kind in ("decode", "paged") and not backward:
                case.plan["copy_gbps"] = copy_gbps(sets)
            if torch is not None and shape.softcap:
                case.unavailable += [dict(shape=shape.name, dtype=dtype, impl=name, reason="SDPA has no softcap")
                                     for name in _SDPA_BACKENDS if name in impls]
            del sets, refs, plain_refs, arrays, fns
            _free()
            rows += case.rows
            result["failures"] += case.failures
            result["unavailable"] += case.unavailable
            result["cases"].append(dict(shape=shape.name, dtype=dtype, held_out=shape.held_out,
                                        variant=shape.is_variant, flops=row_parts[2].flops * shape.flops,
                                        **case.plan))
            for f in case.failures:
                print(f"  FAILED {f['shape']} {f['dtype']} {f['impl']}: {f['reason']}", flush=True)
            print(f"  done {shape.name} {dtype}", flush=True)
            if out_path:   # after every case, so that a run stopped midway keeps what it measured
                _write(out_path, {**result, "rows": [r.__dict__ for r in rows], "complete": False})
    print(format_table(rows))
    result["rows"] = [r.__dict__ for r in rows]
    result["complete"] = True
    if out_path:
        _write(out_path, result)
    if plot_path:
        plot(rows, plot_path)
    return result
