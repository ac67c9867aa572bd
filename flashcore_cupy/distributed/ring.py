"""Ring attention on the GPUs of an NCCL group (cupyx.distributed): each rank holds a shard of
the sequence, the K/V shards travel around the ring, and each rank attends its own queries to
the shard it holds, the blocks of schedule.rank_blocks on the library's kernels.

Forward: a block is `attention` on one query chunk against one key chunk, its mask restated
as the kernels' own options by schedule.block_call (a causal flag and a window aligned on the
block's leading rows and keys; a full block unmasked, no block needs a bias); a block's
queries past its call's rows get an LSE of -inf; each query chunk's partials are merged by their LSE
(`merge_states`, float32 arithmetic). The next shard's send / receive runs on a stream of its
own, ordered against the blocks by events, so it overlaps them.

Backward: `attention_backward` per block with the forward's merged out and LSE; dQ stays local
(a float32 accumulator), the held shard's dK/dV accumulate in float32 and travel with it, one
last pass bringing them home.

Partials are each block's output in q's dtype (the kernels write that), merged in float32;
the LSE, the merge and the travelling gradients are float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import api, backward
from ..merge import merge_states
from ..validation import check_window
from .schedule import block_call, rank_blocks
from .sharding import chunk_of, chunk_spans

LAYOUTS = ("bshd", "bhsd")


def group_rank_world(group: Any) -> tuple[int, int]:
    """(rank, world size) of cupyx.distributed's communicator (init_process_group's)."""
    rank, world = getattr(group, "rank", None), getattr(group, "_n_devices", None)
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise TypeError(f"group must be cupyx.distributed's communicator (init_process_group(n, rank)), "
                        f"got {type(group).__name__}")
    return rank, world


def _prepare(q, k, v, group, causal, layout, window):
    """The shards as CuPy arrays, (rank, world), the sequence axis, the whole length, zigzag,
    this rank's chunks and blocks; errors name the argument."""
    rank, world = group_rank_world(group)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool (the whole sequence's, top-left = bottom-right), got {causal!r}")
    window = None if window is None or tuple(window) == (-1, -1) else tuple(check_window(window))
    q, k, v = (api._as_device_array(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    axis = 1 if layout == "bshd" else 2
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k and v must be 4-D shards ({layout}), got {q.shape}, {k.shape}, {v.shape}")
    if not q.shape[axis] == k.shape[axis] == v.shape[axis]:
        raise ValueError(f"q, k and v must be shards of one sequence (the same length on axis {axis}), got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    seqlen, zigzag = q.shape[axis] * world, bool(causal)
    mine = chunk_spans(rank, world, seqlen, zigzag)   # ValueError when the shard does not split in chunks
    blocks = rank_blocks(rank, world, seqlen, causal=bool(causal), window=window, zigzag=zigzag)
    return q, k, v, rank, world, axis, seqlen, zigzag, mine, blocks, window


def _lead(x, n: int, axis: int):
    """The first n positions of x along the sequence axis (1 or 2): a view."""
    return x[:, :n] if axis == 1 else x[:, :, :n]


def _pass_on(group, sends, recvs, rank: int, world: int, comm, compute) -> None:
    """sends to rank + 1 and recvs from rank - 1 on stream `comm`, once `compute` has done what
    it has queued (the sent arrays are ready and the received ones free); as bytes (NCCL has
    no bfloat16 of CuPy's)."""
    from cupy.cuda import nccl

    comm.wait_event(compute.record())
    nccl.groupStart()
    for a in sends:
        group.send(a.reshape(-1).view(np.uint8), (rank + 1) % world, comm)
    for a in recvs:
        group.recv(a.reshape(-1).view(np.uint8), (rank - 1) % world, comm)
    nccl.groupEnd()


def ring_attention(q, k, v, *, group, causal: bool = False, scale: float | None = None, layout: str = "bshd",
                   window: tuple[int, int] | None = None, return_lse: bool = False):
    """Attention over the whole sequence whose shards q, k and v this rank holds (causal runs:
    zigzag shards, sharding.shard's; else contiguous ones), computed around the ring of `group`
    (cupyx.distributed.init_process_group's NCCL communicator). Returns this rank's output
    shard (q's dtype and layout, v's head dim), and with return_lse its float32 LSE
    (B, Hq, L). causal and window mean attention's over the whole sequence (Sq = Sk: top-left
    and bottom-right agree); scale defaults to 1/sqrt(D)."""
    import cupy

    q, k, v, rank, world, axis, seqlen, zigzag, mine, blocks, window = _prepare(q, k, v, group, causal, layout,
                                                                                  window)
    compute, comm = cupy.cuda.get_current_stream(), cupy.cuda.Stream(non_blocking=True)
    held = (cupy.ascontiguousarray(k), cupy.ascontiguousarray(v))
    spare = tuple(cupy.empty_like(x) for x in held) if world > 1 else ()
    parts: dict[int, list] = {i: [] for i in range(len(mine))}
    for step in range(world):
        if step + 1 < world:
            _pass_on(group, held, spare, rank, world, comm, compute)
        theirs = chunk_spans((rank - step) % world, world, seqlen, zigzag)
        for blk in (b for b in blocks if b.step == step):
            call = block_call(blk.q_span, blk.k_span, causal, window)
            q_c = chunk_of(q, blk.q_chunk, mine, axis)
            k_c, v_c = (_lead(chunk_of(x, blk.k_chunk, theirs, axis), call.keys, axis) for x in held)
            o, lse = api.attention(_lead(q_c, call.rows, axis), k_c, v_c, scale=scale, layout=layout,
                                   return_lse=True, **call.options())
            if call.rows < q_c.shape[axis]:   # the later rows see none of the block's keys
                o_all = cupy.empty(q_c.shape[:3] + (v.shape[3],), q.dtype)
                lse_all = cupy.full(lse.shape[:2] + (q_c.shape[axis],), -np.inf, np.float32)
                _lead(o_all, call.rows, axis)[...] = o
                lse_all[..., :call.rows] = lse
                o, lse = o_all, lse_all
            parts[blk.q_chunk].append((o, lse))
        if step + 1 < world:
            compute.wait_event(comm.record())
            held, spare = spare, held
    out_shape = q.shape[:3] + (v.shape[3],)
    out = cupy.empty(out_shape, q.dtype)
    lse_all = cupy.empty((q.shape[0], q.shape[2] if axis == 1 else q.shape[1], q.shape[axis]), np.float32)
    for i in range(len(mine)):
        o_dst, l_dst = chunk_of(out, i, mine, axis), chunk_of(lse_all, i, mine, 2)
        if not parts[i]:   # no key visible to any of these queries
            o_dst[...] = 0
            l_dst[...] = -np.inf
            continue
        # rows as the merge takes them: bshd's (B, L, H) or bhsd's (B, H, L), the LSE to match
        rows = (lambda lse: lse.transpose(0, 2, 1)) if axis == 1 else (lambda lse: lse)
        outs = cupy.stack([o for o, _ in parts[i]])
        lses = cupy.ascontiguousarray(cupy.stack([rows(lse) for _, lse in parts[i]]))
        merged, merged_lse = merge_states(outs, lses, out=cupy.empty(o_dst.shape, q.dtype))
        o_dst[...] = merged
        l_dst[...] = rows(merged_lse)
    return (out, lse_all) if return_lse else out


def ring_attention_backward(dout, q, k, v, out, lse, *, group, causal: bool = False, scale: float | None = None,
                            layout: str = "bshd", window: tuple[int, int] | None = None):
    """(dq, dk, dv) of ring_attention's shards: dout, out and lse this rank's (out and lse as
    ring_attention returned them), the same options. dQ accumulates locally and each K/V shard's
    dK/dV travel with it in float32, home after one last pass; returned in q's, k's and v's
    dtypes."""
    import cupy

    q, k, v, rank, world, axis, seqlen, zigzag, mine, blocks, window = _prepare(q, k, v, group, causal, layout,
                                                                                  window)
    dout, out, lse = (api._as_device_array(x, n) for x, n in ((dout, "dout"), (out, "out"), (lse, "lse")))
    compute, comm = cupy.cuda.get_current_stream(), cupy.cuda.Stream(non_blocking=True)
    dq = cupy.zeros(q.shape, np.float32)
    held = (cupy.ascontiguousarray(k), cupy.ascontiguousarray(v), cupy.zeros(k.shape, np.float32),
            cupy.zeros(v.shape, np.float32))
    spare = tuple(cupy.empty_like(x) for x in held) if world > 1 else ()
    for step in range(world):
        if step + 1 < world:   # this step only reads K/V: they travel on now, dK/dV after it
            _pass_on(group, held[:2], spare[:2], rank, world, comm, compute)
        theirs = chunk_spans((rank - step) % world, world, seqlen, zigzag)
        for blk in (b for b in blocks if b.step == step):
            call = block_call(blk.q_span, blk.k_span, causal, window)
            mine_of = lambda x: _lead(chunk_of(x, blk.q_chunk, mine, axis), call.rows, axis)  # noqa: E731
            theirs_of = lambda x: _lead(chunk_of(x, blk.k_chunk, theirs, axis), call.keys, axis)  # noqa: E731
            g_q, g_k, g_v = backward.attention_backward(
                mine_of(dout), mine_of(q), theirs_of(held[0]), theirs_of(held[1]), mine_of(out),
                cupy.ascontiguousarray(chunk_of(lse, blk.q_chunk, mine, 2)[..., :call.rows]), scale=scale,
                layout=layout, **call.options())
            mine_of(dq)[...] += g_q
            theirs_of(held[2])[...] += g_k
            theirs_of(held[3])[...] += g_v
        if world > 1:   # the shard's dK/dV follow it (after the last step: home)
            _pass_on(group, held[2:], spare[2:], rank, world, comm, compute)
            compute.wait_event(comm.record())
            held, spare = spare, held
    return dq.astype(q.dtype), held[2].astype(k.dtype), held[3].astype(v.dtype)
