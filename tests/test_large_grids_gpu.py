"""Every op at a batch and at a head count past CUDA's 65535 on a grid's y and z (the kernels
fold them: configs.fold_heads_batch, kernels/grid.cuh), on both kernel families, short
sequences. The outputs are poisoned, so every element must be written (NaN fails); a sample of
the (batch, head) slices, the ones past 65535 among them, is checked against the float64
reference."""

import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import reference, workload

pytestmark = pytest.mark.gpu

BIG = 70_000
SHAPES = {"batch": (BIG, 1), "heads": (1, BIG)}   # (B, Hq)
SQ, SK, D = 16, 24, 64


def _slices(rng, b: int, h: int, n: int = 48) -> list[tuple[int, int]]:
    """(batch, head) pairs to check: the first, the last, those at the 65535 fold, random ones."""
    picks = {0, b * h - 1, min(65535, b * h - 1), min(65534, b * h - 1)} | set(rng.integers(0, b * h, n).tolist())
    return [(i // h, i % h) for i in sorted(picks)]


def _take(a, at, layout="bhsd"):
    """The float64 host copy of slices `at` of a (B, H, S, D) array, as (n, 1, S, D)."""
    import cupy

    idx_b = cupy.asarray([p[0] for p in at])
    idx_h = cupy.asarray([p[1] for p in at])
    return cupy.asnumpy(a[idx_b, idx_h][:, None].astype(np.float32)).astype(np.float64)


def _finite(*arrays):
    import cupy

    for a in arrays:
        assert bool(cupy.isfinite(a).all()), "an element was not written (poisoned NaN left)"


def _inputs(rng, b, h, sq=SQ, sk=SK):
    import cupy

    return [cupy.asarray(rng.standard_normal(s).astype(np.float16)) for s in ((b, h, sq, D), (b, h, sk, D),
                                                                               (b, h, sk, D))]


@pytest.mark.parametrize("backend", ["sm80", "auto"])
@pytest.mark.parametrize("which", list(SHAPES))
def test_attention_and_backward(rng, which, backend):
    b, h = SHAPES[which]
    q, k, v = _inputs(rng, b, h)
    out, lse = fc.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    dout = _inputs(rng, b, h, SQ, SQ)[0]
    dq, dk, dv = fc.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend)
    _finite(out, lse, dq, dk, dv)
    at = _slices(rng, b, h)
    qs, ks, vs, dos = (_take(a, at) for a in (q, k, v, dout))
    want, want_lse = reference.attention(qs, ks, vs, causal=True, return_lse=True)
    assert reference.rel_error(_take(out, at), want) <= workload.TOLERANCE["fp16"]
    np.testing.assert_allclose(cupy_take_lse(lse, at), want_lse[:, 0], rtol=1e-4, atol=1e-4)
    wants = reference.attention_backward(dos, qs, ks, vs, want, want_lse, causal=True)
    for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), wants):
        g = _take(got, at)
        assert workload.within_grad_tolerance("fp16", reference.rel_error(g, w), reference.grad_row_error(g, w)), name


def cupy_take_lse(lse, at):
    return np.stack([lse[i, j].get() for i, j in at])


@pytest.mark.parametrize("which", list(SHAPES))
def test_varlen(rng, which):
    """BIG sequences of one head, or one sequence of BIG heads; ragged lengths (some empty)."""
    import cupy

    b, h = SHAPES[which]
    lens_q = rng.integers(0, SQ + 1, b) if b > 1 else np.array([SQ])
    lens_k = np.maximum(lens_q, rng.integers(1, SK + 1, b)) if b > 1 else np.array([SK])
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(n)]).astype(np.int32) for n in (lens_q, lens_k))
    q = rng.standard_normal((cu_q[-1], h, D)).astype(np.float16)
    k, v = (rng.standard_normal((cu_k[-1], h, D)).astype(np.float16) for _ in range(2))
    out = fc.attention_varlen(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), cupy.asarray(cu_q),
                              cupy.asarray(cu_k), causal=True)
    _finite(out)
    seqs = sorted({0, b - 1, min(65535, b - 1)} | set(rng.integers(0, b, 32).tolist()))
    heads = sorted({0, h - 1, min(65535, h - 1)} | set(rng.integers(0, h, 32).tolist()))
    got = out.get()
    for s in seqs:
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        if rows.stop == rows.start:
            continue
        want = reference.attention(q[None, rows, heads], k[None, keys, heads], v[None, keys, heads], causal=True,
                                   layout="bshd")
        assert reference.rel_error(got[None, rows, heads], want) <= workload.TOLERANCE["fp16"], s


@pytest.mark.parametrize("backend_option", [{}, {"softcap": 30.0}])   # Hopper decode; the portable kernel
@pytest.mark.parametrize("which", list(SHAPES))
def test_kvcache_with_append(rng, which, backend_option):
    import cupy

    b, h = SHAPES[which]
    room, n_new = 40, 1
    q = rng.standard_normal((b, 1, h, D)).astype(np.float16)
    kc, vc = (rng.standard_normal((b, room, h, D)).astype(np.float16) for _ in range(2))
    kn, vn = (rng.standard_normal((b, n_new, h, D)).astype(np.float16) for _ in range(2))
    seqlens = rng.integers(0, room - n_new + 1, b).astype(np.int32)
    dev = [cupy.asarray(a) for a in (q, kc, vc, seqlens, kn, vn)]
    out, lse = fc.attention_kvcache(dev[0], dev[1], dev[2], cache_seqlens=dev[3], k_new=dev[4], v_new=dev[5],
                                    return_lse=True, **backend_option)
    _finite(out, lse)
    seqs = sorted({0, b - 1, min(65535, b - 1)} | set(rng.integers(0, b, 24).tolist()))
    heads = sorted({0, h - 1, min(65535, h - 1)} | set(rng.integers(0, h, 24).tolist()))
    kc_s, vc_s = kc[seqs][:, :, heads].copy(), vc[seqs][:, :, heads].copy()
    want = reference.attention_kvcache(q[seqs][:, :, heads], kc_s, vc_s, cache_seqlens=seqlens[seqs],
                                       k_new=kn[seqs][:, :, heads], v_new=vn[seqs][:, :, heads], **backend_option)
    assert reference.rel_error(out.get()[seqs][:, :, heads], want) <= workload.TOLERANCE["fp16"]
    assert np.array_equal(dev[1].get()[seqs][:, :, heads], kc_s) and np.array_equal(dev[2].get()[seqs][:, :, heads], vc_s)


def test_merge_states(rng):
    import cupy

    outs = rng.standard_normal((3, BIG, 2, 64)).astype(np.float32)
    lses = rng.uniform(-2, 2, (3, BIG, 2)).astype(np.float32)
    got, got_lse = fc.merge_states(cupy.asarray(outs), cupy.asarray(lses))
    want, want_lse = reference.merge_states(outs.astype(np.float64), lses.astype(np.float64))
    assert reference.rel_error(got, want) <= 1e-5
    np.testing.assert_allclose(got_lse.get(), want_lse, rtol=1e-5, atol=1e-5)
