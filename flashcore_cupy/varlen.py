"""attention_varlen: attention over packed sequences of different lengths (flash_attn's varlen
layout), with the Varlen sequence policy (kernels/sequence.cuh) on the Hopper kernel (a call
with keys on an sm_90 GPU: sm90_varlen_blocker) or the portable one.

The spec is `flashcore_cupy.reference.attention_varlen`. One launch on CuPy's current stream;
with `out=` passed (and on the portable kernel max_seqlen_q given), no host sync and no
allocation but the LSE's, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from . import api, metadata, tma
from .api import _as_device_array, _spec
from .configs import (SM90_ARCH, SM90_HEAD_DIMS, Sm90FwdConfig, choose_sm80_config, fold_heads_batch, seq_config,
                      sm90_varlen_config)
from .launch import (Sm80SeqLaunch, Sm90SeqLaunch, StreamCounters, problem_scalars, sequence_scalars, sm90_map_specs,
                     sm90_scalars, variant_scalars)
from .params import stride_values
from .validation import Problem, TensorSpec, check_capability, check_no_overlap, check_out, check_varlen


def attention_varlen(q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, *,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, causal: bool = False,
                     scale: float | None = None, window: tuple[int, int] | None = None, softcap: float = 0.0,
                     alibi_slopes: Any = None, return_lse: bool = False, out: Any = None, backend: str = "auto"):
    """Attention over B packed sequences: sequence b's queries are q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]
    and its keys k[cu_seqlens_k[b]:cu_seqlens_k[b+1]] (v alike).

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D), Hq a multiple of Hkv; float16 or bfloat16, a
    contiguous last dimension and 16-byte aligned rows. cu_seqlens_q, cu_seqlens_k: int32 CUDA
    arrays of length B + 1, prefix sums from 0. causal (bool) and window=(left, right) align
    bottom-right within each sequence; softcap and alibi_slopes ((Hq,) or (B, Hq) float32) as in
    `attention`. A sequence may be empty; a query whose sequence has no keys gets 0 (LSE -inf).
    max_seqlen_q, max_seqlen_k: the longest sequences, the portable kernel's grid size; when it
    runs and they are omitted they are read from the device, which synchronises with it (the
    Hopper kernel's grid needs neither). On the portable kernel a sequence longer than
    max_seqlen_q has its rows past it left unwritten; on either, rows past cu_seqlens_q[-1];
    offsets that decrease or run past the arrays are clamped into them
    (FLASHCORE_CUPY_CHECK_METADATA=1 checks them on the host first: that syncs too).
    backend: "auto" (the Hopper kernel on H100/H200, else the portable one), "sm80" (the
    portable kernel) or "sm90" (the Hopper kernel; a ValueError where it cannot run the call).
    Returns out (total_q, Hq, D) in q's dtype (out=: a buffer of that shape), and with
    return_lse the float32 LSE of shape (Hq, total_q)."""
    q, k, v = (_as_device_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    cu_q, cu_k = _as_device_array(cu_seqlens_q, "cu_seqlens_q"), _as_device_array(cu_seqlens_k, "cu_seqlens_k")
    slopes = None if alibi_slopes is None else _as_device_array(alibi_slopes, "alibi_slopes")
    problem, batch = check_varlen(_spec(q, "q"), _spec(k, "k"), _spec(v, "v"), _spec(cu_q, "cu_seqlens_q"),
                                  _spec(cu_k, "cu_seqlens_k"), causal=causal, scale=scale, window=window,
                                  softcap=softcap, alibi_slopes=None if slopes is None else _spec(slopes, "alibi_slopes"))
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    total_q, heads_q, head_dim = q.shape
    if out is not None:
        out = _as_device_array(out, "out")
        o = _spec(out, "out")
        if len(o.shape) != 3:
            raise ValueError(f"out has shape {o.shape}; expected {q.shape} (q's)")
        check_out(TensorSpec("out", (1, *o.shape), (0, *o.strides), o.dtype, o.device, o.ptr), problem,
                  (1, total_q, heads_q, head_dim))
        check_no_overlap([o], [_spec(q, "q"), _spec(k, "k"), _spec(v, "v"), _spec(cu_q, "cu_seqlens_q"),
                               _spec(cu_k, "cu_seqlens_k"), None if slopes is None else _spec(slopes, "alibi_slopes")])
    for name, hint in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if hint is not None and (isinstance(hint, bool) or not isinstance(hint, (int, np.integer)) or hint < 0):
            raise ValueError(f"{name} must be an int >= 0 or None, got {hint!r}")
    if backend not in api.BACKENDS:
        raise ValueError(f"backend must be one of {api.BACKENDS}, got {backend!r}")
    import cupy

    with cupy.cuda.Device(problem.device):
        hopper = _hopper_config(problem, backend)
        if metadata.checking():
            metadata.check_offsets(cu_q, "cu_seqlens_q", total_q, max_seqlen_q)
            metadata.check_offsets(cu_k, "cu_seqlens_k", k.shape[0], max_seqlen_k)
        if max_seqlen_q is None and hopper is None:
            max_seqlen_q = metadata.longest(cu_q)
        out = cupy.empty(q.shape, q.dtype) if out is None else out
        lse = cupy.empty((heads_q, total_q), np.float32) if return_lse else None
        if total_q and (hopper is not None or max_seqlen_q):   # no keys at all (total_k 0): the kernel reads none
            o_strides = (out.strides[1] // out.itemsize, out.strides[0] // out.itemsize)
            launch = _launch(problem, hopper, 0 if hopper is not None else int(max_seqlen_q), o_strides)
            launch.start(dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr,
                              lse=0 if lse is None else lse.data.ptr, alibi=0 if slopes is None else slopes.data.ptr,
                              cu_seqlens_q=cu_q.data.ptr, cu_seqlens_k=cu_k.data.ptr),
                         cupy.cuda.get_current_stream().ptr)
    return (out, lse) if return_lse else out


def sm90_varlen_blocker(p: Problem, arch: str) -> str | None:
    """Why the Hopper kernel cannot run the varlen problem `p` (in check_varlen's terms), or None:
    sm_90 only, a built head width, keys to map, and maps the driver takes."""
    if arch != SM90_ARCH:
        return f"it needs an sm_90 GPU (H100/H200); this device compiles for {arch}"
    if p.head_dim > SM90_HEAD_DIMS[-1]:
        return f"head_dim {p.head_dim} is over {SM90_HEAD_DIMS[-1]}"
    if p.seqlen_k == 0:
        return "k has no rows"
    config = sm90_varlen_config(p.dtype, p.head_dim, p.kernel_variant)
    for name, spec in zip("qkv", sm90_map_specs(dataclasses.replace(p, batch=1), config)):
        reason = tma.unsupported_reason(spec)
        if reason:
            return f"{name} has a {reason}"
    return None


@functools.lru_cache(maxsize=1024)
def _hopper_config(problem: Problem, backend: str) -> Sm90FwdConfig | None:
    """The Hopper kernel's config for a varlen problem, or None where the portable kernel runs it
    (backend "sm90": a ValueError naming why not); asked of the device once per problem."""
    dev = api.device_info(problem.device)
    check_capability(dev.capability, problem.device)
    if backend == "sm80":
        return None
    blocker = sm90_varlen_blocker(problem, dev.arch)
    if backend == "sm90" and blocker:
        raise ValueError(f"backend='sm90' cannot run this call: {blocker}; use backend='auto'")
    return None if blocker else sm90_varlen_config(problem.dtype, problem.head_dim, problem.kernel_variant)


_launches: dict[tuple, Sm80SeqLaunch | Sm90VarlenLaunch] = {}


def _launch(problem: Problem, hopper: Sm90FwdConfig | None, max_seqlen_q: int,
            o_strides: tuple[int, int]) -> Sm80SeqLaunch | Sm90VarlenLaunch:
    """The prepared launch of a varlen problem (kept per problem, kernel, grid and output strides)."""
    key = (problem, hopper, max_seqlen_q, o_strides)
    launch = _launches.get(key)
    if launch is not None:
        return launch
    dev = api.device_info(problem.device)
    if hopper is not None:
        launch = _sm90_launch(problem, hopper, o_strides, dev.arch, dev.num_sms)
    else:
        launch = _sm80_launch(problem, max_seqlen_q, o_strides, dev)
    if len(_launches) > 1024:
        _launches.clear()
    _launches[key] = launch
    return launch


@dataclasses.dataclass(frozen=True, eq=False)
class Sm90VarlenLaunch:
    """The Hopper kernel over packed sequences: a persistent grid (a CTA an SM) dealt the work
    items dynamically from a counter pair per stream; at most ceil(total_q / block_m) + B row
    blocks a head (each sequence's last one may be partial), the CTAs stopping at the first past
    the sequences'. The maps span q, k and v as one batch entry; the LSE is (Hq, total_q)."""
    inner: Sm90SeqLaunch
    counters: StreamCounters

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.inner.grid

    def start(self, pointers: dict[str, int], stream: int) -> None:
        self.inner.start(dict(pointers, tile_counter=self.counters.get(stream).data.ptr), stream)


def _sm90_launch(p: Problem, config: Sm90FwdConfig, o_strides: tuple[int, int], arch: str, num_sms: int,
                 defines: tuple[str, ...] = ()) -> Sm90VarlenLaunch:
    """defines: a diagnostic build's (the GPU tests' FLASHCORE_RECORD_WORK)."""
    items = (math.ceil(p.seqlen_q / config.block_m) + p.batch) * p.heads_q
    # (a variant's causal mask is its window's right side: variant_scalars folds it)
    scalars = sm90_scalars(p, (0, *o_strides), p.causal and config.variant.plain, p.heads_q, p.heads_q // p.heads_kv,
                           1, 1, items, items, 1)
    inner = Sm90SeqLaunch.build_seq(config, p.device, arch, (min(items, num_sms), 1, 1), scalars,
                                    sm90_map_specs(dataclasses.replace(p, batch=1), config), defines)
    return Sm90VarlenLaunch(inner, StreamCounters(2))


def _sm80_launch(problem: Problem, max_seqlen_q: int, o_strides: tuple[int, int], dev) -> Sm80SeqLaunch:
    base = choose_sm80_config(dev.arch, problem.dtype, problem.head_dim, problem.batch * problem.heads_q,
                              max_seqlen_q, dev.num_sms)
    config = seq_config(base, "varlen", problem.kernel_variant)
    p = problem
    strides = {"q": p.q_strides, "k": p.k_strides, "v": p.v_strides, "o": (0, *o_strides),
               "lse": (0, p.seqlen_q, 1)}
    scalars = {name: st for t, ts in strides.items() for name, st in stride_values(t, ts).items()}
    scalars.update(problem_scalars(p), **variant_scalars(p), **sequence_scalars())
    grid = fold_heads_batch(math.ceil(max_seqlen_q / config.block_m), p.heads_q, p.batch)
    return Sm80SeqLaunch.build(config, p.device, dev.arch, grid, scalars)
