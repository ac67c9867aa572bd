"""merge_states: partial attention results over disjoint key sets merged by their LSE, the
step that split-KV decode, cascade attention and ring attention share.

The spec is `flashcore_cupy.reference.merge_states`. One launch of kernels/merge_states.cu (a
warp per row) on CuPy's current stream: no host sync, and no allocation when `out=` and
`lse_out=` are given, so a call can be captured in a CUDA graph.
"""

from __future__ import annotations

import threading

import numpy as np

from . import api
from .api import _contiguous_strides
from .configs import MergeConfig
from .launch import MergeLaunch
from .validation import DTYPE_NAMES, TensorSpec, check_capability, check_no_overlap

_NAMES = {**DTYPE_NAMES, np.dtype(np.float32): "f32"}
_launches: dict[tuple, MergeLaunch] = {}   # (device, MergeConfig) -> prepared launch
_lock = threading.Lock()


def merge_states(*args, out=None, lse_out=None):
    """merge_states(out_a, lse_a, out_b, lse_b) or merge_states(outs, lses) -> (out, lse).

    Each partial output has shape (..., Dv) (fp16, bf16 or float32) and its LSE, float32 in
    natural-log units, the shape (...): attention's bhsd output with its (B, H, S) LSE (a bshd
    output's LSE transposed to match). The stacked form has a leading split axis on both.
        lse = log(sum_i exp(lse_i)),   out = sum_i exp(lse_i - lse) * out_i
    A row whose every lse_i is -inf gets 0 and -inf; a partial with lse -inf is not read.
    out=: a (..., Dv) fp16, bf16 or float32 buffer (default: the partials' dtype); lse_out=: a
    float32 (...) one. Every array C-contiguous on one CUDA device; Dv at most 512.
    """
    if len(args) not in (2, 4):
        raise TypeError(f"merge_states takes (out_a, lse_a, out_b, lse_b) or (outs, lses), got {len(args)} "
                        f"positional arguments")
    names = ("out_a", "lse_a", "out_b", "lse_b") if len(args) == 4 else ("outs", "lses")
    arrays = [api._as_device_array(a, n) for a, n in zip(args, names)]
    given = {n: api._as_device_array(a, n) for n, a in (("out", out), ("lse_out", lse_out)) if a is not None}
    parts = [api._spec(a, n) for a, n in zip(arrays, names)]
    buffers = [api._spec(given[n], n) if n in given else None for n in ("out", "lse_out")]
    splits, row_shape, dv = check_merge(parts, *buffers)
    check_no_overlap(buffers, parts)   # a row's merge reads every split's rows of it while others are written
    import cupy

    first = arrays[0]
    device = first.data.device_id
    rows = int(np.prod(row_shape, dtype=np.int64))
    with cupy.cuda.Device(device):
        out = given["out"] if "out" in given else cupy.empty((*row_shape, dv), first.dtype)
        lse_out = given["lse_out"] if "lse_out" in given else cupy.empty(row_shape, np.float32)
        if rows == 0:
            return out, lse_out
        config = MergeConfig(_NAMES[first.dtype], _NAMES[out.dtype])
        launch = _launches.get((device, config))
        if launch is None:
            dev = api.device_info(device)
            check_capability(dev.capability, device)
            with _lock:
                launch = _launches.setdefault((device, config), MergeLaunch.build(config, device, dev.arch))
        pair = len(args) == 4
        launch.start(dict(outs=first.data.ptr, outs_b=arrays[2].data.ptr if pair else 0, lses=arrays[1].data.ptr,
                          lses_b=arrays[3].data.ptr if pair else 0, out=out.data.ptr, lse_out=lse_out.data.ptr,
                          split_stride=rows * dv, splits=splits, rows=rows, dv=dv),
                     cupy.cuda.get_current_stream().ptr)
    return out, lse_out


def check_merge(parts: list[TensorSpec], out: TensorSpec | None, lse_out: TensorSpec | None):
    """Every check of a merge before its launch, on the arrays' specs: (out_a, lse_a, out_b,
    lse_b) or (outs, lses), and the given buffers. Returns (splits, row shape, Dv)."""
    pair = len(parts) == 4
    outs, lses = parts[0::2], parts[1::2]
    device = parts[0].device
    for t in parts + [b for b in (out, lse_out) if b is not None]:
        if t.device is None:
            raise ValueError(f"{t.name} is in host memory; expected a CUDA array")
        if t.device != device:
            raise ValueError(f"{t.name} is on device {t.device}, {parts[0].name} on device {device}")
        if any(st != c for st, c, n in zip(t.strides, _contiguous_strides(t.shape), t.shape) if n > 1):
            raise ValueError(f"{t.name} must be C-contiguous, got strides {t.strides} (elements); "
                             f"use cupy.ascontiguousarray")
    for t in outs + ([out] if out is not None else []):
        if t.dtype not in _NAMES:
            raise TypeError(f"{t.name} has dtype {t.dtype}; expected float16, bfloat16 or float32")
    for t in outs[1:]:
        if t.dtype != outs[0].dtype or t.shape != outs[0].shape:
            raise ValueError(f"{t.name} is {t.dtype} {t.shape}, {outs[0].name} {outs[0].dtype} {outs[0].shape}: "
                             f"the partials share one dtype and shape")
    for t in lses + ([lse_out] if lse_out is not None else []):
        if t.dtype != np.float32:
            raise TypeError(f"{t.name} has dtype {t.dtype}; expected float32 (natural-log LSE)")
    for o, lse in zip(outs, lses):
        if len(o.shape) < (1 if pair else 2):
            raise ValueError(f"{o.name} must be (..., Dv){'' if pair else ' after a leading split axis'}, "
                             f"got shape {o.shape}")
        if lse.shape != o.shape[:-1]:
            raise ValueError(f"{lse.name} has shape {lse.shape}; expected {o.name}'s shape without its last "
                             f"dimension, {o.shape[:-1]}")
    shape = outs[0].shape
    splits, row_shape, dv = (2, shape[:-1], shape[-1]) if pair else (shape[0], shape[1:-1], shape[-1])
    if splits < 1:
        raise ValueError(f"outs has no split: shape {shape}")
    if not 1 <= dv <= MergeConfig.MAX_DV:
        raise ValueError(f"{outs[0].name} has {dv} columns (Dv); expected 1 to {MergeConfig.MAX_DV}")
    if int(np.prod(shape, dtype=np.int64)) >= 2 ** 31:
        raise ValueError(f"{outs[0].name} has {int(np.prod(shape, dtype=np.int64))} elements; expected "
                         f"fewer than 2**31")
    if out is not None and out.shape != (*row_shape, dv):
        raise ValueError(f"out has shape {out.shape}; expected {(*row_shape, dv)}")
    if lse_out is not None and lse_out.shape != tuple(row_shape):
        raise ValueError(f"lse_out has shape {lse_out.shape}; expected {tuple(row_shape)}")
    return splits, tuple(row_shape), dv
