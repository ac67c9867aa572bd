"""flashcore_cupy: fused FlashAttention kernels for CuPy, compiled at run time by NVRTC."""

from . import reference
from .api import Plan, attention, plan
from .backward import attention_backward
from .loader import KernelCompileError
from .kvcache import attention_kvcache
from .merge import merge_states
from .varlen import attention_varlen

__version__ = "0.1.0"
__all__ = ["attention", "attention_backward", "attention_varlen", "attention_kvcache", "merge_states", "plan", "Plan", "reference", "KernelCompileError",
           "__version__"]
