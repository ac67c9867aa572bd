"""Unfused CuPy attention (matmul, softmax, matmul): the baseline a user writes by hand."""

from __future__ import annotations

import math


def attention(q, k, v, *, causal: bool = False, scale: float | None = None, layout: str = "bhsd"):
    import cupy

    dtype = q.dtype
    if layout == "bshd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    seqlen_q, seqlen_k, head_dim = q.shape[2], k.shape[2], q.shape[3]
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = cupy.repeat(k, group, axis=1), cupy.repeat(v, group, axis=1)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if q.dtype != cupy.float16:   # cuBLAS through CuPy has no bf16 matmul: compute in fp32
        q, k, v = (x.astype(cupy.float32) for x in (q, k, v))
    s = cupy.matmul(q, k.transpose(0, 1, 3, 2)).astype(cupy.float32) * scale
    if causal:
        rows = cupy.arange(seqlen_q)[:, None]
        s = cupy.where(cupy.arange(seqlen_k)[None, :] <= rows + (seqlen_k - seqlen_q), s, -cupy.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = cupy.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = cupy.matmul(p.astype(q.dtype), v).astype(dtype)
    return out.transpose(0, 2, 1, 3) if layout == "bshd" else out
