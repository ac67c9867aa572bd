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


def test_long_cases_take_turns_sample_by_sample_and_short_ones_in_warmed_blocks():
    from flashcore_cupy import bench

    long_blocks, long_warm = bench.turn_plan(bench._CLOCK_BOUND_US, 40)
    assert (long_blocks, long_warm) == (40, 0.0)       # one sample per turn, one warm round
    assert [n for n, r in timing.turns(["a", "b"], 4, long_blocks)] == ["a", "b", "b", "a"] * 2
    short_blocks, short_warm = bench.turn_plan(bench._CLOCK_BOUND_US - 1, 40)
    assert short_blocks == 5 and short_warm > 0


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


@pytest.mark.gpu
def test_side_by_side_with_no_warmup_time_warms_each_turn_with_one_round():
    import contextlib

    import cupy

    a = cupy.ones((256, 256), cupy.float32)
    seen = {"x": [], "y": []}
    fns = {name: (lambda i, name=name: (seen[name].append(i), a @ a), contextlib.nullcontext)
           for name in seen}
    out = timing.time_side_by_side(fns, iters=3, calls=2, warmup_s=0.0, blocks=3)
    assert all(len(t.us) == 3 for t in out.values())
    for calls in seen.values():   # per turn: one warm round (calls 0, 1), then its sample
        assert calls == [0, 1, 0, 1, 0, 1, 2, 3, 0, 1, 4, 5]


def test_peer_call_prepares_inputs_once_and_pins_the_backend(monkeypatch):
    """Scripts time a peer through bench.peer_call: its inputs converted once, its calls
    made inside the benchmark's context; None where the peer cannot run (no torch)."""
    import contextlib

    from flashcore_cupy import bench
    from flashcore_cupy.shapes import parse_shape

    shape, calls, prepared = parse_shape("mission"), [], []
    monkeypatch.setattr(bench, "_torch", lambda: None)
    assert bench.peer_call(shape, "sdpa_cudnn", 1, 2, 3) is None

    def prepare(*xs):
        prepared.append(xs)
        return tuple(10 * x for x in xs)
    context = contextlib.nullcontext
    monkeypatch.setattr(bench, "_impls", lambda s, torch: {"sdpa_cudnn": (lambda *xs: calls.append(xs),
                                                                          prepare, context)})
    fn, ctx = bench.peer_call(shape, "sdpa_cudnn", 1, 2, 3)
    fn(0), fn(1)
    assert prepared == [(1, 2, 3)] and calls == [(10, 20, 30)] * 2 and ctx is context
