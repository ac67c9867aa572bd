"""The inference ops' float64 references (merge_states, attention_varlen, attention_kvcache),
held to the dense reference and to each other (CPU)."""

import numpy as np
import pytest

from flashcore_cupy import reference


def _qkv(rng, b, hq, hkv, sq, sk, d=16, dv=None):
    return (rng.standard_normal((b, hq, sq, d)), rng.standard_normal((b, hkv, sk, d)),
            rng.standard_normal((b, hkv, sk, dv or d)))


@pytest.mark.parametrize("causal", [False, True])
def test_merging_two_halves_of_the_keys_is_attention_over_all(rng, causal):
    q, k, v = _qkv(rng, 2, 4, 2, 9, 13, dv=8)
    full, full_lse = reference.attention(q, k, v, causal=causal, return_lse=True)
    # the halves keep the whole problem's masks: bias -inf hides the other half's keys
    halves = []
    for lo, hi in ((0, 6), (6, 13)):
        hide = np.full((9, 13), -np.inf)
        hide[:, lo:hi] = 0.0
        halves.append(reference.attention(q, k, v, causal=causal, bias=hide, return_lse=True))
    (oa, la), (ob, lb) = halves
    out, lse = reference.merge_states(oa, la, ob, lb)
    np.testing.assert_allclose(out, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(full_lse))
    fin = np.isfinite(full_lse)
    np.testing.assert_allclose(lse[fin], full_lse[fin], rtol=1e-12)
    stacked = reference.merge_states(np.stack([oa, ob]), np.stack([la, lb]).astype(np.float32))
    np.testing.assert_allclose(stacked[0], out, rtol=1e-6, atol=1e-6)   # fp32 partial LSE


def test_merge_handles_minus_inf_partials():
    out_a, out_b = np.ones((2, 3, 4)), 2 * np.ones((2, 3, 4))
    lse_a = np.array([[0.0, -np.inf, -np.inf], [1.0, 1.0, -np.inf]])
    lse_b = np.array([[-np.inf, 0.5, -np.inf], [1.0, -np.inf, -np.inf]])
    out, lse = reference.merge_states(out_a, lse_a, out_b, lse_b)
    np.testing.assert_allclose(out[0, 0], 1.0)
    np.testing.assert_allclose(out[0, 1], 2.0)
    np.testing.assert_allclose(out[1, 0], 1.5)                  # equal weights
    assert (out[:, 2] == 0).all() and np.isneginf(lse[:, 2]).all()   # no split saw a key
    np.testing.assert_allclose(lse[1, 0], 1.0 + np.log(2.0))
    nan_b = np.where(np.isneginf(lse_b)[..., None], np.nan, out_b)   # a -inf partial's outputs: unread
    np.testing.assert_array_equal(reference.merge_states(out_a, lse_a, nan_b, lse_b)[0], out)
    with pytest.raises(ValueError, match="lse shape"):
        reference.merge_states(out_a, lse_a[:, :2], out_b, lse_b)
    with pytest.raises(TypeError):
        reference.merge_states(out_a, lse_a, out_b)


@pytest.mark.parametrize("opts", [dict(), dict(causal=True), dict(causal=True, window=(3, 0)),
                                  dict(softcap=2.0, alibi_slopes="per_batch")], ids=str)
def test_varlen_is_dense_attention_per_sequence(rng, opts):
    """Ragged sequences, an empty one, one with no keys: each equals the dense reference of its
    own; the LSE is (Hq, total_q)."""
    lengths_q, lengths_k = [5, 0, 3, 7, 2], [6, 4, 3, 2, 0]
    hq, hkv, d = 4, 2, 16
    cu_q, cu_k = np.concatenate([[0], np.cumsum(lengths_q)]), np.concatenate([[0], np.cumsum(lengths_k)])
    q = rng.standard_normal((cu_q[-1], hq, d))
    k, v = (rng.standard_normal((cu_k[-1], hkv, d)) for _ in range(2))
    opts = dict(opts)
    if opts.get("alibi_slopes") == "per_batch":
        opts["alibi_slopes"] = rng.uniform(0.05, 0.5, (len(lengths_q), hq))
    out, lse = reference.attention_varlen(q, k, v, cu_q.astype(np.int32), cu_k.astype(np.int32),
                                          return_lse=True, **opts)
    assert out.shape == q.shape and lse.shape == (hq, cu_q[-1])
    for b in range(len(lengths_q)):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        seq_opts = dict(opts)
        if "alibi_slopes" in opts:
            seq_opts["alibi_slopes"] = opts["alibi_slopes"][b]
        want, want_lse = reference.attention(q[None, sq], k[None, sk], v[None, sk], layout="bshd",
                                             return_lse=True, **seq_opts)
        np.testing.assert_allclose(out[sq], want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(lse[:, sq], want_lse[0])
    assert (out[cu_q[4]:cu_q[5]] == 0).all() and np.isneginf(lse[:, cu_q[4]:cu_q[5]]).all()   # no keys


def test_varlen_rejects_bad_offsets(rng):
    q = rng.standard_normal((4, 2, 8))
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        reference.attention_varlen(q, q, q, np.array([1, 4]), np.array([0, 4]))
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        reference.attention_varlen(q, q, q, np.array([0, 4]), np.array([0, 3, 2]))
    with pytest.raises(ValueError, match="same length"):
        reference.attention_varlen(q, q, q, np.array([0, 4]), np.array([0, 2, 4]))


def _page_table(rng, b, s_max, page_size):
    """A shuffled block table of (B, pages per sequence) over a pool with 3 spare pages."""
    per_seq = -(-s_max // page_size)
    return rng.permutation(b * per_seq + 3)[:b * per_seq].reshape(b, per_seq).astype(np.int32), b * per_seq + 3


def _paged(dense, table, n_pages, page_size):
    """The dense cache (B, S_max, H, D) in the pages `table` names; other pages NaN."""
    pages = np.full((n_pages, page_size, *dense.shape[2:]), np.nan)
    for i in range(dense.shape[0]):
        for t in range(dense.shape[1]):
            pages[table[i, t // page_size], t % page_size] = dense[i, t]
    return pages


@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("sq, causal", [(1, False), (4, True)], ids=["decode", "speculative"])
def test_kvcache_paged_and_dense_agree_and_append_in_place(rng, page_size, sq, causal):
    b, hq, hkv, d, s_max, n_new = 3, 4, 2, 16, 20, 2
    seqlens = np.array([5, 0, 17], np.int32)   # appends cross pages; one sequence starts empty
    k_dense, v_dense = (rng.standard_normal((b, s_max, hkv, d)) for _ in range(2))
    table, n_pages = _page_table(rng, b, s_max, page_size)
    k_pages, v_pages = _paged(k_dense, table, n_pages, page_size), _paged(v_dense, table, n_pages, page_size)
    q = rng.standard_normal((b, sq, hq, d))
    k_new, v_new = (rng.standard_normal((b, n_new, hkv, d)) for _ in range(2))
    spare_before = k_pages[np.setdiff1d(np.arange(len(k_pages)), table)].copy()
    dense_out, dense_lse = reference.attention_kvcache(q, k_dense, v_dense, cache_seqlens=seqlens, k_new=k_new,
                                                       v_new=v_new, causal=causal, return_lse=True)
    paged_out, paged_lse = reference.attention_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens,
                                                       block_table=table, k_new=k_new, v_new=v_new,
                                                       causal=causal, return_lse=True, num_splits=3)
    np.testing.assert_allclose(paged_out, dense_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(paged_lse, dense_lse, rtol=1e-12)
    for i in range(b):   # the appends, element by element, and against attention over the keys
        n = seqlens[i] + n_new
        np.testing.assert_array_equal(k_dense[i, seqlens[i]:n], k_new[i])
        for t in range(n):
            np.testing.assert_array_equal(k_pages[table[i, t // page_size], t % page_size], k_dense[i, t])
        want = reference.attention(q[i:i + 1], k_dense[i:i + 1, :n], v_dense[i:i + 1, :n], layout="bshd",
                                   causal=causal)
        np.testing.assert_allclose(dense_out[i:i + 1], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(k_pages[np.setdiff1d(np.arange(len(k_pages)), table)]),
                                  np.isnan(spare_before))   # pages outside the table untouched


def test_kvcache_without_append_and_with_an_empty_sequence(rng):
    q = rng.standard_normal((2, 1, 2, 8))
    k, v = (rng.standard_normal((2, 6, 1, 8)) for _ in range(2))
    before = k.copy()
    out, lse = reference.attention_kvcache(q, k, v, cache_seqlens=np.array([6, 0]), return_lse=True)
    assert (k == before).all() and lse.shape == (2, 2, 1)
    assert (out[1] == 0).all() and np.isneginf(lse[1]).all()   # no keys at all
    np.testing.assert_allclose(out[:1], reference.attention(q[:1], k[:1], v[:1], layout="bshd"), rtol=1e-12)
    with pytest.raises(ValueError, match="cache_seqlens"):
        reference.attention_kvcache(q, k, v, cache_seqlens=np.array([6]))
