"""Inputs and sampled checks shared by run, bench and tune (CPU, with NumPy standing in for CuPy)."""

import sys
import types

import numpy as np
import pytest

from flashcore_cupy import reference, workload
from flashcore_cupy.shapes import Shape


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    fake = types.SimpleNamespace(asarray=np.asarray)
    monkeypatch.setitem(sys.modules, "cupy", fake)


SHAPE = Shape("t", 1, 4, 2, 700, 300, 64, True)


def test_random_inputs_follow_the_shape_and_layout(numpy_as_cupy, rng):
    q, k, v = workload.random_inputs(SHAPE, "bf16", rng, layout="bshd")
    assert q.shape == (1, 700, 4, 64) and k.shape == v.shape == (1, 300, 2, 64)
    assert q.dtype == workload.np_dtype("bf16") and np.std(q.astype(np.float32)) > 0.9


def test_input_sets_hold_enough_bytes_to_pass_the_l2(numpy_as_cupy, rng):
    set_bytes = 2 * 64 * (4 * 700 + 2 * 2 * 300)   # q, k, v of SHAPE in fp16
    assert workload.set_count(SHAPE, "fp16") == -(-workload.ROTATE_BYTES // set_bytes)
    sets = workload.input_sets(SHAPE, "fp16", rng, rotate_bytes=5 * set_bytes)
    assert len(sets) == 5 and sets[0][0] is not sets[1][0]
    first = workload.random_inputs(SHAPE, "fp16", rng)
    assert workload.input_sets(SHAPE, "fp16", rng, first=first, rotate_bytes=1)[0] is first
    big = Shape("big", 1, 16, 16, 16384, 16384, 128, False)   # 192 MiB per set: two pass 256 MiB
    assert workload.set_count(big, "bf16") == 2
    assert sum(x.nbytes for s in sets for x in s) >= 5 * set_bytes


def test_verify_samples_rows_and_catches_errors(numpy_as_cupy, rng):
    q, k, v = workload.random_inputs(SHAPE, "fp16", rng)
    out = reference.attention(q, k, v, causal=True)
    assert max(workload.verify(SHAPE, q, k, v, out, rng, rows=64)) < 1e-12
    bad = out.copy()
    bad[:, :, 699] += 1.0   # the last row is always among the sampled ones
    err, row_err = workload.verify(SHAPE, q, k, v, bad, rng, rows=64)
    assert err > 1e-3 and row_err > 0.5
    rows = workload.check_rows(700, rng, 64)
    assert len(rows) == 64 and rows[0] == 0 and rows[-1] == 699 and len(set(rows)) == 64


def test_naive_only_where_its_scores_fit():
    assert workload.naive_fits(SHAPE)
    assert not workload.naive_fits(Shape("x", 1, 16, 16, 16384, 16384, 128, False))
