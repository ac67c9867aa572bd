"""Input checking at the API boundary, done once per call, before any launch.

`check_problem` is a pure function of `TensorSpec`s (shape, strides, dtype,
device, address), so every rule is testable without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .configs import MAX_HEAD_DIM

LAYOUTS = ("bhsd", "bshd")
DTYPE_NAMES = {np.dtype(np.float16): "fp16", np.dtype(ml_dtypes.bfloat16): "bf16"}
MIN_CAPABILITY = (8, 0)
_ALIGN_BYTES = 16   # cp.async moves 16-byte chunks
_MAX_GRID_YZ = 65535   # heads and batch are the grid's y and z


@dataclass(frozen=True)
class TensorSpec:
    """What validation needs to know of an array. device None = host memory."""

    name: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]      # in elements
    dtype: np.dtype
    device: int | None
    ptr: int


@dataclass(frozen=True)
class Problem:
    """A validated attention call, in (batch, head, seq) terms for either layout."""

    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str            # "fp16" | "bf16"
    causal: bool
    scale: float
    layout: str
    device: int
    q_strides: tuple[int, int, int]   # (batch, head, seq) strides in elements
    k_strides: tuple[int, int, int]
    v_strides: tuple[int, int, int]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return bhsd_to_layout((self.batch, self.heads_q, self.seqlen_q, self.head_dim), self.layout)


def bhsd_to_layout(dims: tuple[int, int, int, int], layout: str) -> tuple[int, int, int, int]:
    b, h, s, d = dims
    return (b, h, s, d) if layout == "bhsd" else (b, s, h, d)


def _bhsd(values: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """(B, H, S, D) view of a shape or stride tuple given in `layout` order."""
    b, x, y, d = values
    return (b, x, y, d) if layout == "bhsd" else (b, y, x, d)


def layout_strides(spec: TensorSpec, layout: str) -> tuple[int, int, int]:
    b, h, s, _ = _bhsd(spec.strides, layout)
    return (b, h, s)


def check_options(causal: object, scale: object, layout: object, return_lse: object) -> None:
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
            raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale must be finite, got {scale}")


def check_capability(capability: tuple[int, int], device: int) -> None:
    if capability < MIN_CAPABILITY:
        raise ValueError(
            f"device {device} has compute capability {capability[0]}.{capability[1]}; "
            f"flashcore_cupy needs sm_80 or newer (Ampere, Ada, Hopper)")


def _check_tensor(t: TensorSpec, layout: str) -> None:
    if t.device is None:
        raise ValueError(f"{t.name} is in host memory; expected a CUDA array "
                         f"(cupy.ndarray or a GPU array with __dlpack__)")
    if t.dtype not in DTYPE_NAMES:
        raise TypeError(f"{t.name} has dtype {t.dtype}; expected float16 or bfloat16")
    if len(t.shape) != 4:
        raise ValueError(f"{t.name} must be 4-D ({_layout_doc(layout)}), got shape {t.shape}")
    if any(n == 0 for n in t.shape):
        raise ValueError(f"{t.name} has an empty dimension: shape {t.shape}")
    if t.shape[3] % 8 or t.shape[3] > MAX_HEAD_DIM:
        raise ValueError(f"{t.name} has head_dim {t.shape[3]}; expected a multiple of 8 "
                         f"between 8 and {MAX_HEAD_DIM}")
    if t.strides[3] != 1:
        raise ValueError(f"{t.name} must have a contiguous last dimension (stride 1), "
                         f"got strides {t.strides} (elements); use cupy.ascontiguousarray")
    itemsize = t.dtype.itemsize
    # A size-1 dimension is never stepped over: its stride is not used (views often carry 0
    # or odd ones there), as CuPy's and NumPy's contiguity flags ignore it.
    if t.ptr % _ALIGN_BYTES or any((s * itemsize) % _ALIGN_BYTES
                                   for s, n in zip(t.strides[:3], t.shape[:3]) if n > 1):
        raise ValueError(f"{t.name} must be 16-byte aligned with strides that are multiples of "
                         f"{_ALIGN_BYTES // itemsize} elements, got strides {t.strides} (elements) "
                         f"at address 0x{t.ptr:x}; use cupy.ascontiguousarray")


def _layout_doc(layout: str) -> str:
    return "(batch, heads, seqlen, head_dim)" if layout == "bhsd" else "(batch, seqlen, heads, head_dim)"


def check_problem(q: TensorSpec, k: TensorSpec, v: TensorSpec, *, causal: bool,
                  scale: float | None, layout: str) -> Problem:
    """Validate q, k, v (any failure raises before a launch) and describe the problem."""
    for t in (q, k, v):
        _check_tensor(t, layout)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got devices "
                         f"{q.device}, {k.device}, {v.device}")
    bq, hq, sq, dq = _bhsd(q.shape, layout)
    bk, hk, sk, dk = _bhsd(k.shape, layout)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if bk != bq:
        raise ValueError(f"k has batch {bk} but q has batch {bq} (layout {layout!r})")
    if dk != dq:
        raise ValueError(f"k has head_dim {dk} but q has head_dim {dq}")
    if hq % hk:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k/v's heads ({hk}) "
                         f"for grouped-query attention (layout {layout!r})")
    if bq > _MAX_GRID_YZ or hq > _MAX_GRID_YZ:
        raise ValueError(f"batch ({bq}) and q's heads ({hq}) must each be at most {_MAX_GRID_YZ}")
    return Problem(
        batch=bq, heads_q=hq, heads_kv=hk, seqlen_q=sq, seqlen_k=sk, head_dim=dq,
        dtype=DTYPE_NAMES[q.dtype], causal=bool(causal),
        scale=1.0 / math.sqrt(dq) if scale is None else float(scale), layout=layout,
        device=q.device, q_strides=layout_strides(q, layout), k_strides=layout_strides(k, layout),
        v_strides=layout_strides(v, layout))


def check_out(out: TensorSpec, problem: Problem) -> None:
    expected_dtype = next(d for d, n in DTYPE_NAMES.items() if n == problem.dtype)
    if out.device is None:
        raise ValueError("out is in host memory; expected a CUDA array on q's device")
    if out.device != problem.device:
        raise ValueError(f"out is on device {out.device}, q on device {problem.device}")
    if out.dtype != expected_dtype:
        raise TypeError(f"out has dtype {out.dtype}; expected {expected_dtype} (q's dtype)")
    if tuple(out.shape) != problem.out_shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {problem.out_shape} "
                         f"(q's shape, layout {problem.layout!r})")
    _check_tensor(out, problem.layout)
