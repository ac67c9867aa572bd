"""The ring on N virtual ranks, in float64 NumPy: each rank's work is the GPU ring's own
(rank.RankForward / RankBackward) on the reference instead of the kernels, and K/V and the
backward's dK/dV accumulators pass from rank to rank as the ring passes them. What the CPU tests hold to
the reference on the whole sequence; layout bshd (B, S, H, D), the sequence on axis 1.
"""

from __future__ import annotations

import numpy as np

from .rank import RankBackward, RankForward, reference_ops
from .schedule import rank_blocks
from .sharding import chunk_spans, shard, unshard


def visible(q_span: tuple[int, int], k_span: tuple[int, int], causal: bool,
            window: tuple[int, int] | None) -> np.ndarray:
    """(Lq, Lk) booleans: key j visible to query i in global positions (schedule.block_kind's
    rule)."""
    qi = np.arange(q_span[0], q_span[0] + q_span[1])[:, None]
    kj = np.arange(k_span[0], k_span[0] + k_span[1])[None, :]
    keep = np.ones((q_span[1], k_span[1]), bool)
    if causal:
        keep &= kj <= qi
    if window is not None:
        left, right = window
        if left >= 0:
            keep &= kj >= qi - left
        if right >= 0:
            keep &= kj <= qi + right
    return keep


def ring_forward(q, k, v, world: int, *, causal: bool = False, window=None, scale=None, zigzag=None,
                 layout: str = "bshd"):
    """(out, lse) of attention over the whole sequence, computed as the ring does: LSE (B, Hq, S)."""
    zigzag = causal if zigzag is None else zigzag
    axis = 1 if layout == "bshd" else 2
    seqlen = q.shape[axis]
    opts = dict(causal=causal, window=window, scale=scale, layout=layout)
    ranks = [RankForward(reference_ops(), shard(q, r, world, axis=axis, zigzag=zigzag), v.shape[3],
                         chunk_spans(r, world, seqlen, zigzag),
                         rank_blocks(r, world, seqlen, causal=causal, window=window, zigzag=zigzag), **opts)
             for r in range(world)]
    # what each rank holds: (owner, k, v); step 0 its own
    held = [(r, shard(k, r, world, axis=axis, zigzag=zigzag), shard(v, r, world, axis=axis, zigzag=zigzag))
            for r in range(world)]
    for step in range(world):
        for r, (owner, k_r, v_r) in enumerate(held):
            ranks[r].step(step, k_r, v_r, chunk_spans(owner, world, seqlen, zigzag))
        held = [held[(r - 1) % world] for r in range(world)]   # each passes to rank + 1
    outs, lses = zip(*(me.result() for me in ranks))
    return unshard(outs, world, axis=axis, zigzag=zigzag), unshard(lses, world, axis=2, zigzag=zigzag)


def ring_backward(dout, q, k, v, out, lse, world: int, *, causal: bool = False, window=None, scale=None,
                  zigzag=None, layout: str = "bshd"):
    """(dq, dk, dv) over the whole sequence as the ring computes them: each rank's dQ local, the
    held K/V's dK/dV accumulated where the shard is and passed on with it, home after the last
    step. lse: (B, Hq, S), the forward's."""
    zigzag = causal if zigzag is None else zigzag
    axis = 1 if layout == "bshd" else 2
    seqlen = q.shape[axis]
    cut = lambda x, r, ax=axis: shard(x, r, world, axis=ax, zigzag=zigzag)  # noqa: E731
    opts = dict(causal=causal, window=window, scale=scale, layout=layout)
    ranks = [RankBackward(reference_ops(), cut(dout, r), cut(q, r), cut(out, r), cut(lse, r, 2),
                          chunk_spans(r, world, seqlen, zigzag),
                          rank_blocks(r, world, seqlen, causal=causal, window=window, zigzag=zigzag), **opts)
             for r in range(world)]
    # what each rank holds: (owner, k, v, dk, dv); step 0 its own
    held = [(r, cut(k, r), cut(v, r), np.zeros(cut(k, r).shape), np.zeros(cut(v, r).shape)) for r in range(world)]
    for step in range(world):
        for r, (owner, *arrays) in enumerate(held):
            ranks[r].step(step, *arrays, chunk_spans(owner, world, seqlen, zigzag))
        held = [held[(r - 1) % world] for r in range(world)]   # each passes to rank + 1
    # after N passes every shard (with its sums) is back with its owner
    assert all(held[r][0] == r for r in range(world))
    dk = unshard([h[3] for h in held], world, axis=axis, zigzag=zigzag)
    dv = unshard([h[4] for h in held], world, axis=axis, zigzag=zigzag)
    return unshard([me.result() for me in ranks], world, axis=axis, zigzag=zigzag), dk, dv
