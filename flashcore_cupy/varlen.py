"""attention_varlen: attention over packed sequences of different lengths (flash_attn's varlen
layout), on the portable forward kernel with the Varlen sequence policy (kernels/sequence.cuh).

The spec is `flashcore_cupy.reference.attention_varlen`. One launch on CuPy's current stream;
with max_seqlen_q and max_seqlen_k given and `out=` passed, no host sync and no allocation but
the LSE's, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import api, metadata
from .api import _as_device_array, _spec
from .configs import choose_sm80_config, fold_heads_batch, seq_config
from .launch import Sm80SeqLaunch, problem_scalars, sequence_scalars, variant_scalars
from .params import stride_values
from .validation import Problem, TensorSpec, check_no_overlap, check_out, check_varlen


def attention_varlen(q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, *,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, causal: bool = False,
                     scale: float | None = None, window: tuple[int, int] | None = None, softcap: float = 0.0,
                     alibi_slopes: Any = None, return_lse: bool = False, out: Any = None):
    """Attention over B packed sequences: sequence b's queries are q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]
    and its keys k[cu_seqlens_k[b]:cu_seqlens_k[b+1]] (v alike).

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D), Hq a multiple of Hkv; float16 or bfloat16, a
    contiguous last dimension and 16-byte aligned rows. cu_seqlens_q, cu_seqlens_k: int32 CUDA
    arrays of length B + 1, prefix sums from 0. causal (bool) and window=(left, right) align
    bottom-right within each sequence; softcap and alibi_slopes ((Hq,) or (B, Hq) float32) as in
    `attention`. A sequence may be empty; a query whose sequence has no keys gets 0 (LSE -inf).
    max_seqlen_q, max_seqlen_k: the longest sequences, the grid's size; when omitted they are
    read from the device, which synchronises with it. A sequence longer than max_seqlen_q has
    its rows past it left unwritten, as are rows past cu_seqlens_q[-1]; offsets that decrease or
    run past the arrays are clamped into them (FLASHCORE_CUPY_CHECK_METADATA=1 checks them on the
    host first: that syncs too).
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
    import cupy

    with cupy.cuda.Device(problem.device):
        if metadata.checking():
            metadata.check_offsets(cu_q, "cu_seqlens_q", total_q, max_seqlen_q)
            metadata.check_offsets(cu_k, "cu_seqlens_k", k.shape[0], max_seqlen_k)
        if max_seqlen_q is None:
            max_seqlen_q = metadata.longest(cu_q)
        out = cupy.empty(q.shape, q.dtype) if out is None else out
        lse = cupy.empty((heads_q, total_q), np.float32) if return_lse else None
        if total_q and max_seqlen_q:   # no keys at all (total_k 0): the kernel reads none
            launch = _launch(problem, int(max_seqlen_q), (out.strides[1] // out.itemsize, out.strides[0] // out.itemsize))
            launch.start(dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr,
                              lse=0 if lse is None else lse.data.ptr, alibi=0 if slopes is None else slopes.data.ptr,
                              cu_seqlens_q=cu_q.data.ptr, cu_seqlens_k=cu_k.data.ptr),
                         cupy.cuda.get_current_stream().ptr)
    return (out, lse) if return_lse else out


_launches: dict[tuple, Sm80SeqLaunch] = {}


def _launch(problem: Problem, max_seqlen_q: int, o_strides: tuple[int, int]) -> Sm80SeqLaunch:
    """The prepared launch of a varlen problem (kept per problem, grid and output strides)."""
    key = (problem, max_seqlen_q, o_strides)
    launch = _launches.get(key)
    if launch is not None:
        return launch
    dev = api.device_info(problem.device)
    base = choose_sm80_config(dev.arch, problem.dtype, problem.head_dim, problem.batch * problem.heads_q,
                              max_seqlen_q, dev.num_sms)
    config = seq_config(base, "varlen", problem.kernel_variant)
    p = problem
    strides = {"q": p.q_strides, "k": p.k_strides, "v": p.v_strides, "o": (0, *o_strides),
               "lse": (0, p.seqlen_q, 1)}
    scalars = {name: st for t, ts in strides.items() for name, st in stride_values(t, ts).items()}
    scalars.update(problem_scalars(p), **variant_scalars(p), **sequence_scalars())
    grid = fold_heads_batch(math.ceil(max_seqlen_q / config.block_m), p.heads_q, p.batch)
    launch = Sm80SeqLaunch.build(config, p.device, dev.arch, grid, scalars)
    if len(_launches) > 1024:
        _launches.clear()
    _launches[key] = launch
    return launch
