"""One rank's work in the ring, on either array backend: each step's blocks against the K/V
shard the rank holds then. Written once for the GPU ring (ring.py: CuPy, the kernels, NCCL
between the steps) and the CPU simulation (simulate.py: NumPy, the float64 reference, the
shards handed from rank to rank), so the CPU tests run the GPU ring's bookkeeping.

Forward: a block is one attention call (schedule.block_call: its leading rows and keys, the
kernels' own causal flag and window); the query rows past the call's get the LSE -inf (their
outputs NaN, never read by the merge); each query chunk's partials are merged by their LSE.
Backward: dQ accumulates locally, the held shard's dK/dV in the accumulators that travel with
it. Accumulators are `Ops.acc` (float32 on the GPU, float64 in the simulation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .schedule import Block, block_call
from .sharding import chunk_of


@dataclass(frozen=True)
class Ops:
    """An array backend and its attention: attention(q, k, v, *, scale, layout, return_lse,
    causal, window) -> (out, lse (B, Hq, Sq)); attention_backward(dout, q, k, v, out, lse,
    *, scale, layout, causal, window) -> (dq, dk, dv); merge(outs, lses, dtype) -> (out, lse)
    over a leading split axis (rows (..., Dv) and (...)); acc: the accumulators' dtype."""
    xp: Any
    attention: Callable
    attention_backward: Callable
    merge: Callable
    acc: Any


def kernel_ops() -> Ops:
    """CuPy and the library's kernels (float32 accumulators)."""
    import cupy

    from .. import api, backward
    from ..merge import merge_states

    def merge(outs, lses, dtype):
        return merge_states(outs, lses, out=cupy.empty(outs.shape[1:], dtype))

    return Ops(cupy, api.attention, backward.attention_backward, merge, np.float32)


def reference_ops() -> Ops:
    """NumPy and the float64 reference."""
    from .. import reference

    return Ops(np, reference.attention, reference.attention_backward,
               lambda outs, lses, dtype: reference.merge_states(outs, lses), np.float64)


def _lead(x, n: int, axis: int):
    """The first n positions of x along the sequence axis (1 or 2): a view."""
    return x[:, :n] if axis == 1 else x[:, :, :n]


class _Rank:
    def __init__(self, ops: Ops, mine, blocks: list[Block], *, causal: bool, window, scale, layout: str):
        self.ops, self.mine, self.blocks = ops, mine, blocks
        self.causal, self.window, self.scale, self.layout = causal, window, scale, layout
        self.axis = 1 if layout == "bshd" else 2

    def _step_blocks(self, step: int):
        """(block, its call) of step `step`."""
        return [(b, block_call(b.q_span, b.k_span, self.causal, self.window)) for b in self.blocks if b.step == step]


class RankForward(_Rank):
    """A rank's forward: step(s, k, v, theirs) for each ring step with the shard it holds then
    (theirs: that shard's chunk_spans), then result() -> (out, lse (B, Hq, L))."""

    def __init__(self, ops: Ops, q, dv: int, mine, blocks, **opts):
        super().__init__(ops, mine, blocks, **opts)
        self.q, self.dv = q, dv
        self.parts: dict[int, list] = {i: [] for i in range(len(mine))}

    def step(self, step: int, k, v, theirs) -> None:
        xp, axis = self.ops.xp, self.axis
        for blk, call in self._step_blocks(step):
            q_c = chunk_of(self.q, blk.q_chunk, self.mine, axis)
            k_c, v_c = (_lead(chunk_of(x, blk.k_chunk, theirs, axis), call.keys, axis) for x in (k, v))
            o, lse = self.ops.attention(_lead(q_c, call.rows, axis), k_c, v_c, scale=self.scale, layout=self.layout,
                                        return_lse=True, **call.options())
            n = q_c.shape[axis]
            if call.rows < n:   # the later rows see none of the block's keys
                o_all = xp.full(q_c.shape[:3] + (self.dv,), np.nan, o.dtype)
                lse_all = xp.full(lse.shape[:2] + (n,), -np.inf, lse.dtype)
                _lead(o_all, call.rows, axis)[...] = o
                lse_all[..., :call.rows] = lse
                o, lse = o_all, lse_all
            self.parts[blk.q_chunk].append((o, lse))

    def result(self):
        xp, axis, q = self.ops.xp, self.axis, self.q
        out = xp.empty(q.shape[:3] + (self.dv,), q.dtype)
        lse_all = xp.full((q.shape[0], q.shape[2] if axis == 1 else q.shape[1], q.shape[axis]), -np.inf, self.ops.acc)
        # rows as the merge takes them: bshd's (B, L, H) or bhsd's (B, H, L), the LSE to match
        rows = (lambda lse: lse.transpose(0, 2, 1)) if axis == 1 else (lambda lse: lse)
        for i, parts in self.parts.items():
            o_dst = chunk_of(out, i, self.mine, axis)
            if not parts:   # no key visible to any of these queries: 0 and -inf
                o_dst[...] = 0
                continue
            outs = xp.stack([o for o, _ in parts])
            lses = xp.ascontiguousarray(xp.stack([rows(lse) for _, lse in parts]))
            merged, merged_lse = self.ops.merge(outs, lses, q.dtype)
            o_dst[...] = merged
            chunk_of(lse_all, i, self.mine, 2)[...] = rows(merged_lse)
        return out, lse_all


class RankBackward(_Rank):
    """A rank's backward: step(s, k, v, dk, dv, theirs) for each ring step with the shard it
    holds then and that shard's accumulators (added to in place), then result() -> dq in q's
    dtype. out and lse are the forward's (the whole sequence's, this rank's shard)."""

    def __init__(self, ops: Ops, dout, q, out, lse, mine, blocks, **opts):
        super().__init__(ops, mine, blocks, **opts)
        self.dout, self.q, self.out, self.lse = dout, q, out, lse
        self.dq = ops.xp.zeros(q.shape, ops.acc)

    def step(self, step: int, k, v, dk, dv, theirs) -> None:
        axis = self.axis
        for blk, call in self._step_blocks(step):
            mine_of = lambda x: _lead(chunk_of(x, blk.q_chunk, self.mine, axis), call.rows, axis)  # noqa: E731
            theirs_of = lambda x: _lead(chunk_of(x, blk.k_chunk, theirs, axis), call.keys, axis)  # noqa: E731
            lse = self.ops.xp.ascontiguousarray(chunk_of(self.lse, blk.q_chunk, self.mine, 2)[..., :call.rows])
            g_q, g_k, g_v = self.ops.attention_backward(
                mine_of(self.dout), mine_of(self.q), theirs_of(k), theirs_of(v), mine_of(self.out), lse,
                scale=self.scale, layout=self.layout, **call.options())
            mine_of(self.dq)[...] += g_q
            theirs_of(dk)[...] += g_k
            theirs_of(dv)[...] += g_v

    def result(self):
        return self.dq.astype(self.q.dtype)
