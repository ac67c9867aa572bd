"""CUDA-event timing shared by the CLI and the benchmark."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np

Call = Callable[[int], object]   # fn(i): the i-th call, so callers can rotate inputs


@dataclass(frozen=True)
class Timing:
    us: np.ndarray   # one sample per timed call (latency) or per batch (throughput)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.us, 50))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.us, 90))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.us, 99))


_BUSY_MATMULS = 200   # of 2048 x 2048 fp16: ~5 ms of GPU work


def busy_gpu() -> None:
    """A few milliseconds of matrix products, then idle: every measurement starts from
    the same clock state. The GPU clocks down while idle (nvidia-smi shows 345-450 MHz
    between runs); a latency measurement of a few-microsecond kernel taken right after a
    quiet stretch (validation on the host, say) would otherwise run at lower clocks than
    one taken after a busy peer, and the order of the implementations would decide."""
    import cupy

    a = cupy.ones((2048, 2048), dtype=cupy.float16)
    for _ in range(_BUSY_MATMULS):
        a @ a
    cupy.cuda.get_current_stream().synchronize()


def _event_samples(fn: Call, iters: int, calls: int, warmup: int) -> Timing:
    """`iters` samples of CUDA events around `calls` back-to-back calls (per call), each
    sample started with the GPU idle (its queue empty; its clocks as `busy_gpu` leaves
    them). fn(i) gets the call index, so callers can rotate inputs."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    busy_gpu()
    for i in range(warmup):
        fn(i)
    events = cupy.cuda.Event(), cupy.cuda.Event()
    return Timing(np.array([_sample(fn, i, calls, stream, events) for i in range(iters)]))


def _sample(fn: Call, i: int, calls: int, stream, events) -> float:
    """Sample i: CUDA events (start, end) around calls fn(i * calls + c), c < calls, once the
    GPU is idle; µs per call."""
    import cupy

    start, end = events
    stream.synchronize()
    start.record(stream)
    for c in range(calls):
        fn(i * calls + c)
    end.record(stream)
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / calls


def time_latency(fn: Call, iters: int, warmup: int = 10) -> Timing:
    """Events around one call after the GPU is idle: what a user sees, host cost included."""
    return _event_samples(fn, iters, 1, warmup)


def time_throughput(fn: Call, iters: int, calls: int = 20,
                    warmup: int = 10) -> Timing:
    """Events around `calls` back-to-back calls, divided by their count; `iters` samples."""
    return _event_samples(fn, iters, calls, warmup)


def _warm(fn: Call, seconds: float, calls: int) -> None:
    """Call fn in synchronised rounds of `calls` calls for at least `seconds` (at least one
    round: seconds=0 gives one): the host path and the clocks reach their steady state, and
    the GPU queue never holds more than one round (an unsynchronised loop queued long kernels
    to the launch queue's depth, PERF_HISTORY v18)."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    start, i = time.perf_counter(), 0
    while True:
        for _ in range(calls):
            fn(i)
            i += 1
        stream.synchronize()
        if time.perf_counter() - start >= seconds:
            return


def time_side_by_side(fns: dict[str, tuple[Call, Callable[[], ContextManager]]],
                      samples: int | dict[str, int], calls: int | dict[str, int] = 1,
                      warmup_s: float = 0.05, rounds: int = 5) -> dict[str, Timing]:
    """Samples of each implementation, side by side: the implementations take turns over
    `rounds` rounds in the balanced order of `turns` (within a round each follows each other
    equally often, over the design's cycle), every round started by the same standard load
    (busy_gpu: so the first turn of every round has the same predecessor), every turn warmed
    up (`_warm`: `warmup_s` seconds, or one round of its calls with 0), then its block of
    samples back to back (rounds equal to the samples: one sample per turn, so that all meet
    the GPU's clock alike; see bench.sample_plan).
    Back to back keeps each one's host path in the CPU's caches, as a loop of calls does (the
    peers' anchors are measured so; sampling them call by call in turn made each one's host
    path run cold: flashcore 18 and cuDNN 27 us at the mission shape, against ~14 and ~22).
    Taking turns spreads each one's samples over the whole run, so that the machine's drift
    (a freshly started one ran the host path 1.6x slower for its first seconds, v18) meets
    them all alike instead of whichever was timed then.
    samples, calls: per implementation (a dict) or the same for all; a sample is events around
    `calls` back-to-back calls (per call) after the GPU is idle.
    fns: name -> (fn(i), context): each turn runs inside its implementation's context (entered
    outside the events), which pins an SDPA backend; fn gets the call index, to rotate inputs."""
    import cupy

    names = list(fns)
    samples = samples if isinstance(samples, dict) else dict.fromkeys(names, samples)
    calls = calls if isinstance(calls, dict) else dict.fromkeys(names, calls)
    stream = cupy.cuda.get_current_stream()
    events = cupy.cuda.Event(), cupy.cuda.Event()
    out = {name: np.empty(samples[name]) for name in names}
    for round_turns in turns(names, samples, rounds):
        busy_gpu()
        for name, indices in round_turns:
            fn, context = fns[name]
            with context():
                _warm(fn, warmup_s, calls[name])
                for i in indices:
                    out[name][i] = _sample(fn, i, calls[name], stream, events)
    return {name: Timing(us) for name, us in out.items()}


def balanced_orders(names: list[str]) -> list[list[str]]:
    """The rounds of a Williams design over `names`: across them every name comes right after
    every other name equally often (once for an even count of names over n rounds; twice for an
    odd count, over 2n rounds, the design and its mirror), and first equally often. A fixed
    order (or one reversed every other round) made some implementation always follow the same,
    heavier one, and the previous one's load sets the GPU's clock (PERF_HISTORY v20)."""
    n = len(names)
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(x + r) % n for x in first] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [[names[x] for x in row] for row in rows]


Round = list[tuple[str, range]]


def turns(names: list[str], samples: int | dict[str, int], rounds: int) -> list[Round]:
    """time_side_by_side's order: per round, (name, sample indices) per turn. Round r takes
    the design's row r (balanced_orders, cycled) and gives each name its r-th block of its
    own samples (blocks as equal as can be); a name with fewer samples than rounds sits out
    the rounds whose block is empty, which unbalances the order (bench.run_case times
    implementations of very different speeds in separate groups). Use a multiple of
    len(balanced_orders(names)) rounds for balance."""
    samples = samples if isinstance(samples, dict) else dict.fromkeys(names, samples)
    orders = balanced_orders(names)
    rounds = max(1, rounds)
    out = []
    for r in range(rounds):
        this = []
        for name in orders[r % len(orders)]:
            n = samples[name]
            lo, hi = n * r // rounds, n * (r + 1) // rounds
            if hi > lo:
                this.append((name, range(lo, hi)))
        out.append(this)
    return out


def predecessors(order: list[Round]) -> dict[tuple[str, str], int]:
    """(previous, next) -> how often `next`'s turn came right after `previous`'s; "load" is
    the standard load that starts every round. What the JSON records, to show that no
    implementation was favoured."""
    counts: dict[tuple[str, str], int] = {}
    for round_turns in order:
        names = ["load"] + [name for name, _ in round_turns]
        for a, b in zip(names, names[1:]):
            counts[a, b] = counts.get((a, b), 0) + 1
    return counts


GRAPH_BELOW_US = 30   # kernels shorter than this are timed by CUDA-graph replay (back-to-back launches
                      # from Python would time the host)


def time_kernel(fn: Callable[[], object], iters: int = 10) -> Timing:
    """A probe's timing of fn's kernel: back-to-back calls (time_throughput), or, where a call takes
    under GRAPH_BELOW_US, calls captured in a CUDA graph and replayed (time_graph_replay)."""
    t = time_throughput(lambda i: fn(), iters)
    return time_graph_replay(fn) if t.p50 < GRAPH_BELOW_US else t


def time_graph_replay(fn: Callable[[], object], iters: int = 50, calls: int = 20) -> Timing:
    """Kernel time without the host: `calls` calls of fn captured in a CUDA graph on a
    stream of its own, the graph replayed `iters` times, per call. For kernels short
    enough that back-to-back launches from Python would time the host instead."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        fn()
        stream.synchronize()
        stream.begin_capture()
        for _ in range(calls):
            fn()
        graph = stream.end_capture()
        t = time_throughput(lambda i: graph.launch(stream), iters, calls=1)
    return Timing(t.us / calls)
