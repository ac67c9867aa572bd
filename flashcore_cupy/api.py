"""The public entry point: `attention(q, k, v, ...)`.

The first call with a given signature (shapes, strides, dtypes, device,
options) validates everything, picks and compiles the kernel and prepares a
launch (`Sm80FwdLaunch`, `Sm80VariantLaunch` or `Sm90FwdLaunch`) held by a `Plan`; later calls
with that signature check only what can change between them (the arrays' addresses) and
launch. `plan(q, k, v, **options)` returns that Plan without running it; `Plan.run` runs it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

try:   # the per-call path's CuPy entry points, bound once (the package imports without CuPy)
    import cupy as _cupy
    from cupy.cuda import get_current_stream as _current_stream
    from cupy.cuda.runtime import getDevice as _get_device
    _NDARRAY = _cupy.ndarray
except ImportError:
    _cupy = _current_stream = _get_device = _NDARRAY = None

from . import loader, tuning
from .configs import DispatchKey, Sm80FwdConfig, Sm90FwdConfig, choose_kernel, variant_config, with_value_dim
from .launch import Sm80FwdLaunch, Sm90FwdLaunch, SplitFwdLaunch, build_launch, sm90_blocker
from .validation import (Problem, TensorSpec, byte_span, check_capability, check_no_overlap, check_options, check_out,
                         check_problem, layout_strides)

Backend = Literal["auto", "sm80", "sm90"]
BACKENDS = ("auto", "sm80", "sm90")
_DLPACK_CUDA_DEVICES = (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
_ALIGN_MASK = 15                    # validation's 16-byte rule, rechecked per call
_MAX_CACHED_LAUNCHES = 4096


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
                      a.data.device_id, a.data.ptr)


class _StreamHandle:
    """A raw stream handle under the CUDA stream protocol (`__cuda_stream__`: version 0, handle)."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.handle


def external_stream(handle: int):
    """A CuPy stream over a stream another library owns (a raw cudaStream_t), not owning it: for
    `with external_stream(h):` around calls that should run there (the torch adapter: torch's
    current stream), through CuPy's Stream.from_external (CuPy >= 14, which the extras require;
    its ExternalStream is deprecated)."""
    return _cupy.cuda.Stream.from_external(_StreamHandle(handle))


class DeviceInfo(NamedTuple):
    name: str
    capability: tuple[int, int]
    arch: str        # NVRTC target
    num_sms: int


@functools.lru_cache(maxsize=None)
def device_info(device_id: int) -> DeviceInfo:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    capability = (props["major"], props["minor"])
    return DeviceInfo(props["name"].decode(), capability, loader.arch_for_capability(*capability),
                      props["multiProcessorCount"])


@functools.lru_cache(maxsize=None)
def tuned_table(device_id: int) -> tuple[tuple[DispatchKey, Sm80FwdConfig | Sm90FwdConfig], ...]:
    """This device's tuned tiles (see tuning.py), read once per process."""
    import cupy

    dev = device_info(device_id)
    table = tuning.load_table(dev.name, dev.capability, cupy.__version__, loader.nvrtc_version(),
                              dev.arch)
    return tuple(sorted(table.items()))


def choose(problem: Problem, device_id: int, backend: Backend) -> tuple[Sm80FwdConfig | Sm90FwdConfig, DeviceInfo]:
    """Which kernel runs this problem, and for which arch.

    "auto": the Hopper kernel where it can run (its small tiles where the large
    ones would leave SMs idle), else the portable one; "sm80": the portable
    kernel; "sm90": the Hopper kernel's large tiles, or a ValueError saying why
    it cannot run this problem.
    """
    dev = device_info(device_id)
    check_capability(dev.capability, device_id)
    blocker = None if backend == "sm80" else sm90_blocker(problem, dev.arch)
    if backend == "sm90" and blocker:
        raise ValueError(f"backend='sm90' cannot run this call: {blocker}; use backend='auto'")
    mode = "off" if backend == "sm80" or blocker else "force" if backend == "sm90" else "auto"
    config = choose_kernel(dev.arch, problem.dtype, max(problem.head_dim, problem.dv),
                           problem.batch * problem.heads_q, problem.seqlen_q, dev.num_sms,
                           tuned_table(device_id), mode)
    config = with_value_dim(config, problem.head_dim, problem.dv)
    _, left, right = problem.variant.mask(problem.seqlen_q, problem.seqlen_k)
    return variant_config(config, problem.kernel_variant, (left, right)), dev


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))


def _prepare(q, k, v, out, causal, scale, layout, return_lse, backend, config=None, defines=(),
             window=None, softcap=0.0, alibi_slopes=None, bias=None):
    """The slow path: convert, validate, choose (unless `config` is given) and compile.
    Returns (q, k, v, out, plan, pointers): the arrays as CuPy arrays, and the addresses the
    launch's `start` takes (q, k, v, and a variant's slopes and bias)."""
    check_options(causal, scale, layout, return_lse)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    q, k, v = _as_device_array(q, "q"), _as_device_array(k, "k"), _as_device_array(v, "v")
    if alibi_slopes is not None:
        alibi_slopes = _as_device_array(alibi_slopes, "alibi_slopes")
    if bias is not None:
        bias = _as_device_array(bias, "bias")
    problem = check_problem(_spec(q, "q"), _spec(k, "k"), _spec(v, "v"),
                            causal=causal, scale=scale, layout=layout, window=window, softcap=softcap,
                            alibi_slopes=None if alibi_slopes is None else _spec(alibi_slopes, "alibi_slopes"),
                            bias=None if bias is None else _spec(bias, "bias"))
    if out is not None:
        out = _as_device_array(out, "out")
        check_out(_spec(out, "out"), problem)
        check_no_overlap([_spec(out, "out")], [_spec(q, "q"), _spec(k, "k"), _spec(v, "v"),
                                               None if alibi_slopes is None else _spec(alibi_slopes, "alibi_slopes"),
                                               None if bias is None else _spec(bias, "bias")])
        o_strides = layout_strides(_spec(out, "out"), layout)
    else:
        o_strides = layout_strides(
            TensorSpec("out", problem.out_shape, _contiguous_strides(problem.out_shape),
                       q.dtype, problem.device, 0), layout)
    chosen, dev = choose(problem, problem.device, backend)
    if config is not None:
        _check_config_widths(config, problem)
        config = variant_config(config, problem.kernel_variant)
    launch = build_launch(problem, config or chosen, dev.arch, dev.num_sms, o_strides, return_lse, defines)
    options = dict(causal=causal, scale=scale, layout=layout, return_lse=return_lse, backend=backend,
                   window=window, softcap=softcap)
    sig = _signature(q, k, v, out, alibi_slopes=alibi_slopes, bias=bias, **options)
    spans = None if out is None else _relative_spans(q, k, v, alibi_slopes, bias, out)
    p = Plan(problem, launch, options, None if sig is None else sig[0], alibi_slopes is not None, bias is not None,
             spans)
    return q, k, v, out, p, _pointers(launch, q, k, v, alibi_slopes, bias)


def _check_config_widths(config: Sm80FwdConfig | Sm90FwdConfig, problem: Problem) -> None:
    """A given config must span the call's head dims: q's and k's, and v's (the portable kernel's
    one width covers both; the Hopper kernel's head_dim and dv each theirs). Columns past them
    load as zeros; columns short of them would go uncomputed."""
    d, dv = (config.head_dim, config.dv) if isinstance(config, Sm90FwdConfig) else (config.head_dim,) * 2
    if d < problem.head_dim or dv < problem.dv:
        raise ValueError(f"config {config} computes head dims up to D {d} and Dv {dv}; this call has D "
                         f"{problem.head_dim} and Dv {problem.dv}")


def _relative_spans(*arrays) -> tuple:
    """Each array's byte span (validation.byte_span) from its address (None for an absent one):
    they depend only on the signature, so the fast path checks `out=` against the inputs with
    the addresses alone (_out_overlaps)."""
    spans = []
    for a in arrays:
        if a is None:
            spans.append(None)
            continue
        lo, hi = byte_span(_spec(a, ""))
        spans.append((lo - a.data.ptr, hi - a.data.ptr))
    return tuple(spans)


def _out_overlaps(spans: tuple, ptrs: tuple[int, ...], out) -> bool:
    """Whether `out` (whose span is spans' last) shares bytes with an input at `ptrs` (q, k, v,
    then a variant's slopes and bias where the launch takes them; spans in that order)."""
    o = out.data.ptr
    o_lo, o_hi = o + spans[-1][0], o + spans[-1][1]
    for ptr, span in zip(ptrs, spans[:-1]):
        if span is not None and span[0] < span[1] and ptr + span[0] < o_hi and o_lo < ptr + span[1]:
            return o_lo < o_hi
    return False


def _pointers(launch, q, k, v, alibi_slopes, bias) -> tuple[int, ...]:
    qkv = (q.data.ptr, k.data.ptr, v.data.ptr)
    if not launch.extra_pointers:
        return qkv
    return qkv + (0 if alibi_slopes is None else alibi_slopes.data.ptr, 0 if bias is None else bias.data.ptr)


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated, compiled attention call. `plan(q, k, v, **options)` prepares what
    `attention(q, k, v, **options)` prepares on its first call (and is that call's plan: both
    keep it for the arrays' signature); `plan.run(q, k, v, ...)` launches it on arrays of the
    same shapes, strides, dtypes and device, at any addresses, on CuPy's current stream, with
    no validation beyond that match (so a CUDA graph can capture it).

    problem: the validated call (validation.Problem, its options in `problem.variant`);
    config: the kernel; launch: the prepared launch, which timing scripts call directly."""

    problem: Problem
    launch: Sm80FwdLaunch | Sm90FwdLaunch | SplitFwdLaunch   # the last: a long Sk's split-KV
    options: dict
    key: tuple | None       # the arrays' signature (_signature); None: not CuPy-keyable
    has_alibi: bool = False
    has_bias: bool = False
    spans: tuple | None = None   # with out=: the arrays' byte spans from their addresses (_relative_spans)

    @property
    def config(self) -> Sm80FwdConfig | Sm90FwdConfig:
        return self.launch.config

    def run(self, q: Any, k: Any, v: Any, *, out: Any = None, alibi_slopes: Any = None, bias: Any = None):
        """The planned call on these arrays: the output (and LSE, if the plan returns it)."""
        q, k, v = _as_device_array(q, "q"), _as_device_array(k, "k"), _as_device_array(v, "v")
        out = None if out is None else _as_device_array(out, "out")
        if (alibi_slopes is not None) != self.has_alibi or (bias is not None) != self.has_bias:
            raise ValueError("alibi_slopes and bias must be given exactly when the plan was made with them")
        alibi_slopes = None if alibi_slopes is None else _as_device_array(alibi_slopes, "alibi_slopes")
        bias = None if bias is None else _as_device_array(bias, "bias")
        sig = _signature(q, k, v, out, alibi_slopes=alibi_slopes, bias=bias, **self.options)
        if sig is None or sig[0] != self.key:
            raise ValueError("these arrays do not match the plan (their shapes, strides, dtypes, device, "
                             "16-byte alignment, or whether out is given): make a plan for them")
        if out is not None and _out_overlaps(self.spans, sig[1], out):
            check_no_overlap([_spec(out, "out")], [_spec(q, "q"), _spec(k, "k"), _spec(v, "v"),
                                                   None if alibi_slopes is None else _spec(alibi_slopes, "alibi_slopes"),
                                                   None if bias is None else _spec(bias, "bias")])
        ptrs = sig[1] if self.launch.extra_pointers else sig[1][:3]
        if _get_device() == self.launch.device:
            return _run(self.launch, ptrs, q.dtype, out)
        with _cupy.cuda.Device(self.launch.device):
            return _run(self.launch, ptrs, q.dtype, out)


def plan(q: Any, k: Any, v: Any, *, causal: bool | str = False, scale: float | None = None,
         window: tuple[int, int] | None = None, softcap: float = 0.0, alibi_slopes: Any = None,
         bias: Any = None, layout: Literal["bhsd", "bshd"] = "bhsd", return_lse: bool = False,
         out: Any = None, backend: Backend = "auto",
         config: Sm80FwdConfig | Sm90FwdConfig | None = None, defines: tuple[str, ...] = ()) -> Plan:
    """Validate, choose and compile `attention(q, k, v, **options)` without running it: the
    Plan attention uses for these arrays' signature (the same object). The arguments are
    attention's; the arrays give the signature (shapes, strides, dtypes, device; their data is
    not read). For tests, the tuner and probes: config runs the given kernel config instead of
    dispatch's (a portable one takes the call's variant); defines builds a diagnostic kernel
    (loader.nvrtc_options, e.g. ("FLASHCORE_RECORD_WORK=4096",)); such plans are not attention's
    and are not kept."""
    custom = config is not None or bool(defines)
    if not custom:
        sig = _signature(q, k, v, out, causal, scale, layout, return_lse, backend, window, softcap,
                         alibi_slopes, bias)
        try:
            found = _plans.get(sig[0]) if sig is not None else None
        except TypeError:   # an unhashable option (see _signature)
            found = None
        if found is not None:
            return found
    if config is not None:
        backend = _config_backend(config)
    p = _prepare(q, k, v, out, causal, scale, layout, return_lse, backend, config, defines,
                 window=window, softcap=softcap, alibi_slopes=alibi_slopes, bias=bias)[4]
    if not custom:
        _keep(p)
    return p


_launches: dict[tuple, Sm80FwdLaunch | Sm90FwdLaunch] = {}   # attention's fast path: key -> launch
_plans: dict[tuple, Plan] = {}                               # the same calls' plans


def _keep(p: Plan) -> None:
    if p.key is None:
        return
    if len(_launches) >= _MAX_CACHED_LAUNCHES:
        _launches.clear()
        _plans.clear()
    _launches[p.key] = p.launch
    _plans[p.key] = p


def _signature(q, k, v, out, causal, scale, layout, return_lse, backend, window=None, softcap=0.0,
               alibi_slopes=None, bias=None):
    """(key, (q, k, v addresses)) of a call, None when it is not for the fast path. The key
    holds everything validation looked at except the addresses; the addresses are read
    here once, for the alignment recheck and the launch. A C-contiguous array's strides
    stand as True: its shape decides every stride that validation and the kernels use
    (CuPy's flag ignores size-1 dimensions, whose strides neither does), and the flag is a
    third of a strides read (0.035 against 0.115 us on the H200's host).

    scale's type is part of the key: True, 1 and 1.0 hash alike, but validation refuses True.
    An unhashable option makes the key unhashable: the lookup's TypeError sends the call to
    validation, which names it.
    """
    nd = _NDARRAY
    if not (type(q) is nd and type(k) is nd and type(v) is nd and (out is None or type(out) is nd)
            and (type(causal) is bool or type(causal) is str) and type(return_lse) is bool):
        return None
    qd, kd, vd = q.data, k.data, v.data
    qkv = (qd.ptr, kd.ptr, vd.ptr)
    if (qkv[0] | qkv[1] | qkv[2] | (0 if out is None else out.data.ptr)) & _ALIGN_MASK:
        return None
    key = (q.shape, q._c_contiguous or q.strides, q.dtype, qd.device_id,
           k.shape, k._c_contiguous or k.strides, k.dtype, kd.device_id,
           v.shape, v._c_contiguous or v.strides, v.dtype, vd.device_id,
           None if out is None else (out.shape, out._c_contiguous or out.strides, out.dtype,
                                     out.data.device_id),
           causal, type(scale), scale, layout, return_lse, backend)
    if window is None and softcap == 0.0 and alibi_slopes is None and bias is None:
        return key, qkv
    # A variant: its options and arrays' layouts join the key; the arrays' addresses follow
    # q, k and v (0 for none), for launches that take them (Sm80VariantLaunch).
    arrays = []
    for a in (alibi_slopes, bias):
        if a is not None and type(a) is not nd:
            return None
        arrays.append(None if a is None else (a.shape, a.strides, a.dtype, a.data.device_id))
    return (key + (window, type(softcap), softcap, *arrays),
            qkv + (0 if alibi_slopes is None else alibi_slopes.data.ptr, 0 if bias is None else bias.data.ptr))


def attention(q: Any, k: Any, v: Any, *, causal: bool | str = False, scale: float | None = None,
              window: tuple[int, int] | None = None, softcap: float = 0.0, alibi_slopes: Any = None,
              bias: Any = None, layout: Literal["bhsd", "bshd"] = "bhsd", return_lse: bool = False,
              out: Any = None, backend: Backend = "auto"):
    """Fused scaled-dot-product attention, softmax(scale * q k^T + ...) v.

    q: (B, Hq, Sq, D) for layout="bhsd" (SDPA's), or (B, Sq, Hq, D) for "bshd"
    (flash_attn's); k, v: the same with Hkv heads and Sk keys, Hq a multiple of
    Hkv (GQA/MQA). float16 or bfloat16, any strides with a contiguous last dim.
    scale defaults to 1/sqrt(D). The options, in the order they apply (the spec is
    `flashcore_cupy.reference.attention`), with off = Sk - Sq (0 under top-left causal):
      softcap > 0: a score becomes softcap * tanh(scale * q.k / softcap) (flash_attn 2's);
      alibi_slopes: float32 (Hq,) or (B, Hq) on q's device; adds -slope * |i + off - j|;
      bias: added, broadcastable to (B, Hq, Sq, Sk) (batch and heads 1 or stride 0), q's
        dtype or float32, contiguous last dim;
      causal: False; True or "bottom_right" (key j visible to query i iff j <= i + off,
        flash_attn's); "top_left" (j <= i, SDPA's is_causal);
      window=(left, right): key j visible iff i + off - left <= j <= i + off + right, -1
        unbounded on that side (flash_attn's window_size); a causal mask sets right = 0.
    Rows that see no key give 0 (and LSE -inf). Variants run on both kernels.
    Runs on CuPy's current stream, on the arrays' device. Returns the output in
    q's dtype and layout, and with return_lse=True also the float32 log-sum-exp
    of shape (B, Hq, Sq). out= must not share memory with an input (a ValueError
    naming both: the kernel reads them while it writes it).
    backend: "auto" (the Hopper wgmma/TMA kernel on H100/H200 where it applies,
    else the portable mma.sync kernel), "sm80" (always the portable kernel) or
    "sm90" (always the Hopper kernel with its full-size tiles; a ValueError where
    it cannot run).
    """
    sig = _signature(q, k, v, out, causal, scale, layout, return_lse, backend, window, softcap,
                     alibi_slopes, bias)
    try:
        launch = _launches.get(sig[0]) if sig is not None else None
    except TypeError:   # an unhashable option (see _signature)
        sig = launch = None
    if launch is not None and out is not None:
        kept = _plans.get(sig[0])
        if kept is None or _out_overlaps(kept.spans, sig[1], out):
            launch = None   # out= over an input: validation raises, naming both
    if launch is None:
        q, k, v, out, p, qkv = _prepare(q, k, v, out, causal, scale, layout, return_lse, backend,
                                        window=window, softcap=softcap, alibi_slopes=alibi_slopes, bias=bias)
        _keep(p)
        launch = p.launch
    else:
        qkv = sig[1]
        if len(qkv) > 3 and not launch.extra_pointers:   # variant options that run plain
            qkv = qkv[:3]

    if _get_device() == launch.device:
        return _run(launch, qkv, q.dtype, out)
    with _cupy.cuda.Device(launch.device):
        return _run(launch, qkv, q.dtype, out)


def _config_backend(config: Sm80FwdConfig | Sm90FwdConfig) -> Backend:
    return "sm90" if isinstance(config, Sm90FwdConfig) else "auto"   # sm90 checks that it can run


# Outputs allocated ahead for the next call of a small launch: allocating after a
# launch overlaps the kernel, while allocating before it adds to the call's latency
# (an allocation is 1.7-2.3 us of the mission shape's ~13 us host time on the H200).
# Keyed by (launch, stream), since CuPy's pool hands memory out per stream; each
# spare is handed out once. Bounded in count and size.
_SPARE_MAX_ELEMENTS = 2 << 20
_MAX_SPARES = 8
_spares: dict[tuple, tuple] = {}


def _allocate(launch: Sm80FwdLaunch | Sm90FwdLaunch, dtype) -> tuple:
    """Uninitialised outputs from CuPy's pool: the ndarray constructor is `cupy.empty` without
    its wrapper (1.7 against 2.1 us on the H200's host)."""
    out = _cupy.ndarray(launch.out_shape, dtype)
    lse = None if launch.lse_shape is None else _cupy.ndarray(launch.lse_shape, _cupy.float32)
    return out, lse


def _run(launch: Sm80FwdLaunch | Sm90FwdLaunch, qkv: tuple[int, ...], dtype, out):
    """Outputs, then the launch on CuPy's current stream; `launch.device` is current.
    qkv: the inputs' addresses (a variant's arrays' after them); dtype: theirs and the output's."""
    stream = _current_stream(launch.device).ptr   # given the device, CuPy skips a cudaGetDevice
    spare_key = None
    if out is not None:
        lse = None if launch.lse_shape is None else _cupy.ndarray(launch.lse_shape, _cupy.float32)
    elif launch.out_elements <= _SPARE_MAX_ELEMENTS:
        spare_key = (launch, stream)
        out, lse = _spares.pop(spare_key, None) or _allocate(launch, dtype)
    else:
        out, lse = _allocate(launch, dtype)
    launch.start(qkv, out, lse, stream)
    if spare_key is not None:
        if len(_spares) >= _MAX_SPARES:
            with contextlib.suppress(KeyError):   # popitem is atomic; another thread may
                _spares.popitem()                 # have emptied the dict meanwhile
        _spares[spare_key] = _allocate(launch, dtype)
    return out if lse is None else (out, lse)
