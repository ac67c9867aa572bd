"""merge_states on a GPU against the float64 reference (the spec), with poisoned outputs."""

import itertools

import ml_dtypes
import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import reference

pytestmark = pytest.mark.gpu

DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32}
TOL = {"fp16": 2e-3, "bf16": 1e-2, "f32": 1e-5}   # relative L2 error of the merged output


def _partials(rng, splits, row_shape, dv, dtype):
    """Partial outputs and LSEs with -inf entries: a row no split saw, rows some splits did not
    see (their outputs NaN: a -inf partial is not read)."""
    import cupy

    outs = rng.standard_normal((splits, *row_shape, dv)).astype(np.float32)
    lses = rng.uniform(-3.0, 3.0, (splits, *row_shape)).astype(np.float32)
    flat = lses.reshape(splits, -1)
    flat[:, 0] = -np.inf                                   # no split saw a key
    flat[rng.random(flat.shape) < 0.3] = -np.inf           # some splits saw none
    outs.reshape(splits, -1, dv)[np.isneginf(flat)] = np.nan
    return cupy.asarray(outs.astype(DTYPES[dtype])), cupy.asarray(lses)


@pytest.mark.parametrize("dtype_in, dtype_out", list(itertools.product(DTYPES, DTYPES)))
def test_merge_matches_reference(rng, dtype_in, dtype_out):
    """Stacked and pair forms, several splits and row shapes, out= of every dtype; bitwise equal
    when repeated."""
    import cupy

    for splits, row_shape, dv in ((2, (2, 3, 33), 64), (5, (1, 4, 7), 128), (37, (3, 2), 40), (3, (), 512)):
        outs, lses = _partials(rng, splits, row_shape, dv, dtype_in)
        want, want_lse = reference.merge_states(outs, lses)
        out = cupy.full((*row_shape, dv), np.nan, dtype=DTYPES[dtype_out])
        lse_out = cupy.full(row_shape, np.nan, dtype=np.float32)
        got, got_lse = fc.merge_states(outs, lses, out=out, lse_out=lse_out)
        assert got is out and got_lse is lse_out
        what = f"{dtype_in}->{dtype_out} splits={splits} rows={row_shape} dv={dv}"
        assert reference.rel_error(got, want) <= max(TOL[dtype_in], TOL[dtype_out]), what
        g_lse = got_lse.get()
        assert (np.isneginf(g_lse) == np.isneginf(want_lse)).all(), what
        fin = np.isfinite(want_lse)
        np.testing.assert_allclose(g_lse[fin], want_lse[fin], rtol=1e-5, atol=1e-5, err_msg=what)
        again = fc.merge_states(outs, lses, out=cupy.empty_like(out), lse_out=cupy.empty_like(lse_out))
        assert bool(cupy.array_equal(again[0], got, equal_nan=False)) and bool(cupy.array_equal(again[1], got_lse))
        if splits == 2:   # the pair form, its output in the partials' dtype
            pair, pair_lse = fc.merge_states(outs[0], lses[0], outs[1], lses[1])
            assert pair.dtype == outs.dtype and reference.rel_error(pair, want) <= TOL[dtype_in], what
            assert bool(cupy.array_equal(pair_lse, got_lse)), what


def test_merging_attention_over_two_key_halves_is_attention_over_all(rng):
    """attention over the first and the last keys (a bias of -inf hiding the others), merged,
    is attention over all the keys (its output and LSE)."""
    import cupy

    q, k, v = (cupy.asarray(rng.standard_normal((2, 4, 100, 64)).astype(np.float16)) for _ in range(3))
    full, full_lse = fc.attention(q, k, v, return_lse=True)
    halves = []
    for lo, hi in ((0, 37), (37, 100)):
        hide = np.full((100, 100), -np.inf, np.float32)
        hide[:, lo:hi] = 0.0
        halves.append(fc.attention(q, k, v, bias=cupy.asarray(hide), return_lse=True))
    out, lse = fc.merge_states(halves[0][0], halves[0][1], halves[1][0], halves[1][1])
    assert reference.rel_error(out, full.get().astype(np.float64)) <= 2e-3
    np.testing.assert_allclose(lse.get(), full_lse.get(), rtol=1e-4, atol=1e-4)


def test_a_merge_is_captured_in_a_cuda_graph(rng):
    """With out= and lse_out= given, a call allocates nothing and does not sync: it is captured
    in a CUDA graph, and replaying the graph on new partials (the same buffers) merges them."""
    import cupy

    outs, lses = _partials(rng, 4, (2, 8, 16), 128, "f32")
    out, lse_out = cupy.empty((2, 8, 16, 128), np.float32), cupy.empty((2, 8, 16), np.float32)
    fc.merge_states(outs, lses, out=out, lse_out=lse_out)   # compiled and prepared before capture
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        fc.merge_states(outs, lses, out=out, lse_out=lse_out)
        graph = stream.end_capture()
    new_outs, new_lses = _partials(rng, 4, (2, 8, 16), 128, "f32")
    outs[...] = new_outs
    lses[...] = new_lses
    out.fill(np.nan)
    graph.launch(stream)
    stream.synchronize()
    want, _ = reference.merge_states(new_outs, new_lses)
    assert reference.rel_error(out, want) <= TOL["f32"]
