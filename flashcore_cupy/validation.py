"""Input checking at the API boundary, done once per call, before any launch.

`check_problem` is a pure function of `TensorSpec`s (shape, strides, dtype,
device, address), so every rule is testable without a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .configs import MAX_HEAD_DIM, PLAIN, KernelVariant

LAYOUTS = ("bhsd", "bshd")
DTYPE_NAMES = {np.dtype(np.float16): "fp16", np.dtype(ml_dtypes.bfloat16): "bf16"}
MIN_CAPABILITY = (8, 0)
_ALIGN_BYTES = 16   # cp.async moves 16-byte chunks
# The kernels number a call's query rows (batch x heads x queries: the output's and the LSE's
# rows, and the work tiles among them) and its (head, batch) pairs, folded over a grid's y and z
# past 65535 (kernels/grid.cuh), in 32 bits.
MAX_ROWS = 2 ** 31 - 1 - 65535


def check_rows(batch: int, heads_q: int, seqlen_q: int) -> None:
    """Any batch and head count, up to MAX_ROWS query rows in all."""
    rows = batch * heads_q * max(seqlen_q, 1)
    if rows > MAX_ROWS:
        raise ValueError(f"batch ({batch}) x q's heads ({heads_q}) x queries ({seqlen_q}) is {rows} rows; "
                         f"expected at most {MAX_ROWS}")


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
    head_dim_v: int | None = None   # v's (and the output's) head dim where it differs from q's and k's

    @property
    def dv(self) -> int:
        return self.head_dim_v or self.head_dim

    @property
    def kernel_variant(self) -> KernelVariant:
        return self.variant.kernel(self.seqlen_q, self.seqlen_k)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return bhsd_to_layout((self.batch, self.heads_q, self.seqlen_q, self.dv), self.layout)


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
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must have the same shape but for v's head_dim (Dv may differ from D), "
                         f"got {k.shape} and {v.shape}")
    if bk != bq:
        raise ValueError(f"k has batch {bk} but q has batch {bq} (layout {layout!r})")
    if dk != dq:
        raise ValueError(f"k has head_dim {dk} but q has head_dim {dq}")
    if hq % hk:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k/v's heads ({hk}) "
                         f"for grouped-query attention (layout {layout!r})")
    check_rows(bq, hq, sq)
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
        v_strides=layout_strides(v, layout), variant=variant, head_dim_v=None if v.shape[3] == dq else v.shape[3])


def check_value_dim(problem: Problem, op: str) -> None:
    """Ops that take v of q's head dim only (attention alone takes Dv != D)."""
    if problem.head_dim_v is not None:
        raise ValueError(f"v has head_dim {problem.head_dim_v} but q has head_dim {problem.head_dim}; "
                         f"{op} takes v of q's head dim (attention takes Dv != D)")


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


def byte_span(t: TensorSpec) -> tuple[int, int]:
    """The bytes [lo, hi) an array's elements lie in (its strides may be negative or zero); an
    empty array's is empty."""
    if any(n == 0 for n in t.shape):
        return t.ptr, t.ptr
    low = sum((n - 1) * s for n, s in zip(t.shape, t.strides) if s < 0)
    high = sum((n - 1) * s for n, s in zip(t.shape, t.strides) if s > 0)
    return t.ptr + low * t.dtype.itemsize, t.ptr + (high + 1) * t.dtype.itemsize


def spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[0] < a[1] and b[0] < b[1]


def check_no_overlap(written: list[TensorSpec | None], read: list[TensorSpec | None]) -> None:
    """A ValueError naming both arrays where one a call writes shares bytes (their spans, as
    numpy.may_share_memory's bounds) with one it reads or another it writes: the kernels read
    their inputs while they write, so an output over an input is a race, never an in-place op."""
    outs = [t for t in written if t is not None]
    ins = [t for t in read if t is not None]
    for i, w in enumerate(outs):
        span = byte_span(w)
        for other in outs[i + 1:] + ins:
            if spans_overlap(span, byte_span(other)):
                raise ValueError(f"{w.name} overlaps {other.name} in memory: the kernel writes {w.name} while it "
                                 f"reads {other.name}; give {w.name} a buffer of its own")


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


# --- the inference ops (attention_varlen, attention_kvcache): their arrays beside q, k, v ------


def check_index_array(t: TensorSpec, shape: tuple[int, ...], device: int, what: str) -> None:
    """An int32 metadata array the kernels read on the device (cu_seqlens, cache_seqlens,
    block_table): on q's device, of `shape`, its last dimension contiguous."""
    if t.device is None:
        raise ValueError(f"{t.name} is in host memory; expected an int32 CUDA array on q's device ({what})")
    if t.device != device:
        raise ValueError(f"{t.name} is on device {t.device}, q on device {device}")
    if t.dtype != np.int32:
        raise TypeError(f"{t.name} has dtype {t.dtype}; expected int32 ({what})")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{t.name} has shape {tuple(t.shape)}; expected {tuple(shape)} ({what})")
    if len(shape) and shape[-1] > 1 and t.strides[-1] != 1:
        raise ValueError(f"{t.name} must have a contiguous last dimension, got strides {t.strides} (elements)")


def _rows_view(t: TensorSpec, rows: int) -> TensorSpec:
    """A packed (total, H, D) array as the bshd (1, total, H, D) one _check_tensor takes, with at
    least one row (an empty pack is checked as one row: the kernels then read none)."""
    if len(t.shape) != 3:
        raise ValueError(f"{t.name} must be 3-D (total, heads, head_dim), got shape {t.shape}")
    strides = t.strides if rows else (t.shape[1] * t.shape[2], t.shape[2], 1)   # an empty array's: 0s
    return TensorSpec(t.name, (1, max(rows, 1), *t.shape[1:]), (0, *strides), t.dtype, t.device,
                      t.ptr if rows else 0)


def _bool_causal(causal: object) -> bool:
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool (aligned bottom-right in each sequence), got {causal!r}")
    return bool(causal)


def check_varlen(q: TensorSpec, k: TensorSpec, v: TensorSpec, cu_seqlens_q: TensorSpec, cu_seqlens_k: TensorSpec,
                 *, causal: object, scale: object, window: object, softcap: object,
                 alibi_slopes: TensorSpec | None) -> tuple[Problem, int]:
    """Validate an attention_varlen call: q (total_q, Hq, D), k and v (total_k, Hkv, D), the
    offsets int32 (B + 1,) on q's device. Returns (problem, B): the problem as a bshd batch of 1
    with seqlen_q = total_q and seqlen_k = total_k (the kernels' clamps), its batch set to B."""
    check_options(_bool_causal(causal), scale, "bshd", False)
    views = [_rows_view(t, t.shape[0] if len(t.shape) == 3 else 0) for t in (q, k, v)]
    problem = check_problem(*views, causal=bool(causal), scale=scale, layout="bshd", window=window,
                            softcap=softcap)
    check_value_dim(problem, "attention_varlen")
    if len(cu_seqlens_q.shape) != 1 or cu_seqlens_q.shape[0] < 2:
        raise ValueError(f"cu_seqlens_q has shape {cu_seqlens_q.shape}; expected (B + 1,) with B >= 1")
    batch = cu_seqlens_q.shape[0] - 1
    for t in (cu_seqlens_q, cu_seqlens_k):
        check_index_array(t, (batch + 1,), problem.device, "prefix sums of the sequence lengths, from 0")
    check_rows(batch, problem.heads_q, 1)
    variant = problem.variant
    if alibi_slopes is not None:
        variant = dataclasses.replace(variant, alibi=check_alibi(alibi_slopes, batch, problem.heads_q, problem.device))
    return dataclasses.replace(problem, batch=batch, seqlen_q=q.shape[0], seqlen_k=k.shape[0], variant=variant), batch


@dataclass(frozen=True)
class CacheLayout:
    """A KV cache's layout: paged (num_pages pages of page_size keys, block_table (B, pages_per_seq)
    with rows table_stride elements apart) or contiguous (page_size = S_max, one page a sequence);
    capacity: the keys a sequence holds."""
    paged: bool
    page_size: int
    num_pages: int
    pages_per_seq: int
    table_stride: int = 0

    @property
    def capacity(self) -> int:
        return self.page_size * self.pages_per_seq


def check_kvcache(q: TensorSpec, k_cache: TensorSpec, v_cache: TensorSpec, cache_seqlens: TensorSpec,
                  block_table: TensorSpec | None, k_new: TensorSpec | None, v_new: TensorSpec | None, *,
                  causal: object, scale: object, window: object, softcap: object,
                  alibi_slopes: TensorSpec | None) -> tuple[Problem, CacheLayout, int]:
    """Validate an attention_kvcache call. q (B, Sq, Hq, D); the caches (B, S_max, Hkv, D), or
    paged (num_pages, page_size, Hkv, D) with block_table int32 (B, pages_per_seq); cache_seqlens
    int32 (B,); k_new, v_new (B, Sn, Hkv, D) or neither. Returns (problem, layout, Sn): the
    problem in bshd terms with seqlen_k the cache's capacity and k/v strides (batch or page,
    head, slot)."""
    for t in (q, k_cache, v_cache):
        _check_tensor(t, "bshd")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache and v_cache must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError(f"q, k_cache and v_cache must be on one device, got devices {q.device}, {k_cache.device}, "
                         f"{v_cache.device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {k_cache.shape} and {v_cache.shape}")
    batch, seqlen_q, heads_q, head_dim = q.shape
    pages, page_size, heads_kv, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"k_cache has head_dim {cache_dim} but q has head_dim {head_dim}")
    if heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of the caches' heads ({heads_kv})")
    check_rows(batch, heads_q, seqlen_q)
    if block_table is None:
        if pages != batch:
            raise ValueError(f"k_cache has batch {pages} but q has batch {batch} (a contiguous cache is "
                             f"(B, S_max, Hkv, D); a paged one takes block_table)")
        layout = CacheLayout(False, page_size, batch, 1)
    else:
        if len(block_table.shape) != 2 or block_table.shape[0] != batch:
            raise ValueError(f"block_table has shape {block_table.shape}; expected ({batch}, pages per sequence)")
        check_index_array(block_table, block_table.shape, q.device, "page indices into k_cache's first axis")
        if block_table.shape[1] < 1:
            raise ValueError("block_table has no page per sequence")
        for t in (k_cache, v_cache):
            if pages > 1 and t.strides[0] != page_size * t.strides[1]:
                raise ValueError(f"{t.name} must hold its pages' slots back to back (page stride = page_size x "
                                 f"slot stride), got strides {t.strides} (elements)")
        layout = CacheLayout(True, page_size, pages, block_table.shape[1], block_table.strides[0] if batch > 1 else 0)
    check_index_array(cache_seqlens, (batch,), q.device, "the keys already in each sequence's cache")
    n_new = 0
    if (k_new is None) != (v_new is None):
        raise ValueError("k_new and v_new must be given together")
    if k_new is not None:
        if k_new.shape != v_new.shape or len(k_new.shape) != 4 or k_new.shape[0] != batch or \
                tuple(k_new.shape[2:]) != (heads_kv, head_dim):
            raise ValueError(f"k_new and v_new must both be (B, Sn, Hkv, D) = ({batch}, Sn, {heads_kv}, {head_dim}), "
                             f"got {k_new.shape} and {v_new.shape}")
        n_new = k_new.shape[1]
        for t in (k_new, v_new):
            if t.dtype != q.dtype:
                raise TypeError(f"{t.name} has dtype {t.dtype}; expected q's dtype {q.dtype}")
            if t.device != q.device:
                raise ValueError(f"{t.name} is on device {t.device}, q on device {q.device}")
            if n_new:   # Sn = 0: nothing appended, nothing read
                _check_tensor(t, "bshd")
    c = _bool_causal(causal)
    check_options(c, scale, "bshd", False)
    variant = Variant(causal="bottom_right" if c else None, window=check_window(window),
                      softcap=check_softcap(softcap),
                      alibi=None if alibi_slopes is None else check_alibi(alibi_slopes, batch, heads_q, q.device))
    k_strides = (k_cache.strides[0], k_cache.strides[2], k_cache.strides[1])
    v_strides = (v_cache.strides[0], v_cache.strides[2], v_cache.strides[1])
    problem = Problem(batch=batch, heads_q=heads_q, heads_kv=heads_kv, seqlen_q=seqlen_q, seqlen_k=layout.capacity,
                      head_dim=head_dim, dtype=DTYPE_NAMES[q.dtype], causal=c,
                      scale=1.0 / math.sqrt(head_dim) if scale is None else float(scale), layout="bshd",
                      device=q.device, q_strides=layout_strides(q, "bshd"), k_strides=k_strides,
                      v_strides=v_strides, variant=variant)
    return problem, layout, n_new
