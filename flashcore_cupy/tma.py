"""TMA tensor maps (CUtensorMap) for the sm_90 kernel, encoded by the CUDA driver.

Each of q, k, v is described as a 4-D tensor (d, seq, head, batch), innermost
first, with its own strides, so both layouts and strided views need no copy.
A box is 64 columns (128 bytes, the 128B-swizzle limit) by `box_rows` rows;
a 128-wide head dim takes two boxes. The driver is reached through ctypes on
libcuda, which every CUDA installation has, so this adds no dependency.

`map_spec` and `unsupported_reason` are pure (tested on CPU); `encode_maps`
needs the driver. The driver's encode costs ~8 us a map through ctypes (v26: a call on
arrays at new addresses paid ~25 us for its three), so each spec's map is encoded once and
later maps of it are that map re-aimed (`cuTensorMapReplaceAddress`).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import NamedTuple

import numpy as np

MAP_BYTES = 128
MAP_ALIGN = 64
BOX_COLS = 64                     # 64 x 2 bytes = the 128-byte swizzle span
_DATA_TYPE = {"fp16": 6, "bf16": 9}   # CU_TENSOR_MAP_DATA_TYPE_FLOAT16 / _BFLOAT16
_INTERLEAVE_NONE = 0
_SWIZZLE_128B = 3
_L2_PROMOTION_256B = 3
_OOB_FILL_ZEROS = 0               # rows past Sq/Sk and columns past D read as 0
_MAX_STRIDE = 1 << 40
_MAX_DIM = 1 << 32


class MapSpec(NamedTuple):
    dims: tuple[int, int, int, int]       # (d, seq, head, batch)
    strides: tuple[int, int, int]         # bytes of seq, head, batch
    box: tuple[int, int, int, int]


def map_spec(shape_bhsd: tuple[int, int, int, int], strides_bhsd: tuple[int, int, int],
             itemsize: int, box_rows: int, box_heads: int = 1) -> MapSpec:
    """The map of a (B, H, S, D) tensor with (batch, head, seq) strides in elements; a box
    is 64 columns of `box_rows` positions of `box_heads` heads (rows head by head).

    A dimension of size 1 is never stepped over, so its stride is replaced by a
    legal one (views often carry 0 or odd strides there).
    """
    b, h, s, d = shape_bhsd
    row = -(-d * itemsize // 16) * 16
    legal = {1: row, 2: row * s, 3: row * s * h}
    strides = tuple(stride * itemsize if size > 1 else legal[i]
                    for i, (size, stride) in enumerate(((s, strides_bhsd[2]), (h, strides_bhsd[1]),
                                                        (b, strides_bhsd[0])), start=1))
    return MapSpec((d, s, h, b), strides, (BOX_COLS, box_rows, box_heads, 1))


def unsupported_reason(spec: MapSpec) -> str | None:
    """Why the driver would refuse `spec`, or None."""
    for name, stride in zip(("seq", "head", "batch"), spec.strides):
        if stride <= 0 or stride % 16 or stride >= _MAX_STRIDE:
            return f"{name} stride of {stride} bytes (TMA needs a positive multiple of 16 below 2^40)"
    if any(dim >= _MAX_DIM for dim in spec.dims):
        return f"dimension over 2^32 in {spec.dims}"
    return None


@functools.cache
def _encode():
    encode = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
    encode.restype = ctypes.c_int
    encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                       ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return encode


_U64X4, _U64X3, _U32X4 = ctypes.c_uint64 * 4, ctypes.c_uint64 * 3, ctypes.c_uint32 * 4
_UNIT_STEPS = _U32X4(1, 1, 1, 1)   # element strides: every element


@functools.lru_cache(maxsize=4096)
def _geometry(spec: MapSpec) -> tuple:
    """The encode's array arguments of `spec`, built once (~1.7 us a map in Python otherwise: a
    call on fresh arrays encodes its maps again; the driver only reads them)."""
    return _U64X4(*spec.dims), _U64X3(*spec.strides), _U32X4(*spec.box)


@functools.cache
def _replace():
    """cuTensorMapReplaceAddress (the driver's way to re-aim an encoded map at another global
    address, CUDA 12.0+), or None where the driver has no such entry point."""
    try:
        replace = ctypes.CDLL("libcuda.so.1").cuTensorMapReplaceAddress
    except (OSError, AttributeError):   # (no driver: the encode says so)
        return None
    replace.restype = ctypes.c_int
    replace.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return replace


# (dtype, spec) -> the map the driver encoded for it (at some address), the oldest evicted
# past _TEMPLATE_LIMIT: a map of the same geometry elsewhere is this one re-aimed.
_templates: dict[tuple[str, MapSpec], bytes] = {}
_TEMPLATE_LIMIT = 4096
_templates_lock = threading.Lock()


def encode_maps(dest: np.ndarray, dtype: str, specs: tuple[MapSpec, ...], ptrs: tuple[int, ...]) -> None:
    """Encode the tensor maps of `specs` aimed at `ptrs` back to back into `dest`
    (uint8, 64-byte aligned: the head of a kernel's by-value parameter block): a spec's
    first map by the driver's encode, the next ones as a copy of it re-aimed (`_replace`;
    the driver's encode where that fails, which raises on an address it refuses)."""
    base = dest.ctypes.data
    assert base % MAP_ALIGN == 0 and dest.size >= len(specs) * MAP_BYTES
    replace = _replace()
    for i, (spec, ptr) in enumerate(zip(specs, ptrs)):
        at = base + i * MAP_BYTES
        template = _templates.get((dtype, spec)) if replace is not None else None
        if template is not None:
            ctypes.memmove(at, template, MAP_BYTES)
            if replace(at, ptr) == 0:
                continue
        rc = _encode()(at, _DATA_TYPE[dtype], 4, ptr, *_geometry(spec),
                       _UNIT_STEPS, _INTERLEAVE_NONE, _SWIZZLE_128B, _L2_PROMOTION_256B, _OOB_FILL_ZEROS)
        if rc != 0:
            raise RuntimeError(f"cuTensorMapEncodeTiled({spec}) failed with CUresult {rc}")
        if replace is not None and template is None:
            with _templates_lock:
                if len(_templates) >= _TEMPLATE_LIMIT:
                    del _templates[next(iter(_templates))]   # the oldest
                _templates[(dtype, spec)] = ctypes.string_at(at, MAP_BYTES)
