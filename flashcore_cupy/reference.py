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


CAUSAL = (False, True, "bottom_right", "top_left")


def causal_mode(causal) -> str | None:
    """None (no causal mask), "bottom_right" (True: flash_attn's) or "top_left" (SDPA's
    is_causal); a ValueError for anything else."""
    if causal is False or causal is None:
        return None
    if causal is True or causal == "bottom_right":
        return "bottom_right"
    if causal == "top_left":
        return "top_left"
    raise ValueError(f"causal must be False, True, 'bottom_right' or 'top_left', got {causal!r}")


def visible(rows: np.ndarray, seqlen_q: int, seqlen_k: int, causal=False,
            window: tuple[int, int] | None = None) -> np.ndarray:
    """(len(rows), Sk) bool: key j visible to query i. With off = Sk - Sq (0 under
    causal="top_left"): a window (left, right) keeps i + off - left <= j <= i + off + right, -1
    leaving that side unbounded; a causal mask is the window's right = 0 (the tighter of the
    two where both are given)."""
    mode = causal_mode(causal)
    off = 0 if mode == "top_left" else seqlen_k - seqlen_q
    left, right = (-1, -1) if window is None else window
    if mode is not None:
        right = 0
    diag = rows[:, None] + off                      # key aligned with query i
    j = np.arange(seqlen_k)[None, :]
    keep = np.ones((len(rows), seqlen_k), dtype=bool)
    if left >= 0:
        keep &= j >= diag - left
    if right >= 0:
        keep &= j <= diag + right
    return keep


def attention(q, k, v, *, causal=False, scale: float | None = None,
              window: tuple[int, int] | None = None, softcap: float = 0.0, alibi_slopes=None,
              bias=None, layout: str = "bhsd", return_lse: bool = False, q_positions=None):
    """softmax(scores) v in float64, the spec the kernels are held to.

    For query i and key j (bhsd; GQA: query head h reads kv head h // (Hq / Hkv)), in order:
      raw    = scale * q_i . k_j                       (scale defaults to 1/sqrt(D))
      capped = softcap * tanh(raw / softcap)           (softcap > 0; else raw)
      s      = capped - slope[b, h] * |i + off - j|    (alibi_slopes of shape (Hq,) or (B, Hq))
                      + bias[b, h, i, j]               (bias broadcastable to (B, Hq, Sq, Sk))
      masked = s where key j is visible (see `visible`), else -inf
    with off = Sk - Sq, or 0 under causal="top_left". causal: False; True or "bottom_right"
    (key j visible iff j <= i + Sk - Sq, flash_attn's); "top_left" (j <= i, SDPA's is_causal).
    window=(left, right), flash_attn's: visible iff i + off - left <= j <= i + off + right, -1
    unbounded on that side; (-1, -1) is no window; a causal mask sets right = 0.
    Then out_i = sum_j softmax_j(masked) v_j and lse_i = log sum_j exp(masked_j) (natural log);
    a row that sees no key (or whose every visible score is -inf, a bias mask) gives 0 and LSE
    -inf. q_positions: optional indices of the query rows
    to compute (the masks, ALiBi and bias use their positions in the full sequence); the output
    then holds only those rows, in that order.
    """
    q, k, v = _to_f64(q), _to_f64(k), _to_f64(v)
    if layout == "bshd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    elif layout != "bhsd":
        raise ValueError(f"layout must be 'bhsd' or 'bshd', got {layout!r}")
    if not (isinstance(softcap, (int, float)) and math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0, got {softcap!r}")
    batch, heads_q, seqlen_q, head_dim = q.shape
    heads_kv, seqlen_k = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    rows = np.arange(seqlen_q) if q_positions is None else np.asarray(q_positions)
    q = q[:, :, rows]
    group = heads_q // heads_kv
    off = 0 if causal_mode(causal) == "top_left" else seqlen_k - seqlen_q

    keep = visible(rows, seqlen_q, seqlen_k, causal, window)
    slopes = None
    if alibi_slopes is not None:
        slopes = np.broadcast_to(_to_f64(alibi_slopes), (batch, heads_q))
        distance = np.abs(rows[:, None] + off - np.arange(seqlen_k)[None, :])
    if bias is not None:
        bias = np.broadcast_to(_to_f64(bias), (batch, heads_q, seqlen_q, seqlen_k))

    out = np.zeros((batch, heads_q, len(rows), v.shape[-1]))
    lse = np.full((batch, heads_q, len(rows)), -np.inf)
    for b in range(batch):
        for h in range(heads_q):   # one head at a time bounds the memory to Sq x Sk
            s = scale * (q[b, h] @ k[b, h // group].T)
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            if slopes is not None:
                s = s - slopes[b, h] * distance
            if bias is not None:
                s = s + bias[b, h][rows]
            s = np.where(keep, s, -np.inf)
            m = s.max(axis=1)
            seen = m > -np.inf          # the row sees a key (a bias of -inf hides one too)
            m = np.where(seen, m, 0.0)
            p = np.exp(s - m[:, None])
            l = np.where(seen, p.sum(axis=1), 1.0)
            out[b, h] = np.where(seen[:, None], (p @ v[b, h // group]) / l[:, None], 0.0)
            lse[b, h] = np.where(seen, m + np.log(l), -np.inf)
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
