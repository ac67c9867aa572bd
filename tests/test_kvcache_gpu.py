"""attention_kvcache on a GPU against the float64 reference (the spec): contiguous and paged
caches over page sizes, appends (compared element by element), split-KV against unsplit, GQA,
variants, both dtypes, poisoned outputs, graph capture of a decode step, clamped metadata."""

import ml_dtypes
import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import reference, workload

pytestmark = pytest.mark.gpu

DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}


class Case:
    """A cache of B sequences with cache_seqlens keys in place (the rest of each sequence's room
    random: it must not be read), contiguous or paged (a shuffled block table over a pool with
    spare pages), and its host copies for the reference."""

    def __init__(self, rng, dtype, *, batch=3, hq=4, hkv=2, d=64, seqlens=(70, 0, 200), room=260, page_size=None,
                 sq=1, n_new=0):
        import cupy

        self.np_dtype = DTYPES[dtype]
        self.seqlens = np.array(seqlens, np.int32)
        self.page_size = page_size
        self.q = rng.standard_normal((batch, sq, hq, d)).astype(self.np_dtype)
        self.k_new = self.v_new = None
        if n_new:
            self.k_new, self.v_new = (rng.standard_normal((batch, n_new, hkv, d)).astype(self.np_dtype) for _ in range(2))
        if page_size is None:
            self.k, self.v = (rng.standard_normal((batch, room, hkv, d)).astype(self.np_dtype) for _ in range(2))
            self.table = None
        else:
            per_seq = -(-room // page_size)
            pool = batch * per_seq + 3
            self.table = rng.permutation(pool)[:batch * per_seq].reshape(batch, per_seq).astype(np.int32)
            self.k, self.v = (rng.standard_normal((pool, page_size, hkv, d)).astype(self.np_dtype) for _ in range(2))
        self.dev = {n: None if a is None else cupy.asarray(a) for n, a in
                    (("q", self.q), ("k_cache", self.k), ("v_cache", self.v), ("cache_seqlens", self.seqlens),
                     ("block_table", self.table), ("k_new", self.k_new), ("v_new", self.v_new))}

    def run(self, **opts):
        d = self.dev
        return fc.attention_kvcache(d["q"], d["k_cache"], d["v_cache"], cache_seqlens=d["cache_seqlens"],
                                    block_table=d["block_table"], k_new=d["k_new"], v_new=d["v_new"], **opts)

    def reference(self, **opts):
        """The reference on host copies of the caches as they were (it appends into them)."""
        k, v = self.k.copy(), self.v.copy()
        opts = {n: (a.get() if hasattr(a, "get") else a) for n, a in opts.items()}
        opts.pop("num_splits", None)
        out, lse = reference.attention_kvcache(self.q, k, v, cache_seqlens=self.seqlens, block_table=self.table,
                                               k_new=self.k_new, v_new=self.v_new, return_lse=True, **opts)
        return out, lse, k, v


def _check(got, want, dtype, what):
    err, row = reference.rel_error(got, want), reference.row_rel_error(got, want)
    assert workload.within_tolerance(dtype, err, row), f"{what}: rel err {err:.2e}, worst row {row:.2e}"


def _check_lse(got, want, what):
    g = got.get()
    assert (np.isneginf(g) == np.isneginf(want)).all(), what
    fin = np.isfinite(want)
    np.testing.assert_allclose(g[fin], want[fin], rtol=2e-3, atol=2e-3, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [None, 1, 3, 16, 64, 256])
@pytest.mark.parametrize("sq, n_new, causal", [(1, 0, False), (1, 1, True), (4, 4, True)],
                         ids=["decode", "decode-append", "speculative"])
def test_kvcache_matches_reference_and_appends(rng, dtype, page_size, sq, n_new, causal):
    """Every page size (contiguous too): the output and LSE against the reference, the caches
    after the append equal to the reference's element by element (the other positions and the
    spare pages untouched), a repeat bitwise equal, and split-KV (forced) equal to unsplit."""
    import cupy

    case = Case(rng, dtype, page_size=page_size, sq=sq, n_new=n_new)
    out = cupy.full(case.q.shape, np.nan, case.np_dtype)
    got, lse = case.run(causal=causal, return_lse=True, out=out, num_splits=1)
    assert got is out
    want, want_lse, k_after, v_after = case.reference(causal=causal)
    what = f"{dtype} page {page_size} sq {sq} new {n_new}"
    _check(got, want, dtype, what)
    _check_lse(lse, want_lse, what)
    assert bool((case.dev["k_cache"].get() == k_after).all()) and bool((case.dev["v_cache"].get() == v_after).all()), \
        f"{what}: the caches after the append"
    # the append again writes the same values: the call repeats bitwise; split-KV merges to it
    again = case.run(causal=causal, return_lse=True, num_splits=1)
    assert bool(cupy.array_equal(again[0], got)) and bool(cupy.array_equal(again[1], lse))
    for splits in (3, 0):
        split_out, split_lse = case.run(causal=causal, return_lse=True, num_splits=splits)
        _check(split_out, want, dtype, f"{what} num_splits={splits}")
        _check_lse(split_lse, want_lse, f"{what} num_splits={splits}")
        assert reference.rel_error(split_out, got) < 2e-3


@pytest.mark.parametrize("opts", [dict(window=(50, 0), causal=True), dict(softcap=4.0, alibi_slopes="per_batch"),
                                  dict(window=(30, 2))], ids=str)
@pytest.mark.parametrize("d, hq, hkv", [(128, 8, 1), (64, 6, 6), (256, 4, 2), (96, 2, 1)])
def test_kvcache_variants_and_gqa(rng, opts, d, hq, hkv):
    import cupy

    case = Case(rng, "bf16", hq=hq, hkv=hkv, d=d, page_size=16, sq=4, n_new=2, seqlens=(100, 7, 33))
    opts = dict(opts)
    if opts.get("alibi_slopes") == "per_batch":
        opts["alibi_slopes"] = cupy.asarray(rng.uniform(0.01, 0.3, (3, hq)).astype(np.float32))
    want, want_lse, _, _ = case.reference(**opts)
    for splits in (1, 4):
        got, lse = case.run(return_lse=True, num_splits=splits, **opts)
        _check(got, want, "bf16", f"{opts} D{d} {hq}/{hkv} splits {splits}")
        _check_lse(lse, want_lse, f"{opts} splits {splits}")


@pytest.mark.parametrize("page_size", [None, 3, 16, 64, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_positions_past_each_sequence_are_never_used_even_nan(rng, page_size, dtype):
    """Long ragged sequences (several key tiles, the last ones partial, an empty one) over a cache
    whose every other position holds NaN (an uninitialised cache may): no NaN reaches the output,
    split or not. The Hopper kernel loads whole key tiles of the cache and must zero the rows past
    a sequence before P V reads them (a masked P of 0 times NaN is NaN)."""
    import cupy

    case = Case(rng, dtype, batch=4, hq=32, hkv=8, d=128, seqlens=(1500, 0, 129, 2047), room=2048,
                page_size=page_size, n_new=1)
    for name, host in (("k_cache", case.k), ("v_cache", case.v)):
        poisoned = np.full_like(host, np.nan)
        for b, n in enumerate(case.seqlens):
            if page_size is None:
                poisoned[b, :n] = host[b, :n]
            else:
                for t in range(n):
                    page, slot = case.table[b, t // page_size], t % page_size
                    poisoned[page, slot] = host[page, slot]
        host[...] = poisoned
        case.dev[name] = cupy.asarray(poisoned)
    want, want_lse, _, _ = case.reference()
    for splits in (1, 0, 7):
        got, lse = case.run(return_lse=True, num_splits=splits)
        what = f"{dtype} page {page_size} num_splits={splits}"
        assert bool(cupy.isfinite(got).all()), what
        _check(got, want, dtype, what)
        _check_lse(lse, want_lse, what)


def test_decode_runs_on_the_hopper_kernel_on_sm90():
    """What the tests above cover there: a plain decode step over a contiguous cache or pages of
    16 keys is the Hopper kernel's (kvcache.sm90_cache_plan), as are speculative rows that fit a
    tile (Sq 4 of a group of 4: (query, head) rows) and pages of 1 or 3 (gathered row by row)."""
    import cupy

    from flashcore_cupy import api, kvcache
    from flashcore_cupy.validation import check_kvcache

    if api.device_info(cupy.cuda.Device().id).arch != "sm_90a":
        pytest.skip("needs an sm_90 GPU (H100/H200)")
    rng = np.random.default_rng(0)
    for page_size, sq, hopper in ((None, 1, "cache"), (16, 1, "paged_tiles"), (3, 1, "paged"), (1, 1, "paged"),
                                  (None, 4, "cache"), (16, 4, "paged_tiles"), (3, 4, "paged")):
        case = Case(rng, "bf16", page_size=page_size, sq=sq)
        specs = {n: None if a is None else api._spec(a, n) for n, a in case.dev.items()}
        p, layout, _ = check_kvcache(specs["q"], specs["k_cache"], specs["v_cache"], specs["cache_seqlens"],
                                     specs["block_table"], None, None, causal=False, scale=None, window=None,
                                     softcap=0.0, alibi_slopes=None)
        plan = kvcache.sm90_cache_plan(p, layout, "sm_90a")
        assert (plan and plan[0].seq) == hopper, (page_size, sq)


@pytest.mark.parametrize("hq, hkv, sq, page_size", [(4, 4, 4, None), (8, 1, 8, 16), (16, 2, 3, None)])
def test_speculative_rows_on_the_hopper_kernel(rng, hq, hkv, sq, page_size):
    """Sq > 1 on a KV cache: MHA (rows the queries), a group of 8 with 8 queries (a whole 64-row
    tile of (query, head) rows) and with 3; causal over appended keys, unsplit, forced and
    automatic splits, against the reference (on an H100/H200 the Hopper kernel's)."""
    import cupy

    from flashcore_cupy import api, kvcache
    from flashcore_cupy.validation import check_kvcache

    case = Case(rng, "fp16", hq=hq, hkv=hkv, d=128, page_size=page_size, sq=sq, n_new=sq, seqlens=(300, 0, 1000),
                room=1100)
    if api.device_info(cupy.cuda.Device().id).arch == "sm_90a":
        specs = {n: None if a is None else api._spec(a, n) for n, a in case.dev.items()}
        p, layout, _ = check_kvcache(specs["q"], specs["k_cache"], specs["v_cache"], specs["cache_seqlens"],
                                     specs["block_table"], specs["k_new"], specs["v_new"], causal=True, scale=None,
                                     window=None, softcap=0.0, alibi_slopes=None)
        assert kvcache.sm90_cache_plan(p, layout, "sm_90a") is not None
    want, want_lse, _, _ = case.reference(causal=True)
    for splits in (1, 3, 0):
        got, lse = case.run(causal=True, return_lse=True, num_splits=splits)
        what = f"H{hq}/{hkv} Sq {sq} page {page_size} splits {splits}"
        assert bool(cupy.isfinite(got).all()), what
        _check(got, want, "fp16", what)
        _check_lse(lse, want_lse, what)


@pytest.mark.parametrize("d", [96, 128, 192, 256])
@pytest.mark.parametrize("page_size", [None, 3, 16, 64])
def test_wide_heads_decode_on_the_hopper_kernel(rng, d, page_size):
    """Head dims over 128 (and D96, D128) decode on the Hopper kernel too (its 64-key split tiles
    over 128): GQA-packed, appending, unsplit, forced and automatic splits, against the reference;
    pages of 3 keys gathered by the producer's warps in two parts a role (D64's four: the tests
    above)."""
    import cupy

    from flashcore_cupy import api, kvcache
    from flashcore_cupy.validation import check_kvcache

    case = Case(rng, "bf16", hq=8, hkv=2, d=d, page_size=page_size, n_new=1, seqlens=(700, 0, 1500), room=1600)
    if api.device_info(cupy.cuda.Device().id).arch == "sm_90a":
        specs = {n: None if a is None else api._spec(a, n) for n, a in case.dev.items()}
        p, layout, _ = check_kvcache(specs["q"], specs["k_cache"], specs["v_cache"], specs["cache_seqlens"],
                                     specs["block_table"], None, None, causal=True, scale=None, window=None,
                                     softcap=0.0, alibi_slopes=None)
        assert kvcache.sm90_cache_plan(p, layout, "sm_90a") is not None
    want, want_lse, _, _ = case.reference(causal=True)
    for splits in (1, 3, 0):
        got, lse = case.run(causal=True, return_lse=True, num_splits=splits)
        _check(got, want, "bf16", f"D{d} page {page_size} splits {splits}")
        _check_lse(lse, want_lse, f"D{d} page {page_size} splits {splits}")


def test_a_block_table_view_is_read_at_its_row_stride(rng):
    """block_table as columns of a wider table (its rows further apart than its width)."""
    import cupy

    case = Case(rng, "fp16", page_size=16, sq=2, n_new=1)
    wide = cupy.full((case.table.shape[0], case.table.shape[1] + 5), -7, np.int32)
    wide[:, :case.table.shape[1]] = cupy.asarray(case.table)
    case.dev["block_table"] = wide[:, :case.table.shape[1]]
    assert not case.dev["block_table"].flags.c_contiguous
    want = case.reference(causal=True)[0]
    _check(case.run(causal=True), want, "fp16", "a block table view")


def test_a_decode_step_is_captured_in_a_cuda_graph(rng):
    """A split decode step with an append, out= given, warmed up on the capturing stream (its
    first call there allocates the split workspace): replayed on new queries, new keys and new
    cache lengths written into the captured buffers."""
    import cupy

    case = Case(rng, "fp16", batch=2, hq=8, hkv=2, d=128, seqlens=(500, 900), room=1024, page_size=64, n_new=1)
    d = case.dev
    out = cupy.empty(case.q.shape, case.np_dtype)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        case.run(out=out, num_splits=4)
        stream.begin_capture()
        case.run(out=out, num_splits=4)
        graph = stream.end_capture()
    stream.synchronize()
    case.k, case.v = d["k_cache"].get(), d["v_cache"].get()   # the caches as the replay finds them
    case.seqlens = np.array([501, 100], np.int32)
    case.q = rng.standard_normal(case.q.shape).astype(case.np_dtype)
    case.k_new = rng.standard_normal(case.k_new.shape).astype(case.np_dtype)
    for name, value in (("q", case.q), ("cache_seqlens", case.seqlens), ("k_new", case.k_new)):
        d[name][...] = cupy.asarray(value)
    out[...] = cupy.nan
    graph.launch(stream)
    stream.synchronize()
    want, _, k_after, _ = case.reference()
    _check(out, want, "fp16", "replayed decode step")
    assert bool((d["k_cache"].get() == k_after).all())


@pytest.mark.parametrize("page_size", [16, 64])   # pages gathered row by row; a key tile a page
def test_metadata_out_of_range_is_clamped_and_caught_when_asked(rng, monkeypatch, page_size):
    """cache_seqlens past the room, a page index outside the pool (read as zeros: the output is
    attention with that page's keys and values zero): no access outside the arrays
    (compute-sanitizer's memcheck runs such a call: scripts/sanitize_case.py);
    FLASHCORE_CUPY_CHECK_METADATA=1 raises before any launch."""
    import cupy

    case = Case(rng, "fp16", page_size=page_size, seqlens=(150, 0, 255), room=256, n_new=4)
    case.dev["block_table"][0, 1] = 10_000
    got = case.run(num_splits=2)
    cupy.cuda.get_current_stream().synchronize()
    assert bool(cupy.isfinite(got).all())
    zeroed = case.k.copy(), case.v.copy()
    for cache in zeroed:
        cache[case.table[0, 1]] = 0
    case.k, case.v = zeroed
    case.seqlens = np.array([150, 0, 252], np.int32)   # (the third sequence, its appends past 256 dropped, unchecked)
    want = case.reference()[0]
    _check(got[:2], want[:2], "fp16", f"page {page_size}, a page outside the pool read as zeros")
    monkeypatch.setenv("FLASHCORE_CUPY_CHECK_METADATA", "1")
    with pytest.raises(ValueError, match="past the 256 keys"):
        case.run()
    case.dev["cache_seqlens"][2] = 10
    with pytest.raises(ValueError, match=r"block_table\[0, 1\] is 10000"):
        case.run()
