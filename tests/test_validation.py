"""Every bad input is refused before a launch, naming the argument (CPU)."""

import ml_dtypes
import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy.validation import (TensorSpec, Variant, byte_span, check_capability, check_no_overlap,
                                       check_options, check_out, check_problem, spans_overlap)

F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)


def spec(name, shape, dtype=F16, device=0, strides=None, ptr=1 << 20):
    if strides is None:
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return TensorSpec(name, tuple(shape), tuple(strides), np.dtype(dtype), device, ptr)


def qkv(q_shape=(2, 8, 100, 64), kv_shape=(2, 2, 80, 64), **kw):
    return spec("q", q_shape, **kw), spec("k", kv_shape, **kw), spec("v", kv_shape, **kw)


def plan(q, k, v, layout="bhsd", causal=False, scale=None):
    return check_problem(q, k, v, causal=causal, scale=scale, layout=layout)


def test_any_batch_and_head_count_up_to_the_row_limit():
    """Past CUDA's 65535 on a grid's y and z the kernels fold (configs.fold_heads_batch)."""
    assert plan(*qkv((70000, 8, 100, 64), (70000, 2, 80, 64))).batch == 70000
    assert plan(*qkv((1, 70000, 16, 64), (1, 70000, 16, 64))).heads_q == 70000


def test_valid_gqa_problem_is_described():
    p = plan(*qkv())
    assert (p.batch, p.heads_q, p.heads_kv, p.seqlen_q, p.seqlen_k, p.head_dim) == (2, 8, 2, 100, 80, 64)
    assert p.scale == pytest.approx(1 / 8) and p.dtype == "fp16"
    assert p.q_strides == (8 * 100 * 64, 100 * 64, 64)


def test_v_may_have_a_head_dim_of_its_own():
    """Dv != D (MLA's 192 / 128): the output takes Dv; k and v agree on everything else."""
    q, k, _ = qkv((2, 8, 100, 192), (2, 2, 80, 192))
    p = plan(q, k, spec("v", (2, 2, 80, 128)))
    assert (p.head_dim, p.head_dim_v, p.dv, p.out_shape) == (192, 128, 128, (2, 8, 100, 128))
    assert plan(*qkv()).head_dim_v is None and plan(*qkv()).dv == 64
    p = plan(spec("q", (2, 100, 8, 64)), spec("k", (2, 80, 2, 64)), spec("v", (2, 80, 2, 256)), layout="bshd")
    assert p.out_shape == (2, 100, 8, 256)
    with pytest.raises(ValueError, match="k and v must have the same shape but for v's head_dim"):
        plan(q, k, spec("v", (2, 2, 81, 128)))
    with pytest.raises(ValueError, match="v has head_dim 100; expected a multiple of 8"):
        plan(q, k, spec("v", (2, 2, 80, 100)))
    with pytest.raises(ValueError, match="v has head_dim 264; expected a multiple of 8 between 8 and 256"):
        plan(q, k, spec("v", (2, 2, 80, 264)))


def test_bshd_layout_reads_seq_and_heads_swapped():
    q, k, v = qkv((2, 100, 8, 64), (2, 80, 2, 64))
    p = plan(q, k, v, layout="bshd")
    assert (p.heads_q, p.heads_kv, p.seqlen_q, p.seqlen_k) == (8, 2, 100, 80)
    assert p.q_strides == (100 * 8 * 64, 64, 8 * 64) and p.out_shape == (2, 100, 8, 64)


def test_bf16_and_strided_views_are_accepted():
    q, k, v = qkv(dtype=BF16)
    assert plan(q, k, v).dtype == "bf16"
    # q as a slice of a packed (B, S, 3, H, D) qkv buffer, bshd layout
    packed = spec("q", (2, 100, 8, 64), strides=(100 * 3 * 8 * 64, 3 * 8 * 64, 64, 1))
    assert plan(packed, spec("k", (2, 80, 2, 64)), spec("v", (2, 80, 2, 64)), layout="bshd").q_strides == (
        100 * 3 * 8 * 64, 64, 3 * 8 * 64)
    # a size-1 dimension's stride is never used: any value passes (CuPy calls such arrays
    # C-contiguous), while the same stride on a longer dimension does not
    odd = spec("q", (1, 8, 100, 64), strides=(7, 100 * 64, 64, 1))
    assert plan(odd, spec("k", (1, 2, 80, 64)), spec("v", (1, 2, 80, 64))).q_strides[0] == 7
    with pytest.raises(ValueError, match="aligned"):
        plan(spec("q", (2, 8, 100, 64), strides=(7, 100 * 64, 64, 1)), *qkv()[1:])


@pytest.mark.parametrize("make, exc, words", [
    (lambda: qkv(dtype=np.float32), TypeError, ["q", "float16 or bfloat16"]),
    (lambda: (spec("q", (2, 8, 100, 64)), spec("k", (2, 2, 80, 64), BF16), spec("v", (2, 2, 80, 64), BF16)),
     TypeError, ["one dtype"]),
    (lambda: (spec("q", (8, 100, 64)),) + qkv()[1:], ValueError, ["q", "4-D"]),
    (lambda: qkv((2, 8, 100, 64), (2, 3, 80, 64)), ValueError, ["multiple", "heads"]),
    (lambda: qkv((2, 8, 100, 64), (3, 2, 80, 64)), ValueError, ["batch"]),
    (lambda: qkv((2, 8, 100, 64), (2, 2, 80, 32)), ValueError, ["head_dim"]),
    (lambda: (qkv()[0], spec("k", (2, 2, 80, 64)), spec("v", (2, 2, 81, 64))), ValueError, ["k and v", "shape"]),
    (lambda: qkv((2, 8, 100, 60), (2, 2, 80, 60)), ValueError, ["head_dim", "multiple of 8"]),
    (lambda: qkv((2, 8, 100, 264), (2, 2, 80, 264)), ValueError, ["head_dim", "256"]),
    (lambda: qkv((2, 8, 0, 64), (2, 2, 80, 64)), ValueError, ["q", "empty"]),
    (lambda: qkv(device=None), ValueError, ["q", "host memory"]),
    (lambda: (spec("q", (2, 8, 100, 64), device=1),) + qkv()[1:], ValueError, ["one device"]),
    (lambda: (spec("q", (2, 8, 100, 64), strides=(51200, 6400, 1, 100)),) + qkv()[1:],
     ValueError, ["q", "contiguous last dimension"]),
    (lambda: (spec("q", (2, 8, 100, 64), strides=(51204, 6400, 64, 1)),) + qkv()[1:],
     ValueError, ["q", "aligned"]),
    (lambda: (spec("q", (2, 8, 100, 64), ptr=(1 << 20) + 2),) + qkv()[1:], ValueError, ["q", "aligned"]),
    (lambda: qkv((70000, 8, 4000, 64), (70000, 2, 80, 64)), ValueError, ["batch", "heads", "queries", "rows"]),
])
def test_bad_inputs_raise_naming_the_argument(make, exc, words):
    with pytest.raises(exc) as info:
        plan(*make())
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("out, exc, words", [
    (spec("out", (2, 8, 100, 64), BF16), TypeError, ["out", "dtype"]),
    (spec("out", (2, 100, 8, 64)), ValueError, ["out", "shape", "(2, 8, 100, 64)"]),
    (spec("out", (2, 8, 100, 64), device=None), ValueError, ["out", "host"]),
    (spec("out", (2, 8, 100, 64), device=3), ValueError, ["out", "device"]),
    (spec("out", (2, 8, 100, 64), strides=(51200, 6400, 1, 100)), ValueError, ["out", "contiguous"]),
])
def test_bad_out_buffers(out, exc, words):
    with pytest.raises(exc) as info:
        check_out(out, plan(*qkv()))
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(causal=1), TypeError, "causal"),
    (dict(return_lse="yes"), TypeError, "return_lse"),
    (dict(layout="bsdh"), ValueError, "layout"),
    (dict(scale="0.1"), TypeError, "scale"),
    (dict(scale=float("nan")), ValueError, "scale"),
])
def test_bad_options(kwargs, exc, word):
    args = dict(causal=False, scale=None, layout="bhsd", return_lse=False) | kwargs
    with pytest.raises(exc, match=word):
        check_options(**args)


def test_arch_below_sm80_is_refused():
    with pytest.raises(ValueError, match="compute capability 7.5.*sm_80"):
        check_capability((7, 5), 0)
    check_capability((8, 0), 0)
    check_capability((9, 0), 0)


def test_host_arrays_are_refused_by_the_public_api_without_touching_a_gpu():
    x = np.zeros((1, 1, 8, 64), np.float16)
    with pytest.raises(ValueError, match="q is a NumPy array in host memory"):
        fc.attention(x, x, x)


def test_cpu_dlpack_arrays_are_refused():
    class CpuDlpack:
        def __dlpack_device__(self):
            return (1, 0)   # kDLCPU

    with pytest.raises(ValueError, match="q is not on a CUDA device"):
        fc.attention(CpuDlpack(), CpuDlpack(), CpuDlpack())


def test_unknown_objects_are_a_type_error():
    with pytest.raises(TypeError, match="q must be a cupy.ndarray"):
        fc.attention([[1.0]], [[1.0]], [[1.0]])


def test_bad_backend_and_options_fail_first():
    x = np.zeros((1, 1, 8, 64), np.float16)
    with pytest.raises(ValueError, match="backend"):
        fc.attention(x, x, x, backend="triton")
    with pytest.raises(ValueError, match="layout"):
        fc.attention(x, x, x, layout="sbhd")


class _FakePtr:
    def __init__(self, ptr, device_id=0):
        self.ptr, self.device_id = ptr, device_id


class _FakeArray:
    """Stands in for cupy.ndarray in the fast-path signature (no GPU needed)."""

    def __init__(self, ptr=1 << 20, shape=(1, 2, 8, 64), strides=(2048, 1024, 128, 2)):
        self.shape, self.strides, self.dtype = shape, strides, np.dtype(np.float16)
        self._c_contiguous = strides == tuple(2 * int(np.prod(shape[i + 1:])) for i in range(4))
        self.data = _FakePtr(ptr)


def test_call_signature_fast_path_rules(monkeypatch):
    from flashcore_cupy import api

    monkeypatch.setattr(api, "_NDARRAY", _FakeArray)
    q, k, v = _FakeArray(), _FakeArray(2 << 20), _FakeArray(3 << 20)

    def key(*args):
        return api._signature(*args)[0]

    sig = api._signature(q, k, v, None, False, None, "bhsd", False, "auto")
    assert sig is not None and sig[1] == (1 << 20, 2 << 20, 3 << 20)   # the addresses, for the launch
    # addresses are not part of the key: other buffers of the same layout reuse the launch
    assert key(_FakeArray(5 << 20), k, v, None, False, None, "bhsd", False, "auto") == sig[0]
    assert key(q, k, v, None, True, None, "bhsd", False, "auto") != sig[0]
    assert key(_FakeArray(shape=(1, 2, 9, 64)), k, v, None, False, None, "bhsd", False, "auto") != sig[0]
    # C-contiguous arrays key on their shape; any other layout on its strides too
    padded = _FakeArray(strides=(4096, 2048, 256, 2))
    assert key(padded, k, v, None, False, None, "bhsd", False, "auto") not in (
        sig[0], key(_FakeArray(strides=(8192, 4096, 512, 2)), k, v, None, False, None, "bhsd", False, "auto"))
    # everything validation must see again takes the slow path
    assert api._signature(_FakeArray((1 << 20) + 8), k, v, None, False, None, "bhsd", False, "auto") is None
    assert api._signature(q, k, v, _FakeArray((4 << 20) + 8), False, None, "bhsd", False, "auto") is None
    assert api._signature(q, k, v, None, 1, None, "bhsd", False, "auto") is None          # causal not bool
    with pytest.raises(TypeError):   # an unhashable scale: attention's lookup falls back to validation
        hash(key(q, k, v, None, False, [0.1], "bhsd", False, "auto"))
    assert (key(q, k, v, None, False, True, "bhsd", False, "auto")
            != key(q, k, v, None, False, 1.0, "bhsd", False, "auto"))
    assert api._signature(np.zeros(1), k, v, None, False, None, "bhsd", False, "auto") is None


def test_plan_returns_the_calls_plan_without_preparing_again(monkeypatch):
    """fc.plan finds the Plan attention keeps for a signature (no validation, no compile);
    options or arrays that differ miss it."""
    from flashcore_cupy import api

    monkeypatch.setattr(api, "_NDARRAY", _FakeArray)
    q, k, v = _FakeArray(), _FakeArray(2 << 20), _FakeArray(3 << 20)
    kept = object()
    monkeypatch.setitem(api._plans, api._signature(q, k, v, None, True, None, "bhsd", False, "auto")[0], kept)
    prepared = []
    fresh = type("FreshPlan", (), {"key": None})()   # not kept: no signature
    monkeypatch.setattr(api, "_prepare", lambda *a, **kw: prepared.append(a) or (None,) * 4 + (fresh, None))
    assert fc.plan(q, k, v, causal=True) is kept and not prepared
    assert fc.plan(q, k, v) is fresh                     # other options: prepared anew
    assert fc.plan(q, k, v, causal=True, window=(4, 0)) is fresh   # a variant of it: prepared anew
    assert len(prepared) == 2


# Variants (window, softcap, ALiBi, bias): every bad argument named before any launch.
def _variant_problem(**kw):
    q, k, v = qkv()   # B 2, Hq 8, Sq 100, Sk 80
    return check_problem(q, k, v, causal=kw.pop("causal", False), scale=None, layout="bhsd", **kw)


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(window=(1,)), TypeError, "window"),
    (dict(window=(1.0, 2)), TypeError, "window"),
    (dict(window=(True, 2)), TypeError, "window"),
    (dict(window="16"), TypeError, "window"),
    (dict(window=(-2, 0)), ValueError, "window"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("nan")), ValueError, "softcap"),
    (dict(softcap=float("inf")), ValueError, "softcap"),
    (dict(softcap="5"), TypeError, "softcap"),
    (dict(softcap=True), TypeError, "softcap"),
    (dict(alibi_slopes=spec("alibi_slopes", (7,), np.float32)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=spec("alibi_slopes", (3, 8), np.float32)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=spec("alibi_slopes", (8,), F16)), TypeError, "alibi_slopes"),
    (dict(alibi_slopes=spec("alibi_slopes", (8,), np.float32, device=None)), ValueError, "alibi_slopes"),
    (dict(alibi_slopes=spec("alibi_slopes", (8,), np.float32, device=1)), ValueError, "alibi_slopes"),
    (dict(bias=spec("bias", (2, 8, 100, 81), F16)), ValueError, "bias"),
    (dict(bias=spec("bias", (2, 3, 100, 80), F16)), ValueError, "bias"),
    (dict(bias=spec("bias", (80,), F16)), ValueError, "bias"),
    (dict(bias=spec("bias", (1, 2, 8, 100, 80), F16)), ValueError, "bias"),
    (dict(bias=spec("bias", (100, 80), np.float64)), TypeError, "bias"),
    (dict(bias=spec("bias", (100, 80), BF16)), TypeError, "bias"),
    (dict(bias=spec("bias", (100, 80), F16, device=None)), ValueError, "bias"),
    (dict(bias=spec("bias", (100, 80), F16, device=1)), ValueError, "bias"),
    (dict(bias=spec("bias", (100, 80), F16, strides=(1, 100))), ValueError, "bias"),
])
def test_bad_variant_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        _variant_problem(**kwargs)


@pytest.mark.parametrize("causal", ["bottom-right", "TOP_LEFT", "", 1, None])
def test_unknown_causal_values(causal):
    with pytest.raises((TypeError, ValueError), match="causal"):
        check_options(causal, None, "bhsd", False)


def test_variants_are_one_frozen_value_with_the_kernel_they_need():
    from flashcore_cupy.configs import PLAIN, KernelVariant

    plain = _variant_problem()
    assert plain.variant == Variant() and plain.kernel_variant == PLAIN
    # options that are the plain mask compile no variant
    assert _variant_problem(window=(-1, 0)).kernel_variant == PLAIN and _variant_problem(window=(-1, 0)).causal
    assert _variant_problem(causal=True, window=(-1, 9)).kernel_variant == PLAIN
    q, k, v = qkv(kv_shape=(2, 2, 100, 64))   # Sq = Sk: top-left is bottom-right
    square = check_problem(q, k, v, causal="top_left", scale=None, layout="bhsd")
    assert square.kernel_variant == PLAIN and square.causal
    # Sq 100 != Sk 80: top-left is a window with off 0
    top_left = _variant_problem(causal="top_left")
    assert top_left.kernel_variant == KernelVariant(window=True) and not top_left.causal
    assert top_left.variant.mask(100, 80) == (0, -1, 0) and top_left.seqlen_k == 80
    # Sq 100 < Sk 300: no query sees past key 99, so the kernels read 100 keys; top-left is
    # then bottom-right, the plain causal kernel (a right-bounded window reads right more)
    q, k, v = qkv(kv_shape=(2, 2, 300, 64))
    short = check_problem(q, k, v, causal="top_left", scale=None, layout="bhsd")
    assert short.seqlen_k == 100 and short.kernel_variant == PLAIN and short.causal
    windowed = check_problem(q, k, v, causal=False, scale=None, layout="bhsd", window=(-1, 7))
    assert windowed.seqlen_k == 300 and windowed.kernel_variant == KernelVariant(window=True)   # bottom-right
    assert Variant(causal="top_left", window=(5, 7)).keys_seen(100, 300) == 100
    assert Variant(window=(5, 7)).keys_seen(100, 300) == 300
    assert Variant(causal="top_left").keys_seen(0, 300) == 300
    assert _variant_problem(causal=True, window=(16, 4)).variant.mask(100, 80) == (-20, 16, 0)
    full = _variant_problem(window=(3, 4), softcap=2.5,
                            alibi_slopes=spec("alibi_slopes", (2, 8), np.float32, strides=(8, 1)),
                            bias=spec("bias", (2, 1, 100, 80), np.float32, strides=(8000, 8000, 80, 1)))
    assert full.kernel_variant == KernelVariant(window=True, softcap=True, alibi=True, bias="fp32")
    assert full.variant.alibi == (8, 1) and full.variant.bias == ("fp32", (8000, 0, 80))
    with pytest.raises(Exception):
        full.variant.softcap = 1.0   # frozen
    # a (Hq,) slope vector and a 2-D bias broadcast: stride 0 on the missing dimensions
    broad = _variant_problem(alibi_slopes=spec("alibi_slopes", (8,), np.float32),
                             bias=spec("bias", (100, 80), F16))
    assert broad.variant.alibi == (0, 1) and broad.variant.bias == ("16bit", (0, 0, 80))


def test_variant_configs_name_their_policy_and_keep_registers_in_check():
    from flashcore_cupy.configs import KernelVariant, Sm80FwdConfig, variant_config

    base = Sm80FwdConfig("fp16", 64, 4, 2, 64, 3)
    assert base.name_expression == "fc::flash_fwd<fc::fp16, 64, 4, 2, 64, 3>"   # the plain kernel's, as before
    window = variant_config(base, KernelVariant(window=True))
    assert window.m_tiles == 2 and window.name_expression.endswith(", fc::Variant<false, false, 0>>")
    scored = variant_config(base, KernelVariant(window=True, softcap=True, bias="16bit"))
    assert scored.m_tiles == 1 and scored.name_expression.endswith(", fc::Variant<true, false, 1>>")
    with pytest.raises(ValueError, match="window"):
        KernelVariant(softcap=True)


def test_byte_spans_cover_every_element_whatever_the_strides():
    assert byte_span(spec("a", (2, 3, 4, 8))) == (1 << 20, (1 << 20) + 2 * 3 * 4 * 8 * 2)
    assert byte_span(spec("a", (2, 3), strides=(-3, 1), ptr=1000)) == (1000 - 6, 1000 + 6)   # reversed rows
    assert byte_span(spec("a", (4, 8), strides=(0, 1), ptr=64)) == (64, 64 + 16)            # broadcast rows
    assert byte_span(spec("a", (0, 8))) == (1 << 20, 1 << 20)                                # empty
    assert not spans_overlap((0, 10), (10, 20)) and spans_overlap((0, 11), (10, 20))
    assert not spans_overlap((5, 5), (0, 20))   # an empty span meets nothing


def test_an_output_over_an_input_raises_naming_both():
    q = spec("q", (1, 2, 64, 64), ptr=0x10000)
    k = spec("k", (1, 2, 64, 64), ptr=0x20000)
    check_no_overlap([spec("out", (1, 2, 64, 64), ptr=0x30000)], [q, k, None])
    with pytest.raises(ValueError, match="out overlaps k in memory"):
        check_no_overlap([spec("out", (1, 2, 64, 64), ptr=0x20000 + 1024)], [q, k])
    # q and k as interleaved views of one packed tensor are only read: never checked against each other
    check_no_overlap([], [spec("q", (2, 64), strides=(128, 1), ptr=0), spec("k", (2, 64), strides=(128, 1), ptr=128)])
    with pytest.raises(ValueError, match="dq overlaps dk in memory"):   # written twice
        check_no_overlap([spec("dq", (4, 64), ptr=0), spec("dk", (4, 64), ptr=256)], [])


@pytest.mark.parametrize("call, match", [
    (lambda a: fc.attention(a["q"], a["k"], a["v"], out=a["q"]), "out overlaps q"),
    (lambda a: fc.attention(a["packed"][:, :, :64], a["k"], a["v"], out=a["packed"][:, :, 32:96]), "out overlaps q"),
    (lambda a: fc.attention_backward(a["q"], a["q"], a["k"], a["v"], a["o"], a["lse"], dq=a["k"]), "dq overlaps k"),
    (lambda a: fc.merge_states(a["outs"], a["lses"], out=a["outs"][0]), "out overlaps outs"),
])
@pytest.mark.gpu
def test_the_ops_refuse_outputs_over_their_inputs(call, match):
    """On a GPU (the arrays are CuPy's): validation names both arrays, before any launch; the
    attention fast path (a signature seen with a separate out=) sends an aliased call back to it."""
    import cupy

    arrays = dict(q=cupy.zeros((1, 2, 64, 64), np.float16), k=cupy.zeros((1, 2, 64, 64), np.float16),
                  v=cupy.zeros((1, 2, 64, 64), np.float16), o=cupy.zeros((1, 2, 64, 64), np.float16),
                  lse=cupy.zeros((1, 2, 64), np.float32), packed=cupy.zeros((1, 2, 256, 64), np.float16),
                  outs=cupy.zeros((2, 4, 64), np.float32), lses=cupy.zeros((2, 4), np.float32))
    fc.attention(arrays["q"], arrays["k"], arrays["v"], out=cupy.empty_like(arrays["q"]))   # the fast path's signature
    with pytest.raises(ValueError, match=match):
        call(arrays)


class _At:
    """A stand-in for a CuPy array's address (a.data.ptr)."""

    def __init__(self, ptr):
        self.data = type("Data", (), {"ptr": ptr})()


def test_the_fast_paths_find_an_aliased_buffer_from_the_addresses_alone():
    """attention's and attention_kvcache's fast path (api._out_overlaps) and attention_backward's
    (backward._grads_overlap): the signature's relative spans plus this call's addresses."""
    from flashcore_cupy import api, backward

    spans = ((0, 1024), (0, 1024), (0, 1024), None, None, (0, 1024))   # q, k, v, slopes, bias, out
    assert not api._out_overlaps(spans, (0x1000, 0x2000, 0x3000), _At(0x4000))
    assert api._out_overlaps(spans, (0x1000, 0x2000, 0x3000), _At(0x2000 + 1000))
    assert not api._out_overlaps(spans, (0x1000, 0x2000, 0x3000), _At(0x1000 - 1024))   # ends where q starts
    grads = ((0, 64),) * 6 + (None, None) + ((0, 64),) * 3   # dout, q, k, v, out, lse, slopes, bias; dq, dk, dv
    inputs = tuple(_At(0x100 * i) for i in range(1, 7)) + (None, None)
    assert not backward._grads_overlap(grads, inputs, (_At(0x1000), _At(0x2000), None))
    assert backward._grads_overlap(grads, inputs, (_At(0x1000), _At(0x1000 + 32), None))   # dq over dk
    assert backward._grads_overlap(grads, inputs, (None, _At(0x300 + 8), None))             # dk over k
    assert backward._grads_overlap(None, inputs, (_At(0x1000), None, None))                 # unknown: validate
