"""The float64 reference against a direct per-element formula (CPU)."""

import math

import ml_dtypes
import numpy as np
import pytest

from flashcore_cupy import reference


def direct(q, k, v, causal, scale):
    """O[b,h,i] = sum_j softmax_j(scale q_i.k_j) v_j, one scalar loop per row (bhsd)."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    out = np.zeros((B, Hq, Sq, D))
    lse = np.full((B, Hq, Sq), -np.inf)
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            for i in range(Sq):
                keys = [j for j in range(Sk) if not causal or j <= i + Sk - Sq]
                if not keys:
                    continue
                s = np.array([scale * float(np.dot(q[b, h, i], k[b, hk, j])) for j in keys])
                w = np.exp(s - s.max())
                out[b, h, i] = sum(wj * v[b, hk, j] for wj, j in zip(w, keys)) / w.sum()
                lse[b, h, i] = s.max() + math.log(w.sum())
    return out, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,Hq,Hkv,Sq,Sk,D", [
    (1, 2, 2, 5, 5, 8), (2, 4, 2, 3, 7, 16), (1, 3, 1, 9, 4, 8), (1, 2, 1, 1, 6, 8)])
def test_matches_direct_formula(rng, B, Hq, Hkv, Sq, Sk, D, causal):
    q = rng.standard_normal((B, Hq, Sq, D))
    k = rng.standard_normal((B, Hkv, Sk, D))
    v = rng.standard_normal((B, Hkv, Sk, D))
    out, lse = reference.attention(q, k, v, causal=causal, return_lse=True)
    want_out, want_lse = direct(q, k, v, causal, 1 / math.sqrt(D))
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-12)


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
