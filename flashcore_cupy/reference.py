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


def visible_pairs(seqlen_q: int, seqlen_k: int, causal=False, window: tuple[int, int] | None = None) -> int:
    """The number of visible (query, key) pairs of one head: `visible`'s count, from each row's
    key interval without building the mask (what the benchmark's FLOPs count)."""
    mode = causal_mode(causal)
    off = 0 if mode == "top_left" else seqlen_k - seqlen_q
    left, right = (-1, -1) if window is None else window
    if mode is not None:
        right = 0
    diag = np.arange(seqlen_q, dtype=np.int64) + off
    lo = np.maximum(diag - left, 0) if left >= 0 else np.zeros_like(diag)
    hi = np.minimum(diag + right, seqlen_k - 1) if right >= 0 else np.full_like(diag, seqlen_k - 1)
    return int(np.maximum(hi - lo + 1, 0).sum())


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
    v may have its own head dim Dv (q and k share D): out's last dimension is Dv;
    a row that sees no key (or whose every visible score is -inf, a bias mask) gives 0 and LSE
    -inf. q_positions: optional indices of the query rows
    to compute (the masks, ALiBi and bias use their positions in the full sequence); the output
    then holds only those rows, in that order.
    """
    pb = _Scores(q, k, v, causal, scale, window, softcap, alibi_slopes, bias, layout, q_positions)
    out = np.zeros((pb.batch, pb.heads_q, len(pb.rows), pb.v.shape[-1]))
    lse = np.full((pb.batch, pb.heads_q, len(pb.rows)), -np.inf)
    for b in range(pb.batch):
        for h in range(pb.heads_q):   # one head at a time bounds the memory to Sq x Sk
            _, s = pb.head(b, h)
            m = s.max(axis=1, initial=-np.inf)   # -inf for a row of no keys (Sk = 0 too)
            seen = m > -np.inf          # the row sees a key (a bias of -inf hides one too)
            m = np.where(seen, m, 0.0)
            p = np.exp(s - m[:, None])
            l = np.where(seen, p.sum(axis=1), 1.0)
            out[b, h] = np.where(seen[:, None], (p @ pb.v[b, h // pb.group]) / l[:, None], 0.0)
            lse[b, h] = np.where(seen, m + np.log(l), -np.inf)
    if layout == "bshd":
        out = out.transpose(0, 2, 1, 3)
    return (out, lse) if return_lse else out


class _Scores:
    """A problem's inputs in float64 (bhsd) and its scores head by head, in the order
    `attention` states: what the forward and backward references share."""

    def __init__(self, q, k, v, causal, scale, window, softcap, alibi_slopes, bias, layout, q_positions=None,
                 k_positions=None):
        q, k, v = _to_f64(q), _to_f64(k), _to_f64(v)
        if layout == "bshd":
            q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        elif layout != "bhsd":
            raise ValueError(f"layout must be 'bhsd' or 'bshd', got {layout!r}")
        if not (isinstance(softcap, (int, float)) and math.isfinite(softcap) and softcap >= 0):
            raise ValueError(f"softcap must be a finite number >= 0, got {softcap!r}")
        self.batch, self.heads_q, self.seqlen_q, head_dim = q.shape
        self.heads_kv, self.seqlen_k = k.shape[1], k.shape[2]
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.rows = np.arange(self.seqlen_q) if q_positions is None else np.asarray(q_positions)
        self.cols = np.arange(self.seqlen_k) if k_positions is None else np.asarray(k_positions)
        self.q, self.k, self.v = q[:, :, self.rows], k, v
        self.group = self.heads_q // self.heads_kv
        self.softcap = softcap
        off = 0 if causal_mode(causal) == "top_left" else self.seqlen_k - self.seqlen_q
        self.keep = visible(self.rows, self.seqlen_q, self.seqlen_k, causal, window)[:, self.cols]
        self.slopes = None
        if alibi_slopes is not None:
            self.slopes = np.broadcast_to(_to_f64(alibi_slopes), (self.batch, self.heads_q))
            self.distance = np.abs(self.rows[:, None] + off - self.cols[None, :])
        self.bias = None if bias is None else np.broadcast_to(
            _to_f64(bias), (self.batch, self.heads_q, self.seqlen_q, self.seqlen_k))

    def head(self, b: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """(raw = scale * q k^T, the masked scores) of query head h of batch b: its rows x keys."""
        raw = self.scale * (self.q[b, h] @ self.k[b, h // self.group][self.cols].T)
        s = self.softcap * np.tanh(raw / self.softcap) if self.softcap > 0 else raw
        if self.slopes is not None:
            s = s - self.slopes[b, h] * self.distance
        if self.bias is not None:
            s = s + self.bias[b, h][np.ix_(self.rows, self.cols)]
        return raw, np.where(self.keep, s, -np.inf)

    def grads(self, b: int, h: int, dout: np.ndarray, out: np.ndarray, lse: np.ndarray):
        """Query head h of batch b's share of the gradients (attention_backward's formulas) from
        the scores of this object's rows x keys: (dq of its rows, dk and dv of its keys, dS).
        dq is whole where the object has every key; dk and dv where it has every row (the
        head's share: a kv head sums them over its group)."""
        hk = h // self.group
        raw, s = self.head(b, h)
        lse_rows = lse[b, h][self.rows]
        seen = np.isfinite(lse_rows)
        p = np.where(seen[:, None], np.exp(s - np.where(seen, lse_rows, 0.0)[:, None]), 0.0)
        d_out = dout[b, h][self.rows]
        delta = (d_out * out[b, h][self.rows]).sum(axis=1)
        ds = p * (d_out @ self.v[b, hk][self.cols].T - delta[:, None])
        d_raw = ds * (1.0 - np.tanh(raw / self.softcap) ** 2) if self.softcap > 0 else ds
        return (self.scale * d_raw @ self.k[b, hk][self.cols], self.scale * d_raw.T @ self.q[b, h],
                p.T @ d_out, ds)


def attention_backward(dout, q, k, v, out, lse, *, causal=False, scale: float | None = None,
                       window: tuple[int, int] | None = None, softcap: float = 0.0, alibi_slopes=None,
                       bias=None, layout: str = "bhsd", return_dbias: bool = False):
    """Gradients of `attention` in float64: (dq, dk, dv), and dbias with return_dbias.

    out and lse are what attention(..., return_lse=True) returned for the same inputs and
    options. With the scores s of `attention` (masked entries -inf), per query row:
        P = exp(s - lse)  (0 where the row sees no key),  delta = rowsum(dout * out)
        dV = P^T dout,   dP = dout V^T,   dS = P * (dP - delta)
    then back through the score's order: dbias = dS (summed over the bias's broadcast
    dimensions: those it lacks, those of size 1 and those of stride 0; returned in the bias's
    shape, a summed value repeated along a stride-0 dimension), ALiBi takes no gradient, softcap multiplies by
    1 - tanh^2(raw / softcap), and dq = scale * dRaw K, dk = scale * dRaw^T q. dk and dv of a
    kv head sum over its GQA group. Shapes, dtypes (float64) and layout follow q, k, v."""
    pb = _Scores(q, k, v, causal, scale, window, softcap, alibi_slopes, bias, layout)
    dout, out, lse = _bhsd_pair(dout, out, lse, layout)
    dq, dk, dv = np.zeros_like(pb.q), np.zeros_like(pb.k), np.zeros_like(pb.v)
    ds_all = np.zeros((pb.batch, pb.heads_q, pb.seqlen_q, pb.seqlen_k)) if return_dbias else None
    for b in range(pb.batch):
        for h in range(pb.heads_q):
            hk = h // pb.group
            dq[b, h], dk_h, dv_h, ds = pb.grads(b, h, dout, out, lse)
            dk[b, hk] += dk_h
            dv[b, hk] += dv_h
            if ds_all is not None:
                ds_all[b, h] = ds
    if layout == "bshd":
        dq, dk, dv = (x.transpose(0, 2, 1, 3) for x in (dq, dk, dv))
    if not return_dbias:
        return dq, dk, dv
    if bias is None:
        raise ValueError("return_dbias=True needs a bias")
    shape = np.shape(bias)
    lead = ds_all.ndim - len(shape)   # dimensions the bias gained by broadcasting
    dbias = ds_all.sum(axis=tuple(range(lead)))
    # size-1 dimensions, and dimensions of stride 0 (one value seen many times), sum
    strides = getattr(bias, "strides", None) or (1,) * len(shape)
    summed = tuple(i for i, (n, st) in enumerate(zip(shape, strides)) if n == 1 or st == 0)
    return dq, dk, dv, np.broadcast_to(dbias.sum(axis=summed, keepdims=True), shape).copy()


def _bhsd_pair(dout, out, lse, layout: str):
    dout, out, lse = _to_f64(dout), _to_f64(out), _to_f64(lse)
    if layout == "bshd":
        dout, out = dout.transpose(0, 2, 1, 3), out.transpose(0, 2, 1, 3)
    return dout, out, lse


def attention_backward_sampled(dout, q, k, v, out, lse, q_positions, k_positions, *, causal=False,
                               scale: float | None = None, window: tuple[int, int] | None = None,
                               softcap: float = 0.0, alibi_slopes=None, bias=None, layout: str = "bhsd"):
    """attention_backward's dq on the query rows q_positions and dk, dv on the keys k_positions,
    from those rows' scores against every key and every row's against those keys: (dq, dk, dv)
    in float64, (B, H, rows or keys, D) whatever the layout. What a check of a backward too
    large for the whole reference computes (the same formulas, see _Scores.grads)."""
    opts = (causal, scale, window, softcap, alibi_slopes, bias, layout)
    by_rows = _Scores(q, k, v, *opts, q_positions=q_positions)
    by_keys = _Scores(q, k, v, *opts, k_positions=k_positions)
    dout, out, lse = _bhsd_pair(dout, out, lse, layout)
    dq = np.zeros((by_rows.batch, by_rows.heads_q, len(by_rows.rows), by_rows.q.shape[-1]))
    dk = np.zeros((by_keys.batch, by_keys.heads_kv, len(by_keys.cols), by_keys.k.shape[-1]))
    dv = np.zeros((by_keys.batch, by_keys.heads_kv, len(by_keys.cols), by_keys.v.shape[-1]))
    for b in range(by_rows.batch):
        for h in range(by_rows.heads_q):
            dq[b, h] = by_rows.grads(b, h, dout, out, lse)[0]
            _, dk_h, dv_h, _ = by_keys.grads(b, h, dout, out, lse)
            dk[b, h // by_keys.group] += dk_h
            dv[b, h // by_keys.group] += dv_h
    return dq, dk, dv


def rel_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 over the whole tensor; NaN or inf anywhere in `out`
    gives inf (never passes)."""
    out, ref = _to_f64(out), _to_f64(ref)
    if not np.all(np.isfinite(out)):
        return math.inf
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(out - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def _row_diffs(out, ref):
    """(||out_row - ref_row||, ||ref_row||) over the last axis; None where out holds NaN or inf."""
    out, ref = _to_f64(out), _to_f64(ref)
    if not np.all(np.isfinite(out)):
        return None
    return np.linalg.norm(out - ref, axis=-1), np.linalg.norm(ref, axis=-1)


def row_rel_error(out, ref) -> float:
    """The worst row's ||out_row - ref_row|| / ||ref_row||, a row being the last axis (one
    query's output); a row whose reference is zero (it sees no key) counts its absolute error.
    NaN or inf anywhere in `out` gives inf. One wrong row among many hides in rel_error (one of
    8,194 adds ~1.1e-2 to it) but not here."""
    rows = _row_diffs(out, ref)
    if rows is None:
        return math.inf
    diff, norm = rows
    return float(np.max(diff / np.where(norm > 0, norm, 1.0), initial=0.0))


def grad_row_error(out, ref) -> float:
    """row_rel_error for a gradient: the worst row's ||out_row - ref_row|| over the larger of
    ||ref_row|| and the rows' root-mean-square norm. A gradient's rows spread widely in norm
    (under a causal mask the last keys are seen by a few queries: their dk and dv rows are small
    sums with cancellation, where SDPA's flash and cuDNN backward err by 0.08-0.13 of the row on
    fp16), and their error scales with the typical row's; a wrong row is still off by O(1) of
    it. NaN or inf anywhere in `out` gives inf."""
    rows = _row_diffs(out, ref)
    if rows is None:
        return math.inf
    diff, norm = rows
    typical = math.sqrt(float(np.mean(norm ** 2))) if norm.size else 0.0
    return float(np.max(diff / np.maximum(norm, typical if typical > 0 else 1.0), initial=0.0))


# --- inference ops: the specs of merge_states, attention_varlen and attention_kvcache -------


def merge_states(*args):
    """Merge partial attention results over disjoint key sets by their natural-log LSE.

    merge_states(out_a, lse_a, out_b, lse_b), or merge_states(outs, lses) with a leading split
    axis. Each out has shape (..., Dv) and its lse shape (...) (attention's bhsd out with its
    (B, H, S) lse; a bshd out's lse must be transposed to match). In float64:
        lse = log(sum_i exp(lse_i)),   out = sum_i exp(lse_i - lse) * out_i
    where every lse_i is -inf (no split saw a key): out 0 and lse -inf. A partial whose weight
    is 0 (its lse -inf) adds nothing, whatever its outputs hold. Partials may be fp32.
    Returns (out, lse)."""
    if len(args) == 4:
        for out, lse in (args[:2], args[2:]):
            if np.shape(lse) != np.shape(out)[:-1] or np.shape(out) != np.shape(args[0]):
                raise ValueError(f"lse shape {np.shape(lse)} must be the outputs' shape without its last "
                                 f"dimension, {np.shape(args[0])[:-1]}, and the outputs of one shape")
        outs, lses = np.stack([_to_f64(args[0]), _to_f64(args[2])]), np.stack([_to_f64(args[1]), _to_f64(args[3])])
    elif len(args) == 2:
        outs, lses = _to_f64(args[0]), _to_f64(args[1])
    else:
        raise TypeError("merge_states takes (out_a, lse_a, out_b, lse_b) or (outs, lses)")
    if lses.shape != outs.shape[:-1]:
        raise ValueError(f"lse shape {lses.shape} must be the outputs' shape without its last "
                         f"dimension, {outs.shape[:-1]}")
    m = lses.max(axis=0)
    seen = m > -np.inf
    m = np.where(seen, m, 0.0)
    w = np.exp(lses - m)                      # 0 for -inf partials
    total = w.sum(axis=0)
    safe = np.where(seen, total, 1.0)
    terms = w[..., None] * np.where(w[..., None] > 0, outs, 0.0)   # a weight-0 partial's outputs unread
    out = np.where(seen[..., None], terms.sum(axis=0) / safe[..., None], 0.0)
    return out, np.where(seen, m + np.log(safe), -np.inf)


def _offsets(cu_seqlens, name: str) -> np.ndarray:
    cu = np.asarray(cu_seqlens.get() if hasattr(cu_seqlens, "get") else cu_seqlens).astype(np.int64)
    if cu.ndim != 1 or len(cu) < 1 or cu[0] != 0 or np.any(np.diff(cu) < 0):
        raise ValueError(f"{name} must be a 1-D non-decreasing prefix sum starting at 0, got {cu}")
    return cu


def _per_sequence(opts: dict, b: int) -> dict:
    """The options of sequence b: ALiBi slopes of shape (B, Hq) take their row b."""
    slopes = opts.get("alibi_slopes")
    if slopes is not None and np.ndim(slopes) == 2:
        opts = {**opts, "alibi_slopes": _to_f64(slopes)[b]}
    return opts


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                     causal=False, scale=None, window=None, softcap: float = 0.0, alibi_slopes=None,
                     return_lse: bool = False):
    """Attention over packed sequences (flash_attn's varlen layout) in float64.

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D / Dv); cu_seqlens_q, cu_seqlens_k: length B + 1
    prefix sums from 0. Sequence b's queries are q[cu_q[b]:cu_q[b+1]] and its keys
    k[cu_k[b]:cu_k[b+1]]; each is `attention` of its own (masks aligned bottom-right within the
    sequence, ALiBi slopes (Hq,) or (B, Hq), row b for sequence b). Sequences of length 0 are
    allowed; a query of a sequence with no keys gives 0 and LSE -inf. max_seqlen_*: grid hints
    of the kernels, unused here. Returns out (total_q, Hq, Dv), and with return_lse the LSE of
    shape (Hq, total_q)."""
    q, k, v = _to_f64(q), _to_f64(k), _to_f64(v)
    cu_q, cu_k = _offsets(cu_seqlens_q, "cu_seqlens_q"), _offsets(cu_seqlens_k, "cu_seqlens_k")
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got {len(cu_q)} "
                         f"and {len(cu_k)}")
    if cu_q[-1] > q.shape[0] or cu_k[-1] > k.shape[0]:
        raise ValueError("cu_seqlens run past the packed tensors")
    opts = dict(causal=causal, scale=scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]),
                window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    out = np.zeros((q.shape[0], q.shape[1], v.shape[-1]))
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    for b in range(len(cu_q) - 1):
        (q0, q1), (k0, k1) = cu_q[b:b + 2], cu_k[b:b + 2]
        if q1 == q0:
            continue
        o, l = attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], layout="bshd", return_lse=True,
                         **_per_sequence(opts, b))
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return (out, lse) if return_lse else out


def _cache_rows(cache: np.ndarray, block_table, b: int, n: int) -> np.ndarray:
    """Indices into cache's first two axes of sequence b's first n positions: (page, slot) of a
    paged cache, (b, position) of a dense one."""
    t = np.arange(n)
    if block_table is None:
        return np.full(n, b), t
    page_size = cache.shape[1]
    return np.asarray(block_table)[b, t // page_size], t % page_size


def attention_kvcache(q, k_cache, v_cache, *, cache_seqlens, block_table=None, k_new=None, v_new=None,
                      causal=False, scale=None, window=None, softcap: float = 0.0, alibi_slopes=None,
                      num_splits: int = 0, return_lse: bool = False):
    """Attention of new queries over a KV cache, in float64; appends k_new, v_new to the cache.

    q: (B, Sq, Hq, D). The cache is dense, (B, S_max, Hkv, D), or paged, (num_pages, page_size,
    Hkv, D) with block_table (B, max_pages) of page indices: sequence b's position t lives in page
    block_table[b][t // page_size] at slot t % page_size. cache_seqlens (B,): the positions
    already in the cache. k_new, v_new (B, Sn, Hkv, D): written in place (into the NumPy caches
    given, as the kernels write the device caches) at positions cache_seqlens[b] .. + Sn - 1,
    before attending; cache_seqlens itself is not changed. Query i of sequence b then attends to
    the cache_seqlens[b] + Sn keys of its sequence, the causal mask and window aligned
    bottom-right (`attention`'s semantics, off = Sk - Sq). num_splits: how the kernels split the
    keys; the result does not depend on it. Returns out (B, Sq, Hq, Dv), and with return_lse the
    LSE (B, Hq, Sq)."""
    q = _to_f64(q)
    seqlens = np.asarray(cache_seqlens.get() if hasattr(cache_seqlens, "get") else cache_seqlens).astype(np.int64)
    if seqlens.shape != (q.shape[0],):
        raise ValueError(f"cache_seqlens must have shape ({q.shape[0]},), got {seqlens.shape}")
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new go together")
    n_new = 0 if k_new is None else k_new.shape[1]
    for b in range(q.shape[0]):   # the append
        if n_new:
            rows = _cache_rows(k_cache, block_table, b, seqlens[b] + n_new)
            at = (rows[0][seqlens[b]:], rows[1][seqlens[b]:])
            k_cache[at] = np.asarray(k_new[b]).astype(k_cache.dtype)
            v_cache[at] = np.asarray(v_new[b]).astype(v_cache.dtype)
    opts = dict(causal=causal, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    out = np.zeros((q.shape[0], q.shape[1], q.shape[2], v_cache.shape[-1]))
    lse = np.full((q.shape[0], q.shape[2], q.shape[1]), -np.inf)
    for b in range(q.shape[0]):
        rows = _cache_rows(k_cache, block_table, b, seqlens[b] + n_new)
        k, v = _to_f64(k_cache[rows])[None], _to_f64(v_cache[rows])[None]
        o, l = attention(q[b:b + 1], k, v, layout="bshd", return_lse=True, **_per_sequence(opts, b))
        out[b], lse[b] = o[0], l[0]
    return (out, lse) if return_lse else out
