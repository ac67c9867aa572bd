import time

import pytest

from flashcore_cupy import timing


def test_turns_give_each_implementation_blocks_of_samples_in_alternating_order():
    order = timing.turns(["a", "b", "c"], 10, 3)
    assert [name for name, _ in order] == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    for name in "abc":   # every sample index once per name, in blocks of 3 or 4
        blocks = [list(r) for n, r in order if n == name]
        assert sum(blocks, []) == list(range(10)) and all(3 <= len(b) <= 4 for b in blocks)
    assert timing.turns(["a", "b"], 2, 5) == [("a", range(0, 1)), ("b", range(0, 1)),
                                              ("b", range(1, 2)), ("a", range(1, 2))]


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
    out = timing.time_side_by_side(fns, iters=6, calls=2, warmup_s=0.01, blocks=3)
    assert time.perf_counter() - t0 >= 0.06            # each of 6 warm-ups lasted its 0.01 s
    assert set(out) == {"fast", "slow"}
    assert all(len(t.us) == 6 and (t.us > 0).all() for t in out.values())
    assert out["slow"].p50 > 3 * out["fast"].p50
    assert entered == {"fast": 3, "slow": 3}           # one per block
    timed = seen[-4:]                                  # the last block: samples 4 and 5
    assert timed == [8, 9, 10, 11]                     # call indices i * calls + c
