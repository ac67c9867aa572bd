"""A prepared kernel launch: everything about a call that depends only on its signature.

Built once per (shapes, strides, dtypes, device, options) and reused, so a
repeated call only packs four pointers and launches.
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from . import loader
from .configs import FwdConfig
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
    def build(cls, problem: Problem, config: FwdConfig, arch: str,
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
