import time

import pytest

from flashcore_cupy import timing


@pytest.mark.parametrize("n", [2, 3, 5, 6])
def test_balanced_orders_let_every_name_follow_every_other_equally_often(n):
    names = list("abcdef"[:n])
    orders = timing.balanced_orders(names)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(o) == names for o in orders)
    follows = {}
    for order in orders:
        for a, b in zip(order, order[1:]):
            follows[a, b] = follows.get((a, b), 0) + 1
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1   # each ordered pair alike
    firsts = [o[0] for o in orders]
    assert all(firsts.count(x) == firsts.count(names[0]) for x in names)


def test_a_fixed_or_reversed_order_is_what_the_design_replaces():
    """The old order (IMPLS order, reversed every other round) let sdpa_cudnn follow only
    sdpa_flash and sdpa_efficient; in the design it follows each of the five once."""
    names = ["flashcore", "flashcore_sm80", "naive_cupy", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient"]
    old = [names if r % 2 == 0 else names[::-1] for r in range(6)]
    before = {a for o in old for a, b in zip(o, o[1:]) if b == "sdpa_cudnn"}
    assert before == {"sdpa_flash", "sdpa_efficient"}
    after = [a for o in timing.balanced_orders(names) for a, b in zip(o, o[1:]) if b == "sdpa_cudnn"]
    assert sorted(after) == sorted(set(names) - {"sdpa_cudnn"})


def test_turns_give_each_name_its_own_sample_count_in_blocks():
    order = timing.turns(["a", "b", "c"], {"a": 10, "b": 10, "c": 2}, 6)
    assert len(order) == 6
    flat = [turn for r in order for turn in r]
    for name, n in (("a", 10), ("b", 10), ("c", 2)):   # every sample index once per name
        blocks = [list(r) for m, r in flat if m == name]
        assert sum(blocks, []) == list(range(n))
    assert sum(1 for m, _ in flat if m == "c") == 2   # sits out the rounds with no sample left
    assert [m for m, _ in order[0]] == ["a", "b"]      # round 0: the design's first row, c sitting out
    one_each = timing.turns(["a", "b"], 4, 4)
    assert one_each == [[("a", range(0, 1)), ("b", range(0, 1))], [("b", range(1, 2)), ("a", range(1, 2))],
                        [("a", range(2, 3)), ("b", range(2, 3))], [("b", range(3, 4)), ("a", range(3, 4))]]
    assert timing.predecessors(one_each) == {("load", "a"): 2, ("a", "b"): 2, ("load", "b"): 2, ("b", "a"): 2}


@pytest.mark.parametrize("n", [2, 5, 6])
def test_every_name_has_the_same_predecessors_over_a_plan(n):
    """What the benchmark records: over rounds that are a multiple of the cycle, with every
    name sampling in every round, each name follows each other name, and the standard load
    that starts each round, equally often."""
    names = [f"impl{i}" for i in range(n)]
    cycle = len(timing.balanced_orders(names))
    counts = timing.predecessors(timing.turns(names, 3 * cycle, 3 * cycle))
    for b in names:
        before = {a: counts.get((a, b), 0) for a in ["load"] + names if a != b}
        assert len(set(before.values())) == 1, (b, before)


def test_sample_plan_gives_each_speed_group_its_counts():
    from flashcore_cupy import bench

    quick = {"flashcore": 400.0, "naive_cupy": 25_000.0, "sdpa_cudnn": 500.0, "sdpa_flash": 700.0}
    assert bench.speed_groups(quick) == [["flashcore", "sdpa_cudnn", "sdpa_flash"], ["naive_cupy"]]
    fast = ["flashcore", "sdpa_cudnn", "sdpa_flash"]   # odd: a 6-round cycle
    lat = bench.sample_plan(fast, quick, "latency", 50)
    assert lat.rounds == 54 and lat.warmup_s == 0.0 and set(lat.samples.values()) == {54}   # sample by sample
    thr = bench.sample_plan(fast, quick, "throughput", 50)
    assert thr.rounds == 30 and set(thr.samples.values()) == {30} and set(thr.calls.values()) == {20}
    slow = bench.sample_plan(["naive_cupy"], quick, "throughput", 50)
    assert slow.samples == {"naive_cupy": 10} and slow.calls == {"naive_cupy": 2}
    short = bench.sample_plan(fast, {**quick, "flashcore": 12.0}, "latency", 50)
    assert short.rounds == 6 and short.warmup_s > 0 and short.samples["flashcore"] == 50   # blocks


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
    out = timing.time_side_by_side(fns, samples=6, calls=2, warmup_s=0.01, rounds=2)
    assert time.perf_counter() - t0 >= 0.04            # each of 4 warm-ups lasted its 0.01 s
    assert set(out) == {"fast", "slow"}
    assert all(len(t.us) == 6 and (t.us > 0).all() for t in out.values())
    assert out["slow"].p50 > 3 * out["fast"].p50
    assert entered == {"fast": 2, "slow": 2}           # one per turn
    timed = seen[-6:]                                  # slow's last turn: samples 3, 4 and 5
    assert timed == [6, 7, 8, 9, 10, 11]               # call indices i * calls + c


@pytest.mark.gpu
def test_side_by_side_with_no_warmup_time_warms_each_turn_with_one_round():
    import contextlib

    import cupy

    a = cupy.ones((256, 256), cupy.float32)
    seen = {"x": [], "y": []}
    fns = {name: (lambda i, name=name: (seen[name].append(i), a @ a), contextlib.nullcontext)
           for name in seen}
    out = timing.time_side_by_side(fns, samples=3, calls=2, warmup_s=0.0, rounds=3)
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
    context, asked = contextlib.nullcontext, []

    def impls(s, torch, arrays=None, dtype="fp16"):   # the benchmark's table: Impl rows
        asked.append((arrays, dtype))
        return {"sdpa_cudnn": bench.Impl(lambda *xs: calls.append(xs), prepare, context)}
    monkeypatch.setattr(bench, "_impls", impls)
    fn, ctx = bench.peer_call(shape, "sdpa_cudnn", 1, 2, 3, {"bias": 4}, "bf16")
    fn(0), fn(1)
    assert prepared == [(1, 2, 3)] and calls == [(10, 20, 30)] * 2 and ctx is context
    assert asked == [({"bias": 4}, "bf16")]   # a variant row's arrays reach its mask


def test_time_kernel_replays_a_graph_below_the_threshold(monkeypatch):
    """time_kernel: back-to-back calls' timing, or a graph replay's where a call takes under
    GRAPH_BELOW_US (the probes' rule: Python would otherwise be what is timed)."""
    import numpy as np

    replayed = []
    monkeypatch.setattr(timing, "time_graph_replay", lambda fn: replayed.append(fn) or "graph")
    for p50, graphed in ((timing.GRAPH_BELOW_US + 1.0, False), (timing.GRAPH_BELOW_US - 1.0, True)):
        monkeypatch.setattr(timing, "time_throughput", lambda fn, iters, p50=p50: timing.Timing(np.array([p50])))
        got = timing.time_kernel(lambda: None)
        assert (got == "graph") == graphed and (graphed or got.p50 == p50)
    assert len(replayed) == 1
