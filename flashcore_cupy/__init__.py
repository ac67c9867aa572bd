"""flashcore_cupy: fused FlashAttention kernels for CuPy, compiled at run time by NVRTC."""

from . import reference
from .api import attention
from .loader import KernelCompileError

__version__ = "0.1.0"
__all__ = ["attention", "reference", "KernelCompileError", "__version__"]
