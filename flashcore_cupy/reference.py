"""Float64 NumPy attention with the same semantics as `flashcore_cupy.attention`.

For tests and for users checking results. Accepts NumPy (incl. ml_dtypes
bfloat16) and CuPy arrays; always computes and returns NumPy float64.
"""

from __future__ import annotations

import math

import numpy as np


def _to_f64(x) -> np.ndarray:
    if hasattr(x, "get") and not isinstance(x, np.ndarray):   # cupy.ndarray
        x = x.get()
    return np.asarray(x).astype(np.float64)


def attention(q, k, v, *, causal: bool = False, scale: float | None = None, layout: str = "bhsd",
              return_lse: bool = False, q_positions=None):
    """softmax(scale * q k^T + mask) v in float64.

    q_positions: optional indices of the query rows to compute (the causal mask
    still uses their positions in the full sequence); the output then holds only
    those rows, in that order. Rows that see no key give 0 and LSE -inf.
    """
    q, k, v = _to_f64(q), _to_f64(k), _to_f64(v)
    if layout == "bshd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    elif layout != "bhsd":
        raise ValueError(f"layout must be 'bhsd' or 'bshd', got {layout!r}")
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    rows = np.arange(seqlen_q) if q_positions is None else np.asarray(q_positions)
    q = q[:, :, rows]
    group = heads_q // heads_kv

    visible = np.ones((len(rows), seqlen_k), dtype=bool)
    if causal:   # bottom-right aligned, as flash_attn
        visible = np.arange(seqlen_k)[None, :] <= rows[:, None] + (seqlen_k - seqlen_q)
    any_visible = visible.any(axis=1)

    out = np.zeros((batch, heads_q, len(rows), head_dim))
    lse = np.full((batch, heads_q, len(rows)), -np.inf)
    for b in range(batch):
        for h in range(heads_q):   # one head at a time bounds the memory to Sq x Sk
            s = scale * (q[b, h] @ k[b, h // group].T)
            s = np.where(visible, s, -np.inf)
            m = np.where(any_visible, s.max(axis=1), 0.0)
            p = np.exp(s - m[:, None])
            l = p.sum(axis=1)
            safe_l = np.where(any_visible, l, 1.0)
            out[b, h] = np.where(any_visible[:, None], (p @ v[b, h // group]) / safe_l[:, None], 0.0)
            lse[b, h] = np.where(any_visible, m + np.log(safe_l), -np.inf)
    if layout == "bshd":
        out = out.transpose(0, 2, 1, 3)
    return (out, lse) if return_lse else out


def rel_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 over the whole tensor; NaN or inf anywhere in `out`
    gives inf (never passes)."""
    out, ref = _to_f64(out), _to_f64(ref)
    if not np.all(np.isfinite(out)):
        return math.inf
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(out - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def row_rel_error(out, ref) -> float:
    """The worst row's ||out_row - ref_row|| / ||ref_row||, a row being the last axis (one
    query's output); a row whose reference is zero (it sees no key) counts its absolute error.
    NaN or inf anywhere in `out` gives inf. One wrong row among many hides in rel_error (one of
    8,194 adds ~1.1e-2 to it) but not here."""
    out, ref = _to_f64(out), _to_f64(ref)
    if not np.all(np.isfinite(out)):
        return math.inf
    if out.size == 0:
        return 0.0
    diff = np.linalg.norm(out - ref, axis=-1)
    norm = np.linalg.norm(ref, axis=-1)
    return float(np.max(diff / np.where(norm > 0, norm, 1.0)))
