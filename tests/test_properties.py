"""Property-based tests (hypothesis), CPU: validation of arbitrary arrays and options raises
nothing but ValueError/TypeError, and the float64 reference keeps the invariants its spec
implies (key order, a window over everything, merging two halves, one varlen sequence)."""

import ml_dtypes
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flashcore_cupy import reference  # noqa: E402
from flashcore_cupy.merge import check_merge  # noqa: E402
from flashcore_cupy.validation import TensorSpec, check_kvcache, check_problem, check_varlen  # noqa: E402

DTYPES = [np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int32, np.int64)]
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


@st.composite
def tensor_specs(draw, name):
    """Any array description: 0-5 dimensions of 0-300, any element strides (negative and zero
    too), any of six dtypes, on device 0, 1 or the host, at any address."""
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 300), min_size=ndim, max_size=ndim)))
    strides = tuple(draw(st.lists(st.integers(-5000, 5000), min_size=ndim, max_size=ndim)))
    if draw(st.booleans()):   # often contiguous, so that validation gets past the layout checks
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(ndim))
    return TensorSpec(name, shape, strides, draw(st.sampled_from(DTYPES)), draw(st.sampled_from([0, 0, 0, 1, None])),
                      draw(st.sampled_from([1 << 20, (1 << 20) + 4, 0])))


ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3))
WINDOWS = st.one_of(st.none(), st.tuples(st.integers(-3, 500), st.integers(-3, 500)), ANY,
                    st.lists(st.integers(-2, 5), max_size=3))
OPTIONS = dict(causal=st.one_of(st.sampled_from([False, True, "bottom_right", "top_left"]), ANY),
               scale=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), ANY),
               window=WINDOWS, softcap=st.one_of(st.floats(allow_nan=True, allow_infinity=True), ANY))


def _only_value_or_type_errors(check, *args, **kwargs):
    try:
        check(*args, **kwargs)
    except (ValueError, TypeError):
        pass


@SETTINGS
@given(q=tensor_specs("q"), k=tensor_specs("k"), v=tensor_specs("v"), layout=st.one_of(st.sampled_from(["bhsd", "bshd"]), ANY),
       alibi=st.one_of(st.none(), tensor_specs("alibi_slopes")), bias=st.one_of(st.none(), tensor_specs("bias")),
       **OPTIONS)
def test_attention_validation_raises_only_value_and_type_errors(q, k, v, layout, alibi, bias, causal, scale, window,
                                                                softcap):
    _only_value_or_type_errors(check_problem, q, k, v, causal=causal, scale=scale, layout=layout, window=window,
                               softcap=softcap, alibi_slopes=alibi, bias=bias)


@SETTINGS
@given(q=tensor_specs("q"), k=tensor_specs("k"), v=tensor_specs("v"), cu_q=tensor_specs("cu_seqlens_q"),
       cu_k=tensor_specs("cu_seqlens_k"), **OPTIONS)
def test_varlen_validation_raises_only_value_and_type_errors(q, k, v, cu_q, cu_k, causal, scale, window, softcap):
    _only_value_or_type_errors(check_varlen, q, k, v, cu_q, cu_k, causal=causal, scale=scale, window=window,
                               softcap=softcap, alibi_slopes=None)


@SETTINGS
@given(q=tensor_specs("q"), k=tensor_specs("k_cache"), v=tensor_specs("v_cache"), seqlens=tensor_specs("cache_seqlens"),
       table=st.one_of(st.none(), tensor_specs("block_table")), k_new=st.one_of(st.none(), tensor_specs("k_new")),
       v_new=st.one_of(st.none(), tensor_specs("v_new")), **OPTIONS)
def test_kvcache_validation_raises_only_value_and_type_errors(q, k, v, seqlens, table, k_new, v_new, causal, scale,
                                                              window, softcap):
    _only_value_or_type_errors(check_kvcache, q, k, v, seqlens, table, k_new, v_new, causal=causal, scale=scale,
                               window=window, softcap=softcap, alibi_slopes=None)


@SETTINGS
@given(parts=st.lists(tensor_specs("part"), min_size=2, max_size=4).filter(lambda p: len(p) in (2, 4)),
       out=st.one_of(st.none(), tensor_specs("out")), lse_out=st.one_of(st.none(), tensor_specs("lse_out")))
def test_merge_validation_raises_only_value_and_type_errors(parts, out, lse_out):
    _only_value_or_type_errors(check_merge, parts, out, lse_out)


# --- the reference's invariants -------------------------------------------------------------

@st.composite
def problems(draw, square=False):
    """Small random float64 problems: (q, k, v) in bhsd with GQA, and the seed-drawn sizes."""
    b, hkv, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sq, sk, d = draw(st.integers(1, 9)), draw(st.integers(1, 12)), draw(st.sampled_from([8, 16]))
    if square:
        sk = sq
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal((b, hkv * group, sq, d))
    k, v = (rng.standard_normal((b, hkv, sk, d)) for _ in range(2))
    return q, k, v


@SETTINGS
@given(problem=problems(), softcap=st.sampled_from([0.0, 2.0]), seed=st.integers(0, 1000))
def test_permuting_keys_with_their_values_leaves_the_output(problem, softcap, seed):
    q, k, v = problem
    perm = np.random.default_rng(seed).permutation(k.shape[2])
    want = reference.attention(q, k, v, softcap=softcap)
    got = reference.attention(q, k[:, :, perm], v[:, :, perm], softcap=softcap)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=problems(), causal=st.sampled_from([False, True, "top_left"]))
def test_a_window_over_every_key_is_no_window(problem, causal):
    q, k, v = problem
    wide = q.shape[2] + k.shape[2]
    want, want_lse = reference.attention(q, k, v, causal=causal, return_lse=True)
    for window in ((wide, wide), (-1, wide), (wide, -1), (-1, -1)):
        got, lse = reference.attention(q, k, v, causal=causal, window=window, return_lse=True)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))


@SETTINGS
@given(problem=problems(), split=st.integers(0, 12))
def test_merging_two_halves_of_the_keys_is_attention_over_all(problem, split):
    """Both halves' outputs and LSE (a half may be empty or see no key: 0 and -inf) merge into
    attention over every key."""
    q, k, v = problem
    split = min(split, k.shape[2])
    want, want_lse = reference.attention(q, k, v, return_lse=True, scale=0.3)
    halves = []
    for part in (slice(0, split), slice(split, None)):
        if k[:, :, part].shape[2] == 0:
            halves += [np.zeros(want.shape), np.full(want_lse.shape, -np.inf)]
        else:
            halves += list(reference.attention(q, k[:, :, part], v[:, :, part], return_lse=True, scale=0.3))
    got, lse = reference.merge_states(*halves)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12)


@SETTINGS
@given(problem=problems(), causal=st.booleans(), window=st.sampled_from([None, (2, 0), (3, 1)]))
def test_one_varlen_sequence_is_the_dense_reference(problem, causal, window):
    q, k, v = problem
    q, k, v = q[:1], k[:1], v[:1]
    want, want_lse = reference.attention(q, k, v, causal=causal, window=window, return_lse=True)
    cu_q, cu_k = np.array([0, q.shape[2]], np.int32), np.array([0, k.shape[2]], np.int32)
    packed = [x[0].transpose(1, 0, 2) for x in (q, k, v)]   # (S, H, D)
    got, lse = reference.attention_varlen(*packed, cu_q, cu_k, causal=causal, window=window, return_lse=True)
    np.testing.assert_allclose(got, want[0].transpose(1, 0, 2), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(lse, want_lse[0])
