"""The public entry point: `attention(q, k, v, ...)`."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np

from . import loader
from .configs import FwdConfig, choose_config
from .validation import (Problem, TensorSpec, check_capability, check_options, check_out,
                         check_problem, layout_strides)

Backend = Literal["auto", "sm80"]
BACKENDS = ("auto", "sm80")
_DLPACK_CUDA_DEVICES = (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
_NULL = np.uint64(0)


def _as_device_array(x: Any, name: str):
    """cupy.ndarray view of `x` (zero-copy), or a clear error for host/unknown objects."""
    import cupy

    if isinstance(x, cupy.ndarray):
        return x
    if isinstance(x, np.ndarray):
        raise ValueError(f"{name} is a NumPy array in host memory; expected a CUDA array "
                         f"(cupy.ndarray or a GPU array with __dlpack__)")
    if hasattr(x, "__dlpack_device__"):
        dev_type, _ = x.__dlpack_device__()
        if int(dev_type) not in _DLPACK_CUDA_DEVICES:
            raise ValueError(f"{name} is not on a CUDA device (DLPack device type {int(dev_type)}); "
                             f"expected a CUDA array")
        return cupy.from_dlpack(x)
    if hasattr(x, "__cuda_array_interface__"):
        return cupy.asarray(x)
    raise TypeError(f"{name} must be a cupy.ndarray or an array with __dlpack__, "
                    f"got {type(x).__name__}")


def _spec(a, name: str) -> TensorSpec:
    item = a.dtype.itemsize
    return TensorSpec(name, tuple(a.shape), tuple(s // item for s in a.strides), np.dtype(a.dtype),
                      a.device.id, a.data.ptr)


@functools.lru_cache(maxsize=None)
def _device_arch(device_id: int) -> tuple[tuple[int, int], str]:
    import cupy

    cc = cupy.cuda.Device(device_id).compute_capability   # e.g. "90"
    capability = (int(cc[:-1]), int(cc[-1]))
    return capability, loader.arch_for_capability(*capability)


def plan(problem: Problem, arch: str, backend: Backend) -> FwdConfig:
    """Which kernel runs this problem. Every backend maps to the sm_80 kernel for now."""
    return choose_config(arch, problem.dtype, problem.head_dim)


def attention(q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None,
              layout: Literal["bhsd", "bshd"] = "bhsd", return_lse: bool = False,
              out: Any = None, backend: Backend = "auto"):
    """Fused scaled-dot-product attention, softmax(scale * q k^T) v.

    q: (B, Hq, Sq, D) for layout="bhsd" (SDPA's), or (B, Sq, Hq, D) for "bshd"
    (flash_attn's); k, v: the same with Hkv heads and Sk keys, Hq a multiple of
    Hkv (GQA/MQA). float16 or bfloat16, any strides with a contiguous last dim.
    causal: key j visible to query i iff j <= i + Sk - Sq (bottom-right aligned);
    rows that see no key give 0 (and LSE -inf). scale defaults to 1/sqrt(D).
    Runs on CuPy's current stream, on the arrays' device. Returns the output in
    q's dtype and layout, and with return_lse=True also the float32 log-sum-exp
    of shape (B, Hq, Sq).
    """
    import cupy

    check_options(causal, scale, layout, return_lse)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    qa, ka, va = _as_device_array(q, "q"), _as_device_array(k, "k"), _as_device_array(v, "v")
    problem = check_problem(_spec(qa, "q"), _spec(ka, "k"), _spec(va, "v"),
                            causal=causal, scale=scale, layout=layout)
    capability, arch = _device_arch(problem.device)
    check_capability(capability, problem.device)
    if out is not None:
        out = _as_device_array(out, "out")
        check_out(_spec(out, "out"), problem)
    config = plan(problem, arch, backend)

    with cupy.cuda.Device(problem.device):
        if out is None:
            out = cupy.empty(problem.out_shape, dtype=qa.dtype)
        lse = (cupy.empty((problem.batch, problem.heads_q, problem.seqlen_q), dtype=cupy.float32)
               if return_lse else None)
        kernel = loader.get_function(config, problem.device, arch)
        o_strides = layout_strides(_spec(out, "out"), layout)
        kernel(config.grid(problem.batch, problem.heads_q, problem.seqlen_q), (config.threads,),
               (qa, ka, va, out, _NULL if lse is None else lse,
                *map(np.int64, problem.q_strides + problem.k_strides + problem.v_strides + o_strides),
                np.int32(problem.seqlen_q), np.int32(problem.seqlen_k), np.int32(problem.head_dim),
                np.int32(problem.heads_q // problem.heads_kv),
                np.float32(problem.scale * math.log2(math.e)), np.int32(problem.causal)),
               shared_mem=config.smem_bytes)
    return (out, lse) if return_lse else out
