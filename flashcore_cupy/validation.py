"""Input checking at the API boundary, done once per call, before any launch.

`check_problem` is a pure function of `TensorSpec`s (shape, strides, dtype,
device, address), so every rule is testable without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .configs import MAX_HEAD_DIM, PLAIN, KernelVariant

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


CAUSAL = (False, True, "bottom_right", "top_left")


@dataclass(frozen=True)
class Variant:
    """An attention call's options beyond the dense forward, validated, as one frozen value
    (the spec is reference.attention). causal: None, "bottom_right" or "top_left"; window: the
    (left, right) sides as given, -1 unbounded; softcap: 0 for none; alibi: the slopes'
    (batch, head) strides in elements (batch 0 for shape (Hq,)), or None; bias: (dtype,
    (batch, head, row) strides in elements, 0 where it broadcasts), dtype "16bit" (q's) or
    "fp32", or None. The arrays' addresses are not part of it: they are read per call."""

    causal: str | None = None
    window: tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: tuple[int, int] | None = None
    bias: tuple[str, tuple[int, int, int]] | None = None

    def mask(self, seqlen_q: int, seqlen_k: int) -> tuple[int, int, int]:
        """(off, left, right): key j visible to query i iff j < Sk and i + off - left <= j <=
        i + off + right (-1: unbounded), the causal mask folded in as right = 0."""
        off = 0 if self.causal == "top_left" else seqlen_k - seqlen_q
        left, right = self.window
        return off, left, 0 if self.causal else right

    def kernel(self, seqlen_q: int, seqlen_k: int) -> KernelVariant:
        """The compile-time variant a kernel needs for this call: plain when the mask is the
        plain kernels' (none, or bottom-right causal) and no score option is on."""
        off, left, right = self.mask(seqlen_q, seqlen_k)
        scores = self.softcap > 0 or self.alibi is not None or self.bias is not None
        plain_mask = left == -1 and (right == -1 or (right == 0 and off == seqlen_k - seqlen_q))
        if plain_mask and not scores:
            return PLAIN
        return KernelVariant(window=True, softcap=self.softcap > 0, alibi=self.alibi is not None,
                             bias="none" if self.bias is None else self.bias[0])

    def keys_seen(self, seqlen_q: int, seqlen_k: int) -> int:
        """How many leading keys some query sees: Sk, or fewer where the mask bounds the last
        row's keys before Sk (top-left causal, or a right-bounded top-left window, with Sq < Sk):
        the kernels read no further."""
        off, _, right = self.mask(seqlen_q, seqlen_k)
        if right < 0 or seqlen_q == 0:
            return seqlen_k
        return max(0, min(seqlen_k, seqlen_q + off + right))

    def plain_causal(self, seqlen_q: int, seqlen_k: int) -> bool:
        """The plain kernels' causal flag (bottom-right) for this call."""
        off, left, right = self.mask(seqlen_q, seqlen_k)
        return right == 0 and left == -1 and off == seqlen_k - seqlen_q


PLAIN_VARIANT = Variant()


@dataclass(frozen=True)
class Problem:
    """A validated attention call, in (batch, head, seq) terms for either layout. causal is
    the plain kernels' bottom-right causal flag; every other option is in `variant`.
    seqlen_k counts the keys the kernels read: k's length, or its first Variant.keys_seen
    where no query sees past them (so top-left causal with Sq < Sk runs the plain causal
    kernel over the first Sq keys)."""

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
    variant: Variant = PLAIN_VARIANT

    @property
    def kernel_variant(self) -> KernelVariant:
        return self.variant.kernel(self.seqlen_q, self.seqlen_k)

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
    if not isinstance(causal, (bool, np.bool_, str)):
        raise TypeError(f"causal must be a bool, 'bottom_right' or 'top_left', got {type(causal).__name__}")
    if isinstance(causal, str) and causal not in CAUSAL:
        raise ValueError(f"causal must be False, True, 'bottom_right' or 'top_left', got {causal!r}")
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


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_window(window: object) -> tuple[int, int]:
    if window is None:
        return (-1, -1)
    if not (isinstance(window, (tuple, list)) and len(window) == 2 and all(_is_int(w) for w in window)):
        raise TypeError(f"window must be a pair of ints (left, right), got {window!r}")
    if any(w < -1 for w in window):
        raise ValueError(f"window sides must be >= -1 (-1: unbounded), got {tuple(window)}")
    return int(window[0]), int(window[1])


def check_softcap(softcap: object) -> float:
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, (int, float, np.floating, np.integer)):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    if not (math.isfinite(float(softcap)) and softcap >= 0):
        raise ValueError(f"softcap must be a finite number >= 0 (0: none), got {softcap}")
    return float(softcap)


def check_alibi(slopes: TensorSpec, batch: int, heads_q: int, device: int) -> tuple[int, int]:
    """The slopes' (batch, head) strides: float32 on q's device, shape (Hq,) or (B, Hq)."""
    if slopes.device is None:
        raise ValueError("alibi_slopes is in host memory; expected a float32 CUDA array on q's device")
    if slopes.device != device:
        raise ValueError(f"alibi_slopes is on device {slopes.device}, q on device {device}")
    if slopes.dtype != np.float32:
        raise TypeError(f"alibi_slopes has dtype {slopes.dtype}; expected float32")
    if slopes.shape == (heads_q,):
        return 0, slopes.strides[0]
    if slopes.shape == (batch, heads_q):
        return slopes.strides[0] if batch > 1 else 0, slopes.strides[1]
    raise ValueError(f"alibi_slopes has shape {slopes.shape}; expected ({heads_q},) or ({batch}, {heads_q})")


def check_bias(bias: TensorSpec, q_dtype: np.dtype, batch: int, heads_q: int, seqlen_q: int,
               seqlen_k: int, device: int) -> tuple[str, tuple[int, int, int]]:
    """(dtype kind, (batch, head, row) strides with 0 where it broadcasts) of an additive bias
    broadcastable to (B, Hq, Sq, Sk): q's dtype or float32, on q's device, its last two
    dimensions full, the last contiguous."""
    if bias.device is None:
        raise ValueError("bias is in host memory; expected a CUDA array on q's device")
    if bias.device != device:
        raise ValueError(f"bias is on device {bias.device}, q on device {device}")
    if bias.dtype not in (q_dtype, np.dtype(np.float32)):
        raise TypeError(f"bias has dtype {bias.dtype}; expected {q_dtype} (q's dtype) or float32")
    full = (batch, heads_q, seqlen_q, seqlen_k)
    if not 2 <= len(bias.shape) <= 4:
        raise ValueError(f"bias has shape {bias.shape}; expected one broadcastable to {full}")
    shape = (1,) * (4 - len(bias.shape)) + tuple(bias.shape)
    strides = (0,) * (4 - len(bias.strides)) + tuple(bias.strides)
    if shape[2:] != full[2:] or any(n not in (1, f) for n, f in zip(shape[:2], full[:2])):
        raise ValueError(f"bias has shape {bias.shape}; expected one broadcastable to {full} "
                         f"(batch and heads 1 or full, the last two (Sq, Sk) = {full[2:]})")
    if seqlen_k > 1 and strides[3] != 1:
        raise ValueError(f"bias must have a contiguous last dimension (stride 1), got strides "
                         f"{bias.strides} (elements)")
    kind = "fp32" if bias.dtype == np.float32 else "16bit"
    return kind, tuple(s if n > 1 else 0 for s, n in zip(strides[:3], shape[:3]))


def check_problem(q: TensorSpec, k: TensorSpec, v: TensorSpec, *, causal: bool | str,
                  scale: float | None, layout: str, window: object = None, softcap: object = 0.0,
                  alibi_slopes: TensorSpec | None = None, bias: TensorSpec | None = None) -> Problem:
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
    mode = ("top_left" if causal == "top_left" else "bottom_right") if isinstance(causal, str) or causal else None
    variant = Variant(
        causal=mode, window=check_window(window), softcap=check_softcap(softcap),
        alibi=None if alibi_slopes is None else check_alibi(alibi_slopes, bq, hq, q.device),
        bias=None if bias is None else check_bias(bias, q.dtype, bq, hq, sq, sk, q.device))
    sk = variant.keys_seen(sq, sk)
    return Problem(
        batch=bq, heads_q=hq, heads_kv=hk, seqlen_q=sq, seqlen_k=sk, head_dim=dq,
        dtype=DTYPE_NAMES[q.dtype], causal=variant.plain_causal(sq, sk),
        scale=1.0 / math.sqrt(dq) if scale is None else float(scale), layout=layout,
        device=q.device, q_strides=layout_strides(q, layout), k_strides=layout_strides(k, layout),
        v_strides=layout_strides(v, layout), variant=variant)


def check_out(out: TensorSpec, problem: Problem, shape: tuple[int, ...] | None = None,
              like: str = "q") -> None:
    """An array the call writes or reads beside q (out, and the backward's dout, out and
    gradients): on q's device, in q's dtype, of q's shape (or `shape`, `like`'s), the layout's
    stride rules."""
    expected_dtype = next(d for d, n in DTYPE_NAMES.items() if n == problem.dtype)
    shape = problem.out_shape if shape is None else shape
    if out.device is None:
        raise ValueError(f"{out.name} is in host memory; expected a CUDA array on q's device")
    if out.device != problem.device:
        raise ValueError(f"{out.name} is on device {out.device}, q on device {problem.device}")
    if out.dtype != expected_dtype:
        raise TypeError(f"{out.name} has dtype {out.dtype}; expected {expected_dtype} (q's dtype)")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{out.name} has shape {tuple(out.shape)}; expected {tuple(shape)} "
                         f"({like}'s shape, layout {problem.layout!r})")
    _check_tensor(out, problem.layout)


def check_lse(lse: TensorSpec, problem: Problem) -> None:
    """The forward's LSE handed to the backward: float32 (B, Hq, Sq), contiguous, on q's device."""
    expected = (problem.batch, problem.heads_q, problem.seqlen_q)
    if lse.device is None:
        raise ValueError("lse is in host memory; expected the CUDA array attention(..., return_lse=True) gave")
    if lse.device != problem.device:
        raise ValueError(f"lse is on device {lse.device}, q on device {problem.device}")
    if lse.dtype != np.float32:
        raise TypeError(f"lse has dtype {lse.dtype}; expected float32 (attention's LSE)")
    if tuple(lse.shape) != expected:
        raise ValueError(f"lse has shape {tuple(lse.shape)}; expected {expected} (batch, q's heads, Sq)")
    if tuple(lse.strides) != (expected[1] * expected[2], expected[2], 1):
        raise ValueError(f"lse must be contiguous, got strides {lse.strides} (elements); "
                         f"use cupy.ascontiguousarray")
