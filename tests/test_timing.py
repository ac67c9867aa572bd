import time

import pytest

from flashcore_cupy import timing


def test_turns_take_every_implementation_each_round_in_alternating_order():
    order = timing.turns(["a", "b", "c"], 4)
    assert order[:3] == [(0, "a"), (0, "b"), (0, "c")]
    assert order[3:6] == [(1, "c"), (1, "b"), (1, "a")]
    assert len(order) == 12
    for i in range(4):   # a round holds each name once, with its own sample index
        assert sorted(name for j, name in order if j == i) == ["a", "b", "c"]


@pytest.mark.gpu
def test_side_by_side_samples_each_implementation_in_its_context():
    import contextlib

    import cupy

    entered = {"fast": 0, "slow": 0}

    def context_of(name):
        @contextlib.contextmanager
        def context():
            entered[name] += 1
            yield
        return context

    a = cupy.ones((1024, 1024), cupy.float32)
    seen = []

    def slow(i):
        seen.append(i)
        for _ in range(20):
            a @ a

    fns = {"fast": (lambda i: a.sum(), context_of("fast")), "slow": (slow, context_of("slow"))}
    t0 = time.perf_counter()
    out = timing.time_side_by_side(fns, iters=6, calls=2, warmup_s=0.01)
    assert time.perf_counter() - t0 >= 0.02            # each warm-up lasted its 0.01 s
    assert set(out) == {"fast", "slow"}
    assert all(len(t.us) == 6 and (t.us > 0).all() for t in out.values())
    assert out["slow"].p50 > 3 * out["fast"].p50
    assert entered == {"fast": 7, "slow": 7}           # the warm-up, then one per sample
    assert seen[-12:] == list(range(12))               # call indices i * calls + c, in order
