"""attention_varlen on a GPU against the float64 reference (the spec): ragged and empty
sequences, GQA, variants, both dtypes, poisoned outputs, bitwise repeats, graph capture."""

import ml_dtypes
import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import reference, workload

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


VARIANTS = [dict(), dict(causal=True), dict(causal=True, window=(37, 0)), dict(window=(20, 9)),
            dict(softcap=5.0, alibi_slopes="per_batch", causal=True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("opts", VARIANTS, ids=str)
def test_varlen_matches_reference(rng, dtype, d, opts):
    """Ragged sequences (one empty, one with no keys, one past a tile), GQA 4:2, the LSE
    (Hq, total_q), out= poisoned; a repeat is bitwise equal."""
    import cupy

    lengths_q, lengths_k = [130, 0, 1, 77, 5, 300], [200, 9, 64, 77, 0, 129]
    q, k, v, cu_q, cu_k = _packed(rng, lengths_q, lengths_k, 4, 2, d, dtype)
    opts = dict(opts)
    if opts.get("alibi_slopes") == "per_batch":
        opts["alibi_slopes"] = cupy.asarray(rng.uniform(0.01, 0.3, (len(lengths_q), 4)).astype(np.float32))
    out = cupy.full(q.shape, np.nan, q.dtype)
    got, lse = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=max(lengths_q), max_seqlen_k=max(lengths_k),
                                   return_lse=True, out=out, **opts)
    assert got is out and lse.shape == (4, q.shape[0])
    want, want_lse = reference.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)
    _check(got, want, dtype, f"varlen {dtype} D{d} {opts}")
    g = lse.get()
    assert (np.isneginf(g) == np.isneginf(want_lse)).all()
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(g[fin], want_lse[fin], rtol=2e-3, atol=2e-3)
    again = fc.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **opts)   # max_seqlen read from the device
    assert bool(cupy.array_equal(again[0], got)) and bool(cupy.array_equal(again[1], lse))


def test_varlen_reaches_the_dense_kernel_per_sequence(rng):
    """Two equal sequences packed give what dense attention gives on the batch of two (bshd),
    to float rounding of the same kernel family."""
    q, k, v, cu_q, cu_k = _packed(rng, [256, 256], [384, 384], 8, 8, 128, "fp16")
    got = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=256, max_seqlen_k=384, causal=True)
    dense = fc.attention(q.reshape(2, 256, 8, 128), k.reshape(2, 384, 8, 128), v.reshape(2, 384, 8, 128),
                         layout="bshd", causal=True, backend="sm80")
    assert reference.rel_error(got.reshape(2, 256, 8, 128), dense) < 1e-3


def test_varlen_with_no_keys_at_all_gives_zeros(rng):
    import cupy

    q, k, v, cu_q, cu_k = _packed(rng, [3, 4], [0, 0], 2, 1, 64, "fp16")
    out, lse = fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=4, max_seqlen_k=0, return_lse=True,
                                   out=cupy.full(q.shape, np.nan, q.dtype))
    assert not bool(out.any()) and bool(cupy.isneginf(lse).all())


def test_a_varlen_call_is_captured_in_a_cuda_graph(rng):
    """With the max_seqlen hints and out= given: captured once, replayed on new inputs written
    into the same buffers (new lengths too)."""
    import cupy

    q, k, v, cu_q, cu_k = _packed(rng, [50, 70], [90, 30], 4, 4, 64, "bf16")
    out = cupy.empty_like(q)
    fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=100, max_seqlen_k=100, causal=True, out=out)   # compile
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=100, max_seqlen_k=100, causal=True, out=out)
        graph = stream.end_capture()
    q2, k2, v2, cu_q2, cu_k2 = _packed(rng, [100, 20], [60, 60], 4, 4, 64, "bf16")
    for dst, src in ((q, q2), (k, k2), (v, v2), (cu_q, cu_q2), (cu_k, cu_k2)):
        dst[...] = src
    out[...] = cupy.nan
    graph.launch(stream)
    stream.synchronize()
    want = reference.attention_varlen(q2, k2, v2, cu_q2, cu_k2, causal=True)
    _check(out, want, "bf16", "replayed graph")


def test_bad_offsets_are_clamped_and_caught_when_asked(rng, monkeypatch):
    """Decreasing offsets and offsets past the arrays: the kernel reads and writes inside them
    (the rows it can place are right); FLASHCORE_CUPY_CHECK_METADATA=1 raises instead."""
    import cupy

    q, k, v, _, _ = _packed(rng, [40, 40], [40, 40], 2, 2, 64, "fp16")
    cu_q = cupy.asarray(np.array([0, 40, 30], np.int32))     # the second sequence runs backwards: empty
    cu_k = cupy.asarray(np.array([0, 40, 1000], np.int32))   # past total_k: clamped to it
    out = cupy.full(q.shape, np.nan, q.dtype)
    fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=40, max_seqlen_k=40, out=out)
    want = reference.attention(q[None, :40], k[None, :40], v[None, :40], layout="bshd")[0]
    _check(out[:40], want, "fp16", "first sequence")
    assert bool(cupy.isnan(out[40:]).all())   # never written
    monkeypatch.setenv("FLASHCORE_CUPY_CHECK_METADATA", "1")
    with pytest.raises(ValueError, match="cu_seqlens_q decreases"):
        fc.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=40, max_seqlen_k=40)
