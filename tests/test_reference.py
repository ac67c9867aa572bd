"""The float64 reference against a direct per-element formula (CPU)."""

import math

import ml_dtypes
import numpy as np
import pytest

from flashcore_cupy import reference


def direct(q, k, v, causal, scale, window=None, softcap=0.0, slopes=None, bias=None):
    """The reference's docstring, element by element (bhsd): for each query i, the keys j its
    mask keeps, each score built in the stated order, then softmax and the weighted sum."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    off = 0 if causal == "top_left" else Sk - Sq
    left, right = window or (-1, -1)
    if causal:
        right = 0
    out = np.zeros((B, Hq, Sq, v.shape[-1]))
    lse = np.full((B, Hq, Sq), -np.inf)
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            for i in range(Sq):
                keys, s = [], []
                for j in range(Sk):
                    if (left >= 0 and j < i + off - left) or (right >= 0 and j > i + off + right):
                        continue
                    x = scale * float(np.dot(q[b, h, i], k[b, hk, j]))
                    if softcap > 0:
                        x = softcap * math.tanh(x / softcap)
                    if slopes is not None:
                        x -= float(np.broadcast_to(slopes, (B, Hq))[b, h]) * abs(i + off - j)
                    if bias is not None:
                        x += float(np.broadcast_to(bias, (B, Hq, Sq, Sk))[b, h, i, j])
                    if x > -math.inf:
                        keys.append(j)
                        s.append(x)
                if not keys:
                    continue
                s = np.array(s)
                w = np.exp(s - s.max())
                out[b, h, i] = sum(wj * v[b, hk, j] for wj, j in zip(w, keys)) / w.sum()
                lse[b, h, i] = s.max() + math.log(w.sum())
    return out, lse


def _assert_same(got, want):
    (out, lse), (want_out, want_lse) = got, want
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    # (atol: an LSE near 0 differs in its last bits relative to itself, 1.1e-12 at 1.5e-4 in one draw)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D", [
    (1, 2, 2, 5, 5, 8), (2, 4, 2, 3, 7, 16), (1, 3, 1, 9, 4, 8), (1, 2, 1, 1, 6, 8)])
def test_matches_direct_formula(rng, B, Hq, Hkv, Sq, Sk, D, causal):
    q = rng.standard_normal((B, Hq, Sq, D))
    k = rng.standard_normal((B, Hkv, Sk, D))
    v = rng.standard_normal((B, Hkv, Sk, D))
    _assert_same(reference.attention(q, k, v, causal=causal, return_lse=True),
                 direct(q, k, v, causal, 1 / math.sqrt(D)))


def test_fully_masked_rows_are_zero_with_lse_minus_inf(rng):
    # Sq > Sk, causal bottom-right: query i sees keys j <= i - (Sq - Sk).
    q, k, v = (rng.standard_normal(s) for s in [(1, 1, 6, 8), (1, 1, 2, 8), (1, 1, 2, 8)])
    out, lse = reference.attention(q, k, v, causal=True, return_lse=True)
    assert np.all(out[0, 0, :4] == 0) and np.all(np.isneginf(lse[0, 0, :4]))
    assert np.all(np.isfinite(lse[0, 0, 4:]))
    np.testing.assert_allclose(out[0, 0, 4], v[0, 0, 0])   # the first visible row sees key 0 only


def test_bshd_layout_is_a_transpose(rng):
    q, k, v = (rng.standard_normal((2, 5, 4, 8)) for _ in range(3))
    got = reference.attention(q, k, v, layout="bshd", causal=True)
    want = reference.attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), causal=True)
    np.testing.assert_allclose(got, want.transpose(0, 2, 1, 3), rtol=1e-13, atol=1e-13)


def test_scale_and_q_positions(rng):
    q, k, v = (rng.standard_normal((1, 2, 7, 8)) for _ in range(3))
    full = reference.attention(q, k, v, causal=True, scale=0.3)
    rows = np.array([6, 0, 3])
    part = reference.attention(q, k, v, causal=True, scale=0.3, q_positions=rows)
    # atol: a different summation order moves entries near 0 by ~1e-16 (a CI run saw 9.6e-17)
    np.testing.assert_allclose(part, full[:, :, rows], rtol=1e-13, atol=1e-13)
    want, _ = direct(q, k, v, True, 0.3)
    np.testing.assert_allclose(full, want, rtol=1e-12, atol=1e-12)


def test_accepts_bfloat16_and_rel_error_rejects_nan(rng):
    q = rng.standard_normal((1, 1, 4, 8)).astype(ml_dtypes.bfloat16)
    out = reference.attention(q, q, q)
    assert out.dtype == np.float64
    assert reference.rel_error(out, out) == 0.0
    bad = out.copy()
    bad[0, 0, 0, 0] = np.nan
    assert reference.rel_error(bad, out) == math.inf
    assert reference.rel_error(out * 1.01, out) == pytest.approx(0.01)


VARIANTS = {
    "top_left": dict(causal="top_left"),
    "window": dict(window=(3, 2)),
    "window_left_only": dict(window=(2, -1)),
    "window_right_only": dict(window=(-1, 1)),
    "causal_window": dict(causal=True, window=(2, 5)),        # causal: right becomes 0
    "top_left_window": dict(causal="top_left", window=(1, -1)),
    "wide_window": dict(window=(1000, 1000)),
    "softcap": dict(softcap=2.5),
    "alibi": dict(alibi_slopes="heads"),
    "alibi_per_batch": dict(alibi_slopes="batch_heads"),
    "bias": dict(bias="full"),
    "bias_broadcast": dict(bias="rows_cols"),
    "softcap_alibi_bias_causal": dict(softcap=1.5, alibi_slopes="heads", bias="full", causal=True),
    "window_alibi_top_left": dict(window=(2, 1), alibi_slopes="batch_heads", causal="top_left"),
    "bias_masks_keys": dict(bias="minus_inf"),
}


def _options(rng, B, Hq, Sq, Sk, spec):
    opts = dict(spec)
    if opts.get("alibi_slopes") == "heads":
        opts["alibi_slopes"] = rng.uniform(0.01, 0.5, Hq).astype(np.float32)
    elif opts.get("alibi_slopes") == "batch_heads":
        opts["alibi_slopes"] = rng.uniform(0.01, 0.5, (B, Hq)).astype(np.float32)
    if opts.get("bias") == "full":
        opts["bias"] = rng.standard_normal((B, Hq, Sq, Sk))
    elif opts.get("bias") == "rows_cols":   # batch and heads broadcast (stride 0)
        opts["bias"] = np.broadcast_to(rng.standard_normal((1, 1, Sq, Sk)), (B, Hq, Sq, Sk))
    elif opts.get("bias") == "minus_inf":   # a float mask hiding some keys, whole rows included
        b = np.where(rng.random((B, 1, Sq, Sk)) < 0.4, -np.inf, 0.0)
        b[:, :, 0] = -np.inf
        opts["bias"] = b
    return opts


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D", [(1, 2, 1, 6, 6, 8), (2, 2, 2, 9, 4, 8), (1, 4, 2, 3, 10, 16)],
                         ids=["square", "more_queries", "more_keys"])
def test_variants_match_the_direct_formula(rng, variant, B, Hq, Hkv, Sq, Sk, D):
    q = rng.standard_normal((B, Hq, Sq, D))
    k = rng.standard_normal((B, Hkv, Sk, D))
    v = rng.standard_normal((B, Hkv, Sk, D))
    opts = _options(rng, B, Hq, Sq, Sk, VARIANTS[variant])
    causal = opts.pop("causal", False)
    want = direct(q, k, v, causal, 0.4, opts.get("window"), opts.get("softcap", 0.0),
                  opts.get("alibi_slopes"), opts.get("bias"))
    _assert_same(reference.attention(q, k, v, causal=causal, scale=0.4, return_lse=True, **opts), want)
    rows = np.array([Sq - 1, 0])   # sampled rows keep their positions for masks, ALiBi and bias
    part = reference.attention(q, k, v, causal=causal, scale=0.4, q_positions=rows, **opts)
    np.testing.assert_allclose(part, want[0][:, :, rows], rtol=1e-12, atol=1e-12)


def test_window_and_causal_alignments(rng):
    """Sq 4, Sk 7 (off = 3): the masks as sets of keys, row by row."""
    rows = np.arange(4)
    def keys(**kw):
        return [list(np.nonzero(r)[0]) for r in reference.visible(rows, 4, 7, **kw)]
    assert keys(causal=True) == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], list(range(7))]
    assert keys(causal="top_left") == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert keys(window=(1, 1)) == [[2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6]]
    assert keys(window=(1, 1), causal=True) == [[2, 3], [3, 4], [4, 5], [5, 6]]
    assert keys(window=(0, -1), causal="top_left") == [[0], [1], [2], [3]]
    assert keys(window=(-1, -1)) == keys() == [list(range(7))] * 4
    # Sq > Sk bottom-right: the first Sq - Sk rows see nothing
    assert [list(np.nonzero(r)[0]) for r in reference.visible(np.arange(3), 3, 1, causal=True)] == [[], [], [0]]


def test_options_that_change_nothing(rng):
    q, k, v = (rng.standard_normal((2, 2, 5, 8)) for _ in range(3))
    plain = reference.attention(q, k, v, causal=True)
    np.testing.assert_allclose(reference.attention(q, k, v, causal=True, window=(100, 100)), plain, rtol=1e-13)
    np.testing.assert_allclose(reference.attention(q, k, v, causal=True, window=(-1, -1)), plain, rtol=1e-13)
    np.testing.assert_allclose(reference.attention(q, k, v, causal="top_left"), plain, rtol=1e-13)   # Sq = Sk
    np.testing.assert_allclose(reference.attention(q, k, v, causal=True, alibi_slopes=np.zeros(2)), plain,
                               rtol=1e-13)
    np.testing.assert_allclose(reference.attention(q, k, v, causal="bottom_right"), plain, rtol=1e-13)
    np.testing.assert_allclose(reference.attention(q, k, v, causal=True, softcap=1e9), plain, rtol=1e-9)
    slopes = rng.uniform(0, 1, 2)
    np.testing.assert_allclose(reference.attention(q, k, v, alibi_slopes=slopes),
                               reference.attention(q, k, v, alibi_slopes=np.tile(slopes, (2, 1))), rtol=1e-13)


def test_bad_variant_arguments_are_named():
    q = np.zeros((1, 1, 2, 8))
    with pytest.raises(ValueError, match="causal"):
        reference.attention(q, q, q, causal="upper")
    with pytest.raises(ValueError, match="softcap"):
        reference.attention(q, q, q, softcap=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        reference.attention(q, q, q, softcap=float("nan"))


def _finite_difference(f, x, eps=1e-6):
    """d f / d x by central differences, element by element."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + eps
        up = f()
        x[i] = keep - eps
        down = f()
        x[i] = keep
        grad[i] = (up - down) / (2 * eps)
    return grad


BACKWARD_OPTIONS = {
    "plain": dict(),
    "causal": dict(causal=True),
    "top_left_window": dict(causal="top_left", window=(1, -1)),
    "softcap_alibi": dict(softcap=1.3, alibi_slopes=np.array([0.3, 0.1])),
    "bias": dict(bias="full"),
    "broadcast_bias_causal": dict(bias="rows_cols", causal=True),
    "masked_rows": dict(causal=True, bias="minus_inf_row"),
}


@pytest.mark.parametrize("name", sorted(BACKWARD_OPTIONS))
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_backward_matches_finite_differences(rng, name, layout):
    """The loss sum(dout * attention(q, k, v)): the reference's dq, dk, dv (and dbias) against
    central differences of the forward reference, GQA (2 query heads on 1 kv head), Sq 5 > Sk 4
    (bottom-right causal hides the first row), Dv 3 != D 4."""
    b, hq, hkv, sq, sk, d, dv = 1, 2, 1, 5, 4, 4, 3
    opts = dict(BACKWARD_OPTIONS[name])
    if opts.get("bias") == "full":
        opts["bias"] = rng.standard_normal((b, hq, sq, sk))
    elif opts.get("bias") == "rows_cols":
        opts["bias"] = rng.standard_normal((1, 1, sq, sk))
    elif opts.get("bias") == "minus_inf_row":
        opts["bias"] = np.zeros((b, 1, sq, sk))
        opts["bias"][0, 0, 3] = -np.inf   # a row hidden by the bias: no gradient through it
    def dims(h, s, dd):
        return (b, h, s, dd) if layout == "bhsd" else (b, s, h, dd)
    q, k = rng.standard_normal(dims(hq, sq, d)), rng.standard_normal(dims(hkv, sk, d))
    v, dout = rng.standard_normal(dims(hkv, sk, dv)), rng.standard_normal(dims(hq, sq, dv))
    out, lse = reference.attention(q, k, v, layout=layout, return_lse=True, **opts)

    def loss():
        return float((dout * reference.attention(q, k, v, layout=layout, **opts)).sum())

    bias = opts.get("bias")
    got = reference.attention_backward(dout, q, k, v, out, lse, layout=layout,
                                       return_dbias=bias is not None, **opts)
    for x, g in zip((q, k, v), got[:3]):
        assert g.shape == x.shape
        np.testing.assert_allclose(g, _finite_difference(loss, x), rtol=1e-6, atol=1e-7)
    if bias is not None and np.isfinite(bias).all():
        np.testing.assert_allclose(got[3], _finite_difference(loss, bias), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_sampled_backward_is_the_whole_reference_on_its_rows_and_keys(rng, layout):
    """attention_backward_sampled: dq of the picked rows and dk, dv of the picked keys equal the
    whole reference's, with every option on, GQA and Sq != Sk."""
    b, hq, hkv, sq, sk, d = 2, 4, 2, 37, 29, 8
    dims = (lambda h, s: (b, h, s, d)) if layout == "bhsd" else (lambda h, s: (b, s, h, d))
    q, k, v = rng.standard_normal(dims(hq, sq)), rng.standard_normal(dims(hkv, sk)), rng.standard_normal(dims(hkv, sk))
    dout = rng.standard_normal(dims(hq, sq))
    opts = dict(causal="top_left", window=(9, 3), softcap=2.0, alibi_slopes=rng.uniform(0, 0.3, hq),
                bias=rng.standard_normal((1, hq, sq, sk)), layout=layout)
    out, lse = reference.attention(q, k, v, return_lse=True, **opts)
    whole = reference.attention_backward(dout, q, k, v, out, lse, **opts)
    if layout == "bshd":
        whole = tuple(g.transpose(0, 2, 1, 3) for g in whole)
    rows, keys = np.array([0, 5, 36, 17]), np.array([28, 0, 3, 11])
    dq, dk, dv = reference.attention_backward_sampled(dout, q, k, v, out, lse, rows, keys, **opts)
    np.testing.assert_allclose(dq, whole[0][:, :, rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, whole[1][:, :, keys], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dv, whole[2][:, :, keys], rtol=1e-12, atol=1e-12)


def test_backward_gqa_sums_the_group_and_dbias_sums_broadcast_dimensions(rng):
    q, k, v = rng.standard_normal((2, 4, 3, 8)), rng.standard_normal((2, 2, 5, 8)), rng.standard_normal((2, 2, 5, 8))
    dout = rng.standard_normal((2, 4, 3, 8))
    base = rng.standard_normal((1, 1, 3, 5))
    views = {"size_1": base, "stride_0": np.broadcast_to(base, (2, 4, 3, 5)), "full": np.tile(base, (2, 4, 1, 1))}
    grads = {}
    for name, bias in views.items():
        out, lse = reference.attention(q, k, v, bias=bias, return_lse=True)
        grads[name] = reference.attention_backward(dout, q, k, v, out, lse, bias=bias, return_dbias=True)
        assert grads[name][3].shape == bias.shape
    np.testing.assert_allclose(grads["stride_0"][3], np.broadcast_to(grads["size_1"][3], (2, 4, 3, 5)))
    np.testing.assert_allclose(grads["full"][3].sum(axis=(0, 1), keepdims=True), grads["size_1"][3])
    # GQA: a kv head's dk is the sum over its query heads, as with each query head given its own copy
    out, lse = reference.attention(q, k, v, return_lse=True)
    dq, dk, dv = reference.attention_backward(dout, q, k, v, out, lse)
    k_rep, v_rep = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    _, dk_rep, dv_rep = reference.attention_backward(dout, q, k_rep, v_rep, out, lse)
    np.testing.assert_allclose(dk, dk_rep.reshape(2, 2, 2, 5, 8).sum(axis=2), rtol=1e-12)
    np.testing.assert_allclose(dv, dv_rep.reshape(2, 2, 2, 5, 8).sum(axis=2), rtol=1e-12)
    with pytest.raises(ValueError, match="bias"):
        reference.attention_backward(dout, q, k, v, out, lse, return_dbias=True)


@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("window", [None, (0, 0), (5, 2), (-1, 3), (40, -1), (1000, 1000)])
@pytest.mark.parametrize("sq, sk", [(1, 1), (17, 40), (40, 17), (64, 64)])
def test_visible_pairs_counts_the_mask(causal, window, sq, sk):
    """The benchmark's FLOPs: the count from each row's interval equals the mask's."""
    assert reference.visible_pairs(sq, sk, causal, window) == int(
        reference.visible(np.arange(sq), sq, sk, causal, window).sum())


def test_variant_rows_of_the_shape_list():
    """bench_shapes v2: its variant rows carry attention's options, FLOPs of visible pairs
    (2 pairs (D + Dv)), and a plain twin with causal kept."""
    from flashcore_cupy.shapes import bench_shapes

    rows = {s.name: s for s in bench_shapes()}
    w = rows["window1k-b2-h16-s8k-d128"]
    assert w.is_variant and w.window == (1023, 0) and w.causal_arg is True
    per_head = sum(min(i, 1023) + 1 for i in range(8192))
    assert w.flops == 2 * 2 * 16 * per_head * 256
    assert not w.plain().is_variant and w.plain().causal and w.plain().flops == 2 * 2 * 16 * (8192 * 8193 // 2) * 256
    t = rows["topleft-b4-h16-sq1k-sk4k-d128-causal"]
    assert t.causal_arg == "top_left" and t.plain().causal_arg is True
    mla = rows["mla-b2-h16-s4k-d192-dv128-causal"]   # the forward runs Dv != D; the backward does not
    assert mla.unsupported() is None and "attention_backward" in mla.unsupported(backward=True)
    assert rows["paged16-decode-b8-h32kv8-s8k-d128"].unsupported() is None   # the benchmark runs the KV-cache op
    assert rows["b2-h16-s4k-d128"].unsupported() is None and not rows["b2-h16-s4k-d128"].is_variant
