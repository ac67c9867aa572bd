"""Inputs and checks shared by `run`, the benchmark and the tuner."""

from __future__ import annotations

import numpy as np

from .shapes import Shape

TOLERANCE = {"fp16": 2e-3, "bf16": 1e-2}   # relative L2 error against float64
CHECK_ROWS = 512                  # query rows compared with the float64 reference
_ROTATE_BYTES = 256 << 20         # rotate input sets until they exceed any L2 several times
_MAX_SETS = 8
_NAIVE_MAX_SCORE_BYTES = 4 << 30  # the unfused baseline materialises B*H*Sq*Sk fp32 scores


def np_dtype(dtype: str):
    import ml_dtypes
    return np.float16 if dtype == "fp16" else ml_dtypes.bfloat16


def random_inputs(shape: Shape, dtype: str, rng: np.random.Generator, layout: str = "bhsd"):
    """q, k, v on the GPU, normal with std 1, drawn fresh for each call."""
    import cupy

    from .validation import bhsd_to_layout

    def draw(heads: int, seqlen: int):
        dims = bhsd_to_layout((shape.batch, heads, seqlen, shape.head_dim), layout)
        return cupy.asarray(rng.standard_normal(dims, dtype=np.float32).astype(np_dtype(dtype)))

    return (draw(shape.heads_q, shape.seqlen_q), draw(shape.heads_kv, shape.seqlen_k),
            draw(shape.heads_kv, shape.seqlen_k))


def input_sets(shape: Shape, dtype: str, rng: np.random.Generator, first=None) -> list[tuple]:
    """Enough input sets (starting with `first`, if given) that timing them in turn does not
    measure the L2 cache."""
    first = first or random_inputs(shape, dtype, rng)
    set_bytes = 4 * sum(x.nbytes for x in first)   # q, k, v and the output, with room
    extra = min(_MAX_SETS - 1, _ROTATE_BYTES // set_bytes)
    return [first] + [random_inputs(shape, dtype, rng) for _ in range(extra)]


def naive_fits(shape: Shape) -> bool:
    return 4 * shape.batch * shape.heads_q * shape.seqlen_q * shape.seqlen_k <= _NAIVE_MAX_SCORE_BYTES


def check_rows(seqlen_q: int, rng: np.random.Generator, n: int = CHECK_ROWS) -> np.ndarray:
    """Query rows to verify: all of them for short sequences, else a sample with both ends."""
    if seqlen_q <= n:
        return np.arange(seqlen_q)
    inner = rng.choice(np.arange(1, seqlen_q - 1), n - 2, replace=False)
    return np.sort(np.concatenate([[0, seqlen_q - 1], inner]))


def verify(shape: Shape, q, k, v, out, rng: np.random.Generator, rows: int = CHECK_ROWS) -> float:
    """Relative L2 error of `out` (bhsd) against the float64 reference on sampled rows."""
    from . import reference

    picked = check_rows(shape.seqlen_q, rng, rows)
    ref = reference.attention(q, k, v, causal=shape.causal, q_positions=picked)
    return reference.rel_error(out[:, :, picked.tolist()], ref)
