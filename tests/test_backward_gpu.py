"""attention_backward on a GPU against the float64 reference (the spec), and SDPA's gradients'
error where torch is there."""

import itertools

import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import api, reference
from test_attention_gpu import make_inputs
from test_variants_gpu import _options

pytestmark = pytest.mark.gpu

GRAD_TOL = {"fp16": 5e-3, "bf16": 2e-2}
LENGTHS = [(1, 1), (7, 7), (63, 65), (64, 64), (65, 63), (127, 239), (239, 127), (799, 1000), (1000, 799)]
HEADS = [(1, 3, 3), (2, 4, 2), (2, 5, 1)]   # MHA, GQA, MQA


def _backward(inputs, layout, backend="auto", **opts):
    """flashcore's gradients of `inputs` (q, k, v, dout, out, lse) written into NaN-poisoned
    buffers."""
    import cupy

    q, k, v, dout, out, lse = inputs
    bufs = [cupy.full(x.shape, np.nan, dtype=x.dtype) for x in (q, k, v)]
    got = fc.attention_backward(dout, q, k, v, out, lse, layout=layout, dq=bufs[0], dk=bufs[1], dv=bufs[2],
                                backend=backend, **opts)
    assert all(g is b for g, b in zip(got, bufs))
    return got


def _grads(rng, dtype, d, layout, heads, lengths, **opts):
    """Inputs, the forward's out and LSE, a fresh dout, flashcore's gradients (dispatch's
    kernel) and the float64 reference's."""
    q, k, v = make_inputs(rng, dtype, d, layout, heads, lengths)
    out, lse = fc.attention(q, k, v, return_lse=True, layout=layout, **opts)
    dout = make_inputs(rng, dtype, d, layout, heads, lengths)[0]
    inputs = (q, k, v, dout, out, lse)
    ref = reference.attention_backward(dout, q, k, v, out, lse, layout=layout, **opts)
    return inputs, _backward(inputs, layout, **opts), ref


def _assert_grads(got, ref, dtype, what):
    for name, g, r in zip(("dq", "dk", "dv"), got, ref):
        err = reference.rel_error(g, r)
        assert err <= GRAD_TOL[dtype], f"{what} {name}: rel err {err:.3e} > {GRAD_TOL[dtype]}"


def _cases():
    """dtype x head dim x causal x layout, each over every length with the head layouts in turn
    (the float64 reference bounds how many cases a suite affords); the other head dims once."""
    for i, (dtype, d, causal, layout) in enumerate(itertools.product(("fp16", "bf16"), (64, 128), (False, True),
                                                                       ("bhsd", "bshd"))):
        yield dtype, d, causal, layout, LENGTHS, HEADS[i % len(HEADS)]
    for dtype, d in itertools.product(("fp16", "bf16"), (32, 96, 160, 256)):
        yield dtype, d, True, "bhsd", [(239, 300)], (2, 4, 2)


CASES = list(_cases())


@pytest.mark.parametrize("dtype, d, causal, layout, all_lengths, heads", CASES,
                         ids=[f"{c[0]}-D{c[1]}-causal{c[2]}-{c[3]}-{len(c[4])}" for c in CASES])
def test_gradients_match_reference(rng, dtype, d, causal, layout, all_lengths, heads):
    """Poisoned dq, dk, dv against the float64 reference: Sq < Sk, Sq > Sk, ragged tiles, MHA,
    GQA and MQA, both layouts."""
    for lengths in all_lengths:
        h = (1, 2, 1) if max(lengths) > 500 else heads   # bounds the reference's time
        inputs, got, ref = _grads(rng, dtype, d, layout, h, lengths, causal=causal)
        what = f"{dtype} D{d} causal={causal} {layout} {h} {lengths}"
        _assert_grads(got, ref, dtype, what)
        # On H100/H200 dispatch ran the Hopper kernel up to D128: the portable one on the same inputs.
        _assert_grads(_backward(inputs, layout, backend="sm80", causal=causal), ref, dtype, what + " sm80")


VARIANT_CASES = [(True, (64, 0), "none"), ("top_left", None, "none"), (False, (33, 70), "none"),
                 (False, None, "softcap"), (True, None, "alibi"), (False, None, "bias16"),
                 (False, None, "bias32"), (True, (100, 0), "all"), ("top_left", (20, -1), "all")]


@pytest.mark.parametrize("causal, window, option", VARIANT_CASES, ids=[str(c) for c in VARIANT_CASES])
def test_variant_gradients_match_reference(rng, causal, window, option):
    for dtype, d, lengths in (("fp16", 64, (200, 77)), ("bf16", 128, (77, 300)), ("fp16", 128, (799, 1000))):
        heads = (2, 4, 2)
        opts = _options(rng, option, dtype, heads, lengths, per_batch=True)
        inputs, got, ref = _grads(rng, dtype, d, "bhsd", heads, lengths, causal=causal, window=window, **opts)
        what = f"{dtype} D{d} causal={causal} window={window} {option} {lengths}"
        _assert_grads(got, ref, dtype, what)
        # On H100/H200 dispatch ran the Hopper kernel (the portable one for a softcap or bias at
        # D64): both kernels on the same inputs.
        _assert_grads(_backward(inputs, "bhsd", backend="sm80", causal=causal, window=window, **opts), ref, dtype,
                      what + " sm80")
        if api.device_info(0).arch == "sm_90a":
            _assert_grads(_backward(inputs, "bhsd", backend="sm90", causal=causal, window=window, **opts), ref,
                          dtype, what + " sm90")


def test_the_hopper_backward_at_head_dims_96_and_256(rng):
    """D96's tiles (GEMMs 96 wide in rows padded to 128; D80 on them too) and the split-head-dim
    tiles (64 keys a CTA shared by both consumers, dK's and dV's columns split between them, dQ's
    blocks added from registers): D256 and D192 (padded), MHA, GQA and MQA, Sq < Sk and Sq > Sk
    with ragged tiles, causal or not, both dtypes, then a case per variant option at D256, on
    backend="sm90" against the reference; deterministic=True at D256 goes to the portable kernel
    (auto) or raises (sm90)."""
    import cupy

    if api.device_info(0).arch != "sm_90a":
        pytest.skip("the Hopper backward needs an sm_90 GPU (H100/H200)")
    cases = [("fp16", 96, True, (2, 4, 2), (127, 239)), ("bf16", 80, False, (1, 3, 3), (63, 65)),
             ("fp16", 256, False, (1, 3, 3), (63, 65)), ("bf16", 256, True, (2, 4, 2), (127, 239)),
             ("fp16", 256, True, (2, 5, 1), (239, 127)), ("bf16", 192, False, (2, 4, 2), (200, 333)),
             ("fp16", 256, "top_left", (1, 2, 1), (1000, 799))]
    for dtype, d, causal, heads, lengths in cases:
        q, k, v = make_inputs(rng, dtype, d, "bhsd", heads, lengths)
        out, lse = fc.attention(q, k, v, return_lse=True, causal=causal)
        dout = make_inputs(rng, dtype, d, "bhsd", heads, lengths)[0]
        inputs = (q, k, v, dout, out, lse)
        ref = reference.attention_backward(dout, q, k, v, out, lse, causal=causal)
        _assert_grads(_backward(inputs, "bhsd", backend="sm90", causal=causal), ref, dtype,
                      f"{dtype} D{d} causal={causal} {heads} {lengths} sm90")
    for causal, window, option in VARIANT_CASES:
        heads, lengths = (2, 4, 2), (150, 220)
        opts = _options(rng, option, "bf16", heads, lengths, per_batch=True)
        q, k, v = make_inputs(rng, "bf16", 256, "bhsd", heads, lengths)
        out, lse = fc.attention(q, k, v, return_lse=True, causal=causal, window=window, **opts)
        dout = make_inputs(rng, "bf16", 256, "bhsd", heads, lengths)[0]
        ref = reference.attention_backward(dout, q, k, v, out, lse, causal=causal, window=window, **opts)
        _assert_grads(_backward((q, k, v, dout, out, lse), "bhsd", backend="sm90", causal=causal, window=window,
                                **opts), ref, "bf16", f"D256 causal={causal} window={window} {option} sm90")
    with pytest.raises(ValueError, match="deterministic=True at head_dim 256"):
        _backward(inputs, "bhsd", backend="sm90", causal="top_left", deterministic=True)
    a = _backward(inputs, "bhsd", causal="top_left", deterministic=True)
    b = _backward(inputs, "bhsd", causal="top_left", deterministic=True)
    assert all(bool(cupy.array_equal(x, y)) for x, y in zip(a, b))


def test_gradients_within_twice_sdpa_error(rng):
    """SDPA's backward (math, float32 inputs where it fits; else its default) on the same fp16
    inputs: ours within 2x its error for each gradient."""
    torch = pytest.importorskip("torch")
    for causal, d in itertools.product((False, True), (64, 128)):
        inputs, got, ref = _grads(rng, "fp16", d, "bhsd", (1, 4, 4), (300, 300), causal=causal)
        q, k, v, dout, out, lse = inputs
        tq, tk, tv = (torch.from_dlpack(x).detach().requires_grad_() for x in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        o.backward(torch.from_dlpack(dout))
        for backend, grads in (("auto", got), ("sm80", _backward(inputs, "bhsd", backend="sm80", causal=causal))):
            for name, g, t, r in zip(("dq", "dk", "dv"), grads, (tq, tk, tv), ref):
                sdpa = reference.rel_error(t.grad.float().cpu().numpy(), r)
                ours = reference.rel_error(g, r)
                assert ours <= max(2 * sdpa, 1e-6), \
                    f"{backend} causal={causal} D{d} {name}: {ours:.3e} > 2x SDPA's {sdpa:.3e}"


def test_every_element_is_written_and_repeats_stay_close(rng):
    """Poisoned buffers come back finite everywhere (keys no query sees get 0), and a second
    run's gradients match the first within the atomics' rounding."""
    import cupy

    (q, k, v, dout, out, lse), got, ref = _grads(rng, "bf16", 64, "bshd", (2, 4, 2), (100, 400), causal="top_left")
    assert all(bool(cupy.isfinite(g).all()) for g in got)
    assert bool((got[1][:, 100:] == 0).all()) and bool((got[2][:, 100:] == 0).all())
    again = fc.attention_backward(dout, q, k, v, out, lse, layout="bshd", causal="top_left")
    for a, b in zip(got, again):
        assert reference.rel_error(a, b.get().astype(np.float64)) < 1e-2


@pytest.mark.parametrize("shape", [(1, 4, 120, 90), (2, 1, 120, 90), (120, 90), (4, 120, 90)])
def test_dbias_sums_the_broadcast_dimensions(rng, shape):
    """return_dbias: float32 in the bias's shape, summed over the batch and heads it broadcasts
    (missing, size 1 or, for the expanded one, stride 0), with causal, GQA and softcap."""
    import cupy

    heads, lengths = (2, 4, 2), (120, 90)
    for expand, d in ((False, 64), (True, 64), (False, 128), (True, 128)):   # D128: the Hopper kernel there
        q, k, v = make_inputs(rng, "fp16", d, "bhsd", heads, lengths)
        bias = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
        if expand:   # a stride-0 view of the full (B, Hq, Sq, Sk) shape
            bias = cupy.broadcast_to(bias, (2, 4, 120, 90))
        opts = dict(causal=True, softcap=3.0, bias=bias)
        out, lse = fc.attention(q, k, v, return_lse=True, **opts)
        dout = make_inputs(rng, "fp16", d, "bhsd", heads, lengths)[0]
        *grads, dbias = fc.attention_backward(dout, q, k, v, out, lse, return_dbias=True, **opts)
        *refs, ref_dbias = reference.attention_backward(dout, q, k, v, out, lse, return_dbias=True, **opts)
        assert dbias.shape == bias.shape and dbias.dtype == np.float32
        _assert_grads(grads, refs, "fp16", f"bias {shape} expand={expand}")
        err = reference.rel_error(dbias, ref_dbias)
        assert err <= GRAD_TOL["fp16"], f"bias {shape} expand={expand}: dbias rel err {err:.3e}"


@pytest.mark.parametrize("window", [(100, 20), (-1, 7)])
def test_deterministic_mode_gives_the_same_bits(rng, window):
    """deterministic=True: five runs bitwise equal (dQ's ordered adds, GQA and dbias sums on the
    host), within the bounds; with a bias and a window: with a left bound (its query tiles start
    past key tile 0: the portable kernel) or without (the Hopper kernel on H100/H200)."""
    import cupy

    heads, lengths = (2, 6, 2), (300, 500)
    q, k, v = make_inputs(rng, "bf16", 128, "bshd", heads, lengths)
    bias = cupy.asarray(rng.standard_normal((1, 6, 300, 500)).astype(np.float32))
    opts = dict(window=window, bias=bias, layout="bshd")
    out, lse = fc.attention(q, k, v, return_lse=True, **opts)
    dout = make_inputs(rng, "bf16", 128, "bshd", heads, lengths)[0]
    first = fc.attention_backward(dout, q, k, v, out, lse, deterministic=True, return_dbias=True, **opts)
    *refs, ref_dbias = reference.attention_backward(dout, q, k, v, out, lse, return_dbias=True, **opts)
    _assert_grads(first[:3], refs, "bf16", "deterministic")
    assert reference.rel_error(first[3], ref_dbias) <= GRAD_TOL["bf16"]
    for _ in range(4):
        again = fc.attention_backward(dout, q, k, v, out, lse, deterministic=True, return_dbias=True, **opts)
        assert all(bool(cupy.array_equal(a, b)) for a, b in zip(first, again))


class _CudaArrayInterface:
    """A GPU array known only by __cuda_array_interface__ (not a cupy.ndarray)."""

    def __init__(self, a):
        self.__cuda_array_interface__ = a.__cuda_array_interface__


def test_gradient_buffers_given_through_the_array_interface_are_written(rng):
    """dq=, dk=, dv= that are not CuPy arrays are converted zero-copy and written in place."""
    import cupy

    q, k, v, dout, out, lse = _grads(rng, "fp16", 64, "bhsd", (1, 2, 2), (70, 90), causal=True)[0]
    bufs = [cupy.full(x.shape, np.nan, dtype=x.dtype) for x in (q, k, v)]
    ref = fc.attention_backward(dout, q, k, v, out, lse, causal=True)
    fc.attention_backward(dout, q, k, v, out, lse, causal=True, dq=_CudaArrayInterface(bufs[0]),
                          dk=_CudaArrayInterface(bufs[1]), dv=_CudaArrayInterface(bufs[2]))
    for got, want in zip(bufs, ref):
        assert reference.rel_error(got, want.get().astype(np.float64)) < 1e-2


@pytest.mark.parametrize("backend", ["auto", "sm80"])
def test_strided_gradient_buffers_get_the_same_bits(rng, backend):
    """dq=, dk=, dv= views into wider buffers (rows 8 elements apart beyond head_dim, 16 bytes
    in) get the bits contiguous buffers get (deterministic mode, GQA: every gradient goes
    through bwd_convert), and the buffers' padding stays as it was; rows off 16-byte boundaries
    are refused before any launch."""
    import cupy

    inputs = _grads(rng, "bf16", 64, "bhsd", (2, 4, 2), (150, 133), causal=True)[0]
    q, k, v, dout, out, lse = inputs
    want = fc.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True, backend=backend)
    wide = [cupy.full(x.shape[:3] + (x.shape[3] + 16,), np.nan, dtype=x.dtype) for x in (q, k, v)]
    views = [w[..., 8:8 + x.shape[3]] for w, x in zip(wide, (q, k, v))]
    fc.attention_backward(dout, q, k, v, out, lse, causal=True, deterministic=True, backend=backend,
                          dq=views[0], dk=views[1], dv=views[2])
    for w, view, ref in zip(wide, views, want):
        assert bool(cupy.array_equal(view, ref))
        assert bool(cupy.isnan(w[..., :8]).all()) and bool(cupy.isnan(w[..., 8 + ref.shape[3]:]).all())
    with pytest.raises(ValueError, match="dq must be 16-byte aligned"):
        fc.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend,
                              dq=wide[0][..., 1:1 + q.shape[3]])


@pytest.mark.parametrize("backend", ["auto", "sm80"])
def test_a_repeated_signature_runs_on_its_new_arrays(rng, backend):
    """The second call of a signature takes the first's plan (and on Hopper its tensor maps are
    keyed by the addresses): fresh arrays of the same shapes get their own gradients."""
    for _ in range(2):
        inputs, _, ref = _grads(rng, "fp16", 64, "bhsd", (2, 4, 2), (130, 200), causal=True)
        _assert_grads(_backward(inputs, "bhsd", backend=backend, causal=True), ref, "fp16", f"{backend} repeat")


def test_hopper_kernel_is_dispatchs_choice_there(rng):
    """On an H100/H200 the plain backward up to D128 runs the Hopper kernel (so the tests above
    held it to the reference): backend='sm90' gives the same gradients as dispatch, GQA and
    ragged tiles included; what it does not take (deterministic with a window's left bound) is
    refused with the reason."""
    from flashcore_cupy import api

    if api.device_info(0).arch != "sm_90a":
        pytest.skip("the Hopper backward needs an sm_90 GPU")
    for d in (64, 128):
        inputs, got, ref = _grads(rng, "fp16", d, "bshd", (2, 4, 2), (300, 257), causal=True)
        forced = _backward(inputs, "bshd", backend="sm90", causal=True)
        _assert_grads(forced, ref, "fp16", f"D{d} backend='sm90'")
        for a, b in zip(got, forced):   # dispatch's choice: the same kernel, up to the atomics' order
            assert reference.rel_error(a, b.get().astype(np.float64)) < 1e-2
    q, k, v, dout, out, lse = inputs
    with pytest.raises(ValueError, match="backend='sm90' cannot run this backward: deterministic=True with a "
                                         "window's left bound"):
        fc.attention_backward(dout, q, k, v, out, lse, layout="bshd", window=(30, 0), deterministic=True,
                              backend="sm90")


@pytest.mark.parametrize("d", [64, 256])
def test_every_head_grouping_of_the_hopper_grid_covers_every_block(rng, monkeypatch, d):
    """grid.cuh's grouped_item with groups of 1, 2 and 3 of five heads (a last group of fewer) and
    the grid's own order (0), causal (key tiles of unequal work) and not, default and
    deterministic (its adds wait on the key tiles before: each head's tiles must start in
    order): every key tile's gradients, within the bounds, whichever the host picks."""
    from dataclasses import replace

    from flashcore_cupy import backward, configs

    if api.device_info(0).arch != "sm_90a":
        pytest.skip("the Hopper backward needs an sm_90 GPU")
    real = backward._choose
    for group, causal, deterministic in itertools.product((1, 2, 3, 0), (True, False), (False, True)):
        monkeypatch.setattr(backward, "_plans", {})   # plans are cached by signature: a plan per group
        monkeypatch.setattr(backward, "_choose", lambda *a, g=group: (
            lambda c: replace(c, head_group=g) if isinstance(c, configs.Sm90BwdConfig) else c)(real(*a)))
        q, k, v, dout = (*make_inputs(rng, "fp16", d, "bhsd", (2, 5, 5), (300, 520)),
                         make_inputs(rng, "fp16", d, "bhsd", (2, 5, 5), (300, 520))[0])
        out, lse = fc.attention(q, k, v, causal=causal, return_lse=True)
        got = _backward((q, k, v, dout, out, lse), "bhsd", causal=causal, deterministic=deterministic)
        ref = reference.attention_backward(dout, q, k, v, out, lse, causal=causal)
        _assert_grads(got, ref, "fp16", f"D{d} head_group={group} causal={causal} deterministic={deterministic}")


@pytest.mark.parametrize("d, causal", [(64, True), (128, False), (128, True)])
def test_deterministic_plain_backward_gives_the_same_bits(rng, d, causal):
    """The plain mask (the Hopper kernel on H100/H200: dQ's bulk adds in key tile order, GQA per
    query head): five runs bitwise equal, within the bounds, against the default's gradients."""
    import cupy

    heads, lengths = (2, 6, 2), (333, 517)
    inputs, _, ref = _grads(rng, "bf16", d, "bshd", heads, lengths, causal=causal)
    first = _backward(inputs, "bshd", causal=causal, deterministic=True)
    _assert_grads(first, ref, "bf16", f"deterministic D{d} causal={causal}")
    for _ in range(4):
        again = _backward(inputs, "bshd", causal=causal, deterministic=True)
        assert all(bool(cupy.array_equal(a, b)) for a, b in zip(first, again))


@pytest.mark.parametrize("lengths", [(4097, 4097), (1, 4097), (4097, 1), (2000, 4097)])
def test_long_sequences_on_sampled_rows_and_keys(rng, lengths):
    """Lengths past what the whole float64 reference affords: dq on sampled rows and dk, dv on
    sampled keys (reference.attention_backward_sampled), causal and not, both dtypes."""
    import cupy

    for dtype, causal in (("fp16", True), ("bf16", False)):
        heads = (1, 2, 1)
        q, k, v = make_inputs(rng, dtype, 128, "bhsd", heads, lengths)
        out, lse = fc.attention(q, k, v, causal=causal, return_lse=True)
        dout = make_inputs(rng, dtype, 128, "bhsd", heads, lengths)[0]
        grads = [cupy.full(x.shape, np.nan, dtype=x.dtype) for x in (q, k, v)]
        fc.attention_backward(dout, q, k, v, out, lse, causal=causal, dq=grads[0], dk=grads[1], dv=grads[2])
        rows = np.unique(rng.integers(0, lengths[0], 64))
        keys = np.unique(rng.integers(0, lengths[1], 64))
        ref = reference.attention_backward_sampled(dout, q, k, v, out, lse, rows, keys, causal=causal)
        picked = (grads[0][:, :, rows.tolist()], grads[1][:, :, keys.tolist()], grads[2][:, :, keys.tolist()])
        _assert_grads(picked, ref, dtype, f"{dtype} causal={causal} {lengths}")
        assert all(bool(cupy.isfinite(g).all()) for g in grads)
