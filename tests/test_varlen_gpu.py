"""attention_varlen on a GPU against the float64 reference (the spec): ragged and empty
sequences, GQA, variants, both dtypes, poisoned outputs, bitwise repeats, graph capture; on both
kernels (the Hopper kernel's plain calls: backend="sm90"), its schedule against its Python mirror."""

import ml_dtypes
import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import configs, reference, workload

pytestmark = pytest.mark.gpu

DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def _packed(rng, lengths_q, lengths_k, hq, hkv, d, dtype):
    import cupy

    cu_q = np.concatenate([[0], np.cumsum(lengths_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lengths_k)]).astype(np.int32)
    q = cupy.asarray(rng.standard_normal((cu_q[-1], hq, d)).astype(DTYPES[dtype]))
    k, v = (cupy.asarray(rng.standard_normal((cu_k[-1], hkv, d)).astype(DTYPES[dtype])) for _ in range(2))
    return q, k, v, cupy.asarray(cu_q), cupy.asarray(cu_k)


def _check(got, want, dtype, what):
    err, row = reference.rel_error(got, want), reference.row_rel_error(got, want)
    assert workload.within_tolerance(dtype, err, row), f"{what}: rel err {err:.2e}, worst row {row:.2e}"


def _hopper():
    from flashcore_cupy import api

    if api.device_info(0).arch != configs.SM90_ARCH:
        pytest.skip("the Hopper kernel needs an sm_90 GPU (H100/H200)")


VARIANTS = [dict(), dict(causal=True), dict(causal=True, window=(37, 0)), dict(window=(20, 9)),
            dict(softcap=5.0, alibi_slopes="per_batch", causal=True)]
# Every option set on both kernels.
CASES = [(opts, backend) for opts in VARIANTS for backend in ("sm80", "sm90")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("opts, backend", CASES, ids=str)
def test_varlen_matches_reference(rng, dtype, d, opts, backend):
    """Ragged sequences (one empty, one with no keys, one past a tile), GQA 4:2, the LSE
    (Hq, total_q), out= poisoned; a repeat is bitwise equal."""
    import cupy

    if backend == "sm90":
        _hopper()

    lengths_q, lengths_k = [130, 0, 1, 77, 5, 300], [200, 9, 64, 77, 0, 129]
    q, k, v, cu_q, cu_k = _packed(rng, lengths_q, lengths_k, 4, 2, d, dtype)
    opts = dict(opts)
    if opts.get("alibi_slopes") == "per_batch":
        opts["alibi_slopes"] = cupy.asarray(rng.uniform(0.01, 0.3, (len(lengths_q), 4)).astype(np.float32))
    out = cupy.full(q.shape, np.nan, q.dtype)
    got, lse = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=max(lengths_q), max_seqlen_k=max(lengths_k),
                                   return_lse=True, out=out, backend=backend, **opts)
    assert got is out and lse.shape == (4, q.shape[0])
    want, want_lse = reference.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)
    _check(got, want, dtype, f"varlen {dtype} D{d} {opts} {backend}")
    g = lse.get()
    assert (np.isneginf(g) == np.isneginf(want_lse)).all()
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(g[fin], want_lse[fin], rtol=2e-3, atol=2e-3)
    again = fc.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, backend=backend, **opts)   # no max_seqlen hints
    assert bool(cupy.array_equal(again[0], got)) and bool(cupy.array_equal(again[1], lse))


@pytest.mark.parametrize("backend", ["sm80", "sm90"])
def test_varlen_reaches_the_dense_kernel_per_sequence(rng, backend):
    """Two equal sequences packed give what dense attention gives on the batch of two (bshd),
    to float rounding of the same kernel family."""
    if backend == "sm90":
        _hopper()
    q, k, v, cu_q, cu_k = _packed(rng, [256, 256], [384, 384], 8, 8, 128, "fp16")
    got = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=256, max_seqlen_k=384, causal=True, backend=backend)
    dense = fc.attention(q.reshape(2, 256, 8, 128), k.reshape(2, 384, 8, 128), v.reshape(2, 384, 8, 128),
                         layout="bshd", causal=True, backend=backend)
    assert reference.rel_error(got.reshape(2, 256, 8, 128), dense) < 1e-3


@pytest.mark.parametrize("backend", ["sm80", "sm90"])
def test_the_next_sequences_rows_never_reach_a_sequence(rng, backend):
    """A tile's boxes run past its sequence into the next one's rows: infinities and NaNs there
    (in k, v and q) leave the first sequence's output and LSE what the reference gives for it,
    plain or with a window and softcap."""
    import cupy

    if backend == "sm90":
        _hopper()
    for opts in (dict(causal=False), dict(causal=True), dict(causal=True, window=(37, 0), softcap=5.0)):
        q, k, v, cu_q, cu_k = _packed(rng, [100, 300], [130, 300], 4, 2, 128, "bf16")
        for a, at in ((q, 100), (k, 130), (v, 130)):
            a[at:at + 150:2] = cupy.inf
            a[at + 1:at + 150:2] = cupy.nan
        out = cupy.full(q.shape, np.nan, q.dtype)
        got, lse = fc.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, out=out, backend=backend, **opts)
        want, want_lse = reference.attention_varlen(q[:100], k[:130], v[:130], cu_q[:2], cu_k[:2], return_lse=True,
                                                    **opts)
        _check(got[:100], want, "bf16", f"first sequence, {opts}, {backend}")
        np.testing.assert_allclose(lse[:, :100].get(), want_lse, rtol=2e-3, atol=2e-3)


def test_many_sequences_on_the_hopper_kernel(rng):
    """70 sequences (the kernel's scan of the offsets takes 32 a step), a fifth of them empty,
    ragged keys, GQA 8:2 and MQA, causal or not, against the reference."""
    import cupy

    _hopper()
    for hq, hkv, causal in ((8, 2, True), (4, 1, False)):
        lengths_q = (rng.integers(1, 400, 70) * (rng.random(70) > 0.2)).tolist()
        lengths_k = rng.integers(1, 500, 70).tolist()
        q, k, v, cu_q, cu_k = _packed(rng, lengths_q, lengths_k, hq, hkv, 64, "fp16")
        out = cupy.full(q.shape, np.nan, q.dtype)
        fc.attention_varlen(q, k, v, cu_q, cu_k, causal=causal, out=out, backend="sm90")
        want = reference.attention_varlen(q, k, v, cu_q, cu_k, causal=causal)
        _check(out, want, "fp16", f"70 sequences H{hq}/{hkv} causal={causal}")


_RECORD = 4096
_RECORD_DEFINE = (f"FLASHCORE_RECORD_WORK={_RECORD}",)


@pytest.mark.parametrize("d", [64, 128])
def test_the_hopper_varlen_kernel_runs_the_python_schedule(rng, d):
    """A debug build (-DFLASHCORE_RECORD_WORK) records each work item's tile: the kernel's own
    (its warp-wide scan of the offsets) must be Sm90FwdConfig.varlen_work_tiles', item by item,
    each item on one of the persistent grid's CTAs (the dynamic deal: any), none past the
    sequences' items run; the output of that build matches float64; a second launch (the deal's
    counters zeroed again by the first) records the same."""
    import cupy

    from flashcore_cupy import api, loader, validation, varlen

    _hopper()
    cfg = configs.sm90_varlen_config("fp16", d)
    for lengths_q, lengths_k, causal in (([300, 0, 1, 129, 700, 64], [200, 5, 64, 129, 900, 0], True),
                                         ([50] * 40, [70] * 40, False)):
        q, k, v, cu_q, cu_k = _packed(rng, lengths_q, lengths_k, 3, 1, d, "fp16")
        problem, _ = validation.check_varlen(*(api._spec(a, n) for a, n in (
            (q, "q"), (k, "k"), (v, "v"), (cu_q, "cu_seqlens_q"), (cu_k, "cu_seqlens_k"))),
            causal=causal, scale=None, window=None, softcap=0.0, alibi_slopes=None)
        out = cupy.full(q.shape, np.nan, q.dtype)
        sms = api.device_info(0).num_sms
        launch = varlen._sm90_launch(problem, cfg, (out.strides[1] // 2, out.strides[0] // 2), "sm_90a", sms,
                                     _RECORD_DEFINE)
        assert launch.grid[0] <= sms
        items = launch.inner.scalars["n_items"]
        record = cupy.ndarray((_RECORD, 8), cupy.int32, loader.get_global(cfg, 0, "sm_90a", "fc_work_log",
                                                                          _RECORD_DEFINE))
        expected = [w for w in cfg.varlen_work_tiles(lengths_q, lengths_k, 3, causal, items) if w.consumers]
        assert len(expected) <= _RECORD
        for attempt in range(2):
            record.fill(-1)
            launch.start(dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr, cu_seqlens_q=cu_q.data.ptr,
                              cu_seqlens_k=cu_k.data.ptr), cupy.cuda.get_current_stream().ptr)
            got = record.get()
            for i, w in enumerate(expected):   # the real items come first (varlen_work_tiles' order)
                assert tuple(got[i, 1:6]) == tuple(w)[:5] and 0 <= got[i, 0] < launch.grid[0] and got[i, 7] == 0, \
                    f"D{d} causal={causal} launch {attempt} item {i}: kernel {tuple(got[i])}, python {w}"
            assert (got[len(expected):] == -1).all()
            assert not launch.counters.get(cupy.cuda.get_current_stream().ptr).any()
        _check(out, reference.attention_varlen(q, k, v, cu_q, cu_k, causal=causal), "fp16", f"record build D{d}")


def test_varlen_with_no_keys_at_all_gives_zeros(rng):
    import cupy

    q, k, v, cu_q, cu_k = _packed(rng, [3, 4], [0, 0], 2, 1, 64, "fp16")
    out, lse = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=4, max_seqlen_k=0, return_lse=True,
                                   out=cupy.full(q.shape, np.nan, q.dtype))
    assert not bool(out.any()) and bool(cupy.isneginf(lse).all())


@pytest.mark.parametrize("backend", ["sm80", "sm90"])
def test_a_varlen_call_is_captured_in_a_cuda_graph(rng, backend):
    """With out= given (and the max_seqlen hints for the portable kernel; the Hopper kernel's grid
    needs none): captured once, replayed on new inputs written into the same buffers (new
    lengths too)."""
    import cupy

    if backend == "sm90":
        _hopper()
    hints = dict(max_seqlen_q=100, max_seqlen_k=100) if backend == "sm80" else {}
    q, k, v, cu_q, cu_k = _packed(rng, [50, 70], [90, 30], 4, 4, 64, "bf16")
    out = cupy.empty_like(q)
    fc.attention_varlen(q, k, v, cu_q, cu_k, causal=True, out=out, backend=backend, **hints)   # compile
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        fc.attention_varlen(q, k, v, cu_q, cu_k, causal=True, out=out, backend=backend, **hints)
        graph = stream.end_capture()
    q2, k2, v2, cu_q2, cu_k2 = _packed(rng, [100, 20], [60, 60], 4, 4, 64, "bf16")
    for dst, src in ((q, q2), (k, k2), (v, v2), (cu_q, cu_q2), (cu_k, cu_k2)):
        dst[...] = src
    out[...] = cupy.nan
    graph.launch(stream)
    stream.synchronize()
    want = reference.attention_varlen(q2, k2, v2, cu_q2, cu_k2, causal=True)
    _check(out, want, "bf16", "replayed graph")


@pytest.mark.parametrize("backend", ["sm80", "sm90"])
def test_bad_offsets_are_clamped_and_caught_when_asked(rng, monkeypatch, backend):
    """Decreasing offsets and offsets past the arrays: the kernel reads and writes inside them
    (the rows it can place are right); FLASHCORE_CUPY_CHECK_METADATA=1 raises instead."""
    import cupy

    if backend == "sm90":
        _hopper()
    q, k, v, _, _ = _packed(rng, [40, 40], [40, 40], 2, 2, 64, "fp16")
    cu_q = cupy.asarray(np.array([0, 40, 30], np.int32))     # the second sequence runs backwards: empty
    cu_k = cupy.asarray(np.array([0, 40, 1000], np.int32))   # past total_k: clamped to it
    out = cupy.full(q.shape, np.nan, q.dtype)
    fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=40, max_seqlen_k=40, out=out, backend=backend)
    want = reference.attention(q[None, :40], k[None, :40], v[None, :40], layout="bshd")[0]
    _check(out[:40], want, "fp16", "first sequence")
    assert bool(cupy.isnan(out[40:]).all())   # never written
    monkeypatch.setenv("FLASHCORE_CUPY_CHECK_METADATA", "1")
    with pytest.raises(ValueError, match="cu_seqlens_q decreases"):
        fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=40, max_seqlen_k=40)
