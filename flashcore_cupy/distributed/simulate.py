"""The ring on N virtual ranks, in float64 NumPy: the schedule's blocks through the reference
with the options the GPU ring passes the kernels (schedule.block_call), the partials merged by
their LSE, K/V and the backward's dK/dV accumulators passed from rank to rank as the ring
passes them. What the CPU tests hold to
the reference on the whole sequence; layout bshd (B, S, H, D), the sequence on axis 1.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .schedule import block_call, rank_blocks
from .sharding import chunk_of, chunk_spans, shard, unshard


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


def ring_forward(q, k, v, world: int, *, causal: bool = False, window=None, scale=None, zigzag=None):
    """(out, lse) of attention over the whole sequence, computed as the ring does: bshd, LSE
    (B, Hq, S)."""
    zigzag = causal if zigzag is None else zigzag
    seqlen = q.shape[1]
    qs, ks, vs = ([shard(x, r, world, axis=1, zigzag=zigzag) for r in range(world)] for x in (q, k, v))
    outs, lses = [], []
    for r in range(world):
        mine = chunk_spans(r, world, seqlen, zigzag)
        parts = {i: [] for i in range(len(mine))}
        for blk in rank_blocks(r, world, seqlen, causal=causal, window=window, zigzag=zigzag):
            theirs = chunk_spans(blk.source, world, seqlen, zigzag)
            call = block_call(blk.q_span, blk.k_span, causal, window)   # the kernels' options
            kc = lambda x: chunk_of(x, blk.k_chunk, theirs)[:, :call.keys]  # noqa: E731
            o_c, lse_c = reference.attention(chunk_of(qs[r], blk.q_chunk, mine)[:, :call.rows], kc(ks[blk.source]),
                                             kc(vs[blk.source]), scale=scale, layout="bshd", return_lse=True,
                                             **call.options())
            n = blk.q_span[1]   # rows past the call's see none of the block's keys: LSE -inf
            o = np.full((q.shape[0], n, q.shape[2], v.shape[-1]), np.nan)
            lse = np.full((q.shape[0], n, q.shape[2]), -np.inf)
            o[:, :call.rows], lse[:, :call.rows] = o_c, lse_c.transpose(0, 2, 1)
            parts[blk.q_chunk].append((o, lse))   # the LSE as the rows (B, L, H)
        o_chunks, l_chunks = [], []
        for i, (_, n) in enumerate(mine):
            if parts[i]:
                o, lse = reference.merge_states(np.stack([p[0] for p in parts[i]]), np.stack([p[1] for p in parts[i]]))
            else:   # no key visible to any of these queries
                o = np.zeros((q.shape[0], n, q.shape[2], v.shape[-1]))
                lse = np.full((q.shape[0], n, q.shape[2]), -np.inf)
            o_chunks.append(o)
            l_chunks.append(lse)
        outs.append(np.concatenate(o_chunks, axis=1))
        lses.append(np.concatenate(l_chunks, axis=1))
    out = unshard(outs, world, axis=1, zigzag=zigzag)
    lse = unshard(lses, world, axis=1, zigzag=zigzag).transpose(0, 2, 1)
    return out, lse


def ring_backward(dout, q, k, v, out, lse, world: int, *, causal: bool = False, window=None, scale=None,
                  zigzag=None):
    """(dq, dk, dv) over the whole sequence as the ring computes them: each rank's dQ local, the
    held K/V's dK/dV accumulated where the shard is and passed on with it, home after the last
    step. lse: (B, Hq, S), the forward's."""
    zigzag = causal if zigzag is None else zigzag
    seqlen = q.shape[1]
    cut = lambda x: [shard(x, r, world, axis=1, zigzag=zigzag) for r in range(world)]  # noqa: E731
    qs, ks, vs, dos, os_ = cut(q), cut(k), cut(v), cut(dout), cut(out)
    ls = [shard(lse.transpose(0, 2, 1), r, world, axis=1, zigzag=zigzag).transpose(0, 2, 1) for r in range(world)]
    dqs = [np.zeros_like(x, dtype=np.float64) for x in qs]
    # what each rank holds: (owner, k, v, dk, dv); step 0 its own
    held = [(r, ks[r], vs[r], np.zeros(ks[r].shape), np.zeros(vs[r].shape)) for r in range(world)]
    blocks = [rank_blocks(r, world, seqlen, causal=causal, window=window, zigzag=zigzag) for r in range(world)]
    for step in range(world):
        for r in range(world):
            owner, k_r, v_r, dk_r, dv_r = held[r]
            mine, theirs = chunk_spans(r, world, seqlen, zigzag), chunk_spans(owner, world, seqlen, zigzag)
            for blk in (b for b in blocks[r] if b.step == step):
                assert blk.source == owner   # the schedule's source is the shard the ring brought
                call = block_call(blk.q_span, blk.k_span, causal, window)
                qc = lambda x: chunk_of(x, blk.q_chunk, mine)[:, :call.rows]  # noqa: E731
                kc = lambda x: chunk_of(x, blk.k_chunk, theirs)[:, :call.keys]  # noqa: E731
                lse_c = qc(ls[r].transpose(0, 2, 1)).transpose(0, 2, 1)
                dq, dk, dv = reference.attention_backward(
                    qc(dos[r]), qc(qs[r]), kc(k_r), kc(v_r), qc(os_[r]), lse_c, scale=scale, layout="bshd",
                    **call.options())
                qc(dqs[r])[...] += dq
                kc(dk_r)[...] += dk
                kc(dv_r)[...] += dv
        held = [held[(r - 1) % world] for r in range(world)]   # each passes to rank + 1
    # after N passes every shard (with its sums) is back with its owner
    assert all(held[r][0] == r for r in range(world))
    dk = unshard([h[3] for h in held], world, axis=1, zigzag=zigzag)
    dv = unshard([h[4] for h in held], world, axis=1, zigzag=zigzag)
    return unshard(dqs, world, axis=1, zigzag=zigzag), dk, dv
