"""`flashcore-cupy tune`: random + local search over the legal tiles, on the GPU.

Shapes are grouped by dispatch key (kernel family, dtype, head dim, grid class):
each group searches the tiles of the kernel `auto` dispatch runs it on (the
Hopper kernel on H100/H200, else the portable one). Within a group
a tile's score is, over the group's shapes, its time divided by the
default tile's time, averaged, so 1.0 is the default. Every candidate is checked against
the float64 reference on fresh inputs before it is timed (the benchmark's
throughput method). A tile replaces the default only if it beats it by more
than the noise measured by timing the default twice.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field

import numpy as np

from . import api, configs, tuning, workload
from .shapes import Shape
from .timing import time_throughput

_MIN_MARGIN = 0.02   # never adopt a tile for less than a 2 % gain
_CHECK_ROWS = 64     # query rows checked per candidate and shape (the float64 reference is slow)


@dataclass
class Group:
    key: configs.DispatchKey
    default: tuning.Config
    shapes: list[Shape] = field(default_factory=list)


def groups_for(shapes: list[Shape], dtypes: list[str], dev: api.DeviceInfo) -> list[Group]:
    out: dict[configs.DispatchKey, Group] = {}
    for dtype in dtypes:
        for s in shapes:
            key, default = configs.dispatch_class(dev.arch, dtype, s.head_dim, s.batch * s.heads_q,
                                                  s.seqlen_q, dev.num_sms)
            out.setdefault(key, Group(key, default)).shapes.append(s)
    return list(out.values())


class Evaluator:
    """Checks, then times, one tile on one group's shapes (fresh inputs per check)."""

    def __init__(self, group: Group, rng: np.random.Generator):
        self.group, self.rng = group, rng
        self.dtype = group.default.dtype
        self.baseline: dict[str, float] = {}

    def time_one(self, config: tuning.Config, shape: Shape) -> float | None:
        import cupy

        q, k, v = workload.random_inputs(shape, self.dtype, self.rng)
        out = cupy.full(q.shape, np.nan, dtype=q.dtype)
        launch = api.plan(q, k, v, causal=shape.causal, out=out, config=config).launch
        launch(q, k, v, out, None)
        if not workload.within_tolerance(self.dtype, *workload.verify(shape, q, k, v, out, self.rng,
                                                                      rows=_CHECK_ROWS)):
            return None
        return time_throughput(lambda i: launch(q, k, v, out, None), iters=5, calls=10).p50

    def score(self, config: tuning.Config) -> tuple[float, dict[str, float]] | None:
        """Mean over shapes of time / default's time; None if the tile fails a check."""
        times = {}
        for shape in self.group.shapes:
            t = self.time_one(config, shape)
            if t is None:
                return None
            times[shape.name] = t
        if not self.baseline:
            self.baseline = dict(times)
        return sum(times[n] / self.baseline[n] for n in times) / len(times), times


def neighbours(config: tuning.Config, legal: set[tuning.Config]) -> list[tuning.Config]:
    """Legal tiles one step away in one parameter of the config's family space."""
    out = []
    for name, values in tuning.family_of(config).space.items():
        i = values.index(getattr(config, name)) if getattr(config, name) in values else None
        for j in ((i - 1, i + 1) if i is not None else ()):
            if 0 <= j < len(values):
                c = dataclasses.replace(config, **{name: values[j]})
                if c in legal:
                    out.append(c)
    return out


def tune_group(group: Group, arch: str, seconds: float, rng, tick) -> dict:
    """Search one group for `seconds`; returns its cache entry (the default when nothing wins)."""
    deadline = time.monotonic() + seconds
    legal, _ = tuning.legal_configs(arch, group.default.dtype, group.default.head_dim,
                                    tuning.family_of(group.default).name)
    legal_set = set(legal) | {group.default}
    ev = Evaluator(group, rng)
    first = ev.score(group.default)
    second = ev.score(group.default)   # the same tile twice: the noise floor
    if first is None or second is None:
        raise RuntimeError(f"the default tile {group.default} failed its check on {group.key}")
    margin = max(_MIN_MARGIN, abs(second[0] - first[0]))
    best, best_score, best_times = group.default, min(first[0], second[0]), second[1]
    tried = {group.default}
    pool = [c for c in legal if c != group.default]
    random.Random(int(rng.integers(1 << 31))).shuffle(pool)
    half = time.monotonic() + seconds / 2
    while time.monotonic() < deadline:
        local = [c for c in neighbours(best, legal_set) if c not in tried]
        cands = (local if time.monotonic() > half and local else None) or \
                [c for c in pool if c not in tried][:1] or local[:1]
        if not cands:
            break
        c = cands[0]
        tried.add(c)
        try:
            result = ev.score(c)
        except Exception as e:   # a launch the filters let through but the GPU refused
            print(f"\n{group.key}: {c} failed: {e}")
            result = None
        if result is not None and result[0] < best_score:
            best, best_score, best_times = c, result[0], result[1]
        tick(group.key, best, best_score, len(tried))
    adopted = best if best_score < 1.0 - margin else group.default
    return {"tile": tuning.entry_tile(adopted),
            "score": round(best_score if adopted == best else 1.0, 4),
            "noise": round(margin, 4), "tried": len(tried),
            "best_seen": str(best), "us": {k: round(v, 2) for k, v in best_times.items()}}
