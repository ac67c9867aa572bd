"""Inputs and checks shared by `run`, the benchmark and the tuner."""

from __future__ import annotations

import numpy as np

from .shapes import Shape

TOLERANCE = {"fp16": 2e-3, "bf16": 1e-2}   # relative L2 error against float64, whole output
# The worst row's relative error (reference.row_rel_error): one query's output rounds to the
# dtype like the whole (2^-11 and 2^-8 per element), but a row of few elements spreads wider;
# a wrong row is off by O(1).
ROW_TOLERANCE = {dtype: 5 * tol for dtype, tol in TOLERANCE.items()}
CHECK_ROWS = 512                  # query rows compared with the float64 reference
ROTATE_BYTES = 256 << 20          # input sets in turn hold at least this much: 4x a 60 MB L2
_MAX_SETS = 1024
_NAIVE_MAX_SCORE_BYTES = 4 << 30  # the unfused baseline materialises B*H*Sq*Sk fp32 scores


GRAD_TOLERANCE = {"fp16": 5e-3, "bf16": 2e-2}   # gradients: relative L2 error, each of dq, dk, dv
# The worst row's error against the typical row's norm (reference.grad_row_error).
GRAD_ROW_TOLERANCE = {dtype: 5 * tol for dtype, tol in GRAD_TOLERANCE.items()}


def within_tolerance(dtype: str, err: float, row_err: float) -> bool:
    """Both bounds hold (NaN compares false, so it never passes)."""
    return err <= TOLERANCE[dtype] and row_err <= ROW_TOLERANCE[dtype]


def within_grad_tolerance(dtype: str, err: float, row_err: float) -> bool:
    """The gradients' bounds (the worst of dq, dk, dv; NaN never passes)."""
    return err <= GRAD_TOLERANCE[dtype] and row_err <= GRAD_ROW_TOLERANCE[dtype]


def np_dtype(dtype: str):
    import ml_dtypes
    return np.float16 if dtype == "fp16" else ml_dtypes.bfloat16


def random_inputs(shape: Shape, dtype: str, rng: np.random.Generator, layout: str = "bhsd"):
    """q, k, v on the GPU, normal with std 1, drawn fresh for each call."""
    import cupy

    from .validation import bhsd_to_layout

    def draw(heads: int, seqlen: int, head_dim: int):
        dims = bhsd_to_layout((shape.batch, heads, seqlen, head_dim), layout)
        return cupy.asarray(rng.standard_normal(dims, dtype=np.float32).astype(np_dtype(dtype)))

    return (draw(shape.heads_q, shape.seqlen_q, shape.head_dim), draw(shape.heads_kv, shape.seqlen_k, shape.head_dim),
            draw(shape.heads_kv, shape.seqlen_k, shape.head_dim_v or shape.head_dim))


def set_count(shape: Shape, dtype: str, rotate_bytes: int = ROTATE_BYTES) -> int:
    """Input sets whose q, k and v together hold at least `rotate_bytes`, so that timing them
    in turn (one call per set) finds none of a call's inputs left in L2 by the calls before."""
    item = 2   # fp16 and bf16
    dv = shape.head_dim_v or shape.head_dim
    set_bytes = item * shape.batch * (shape.head_dim * (shape.heads_q * shape.seqlen_q + shape.heads_kv * shape.seqlen_k)
                                      + dv * shape.heads_kv * shape.seqlen_k)
    return max(1, min(_MAX_SETS, -(-rotate_bytes // set_bytes)))


def input_sets(shape: Shape, dtype: str, rng: np.random.Generator, first=None,
               rotate_bytes: int = ROTATE_BYTES) -> list[tuple]:
    """set_count input sets (starting with `first`, if given): timed in turn, they measure
    calls whose inputs come from device memory, not from the L2 cache."""
    first = first or random_inputs(shape, dtype, rng)
    return [first] + [random_inputs(shape, dtype, rng)
                      for _ in range(set_count(shape, dtype, rotate_bytes) - 1)]


def naive_fits(shape: Shape) -> bool:
    return 4 * shape.batch * shape.heads_q * shape.seqlen_q * shape.seqlen_k <= _NAIVE_MAX_SCORE_BYTES


def check_rows(seqlen_q: int, rng: np.random.Generator, n: int = CHECK_ROWS) -> np.ndarray:
    """Query rows to verify: all of them for short sequences, else a sample with both ends."""
    if seqlen_q <= n:
        return np.arange(seqlen_q)
    inner = rng.choice(np.arange(1, seqlen_q - 1), n - 2, replace=False)
    return np.sort(np.concatenate([[0, seqlen_q - 1], inner]))


def sampled_reference(shape: Shape, q, k, v, rng: np.random.Generator,
                      rows: int = CHECK_ROWS, options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(query rows picked by check_rows, the float64 reference of those rows). options:
    attention's keyword arguments (the mask, softcap, the variant arrays), by default the
    shape's causal mask alone."""
    from . import reference

    picked = check_rows(shape.seqlen_q, rng, rows)
    options = dict(causal=shape.causal_arg) if options is None else options
    return picked, reference.attention(q, k, v, q_positions=picked, **options)


def errors(out, picked: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(relative L2 error, worst row's) of `out` (bhsd) on the rows `picked`, against `ref`."""
    from . import reference

    got = out[:, :, picked.tolist()]
    return reference.rel_error(got, ref), reference.row_rel_error(got, ref)


def verify(shape: Shape, q, k, v, out, rng: np.random.Generator,
           rows: int = CHECK_ROWS, options: dict | None = None) -> tuple[float, float]:
    """(relative L2 error, worst row's) of `out` (bhsd) against the float64 reference on
    sampled rows (options: as sampled_reference's)."""
    return errors(out, *sampled_reference(shape, q, k, v, rng, rows, options))
