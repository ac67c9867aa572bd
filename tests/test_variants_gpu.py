"""attention's variants (window, top-left causal, softcap, ALiBi, bias) on a GPU, against the
float64 reference (the spec) and, where SDPA can compute the same thing, its error."""

import itertools

import numpy as np
import pytest

from flashcore_cupy import configs, reference
from test_attention_gpu import assert_close, make_inputs

pytestmark = pytest.mark.gpu

LENGTHS = [(1, 1), (63, 65), (128, 128), (200, 77), (77, 300), (799, 1000), (1000, 799)]
HEADS = [(1, 3, 3), (2, 4, 2), (2, 5, 1)]   # MHA, GQA, MQA
WINDOWS = [None, (0, 0), (16, 0), (100, 3), (-1, 40), (5000, 5000)]   # the last wider than any sequence
CAUSALS = [False, True, "top_left"]
SCORE_OPTIONS = ["none", "softcap", "alibi", "bias16", "bias32", "all"]


def _options(rng, option, dtype, heads, lengths, per_batch):
    """attention's score options for `option`, arrays on the GPU (fresh draws each call)."""
    import cupy

    (b, hq, _), (sq, sk) = heads, lengths
    out = {}
    if option in ("softcap", "all"):
        out["softcap"] = float(rng.uniform(1.0, 8.0))
    if option in ("alibi", "all"):
        shape = (b, hq) if per_batch else (hq,)
        out["alibi_slopes"] = cupy.asarray(rng.uniform(0.0, 0.5, shape).astype(np.float32))
    if option in ("bias16", "bias32", "all"):
        bias_dtype = np.float32 if option != "bias16" else None
        shape = (b, 1, sq, sk) if per_batch else (1, hq, sq, sk)
        host = rng.standard_normal(shape).astype(np.float32)
        if bias_dtype is None:
            import ml_dtypes
            host = host.astype(np.float16 if dtype == "fp16" else ml_dtypes.bfloat16)
        out["bias"] = cupy.asarray(host)
    return out


def _cases():
    for causal, window, option in itertools.product(CAUSALS, WINDOWS, SCORE_OPTIONS):
        if window is not None and option not in ("none", "all"):
            continue   # windows with each mask; score options alone and all together
        yield causal, window, option
    for option in SCORE_OPTIONS[1:]:
        yield False, None, option
        yield True, (64, 0), option


CASES = sorted(set(_cases()), key=str)


@pytest.mark.parametrize("backend", ("sm80", "auto"))   # auto: the Hopper kernel's on sm_90a
@pytest.mark.parametrize("causal, window, option", CASES, ids=[f"{c}-{w}-{o}" for c, w, o in CASES])
def test_variant_matches_reference(rng, causal, window, option, backend):
    """Every mask with every window, each score option alone and together, over lengths with
    Sq < Sk, Sq > Sk and ragged tiles, MHA/GQA/MQA, both layouts, fp16/bf16, D 64/128:
    poisoned outputs, LSE (-inf where a row sees no key), and the same bits twice."""
    for dtype, d, layout in (("fp16", 64, "bhsd"), ("bf16", 128, "bshd")):
        heads = HEADS[rng.integers(len(HEADS))]
        for lengths in LENGTHS:
            q, k, v = make_inputs(rng, dtype, d, layout, heads, lengths)
            opts = _options(rng, option, dtype, heads, lengths, per_batch=bool(rng.integers(2)))
            what = f"{dtype} D{d} {layout} heads {heads} lengths {lengths}:"
            _check_call(q, k, v, dict(causal=causal, window=window, layout=layout, backend=backend, **opts), dtype,
                        what)


def _check_call(q, k, v, options: dict, dtype: str, what: str) -> None:
    """attention with `options` into a poisoned out= with its LSE, against the reference (the
    LSE -inf exactly where a row sees no key); the same bits when repeated."""
    import cupy

    import flashcore_cupy as fc

    out = cupy.full(q.shape, np.nan, dtype=q.dtype)
    got, lse = fc.attention(q, k, v, return_lse=True, out=out, **options)
    assert got is out
    ref_options = {n: o for n, o in options.items() if n != "backend"}
    ref, ref_lse = reference.attention(q, k, v, return_lse=True, **ref_options)
    assert_close(out, ref, dtype, what)
    lse = lse.get()
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse), err_msg=what)
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=1e-3, atol=2e-3, err_msg=what)
    again = fc.attention(q, k, v, **options)
    assert cupy.array_equal(again, out), what   # same inputs -> same bits (a split's merge in a fixed order)


WIDE = [(32, 32), (96, 96), (160, 160), (192, 192), (256, 256), (192, 128)]


@pytest.mark.parametrize("backend", ("sm80", "auto"))   # auto: the Hopper kernel's on sm_90a
@pytest.mark.parametrize("d, dv", WIDE, ids=[f"d{d}-dv{dv}" for d, dv in WIDE])
def test_variants_at_every_head_dim(rng, d, dv, backend):
    """The variant tiles of the other head-dim buckets, and V of its own head dim (one case
    each, all options on)."""
    import cupy

    import flashcore_cupy as fc

    for dtype in ("fp16", "bf16"):
        heads, lengths = (2, 4, 2), (239, 300)
        q, k, _ = make_inputs(rng, dtype, d, "bhsd", heads, lengths)
        v = make_inputs(rng, dtype, dv, "bhsd", heads, lengths)[2]
        opts = _options(rng, "all", dtype, heads, lengths, per_batch=True)
        out = cupy.full(q.shape[:3] + (dv,), np.nan, dtype=q.dtype)
        fc.attention(q, k, v, causal="top_left", window=(50, 7), out=out, backend=backend, **opts)
        assert_close(out, reference.attention(q, k, v, causal="top_left", window=(50, 7), **opts), dtype,
                     f"{backend} D{d} Dv{dv}")


def test_variant_against_sdpa_error(rng):
    """A sliding window, ALiBi and a float bias through SDPA's float mask: our error within 2x
    SDPA's on the same inputs (its own float64 comparison)."""
    torch = pytest.importorskip("torch")
    import cupy

    import flashcore_cupy as fc

    heads, lengths = (2, 4, 4), (700, 900)
    q, k, v = make_inputs(rng, "fp16", 128, "bhsd", heads, lengths)
    opts = _options(rng, "alibi", "fp16", heads, lengths, per_batch=False)
    opts |= _options(rng, "bias32", "fp16", heads, lengths, per_batch=False)
    window = (128, 0)
    ref = reference.attention(q, k, v, causal=True, window=window, **opts)
    out = fc.attention(q, k, v, causal=True, window=window, **opts)
    err = assert_close(out, ref, "fp16")

    sq, sk = lengths
    keep = reference.visible(np.arange(sq), sq, sk, True, window)
    slopes = cupy.asnumpy(opts["alibi_slopes"]).astype(np.float64)
    dist = np.abs(np.arange(sq)[:, None] + sk - sq - np.arange(sk)[None, :])
    mask = (-slopes[:, None, None] * dist)[None] + cupy.asnumpy(opts["bias"]).astype(np.float64)
    mask = np.where(keep, mask, -np.inf).astype(np.float32)
    tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
    o = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=torch.from_numpy(mask).to(tq.device).to(tq.dtype))
    sdpa = reference.rel_error(o.float().cpu().numpy(), ref)
    assert err <= max(2 * sdpa, 1e-6), f"rel err {err:.3e} > 2x SDPA's {sdpa:.3e}"


def test_top_left_equal_lengths_and_plain_windows_take_the_plain_kernel(rng):
    """Options that mean the plain mask compile no variant: top-left causal at Sq = Sk, and at
    Sq < Sk (over the first Sq keys, both layouts), and window (-1, 0) (bottom-right causal);
    their results and LSE match the reference."""
    import cupy

    import flashcore_cupy as fc
    from flashcore_cupy import api

    for lengths, layout in (((300, 300), "bhsd"), ((300, 1000), "bhsd"), ((77, 5000), "bshd"), ((1, 64), "bhsd")):
        q, k, v = make_inputs(rng, "fp16", 64, layout, (2, 4, 2), lengths)
        for kwargs in (dict(causal="top_left"), dict(window=(-1, 0)), dict(causal=True, window=(-1, 7))):
            what = f"{kwargs} lengths {lengths} {layout}"
            out = cupy.full(q.shape, np.nan, dtype=q.dtype)
            _, lse = fc.attention(q, k, v, layout=layout, out=out, return_lse=True, **kwargs)
            ref, ref_lse = reference.attention(q, k, v, layout=layout, return_lse=True, **kwargs)
            assert_close(out, ref, "fp16", what)
            np.testing.assert_allclose(lse.get(), ref_lse, rtol=1e-3, atol=2e-3, err_msg=what)
            assert api.plan(q, k, v, layout=layout, **kwargs).launch.config.name_expression.count("Variant") == 0, what


def test_a_bias_of_minus_inf_hides_keys_and_whole_rows(rng):
    """A bias mask: -inf hides a key; a row whose every key is hidden gives 0 and LSE -inf."""
    import cupy

    import flashcore_cupy as fc

    q, k, v = make_inputs(rng, "fp16", 64, "bhsd", (1, 2, 2), (100, 150))
    bias = cupy.asarray(np.where(rng.random((1, 1, 100, 150)) < 0.5, -np.inf, 0.0).astype(np.float32))
    bias[..., :10, :] = -cupy.inf
    out, lse = fc.attention(q, k, v, bias=bias, return_lse=True)
    ref, ref_lse = reference.attention(q, k, v, bias=bias, return_lse=True)
    assert cupy.all(out[:, :, :10] == 0) and cupy.all(cupy.isneginf(lse[:, :, :10]))
    assert_close(out, ref, "fp16")
    np.testing.assert_allclose(lse.get()[:, :, 10:], ref_lse[:, :, 10:], rtol=1e-3, atol=2e-3)


def test_variant_calls_follow_new_slopes_and_bias_each_call(rng):
    """The fast path reads the slopes' and bias's addresses per call: new arrays of the same
    layout give their own results."""
    import flashcore_cupy as fc

    heads, lengths = (1, 4, 4), (128, 128)
    q, k, v = make_inputs(rng, "bf16", 64, "bhsd", heads, lengths)
    for _ in range(3):
        opts = _options(rng, "alibi", "bf16", heads, lengths, False) | _options(rng, "bias32", "bf16", heads, lengths, False)
        out = fc.attention(q, k, v, window=(32, 32), **opts)
        assert_close(out, reference.attention(q, k, v, window=(32, 32), **opts), "bf16")


def test_dispatch_runs_variants_on_the_hopper_kernel(rng):
    """On sm_90a auto takes the Hopper kernel's variant at every head dim it builds (D64 and D256
    here; backend='sm90' its large tiles at D128)."""
    import flashcore_cupy as fc
    from flashcore_cupy import api

    if api.device_info(0).arch != configs.SM90_ARCH:
        pytest.skip("needs sm_90a")
    for d, backend, hopper in ((64, "auto", True), (128, "sm90", True), (256, "auto", True)):
        q, k, v = make_inputs(rng, "fp16", d, "bhsd", (1, 2, 2), (300, 500))
        opts = dict(causal=True, window=(50, 0), softcap=5.0)
        plan = fc.plan(q, k, v, backend=backend, **opts)
        assert isinstance(plan.config, configs.Sm90FwdConfig) == hopper, (d, backend, str(plan.config))
        assert not plan.config.variant.plain
        assert_close(plan.run(q, k, v), reference.attention(q, k, v, **opts), "fp16", f"D{d} {backend}")


@pytest.mark.parametrize("grid", configs.SM90_GRIDS)
@pytest.mark.parametrize("d", (64, 128))
def test_hopper_variant_kernels_match_reference(rng, grid, d):
    """The Hopper kernel's variants, each tile kind forced through a plan with its config
    (dispatch takes one per problem size): windows on both sides, top-left causal, every score
    option, ragged lengths with Sq < Sk and Sq > Sk, GQA; outputs (poisoned), LSE and the same
    bits twice."""
    import cupy

    import flashcore_cupy as fc
    from flashcore_cupy import api

    if api.device_info(0).arch != configs.SM90_ARCH:
        pytest.skip("the Hopper kernel needs sm_90a")
    cases = [(True, (100, 0), "none"), ("top_left", None, "none"), (False, (33, 70), "none"),
             (False, None, "all"), (True, (64, 0), "all"), ("top_left", (20, -1), "bias32")]
    for causal, window, option in cases:
        for dtype in ("fp16", "bf16"):
            for lengths in ((1, 1), (200, 77), (77, 300), (799, 1000), (1000, 799)):
                heads = (2, 4, 2)
                q, k, v = make_inputs(rng, dtype, d, "bhsd", heads, lengths)
                opts = _options(rng, option, dtype, heads, lengths, per_batch=True)
                arrays = {n: opts.pop(n) for n in ("alibi_slopes", "bias") if n in opts}
                what = f"{grid} D{d} {dtype} causal={causal} window={window} {option} lengths {lengths}:"
                out = cupy.full(q.shape, np.nan, dtype=q.dtype)
                p = fc.plan(q, k, v, causal=causal, window=window, return_lse=True, out=out,
                            config=configs.sm90_config(dtype, d, grid), **opts, **arrays)
                assert isinstance(p.config, configs.Sm90FwdConfig), what
                _check_plan(p, q, k, v, out, arrays, dict(causal=causal, window=window, **opts), dtype, what)


@pytest.mark.parametrize("grid", configs.SM90_GRIDS)
def test_hopper_alibi_matches_reference_on_both_score_paths(rng, grid):
    """The Hopper kernel's two ALiBi score paths: where no seen key lies past the diagonal (causal,
    top-left, (L, 0) windows) its scores key-linear, the row terms in the softmax's frame
    (variant.cuh's LINEAR, softmax.cuh's SHIFTED); a window open on the right, or none, -slope
    |i + off - j| a score. ALiBi alone and with every option, slopes up to 0.5 and up to 8 a head,
    D64 (three consumers) and D128, ragged lengths with Sq > Sk (rows that see no key: LSE -inf).
    Outputs poisoned, LSE, the same bits twice."""
    import cupy

    import flashcore_cupy as fc
    from flashcore_cupy import api

    if api.device_info(0).arch != configs.SM90_ARCH:
        pytest.skip("the Hopper kernel needs sm_90a")
    cases = [(True, None, "alibi"), ("top_left", None, "alibi"), (True, (100, 0), "all"), (True, None, "all"),
             (False, (40, 0), "alibi"), (False, (33, 70), "alibi"), (False, None, "alibi")]
    for (causal, window, option), dtype, d, lengths in itertools.product(
            cases, ("fp16", "bf16"), (64, 128), ((1, 1), (200, 77), (77, 300), (799, 1000), (1000, 799))):
        heads = (2, 4, 2)
        q, k, v = make_inputs(rng, dtype, d, "bhsd", heads, lengths)
        opts = _options(rng, option, dtype, heads, lengths, per_batch=True)
        if rng.integers(2):
            opts["alibi_slopes"] *= 16
        arrays = {n: opts.pop(n) for n in ("alibi_slopes", "bias") if n in opts}
        what = f"{grid} {dtype} D{d} causal={causal} window={window} {option} lengths {lengths}:"
        out = cupy.full(q.shape, np.nan, dtype=q.dtype)
        p = fc.plan(q, k, v, causal=causal, window=window, return_lse=True, out=out,
                    config=configs.sm90_config(dtype, d, grid), **opts, **arrays)
        _check_plan(p, q, k, v, out, arrays, dict(causal=causal, window=window, **opts), dtype, what)


def _check_plan(p, q, k, v, out, arrays: dict, options: dict, dtype: str, what: str) -> None:
    """A plan (return_lse, into the poisoned `out`) run with `arrays`, against the reference with
    `options` and `arrays` (the LSE -inf exactly where a row sees no key); the same bits when run
    again."""
    import cupy

    _, lse = p.run(q, k, v, out=out, **arrays)
    ref, ref_lse = reference.attention(q, k, v, return_lse=True, **options, **arrays)
    assert_close(out, ref, dtype, what)
    lse = lse.get()
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse), err_msg=what)
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite], ref_lse[finite], rtol=1e-3, atol=2e-3, err_msg=what)
    first = out.copy()
    p.run(q, k, v, out=out, **arrays)
    assert cupy.array_equal(first, out), what


SPLIT_CASES = [(False, None, "none"), (True, None, "none"), ("top_left", (100, 3), "all"), (True, (16, 0), "none"),
               (False, (-1, 40), "alibi"), (False, None, "bias32"), (True, None, "softcap")]


@pytest.mark.parametrize("backend", ("sm80", "auto"))
@pytest.mark.parametrize("causal, window, option", SPLIT_CASES, ids=[f"{c}-{w}-{o}" for c, w, o in SPLIT_CASES])
def test_split_kv_of_long_rows_matches_reference(rng, monkeypatch, causal, window, option, backend):
    """A dense call whose rows see more than split.MAX_CHAIN_KEYS keys runs split-KV (each
    tile's last split merges the partials in the kernel): the bound lowered to 256 keys so that
    these lengths split, every mask and score option, MHA/GQA, both layouts, poisoned out= and
    LSE, the same bits twice."""
    import flashcore_cupy as fc
    from flashcore_cupy import api, launch, split

    monkeypatch.setattr(split, "MAX_CHAIN_KEYS", 256)
    monkeypatch.setattr(api, "_launches", {})
    monkeypatch.setattr(api, "_plans", {})
    for dtype, d, layout in (("fp16", 64, "bhsd"), ("bf16", 128, "bshd")):
        heads = HEADS[rng.integers(len(HEADS))]
        for lengths in ((77, 300), (799, 1000), (1000, 799), (8, 3000)):
            q, k, v = make_inputs(rng, dtype, d, layout, heads, lengths)
            opts = _options(rng, option, dtype, heads, lengths, per_batch=bool(rng.integers(2)))
            what = f"{dtype} D{d} {layout} heads {heads} lengths {lengths}:"
            plan = fc.plan(q, k, v, causal=causal, window=window, layout=layout, return_lse=True, backend=backend,
                           **opts)
            chain = split.chain_keys(lengths[1], plan.problem.variant.mask(*lengths)[1:], plan.config.block_m)
            assert isinstance(plan.launch, launch.SplitFwdLaunch) == (chain > 256), what
            _check_call(q, k, v, dict(causal=causal, window=window, layout=layout, backend=backend, **opts), dtype,
                        what)
