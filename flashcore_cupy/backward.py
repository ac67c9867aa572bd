"""The backward pass: `attention_backward(dout, q, k, v, out, lse, ...)` -> (dq, dk, dv).

The spec is `flashcore_cupy.reference.attention_backward`. The arrays go through the forward's
validation (the same Problem, so the same mask and score options) and the checks of dout,
out, lse and the gradient buffers; then three launches on CuPy's current stream:
  1. bwd_prep (kernels/flash_bwd_steps.cu): delta = rowsum(dout * out) and the LSE in log2
     units (+inf for a row that saw no key), padded to whole query tiles, and the float32 dQ
     accumulator zeroed (with GQA, float32 dK / dV accumulators zeroed beside it);
  2. the main kernel: a CTA per key tile of one (batch, query head) over the query tiles that
     see it, dQ added into its accumulator by float32 reductions. On H100/H200, plain masks
     at head dims up to 128: kernels/flash_bwd_sm90.cu (TMA, wgmma, warp specialisation);
     otherwise, and for the variants and deterministic=True (dQ's adds ordered by a
     semaphore per query tile), kernels/flash_bwd_sm80.cu;
  3. bwd_convert: dq = scale * dQ in the inputs' type (and GQA's dK / dV sums into dk, dv).
"""

from __future__ import annotations

from typing import Any, Literal

from . import api
from .configs import Sm80BwdConfig, Sm90BwdConfig, bucket_head_dim, bwd_config
from .launch import Sm80BwdLaunch, Sm90BwdLaunch, launch_step, sm90_bwd_blocker
from .validation import (Problem, check_capability, check_lse, check_options, check_out, check_problem,
                         layout_strides)


def _bhsd_view(x, layout: str):
    """A (B, H, S, D) view of an array in `layout`."""
    return x if layout == "bhsd" else x.transpose(0, 2, 1, 3)


def attention_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, *,
                       causal: bool | str = False, scale: float | None = None,
                       window: tuple[int, int] | None = None, softcap: float = 0.0,
                       alibi_slopes: Any = None, bias: Any = None,
                       layout: Literal["bhsd", "bshd"] = "bhsd", deterministic: bool = False,
                       return_dbias: bool = False, dq: Any = None, dk: Any = None, dv: Any = None,
                       backend: Literal["auto", "sm80", "sm90"] = "auto"):
    """Gradients of `attention(q, k, v, **options)`: (dq, dk, dv) in the shapes, dtypes and
    layout of q, k and v (dk and dv summed over each GQA group).

    out and lse are what attention(..., return_lse=True) returned for the same inputs and
    options; the options mean what they mean there. dq=, dk=, dv=: buffers to write into
    (q's, k's and v's shapes and dtype; any strides with a contiguous last dim).
    return_dbias=True (with a bias) adds dbias: float32, the bias's shape, summed over the
    dimensions it broadcasts (missing, size 1 or stride 0; repeated along a stride-0 one).
    deterministic=True: the same bits on every run (dQ's adds in a fixed order, the GQA and
    dbias sums on the host); the default adds with float32 atomics in whatever order they come.
    Runs on CuPy's current stream, on the arrays' device.
    """
    import cupy

    check_options(causal, scale, layout, False)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if return_dbias and bias is None:
        raise ValueError("return_dbias=True needs a bias")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    q, k, v = (api._as_device_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    dout, out, lse = (api._as_device_array(x, n) for x, n in ((dout, "dout"), (out, "out"), (lse, "lse")))
    if alibi_slopes is not None:
        alibi_slopes = api._as_device_array(alibi_slopes, "alibi_slopes")
    if bias is not None:
        bias = api._as_device_array(bias, "bias")
    spec = api._spec
    p = check_problem(spec(q, "q"), spec(k, "k"), spec(v, "v"), causal=causal, scale=scale, layout=layout,
                      window=window, softcap=softcap,
                      alibi_slopes=None if alibi_slopes is None else spec(alibi_slopes, "alibi_slopes"),
                      bias=None if bias is None else spec(bias, "bias"))
    check_out(spec(dout, "dout"), p)
    check_out(spec(out, "out"), p)
    check_lse(spec(lse, "lse"), p)
    grads = []
    for name, given, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        if given is None:
            given = cupy.empty(like.shape, like.dtype)
        else:
            given = api._as_device_array(given, name)
            check_out(spec(given, name), p, shape=like.shape, like=name[1])
        grads.append(given)
    dq, dk, dv = grads
    dev = api.device_info(p.device)
    check_capability(dev.capability, p.device)
    config = _choose(p, dev.arch, layout_strides(spec(dout, "dout"), layout), deterministic, backend)
    with cupy.cuda.Device(p.device):
        dbias = _run(p, config, dev.arch, dout, q, k, v, out, lse, dq, dk, dv, alibi_slopes, bias,
                     bool(return_dbias), deterministic)
    return (dq, dk, dv, dbias) if return_dbias else (dq, dk, dv)


_BACKENDS = ("auto", "sm80", "sm90")


def _choose(p: Problem, arch: str, do_strides: tuple[int, int, int], deterministic: bool,
            backend: str) -> Sm80BwdConfig | Sm90BwdConfig:
    """The kernel for `p`: the Hopper one where it applies (backend "auto" or "sm90"), else the
    portable one."""
    blocker = None if backend == "sm80" else sm90_bwd_blocker(p, arch, do_strides, deterministic)
    if backend == "sm90" and blocker:
        raise ValueError(f"backend='sm90' cannot run this backward: {blocker}; use backend='auto'")
    if backend == "sm80" or blocker:
        return bwd_config(p.dtype, bucket_head_dim(p.head_dim), p.kernel_variant)
    return Sm90BwdConfig(p.dtype, 64 if p.head_dim <= 64 else 128)


def _run(p: Problem, config: Sm80BwdConfig | Sm90BwdConfig, arch: str, dout, q, k, v, out, lse, dq, dk, dv,
         alibi_slopes, bias, want_dbias: bool, deterministic: bool):
    """bwd_prep, the main kernel, bwd_convert (kernels/flash_bwd_steps.cu); returns dbias
    (float32, the bias's shape) or None."""
    import cupy

    layout, f32, stream = p.layout, cupy.float32, cupy.cuda.get_current_stream().ptr
    hopper = isinstance(config, Sm90BwdConfig)
    rows = config.rows_pad(p.seqlen_q)
    # dQ's accumulator: the Hopper kernel's rows are its template head dim long (whole blocks).
    dq_cols = config.head_dim if hopper else p.head_dim
    lse2, delta = cupy.empty((2, p.batch, p.heads_q, rows), f32)
    dq_accum = cupy.empty((p.batch, p.heads_q, rows, dq_cols), f32)
    do_strides = layout_strides(api._spec(dout, "dout"), layout)
    launch_step("bwd_prep", p.dtype, p.device, arch, rows, p.heads_q, p.batch, dict(
        dout=dout.data.ptr, out=out.data.ptr, lse=lse.data.ptr, lse2=lse2.data.ptr, delta=delta.data.ptr,
        dq_accum=dq_accum.data.ptr, **_strides("do", do_strides),
        **_strides("o", layout_strides(api._spec(out, "out"), layout)),
        seqlen_q=p.seqlen_q, rows_pad=rows, heads=p.heads_q, head_dim=p.head_dim, dq_cols=dq_cols), stream)
    # GQA: dK / dV accumulated in float32 per kv head (atomics over the group), or deterministic
    # per query head (bwd_convert sums each group in order).
    group = p.heads_q // p.heads_kv
    acc_heads = p.heads_q if deterministic else p.heads_kv
    kv_accum = [cupy.zeros((p.batch, acc_heads, p.seqlen_k, p.head_dim), f32) for _ in range(2)] \
        if group > 1 else [None, None]
    address = lambda a: 0 if a is None else a.data.ptr   # noqa: E731
    dkv_strides = {"dk": layout_strides(api._spec(dk, "dk"), layout), "dv": layout_strides(api._spec(dv, "dv"), layout)}
    pointers = dict(lse=lse2.data.ptr, delta=delta.data.ptr, dq_accum=dq_accum.data.ptr, dk=dk.data.ptr,
                    dv=dv.data.ptr, dk_accum=address(kv_accum[0]), dv_accum=address(kv_accum[1]))
    dbias_accum = None
    if hopper:
        Sm90BwdLaunch.build(p, config, arch, {"do": do_strides, **dkv_strides}).start(
            (q.data.ptr, k.data.ptr, v.data.ptr, dout.data.ptr), pointers, stream)
    else:
        dq_sem = cupy.zeros((p.batch, p.heads_q, rows // config.block_m), cupy.int32) if deterministic else None
        # dbias: added as it comes into one row, head or batch where the bias broadcasts there
        # (validation's Variant.bias strides: 0), or deterministic, each element once into a full
        # (B, Hq, Sq, Sk) and summed here; keys as the bias's.
        dbias_strides = (0, 0, 0)
        if want_dbias:
            broad = tuple(st == 0 for st in p.variant.bias[1])
            full = (p.batch, p.heads_q, p.seqlen_q)
            dims = tuple(1 if b and not deterministic else n for b, n in zip(broad, full)) + (bias.shape[-1],)
            dbias_accum = cupy.zeros(dims, f32)
            dbias_strides = tuple(0 if n == 1 else st // 4 for n, st in zip(dims[:3], dbias_accum.strides[:3]))
        strides = {"do": do_strides, "dq": (p.heads_q * rows * dq_cols, rows * dq_cols, dq_cols), **dkv_strides,
                   "dbias": dbias_strides}
        Sm80BwdLaunch.build(p, config, arch, strides, deterministic).start(dict(
            pointers, q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, dout=dout.data.ptr, dbias=address(dbias_accum),
            dq_sem=address(dq_sem), alibi=address(alibi_slopes), bias=address(bias)), stream)
    # dq = scale * dQ; GQA's sums into dk and dv (keys past the kernels' -- top-left causal with
    # Sq < Sk, which no query sees -- as zeros).
    convert = lambda src, dst, src_rows, src_ld, heads, grp, valid, n, factor, frag=0: launch_step(   # noqa: E731
        "bwd_convert", p.dtype, p.device, arch, n, heads, p.batch, dict(
            src=src.data.ptr, dst=dst.data.ptr, **_strides("dst", layout_strides(api._spec(dst, "grad"), layout)),
            src_rows=src_rows, src_ld=src_ld, group=grp, rows_valid=valid, rows=n, heads=heads,
            head_dim=p.head_dim, frag_rows=frag, factor=factor), stream)
    convert(dq_accum, dq, rows, dq_cols, p.heads_q, 1, p.seqlen_q, p.seqlen_q, p.scale,
            config.block_m if hopper else 0)
    keys = _bhsd_view(dk, layout).shape[2]
    for grad, accum in zip((dk, dv), kv_accum):
        if accum is not None:
            convert(accum, grad, p.seqlen_k, p.head_dim, p.heads_kv, group if deterministic else 1, p.seqlen_k,
                    keys, 1.0)
        elif keys > p.seqlen_k:
            _bhsd_view(grad, layout)[:, :, p.seqlen_k:] = 0
    if dbias_accum is None:
        return None
    if deterministic:
        dbias_accum = dbias_accum.sum(axis=tuple(i for i, b in enumerate(broad) if b), keepdims=True)
    # in the bias's shape: its leading dimensions from the (batch, head) ones it has
    compact = dbias_accum.reshape(dbias_accum.shape[4 - bias.ndim:]) if bias.ndim < 4 else dbias_accum
    return cupy.broadcast_to(compact, bias.shape).copy()


def _strides(prefix: str, bhs: tuple[int, int, int]) -> dict[str, int]:
    return {f"{prefix}_s{d}": st for d, st in zip("bhs", bhs)}


__all__ = ["attention_backward"]
