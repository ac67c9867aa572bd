"""A prepared kernel launch: everything about a call that depends only on its signature.

Built once per (shapes, strides, dtypes, device, options) and reused, so a
repeated call only packs its pointers and launches. One class per kernel
family; `build_launch` picks it from the config's type.
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from . import loader, tma
from .configs import SM90_ARCH, SM90_HEAD_DIMS, FwdConfig, Sm90Config, sm90_config
from .validation import Problem

# Mirrors `struct FwdParams` in kernels/flash_fwd_sm80.cu (160 bytes): q, k, v, o
# and lse pointers, 12 strides, seqlen_q, seqlen_k, head_dim, heads_per_kv,
# scale*log2(e), causal.
FWD_PARAMS = struct.Struct("<5Q12q4ifi")
_PARAMS_DTYPE = np.dtype((np.void, FWD_PARAMS.size))


@dataclass(frozen=True, eq=False)
class FwdLaunch:
    config: FwdConfig
    kernel: object                       # cupy RawKernel, compiled for `device`
    device: int
    grid: tuple[int, int, int]
    out_shape: tuple[int, int, int, int]
    lse_shape: tuple[int, int, int] | None
    scalars: tuple                       # the strides and sizes of FwdParams
    # The packed argument, reused across calls (CuPy copies it at launch); the
    # lock keeps two threads from packing into it at once.
    _buf: bytearray = field(default_factory=lambda: bytearray(FWD_PARAMS.size), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "_arg", np.frombuffer(self._buf, _PARAMS_DTYPE))

    @classmethod
    def build(cls, problem: Problem, config: FwdConfig, arch: str, num_sms: int,
              o_strides: tuple[int, int, int], return_lse: bool) -> "FwdLaunch":
        p = problem
        scalars = (*p.q_strides, *p.k_strides, *p.v_strides, *o_strides,
                   p.seqlen_q, p.seqlen_k, p.head_dim, p.heads_q // p.heads_kv,
                   p.scale * math.log2(math.e), int(p.causal))
        return cls(config, loader.get_function(config, p.device, arch), p.device,
                   config.grid(p.batch, p.heads_q, p.seqlen_q), p.out_shape,
                   (p.batch, p.heads_q, p.seqlen_q) if return_lse else None, scalars)

    def __call__(self, q, k, v, out, lse) -> None:
        """Launch on CuPy's current stream; the caller has made `device` current."""
        with self._lock:
            FWD_PARAMS.pack_into(self._buf, 0, q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr,
                                 0 if lse is None else lse.data.ptr, *self.scalars)
            self.kernel(self.grid, (self.config.threads,), (self._arg,),
                        shared_mem=self.config.smem_bytes)


# Mirrors `struct Sm90Params` in kernels/flash_fwd_sm90.cu (512 bytes): the q, k
# and v tensor maps, then o and lse pointers, 3 output strides, seqlen_q,
# seqlen_k, head_dim, heads_per_kv, scale*log2(e), causal, heads, batch,
# m_blocks, and padding to the struct's 64-byte alignment.
SM90_TAIL = struct.Struct("<2Q3q4ifi3i52x")
_MAPS_PER_LAUNCH = 16


@dataclass(frozen=True, eq=False)
class Sm90Launch:
    config: Sm90Config
    kernel: object
    device: int
    grid: tuple[int, int, int]
    out_shape: tuple[int, int, int, int]
    lse_shape: tuple[int, int, int] | None
    scalars: tuple                       # the tail of Sm90Params after the two pointers
    specs: tuple[tma.MapSpec, ...]       # q, k, v
    # Encoded maps per (q, k, v) addresses (the oldest evicted first): a call with
    # arrays seen before (a KV cache, rotating buffers) costs a lookup, not 3 encodes.
    _maps: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, problem: Problem, config: Sm90Config, arch: str, num_sms: int,
              o_strides: tuple[int, int, int], return_lse: bool) -> "Sm90Launch":
        p = problem
        scalars = (*o_strides, p.seqlen_q, p.seqlen_k, p.head_dim, p.heads_q // p.heads_kv,
                   p.scale * math.log2(math.e), int(p.causal), p.heads_q, p.batch,
                   -(-p.seqlen_q // config.block_m))
        return cls(config, loader.get_function(config, p.device, arch), p.device,
                   config.grid(p.batch, p.heads_q, p.seqlen_q, num_sms, p.causal), p.out_shape,
                   (p.batch, p.heads_q, p.seqlen_q) if return_lse else None, scalars,
                   sm90_map_specs(p, config))

    def __call__(self, q, k, v, out, lse) -> None:
        """Launch on CuPy's current stream; the caller has made `device` current."""
        ptrs = (q.data.ptr, k.data.ptr, v.data.ptr)
        with self._lock:
            maps = self._maps.get(ptrs)
            if maps is None:
                if len(self._maps) >= _MAPS_PER_LAUNCH:
                    del self._maps[next(iter(self._maps))]   # the oldest
                maps = self._maps[ptrs] = tma.TensorMaps(self.config.dtype, self.specs, ptrs,
                                                         SM90_TAIL.size)
            SM90_TAIL.pack_into(maps.bytes, maps.tail_offset, out.data.ptr,
                                0 if lse is None else lse.data.ptr, *self.scalars)
            self.kernel(self.grid, (self.config.threads,), (maps.arg,),
                        shared_mem=self.config.smem_bytes)


def sm90_map_specs(p: Problem, config: Sm90Config) -> tuple[tma.MapSpec, ...]:
    """Tensor-map geometry of q, k and v: Q boxes span the CTA's rows, K/V boxes one key tile."""
    q_shape = (p.batch, p.heads_q, p.seqlen_q, p.head_dim)
    kv_shape = (p.batch, p.heads_kv, p.seqlen_k, p.head_dim)
    return (tma.map_spec(q_shape, p.q_strides, 2, config.block_m),
            tma.map_spec(kv_shape, p.k_strides, 2, config.block_n),
            tma.map_spec(kv_shape, p.v_strides, 2, config.block_n))


def sm90_blocker(p: Problem, arch: str) -> str | None:
    """Why the Hopper kernel cannot run `p` on `arch`, or None."""
    if arch != SM90_ARCH:
        return f"it needs an sm_90 GPU (H100/H200); this device compiles for {arch}"
    if p.head_dim > SM90_HEAD_DIMS[-1]:
        return f"head_dim {p.head_dim} is over {SM90_HEAD_DIMS[-1]}"
    for name, spec in zip("qkv", sm90_map_specs(p, sm90_config(p.dtype, p.head_dim))):
        reason = tma.unsupported_reason(spec)
        if reason:
            return f"{name} has a {reason}"
    return None


_LAUNCH_CLASSES = {FwdConfig: FwdLaunch, Sm90Config: Sm90Launch}


def build_launch(problem: Problem, config: FwdConfig | Sm90Config, arch: str, num_sms: int,
                 o_strides: tuple[int, int, int], return_lse: bool) -> FwdLaunch | Sm90Launch:
    return _LAUNCH_CLASSES[type(config)].build(problem, config, arch, num_sms, o_strides, return_lse)
