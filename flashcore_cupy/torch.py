"""PyTorch adapter: `flashcore_cupy.torch.attention(q, k, v, **options)` on torch CUDA tensors,
differentiable (a torch.autograd.Function over attention and attention_backward).

Importing this module imports torch; `import flashcore_cupy` never does. Tensors cross by
DLPack without copies, and the kernels run on torch's current stream (a CuPy stream over its
handle, api.external_stream) on the tensors' device. The forward saves out and its LSE for the
backward. Under torch.compile the call is a graph break (torch.compiler.disable): the kernels
stay outside the traced graph.
"""

from __future__ import annotations

import contextlib

import torch

from .api import attention as _attention
from .api import external_stream
from .backward import attention_backward as _attention_backward


def _cupy(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t.detach())


@contextlib.contextmanager
def _on_torch_stream(device: torch.device):
    """CuPy's current device and stream set to torch's on `device`."""
    import cupy

    with cupy.cuda.Device(device.index), external_stream(torch.cuda.current_stream(device).cuda_stream):
        yield


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, alibi_slopes, bias, options):
        with _on_torch_stream(q.device):
            arrays = {n: _cupy(t) for n, t in (("alibi_slopes", alibi_slopes), ("bias", bias)) if t is not None}
            out, lse = _attention(_cupy(q), _cupy(k), _cupy(v), return_lse=True, **options, **arrays)
        out, lse = torch.from_dlpack(out), torch.from_dlpack(lse)
        ctx.save_for_backward(q, k, v, out, lse, alibi_slopes, bias)
        ctx.options = options
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, alibi_slopes, bias = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        with _on_torch_stream(q.device):
            arrays = {n: _cupy(t) for n, t in (("alibi_slopes", alibi_slopes), ("bias", bias)) if t is not None}
            dq, dk, dv = _attention_backward(_cupy(dout), _cupy(q), _cupy(k), _cupy(v), _cupy(out), _cupy(lse),
                                             **ctx.options, **arrays)
        return torch.from_dlpack(dq), torch.from_dlpack(dk), torch.from_dlpack(dv), None, None, None


def _graph_break(fn):
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


@_graph_break
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool | str = False,
              scale: float | None = None, window: tuple[int, int] | None = None, softcap: float = 0.0,
              alibi_slopes: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              layout: str = "bhsd") -> torch.Tensor:
    """flashcore_cupy.attention on torch CUDA tensors (the same arguments and meaning; layout
    "bhsd" is SDPA's), differentiable in q, k and v (not in alibi_slopes or bias)."""
    options = dict(causal=causal, scale=scale, window=window, softcap=softcap, layout=layout)
    return _Attention.apply(q, k, v, alibi_slopes, bias, options)


__all__ = ["attention"]
