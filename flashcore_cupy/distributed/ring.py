"""Ring attention on the GPUs of an NCCL group (cupyx.distributed): each rank holds a shard of
the sequence, the K/V shards travel around the ring, and each rank attends its own queries to
the shard it holds (rank.RankForward / RankBackward on the library's kernels: the blocks of
schedule.rank_blocks, each one attention call whose mask is the kernels' own options, the
partials merged by their LSE with `merge_states`).

The next shard's send / receive runs on a stream of its own, ordered against the blocks by
events, so it overlaps them. Backward: dQ stays local (a float32 accumulator); the held shard's
dK/dV accumulate in float32 and travel with it, one last pass bringing them home.

Partials are each block's output in q's dtype (the kernels write that), merged in float32;
the LSE, the merge and the travelling gradients are float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import api
from ..validation import check_window
from .rank import RankBackward, RankForward, kernel_ops
from .schedule import rank_blocks
from .sharding import chunk_spans

LAYOUTS = ("bshd", "bhsd")


def group_rank_world(group: Any) -> tuple[int, int]:
    """(rank, world size) of cupyx.distributed's communicator (init_process_group's)."""
    rank, world = getattr(group, "rank", None), getattr(group, "_n_devices", None)
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise TypeError(f"group must be cupyx.distributed's communicator (init_process_group(n, rank)), "
                        f"got {type(group).__name__}")
    return rank, world


def _prepare(q, k, v, group, causal, layout, window):
    """The shards as CuPy arrays, (rank, world), the whole length, zigzag, this rank's chunks and
    blocks, the window; errors name the argument."""
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
    return q, k, v, rank, world, seqlen, zigzag, mine, blocks, window


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

    q, k, v, rank, world, seqlen, zigzag, mine, blocks, window = _prepare(q, k, v, group, causal, layout, window)
    compute, comm = cupy.cuda.get_current_stream(), cupy.cuda.Stream(non_blocking=True)
    held = (cupy.ascontiguousarray(k), cupy.ascontiguousarray(v))
    spare = tuple(cupy.empty_like(x) for x in held) if world > 1 else ()
    me = RankForward(kernel_ops(), q, v.shape[3], mine, blocks, causal=bool(causal), window=window, scale=scale,
                     layout=layout)
    for step in range(world):
        if step + 1 < world:
            _pass_on(group, held, spare, rank, world, comm, compute)
        me.step(step, *held, chunk_spans((rank - step) % world, world, seqlen, zigzag))
        if step + 1 < world:
            compute.wait_event(comm.record())
            held, spare = spare, held
    out, lse = me.result()
    return (out, lse) if return_lse else out


def ring_attention_backward(dout, q, k, v, out, lse, *, group, causal: bool = False, scale: float | None = None,
                            layout: str = "bshd", window: tuple[int, int] | None = None):
    """(dq, dk, dv) of ring_attention's shards: dout, out and lse this rank's (out and lse as
    ring_attention returned them), the same options. dQ accumulates locally and each K/V shard's
    dK/dV travel with it in float32, home after one last pass; returned in q's, k's and v's
    dtypes."""
    import cupy

    q, k, v, rank, world, seqlen, zigzag, mine, blocks, window = _prepare(q, k, v, group, causal, layout, window)
    dout, out, lse = (api._as_device_array(x, n) for x, n in ((dout, "dout"), (out, "out"), (lse, "lse")))
    compute, comm = cupy.cuda.get_current_stream(), cupy.cuda.Stream(non_blocking=True)
    held = (cupy.ascontiguousarray(k), cupy.ascontiguousarray(v), cupy.zeros(k.shape, np.float32),
            cupy.zeros(v.shape, np.float32))
    spare = tuple(cupy.empty_like(x) for x in held) if world > 1 else ()
    me = RankBackward(kernel_ops(), dout, q, out, lse, mine, blocks, causal=bool(causal), window=window, scale=scale,
                      layout=layout)
    for step in range(world):
        if step + 1 < world:   # this step only reads K/V: they travel on now, dK/dV after it
            _pass_on(group, held[:2], spare[:2], rank, world, comm, compute)
        me.step(step, *held, chunk_spans((rank - step) % world, world, seqlen, zigzag))
        if world > 1:   # the shard's dK/dV follow it (after the last step: home)
            _pass_on(group, held[2:], spare[2:], rank, world, comm, compute)
            compute.wait_event(comm.record())
            held, spare = spare, held
    return me.result(), held[2].astype(k.dtype), held[3].astype(v.dtype)
