"""The backward pass: `attention_backward(dout, q, k, v, out, lse, ...)` -> (dq, dk, dv).

The spec is `flashcore_cupy.reference.attention_backward`. The arrays go through the forward's
validation (the same Problem, so the same mask and score options) and the checks of dout,
out, lse and the gradient buffers; then three launches on CuPy's current stream:
  1. bwd_prep (kernels/flash_bwd_steps.cu): delta = rowsum(dout * out) and the LSE in log2
     units (+inf for a row that saw no key), padded to whole query tiles, and the float32 dQ
     accumulator zeroed (with GQA, float32 dK / dV accumulators zeroed beside it);
  2. the main kernel: a CTA per key tile of one (batch, query head) over the query tiles that
     see it, dQ added into its accumulator by float32 reductions (deterministic=True: in key
     tile order, a semaphore per query tile). On H100/H200 at head dims up to 128:
     kernels/flash_bwd_sm90.cu (TMA, wgmma, warp specialisation), every option but those
     _choose leaves to kernels/flash_bwd_sm80.cu, which runs everything else;
  3. bwd_convert: dq = scale * dQ in the inputs' type (and GQA's dK / dV sums into dk, dv).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from . import api
from .configs import (SM90_BWD_HEAD_DIMS, Sm80BwdConfig, Sm90BwdConfig, bucket_head_dim, bwd_config, bwd_head_group,
                      sm90_bwd_width)
from .launch import Sm80BwdLaunch, Sm90BwdLaunch, StepLaunch, sm90_bwd_blocker
from .params import stride_values
from .validation import (Problem, TensorSpec, check_capability, check_lse, check_no_overlap, check_options,
                         check_out, check_problem, check_value_dim, layout_strides)


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
    deterministic=True: the same bits on every run (dQ's adds in a fixed order, GQA's and
    dbias's sums in order); the default adds with float32 atomics in whatever order they come.
    backend: "auto" (the Hopper kernel where it applies, else the portable one), "sm80" (the
    portable kernel) or "sm90" (the Hopper kernel, or a ValueError saying why it cannot run).
    Runs on CuPy's current stream, on the arrays' device.
    """
    key = _key(dout, q, k, v, out, lse, dq, dk, dv, causal, scale, window, softcap, alibi_slopes, bias, layout,
               deterministic, return_dbias, backend)
    try:
        plan = _plans.get(key) if key is not None else None
    except TypeError:   # an unhashable option: validation names it
        plan = None
    if plan is not None and (dq is not None or dk is not None or dv is not None) and _grads_overlap(
            _spans.get(key), (dout, q, k, v, out, lse, alibi_slopes, bias), (dq, dk, dv)):
        plan = None   # a gradient buffer over an input or another: validation raises, naming both
    if plan is None:
        plan, (dout, q, k, v, out, lse, dq, dk, dv, alibi_slopes, bias) = _validate(
            dout, q, k, v, out, lse, dq, dk, dv, causal, scale, window, softcap, alibi_slopes, bias, layout,
            deterministic, return_dbias, backend)
        if key is not None:
            if len(_plans) >= api._MAX_CACHED_LAUNCHES:
                _plans.clear()
                _spans.clear()
            _spans[key] = api._relative_spans(dout, q, k, v, out, lse, alibi_slopes, bias, dq, dk, dv)
            _plans[key] = plan
    return plan.run(dout, q, k, v, out, lse, dq, dk, dv, alibi_slopes, bias)


def _validate(dout, q, k, v, out, lse, dq, dk, dv, causal, scale, window, softcap, alibi_slopes, bias, layout,
              deterministic, return_dbias, backend):
    """Every check of a call before any launch, and the plan for its signature; with the arrays as
    CuPy arrays (DLPack ones converted; absent gradient buffers stay None)."""
    check_options(causal, scale, layout, False)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if not isinstance(return_dbias, bool):
        raise TypeError(f"return_dbias must be a bool, got {type(return_dbias).__name__}")
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
    check_value_dim(p, "attention_backward")
    check_out(spec(dout, "dout"), p)
    check_out(spec(out, "out"), p)
    check_lse(spec(lse, "lse"), p)
    grads, grad_strides = [], []
    for name, given, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        if given is not None:
            given = api._as_device_array(given, name)
            check_out(spec(given, name), p, shape=like.shape, like=name[1])
            grad_strides.append(layout_strides(spec(given, name), layout))
        else:   # a C-contiguous array of like's shape
            fresh = TensorSpec(name, like.shape, api._contiguous_strides(like.shape), like.dtype, p.device, 0)
            grad_strides.append(layout_strides(fresh, layout))
        grads.append(given)
    # the gradients are written while every input is read (and each other written)
    check_no_overlap([None if g is None else spec(g, n) for g, n in zip(grads, ("dq", "dk", "dv"))],
                     [spec(dout, "dout"), spec(q, "q"), spec(k, "k"), spec(v, "v"), spec(out, "out"), spec(lse, "lse"),
                      None if alibi_slopes is None else spec(alibi_slopes, "alibi_slopes"),
                      None if bias is None else spec(bias, "bias")])
    dev = api.device_info(p.device)
    check_capability(dev.capability, p.device)
    do_strides = layout_strides(spec(dout, "dout"), layout)
    config = _choose(p, dev.arch, do_strides, deterministic, backend)
    plan = _Plan.build(p, config, dev.arch, do_strides, layout_strides(spec(out, "out"), layout), *grad_strides,
                       deterministic, bool(return_dbias), None if bias is None else bias.shape,
                       _bhsd_view(k, layout).shape[2])
    return plan, (dout, q, k, v, out, lse, *grads, alibi_slopes, bias)


def _grads_overlap(spans: tuple | None, inputs: tuple, grads: tuple) -> bool:
    """Whether a given gradient buffer's bytes meet an input's or another buffer's, from the
    signature's relative spans (api._relative_spans: the inputs', then dq's, dk's, dv's) and the
    addresses alone; True where the spans are unknown."""
    if spans is None:
        return True
    ranges = [None if a is None or span is None or span[0] == span[1] else (a.data.ptr + span[0], a.data.ptr + span[1])
              for a, span in zip((*inputs, *grads), spans)]
    written, read = ranges[len(inputs):], ranges[:len(inputs)]
    for i, w in enumerate(written):
        if w is not None and any(r is not None and r[0] < w[1] and w[0] < r[1] for r in read + written[i + 1:]):
            return True
    return False


# Each kept plan's arrays' byte spans from their addresses (its signature fixes them).
_spans: dict[tuple, tuple] = {}


def _key(dout, q, k, v, out, lse, dq, dk, dv, causal, scale, window, softcap, alibi_slopes, bias, layout,
         deterministic, return_dbias, backend):
    """Everything validation looks at but the addresses, for CuPy arrays (None otherwise: such
    a call is validated every time); the forward's signature of q, k, v and out, and the rest."""
    sig = api._signature(q, k, v, out, causal, scale, layout, True, backend, window, softcap, alibi_slopes, bias)
    if sig is None:
        return None
    nd = api._NDARRAY
    descs = []
    for a in (dout, lse, dq, dk, dv):
        if a is None:
            descs.append(None)
            continue
        if type(a) is not nd or a.data.ptr & api._ALIGN_MASK:
            return None
        descs.append((a.shape, a._c_contiguous or a.strides, a.dtype, a.data.device_id))
    if descs[0] is None or descs[1] is None:
        return None
    return sig[0], *descs, deterministic, return_dbias


_BACKENDS = ("auto", "sm80", "sm90")


def _choose(p: Problem, arch: str, do_strides: tuple[int, int, int], deterministic: bool,
            backend: str) -> Sm80BwdConfig | Sm90BwdConfig:
    """The kernel for `p`: the Hopper one where it applies (backend "auto" or "sm90"), else the
    portable one. "auto" leaves it the Hopper tiles of head dim 64 with a softcap or a bias:
    there they spill and ptxas serialises their wgmma (a backend="sm90" call still runs them)."""
    blocker = None if backend == "sm80" else sm90_bwd_blocker(p, arch, do_strides, deterministic)
    if backend == "sm90" and blocker:
        raise ValueError(f"backend='sm90' cannot run this backward: {blocker}; use backend='auto'")
    head_dim = sm90_bwd_width(p.head_dim) if p.head_dim <= SM90_BWD_HEAD_DIMS[-1] else 0
    variant = p.kernel_variant
    spills = head_dim == 64 and (variant.softcap or variant.bias != "none")
    if backend == "sm80" or blocker or (backend == "auto" and spills):
        return bwd_config(p.dtype, bucket_head_dim(p.head_dim), variant)
    masked = p.causal or p.variant.mask(p.seqlen_q, p.seqlen_k)[1:] != (-1, -1)
    config = Sm90BwdConfig(p.dtype, head_dim, variant=variant)
    return replace(config, head_group=bwd_head_group(masked, p.heads_q, p.seqlen_q, config.d_pad))


@dataclass(frozen=True, eq=False)
class _Plan:
    """What a backward call does, for its signature: bwd_prep, the main kernel, bwd_convert
    (kernels/flash_bwd_steps.cu), each a prepared launch; `run` takes the arrays."""
    p: Problem
    config: Sm80BwdConfig | Sm90BwdConfig
    main: Sm80BwdLaunch | Sm90BwdLaunch
    prep: StepLaunch
    converts: tuple[StepLaunch, ...]   # dq's; with GQA dk's and dv's after it
    rows: int                        # rows per (batch, head) of the LSE, delta and dQ accumulator
    dq_cols: int
    deterministic: bool
    want_dbias: bool
    bias_shape: tuple | None
    keys: int                        # k's length (seqlen_k counts the ones the kernels read)

    @classmethod
    def build(cls, p: Problem, config, arch: str, do_strides, o_strides, dq_strides, dk_strides, dv_strides,
              deterministic: bool, want_dbias: bool, bias_shape, keys: int) -> "_Plan":
        hopper = isinstance(config, Sm90BwdConfig)
        rows = config.rows_pad(p.seqlen_q)
        # dQ's accumulator: the Hopper kernel's rows are whole 64-column blocks (its d_pad).
        dq_cols = config.d_pad if hopper else p.head_dim
        dbias_strides = _dbias_layout(p, bias_shape, deterministic)[1] if want_dbias else (0, 0, 0)
        if hopper:
            main = Sm90BwdLaunch.build(p, config, arch, dict(do=do_strides, dk=dk_strides, dv=dv_strides,
                                                             dbias=dbias_strides), deterministic)
        else:
            main = Sm80BwdLaunch.build(p, config, arch, dict(
                do=do_strides, dq=(p.heads_q * rows * dq_cols, rows * dq_cols, dq_cols), dk=dk_strides,
                dv=dv_strides, dbias=dbias_strides), deterministic)
        step = lambda kernel_, rows_, heads_, **scalars: StepLaunch.build(   # noqa: E731
            kernel_, p.dtype, p.device, arch, rows_, heads_, p.batch, dict(scalars, batch=p.batch))
        prep = step("bwd_prep", rows, p.heads_q, **stride_values("do", do_strides), **stride_values("o", o_strides),
                    seqlen_q=p.seqlen_q, rows_pad=rows, heads=p.heads_q, head_dim=p.head_dim, dq_cols=dq_cols)
        # dq = scale * dQ; GQA's sums into dk and dv (per kv head, or deterministic per query head
        # summed in order), keys past the kernels' -- top-left causal with Sq < Sk, which no
        # query sees -- as zeros.
        converts = [step("bwd_convert", p.seqlen_q, p.heads_q, **stride_values("dst", dq_strides), src_rows=rows,
                         src_ld=dq_cols, group=1, rows_valid=p.seqlen_q, rows=p.seqlen_q, heads=p.heads_q,
                         head_dim=p.head_dim, frag_rows=config.block_m if hopper else 0, factor=p.scale)]
        group = p.heads_q // p.heads_kv
        if group > 1:
            converts += [step("bwd_convert", keys, p.heads_kv, **stride_values("dst", st), src_rows=p.seqlen_k,
                              src_ld=p.head_dim, group=group if deterministic else 1, rows_valid=p.seqlen_k,
                              rows=keys, heads=p.heads_kv, head_dim=p.head_dim, frag_rows=0, factor=1.0)
                         for st in (dk_strides, dv_strides)]
        return cls(p, config, main, prep, tuple(converts), rows, dq_cols, deterministic, want_dbias, bias_shape,
                   keys)

    def run(self, dout, q, k, v, out, lse, dq, dk, dv, alibi_slopes, bias):
        import cupy

        p, f32 = self.p, cupy.float32
        with cupy.cuda.Device(p.device):
            stream = cupy.cuda.get_current_stream().ptr
            dq, dk, dv = (cupy.empty(like.shape, like.dtype) if g is None else g
                          for g, like in ((dq, q), (dk, k), (dv, v)))
            lse2, delta = cupy.empty((2, p.batch, p.heads_q, self.rows), f32)
            dq_accum = cupy.empty((p.batch, p.heads_q, self.rows, self.dq_cols), f32)
            self.prep.start((dout.data.ptr, out.data.ptr, lse.data.ptr, lse2.data.ptr, delta.data.ptr,
                             dq_accum.data.ptr), stream)
            # GQA: dK / dV accumulated in float32 per kv head (atomics over the group), or
            # deterministic per query head.
            acc_heads = p.heads_q if self.deterministic else p.heads_kv
            kv_accum = [cupy.zeros((p.batch, acc_heads, p.seqlen_k, p.head_dim), f32) for _ in range(2)] \
                if p.heads_q > p.heads_kv else [None, None]
            address = lambda a: 0 if a is None else a.data.ptr   # noqa: E731
            pointers = dict(lse=lse2.data.ptr, delta=delta.data.ptr, dq_accum=dq_accum.data.ptr, dk=dk.data.ptr,
                            dv=dv.data.ptr, dk_accum=address(kv_accum[0]), dv_accum=address(kv_accum[1]))
            dbias_accum = cupy.zeros(_dbias_layout(p, self.bias_shape, self.deterministic)[0], f32) \
                if self.want_dbias else None
            dq_sem = cupy.zeros((p.batch, p.heads_q, self.rows // self.config.block_m), cupy.int32) \
                if self.deterministic else None
            pointers.update(dbias=address(dbias_accum), dq_sem=address(dq_sem), alibi=address(alibi_slopes),
                            bias=address(bias))
            if isinstance(self.main, Sm90BwdLaunch):
                self.main.start((q.data.ptr, k.data.ptr, v.data.ptr, dout.data.ptr), pointers, stream)
            else:
                self.main.start(dict(pointers, q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, dout=dout.data.ptr), stream)
            self.converts[0].start((dq_accum.data.ptr, dq.data.ptr), stream)
            if kv_accum[0] is not None:
                for convert, accum, grad in zip(self.converts[1:], kv_accum, (dk, dv)):
                    convert.start((accum.data.ptr, grad.data.ptr), stream)
            elif self.keys > p.seqlen_k:
                for grad in (dk, dv):
                    _bhsd_view(grad, p.layout)[:, :, p.seqlen_k:] = 0
            dbias = None if dbias_accum is None else self._dbias(dbias_accum)
        return (dq, dk, dv, dbias) if self.want_dbias else (dq, dk, dv)

    def _dbias(self, dbias_accum):
        """The accumulator in the bias's shape: deterministic, its broadcast dimensions summed
        here; its leading dimensions from the (batch, head) ones the bias has."""
        import cupy

        if self.deterministic:
            broad = tuple(st == 0 for st in self.p.variant.bias[1])
            dbias_accum = dbias_accum.sum(axis=tuple(i for i, b in enumerate(broad) if b), keepdims=True)
        shape = self.bias_shape
        compact = dbias_accum.reshape(dbias_accum.shape[4 - len(shape):]) if len(shape) < 4 else dbias_accum
        return cupy.broadcast_to(compact, shape).copy()


def _dbias_layout(p: Problem, bias_shape: tuple, deterministic: bool):
    """(shape, kernel strides) of dbias's float32 accumulator: one row, head or batch where the
    bias broadcasts there (validation's Variant.bias strides: 0), the kernel adding as it comes;
    or deterministic, each element once into a full (B, Hq, Sq, Sk), summed by _Plan._dbias.
    Keys as the bias's."""
    broad = tuple(st == 0 for st in p.variant.bias[1])
    full = (p.batch, p.heads_q, p.seqlen_q)
    dims = tuple(1 if b and not deterministic else n for b, n in zip(broad, full)) + (bias_shape[-1],)
    return dims, tuple(0 if n == 1 else st for n, st in zip(dims[:3], api._contiguous_strides(dims)))


_plans: dict[tuple, _Plan] = {}   # per call signature (_key)



__all__ = ["attention_backward"]
