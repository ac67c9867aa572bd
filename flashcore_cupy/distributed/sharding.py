"""Which positions of a sequence each of N ranks holds, and moving arrays between the whole
sequence and its shards.

Contiguous: the sequence in N equal chunks, rank r the r-th. Zigzag (causal runs): in 2N equal
chunks, rank r holds chunks r and 2N - 1 - r, in that order, so that under a causal mask every
rank's queries see the same number of keys. The sequence length must divide into the chunks.
"""

from __future__ import annotations


def _chunks(seqlen: int, world: int, zigzag: bool) -> tuple[int, int]:
    """(number of chunks, chunk length); ValueError when seqlen does not divide."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    n = 2 * world if zigzag else world
    if seqlen % n:
        raise ValueError(f"sequence length {seqlen} must be a multiple of {n} "
                         f"({'2 x ' if zigzag else ''}world {world}{' for zigzag' if zigzag else ''})")
    return n, seqlen // n


def chunk_spans(rank: int, world: int, seqlen: int, zigzag: bool) -> tuple[tuple[int, int], ...]:
    """The (global start, length) of rank `rank`'s chunks, in the order its shard holds them."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    _, length = _chunks(seqlen, world, zigzag)
    ids = (rank, 2 * world - 1 - rank) if zigzag else (rank,)
    return tuple((i * length, length) for i in ids)


def chunk_of(x, index: int, spans, axis: int = 1):
    """Chunk `index` of a shard (a view; the sequence along `axis`, 1 or 2) whose chunks have
    lengths spans[*][1] (chunk_spans' order). NumPy or CuPy."""
    at = sum(n for _, n in spans[:index])
    cut = slice(at, at + spans[index][1])
    return x[:, cut] if axis == 1 else x[:, :, cut]


def _xp(x):
    try:
        import cupy
        return cupy.get_array_module(x)
    except ImportError:
        import numpy
        return numpy


def shard(x, rank: int, world: int, *, axis: int, zigzag: bool):
    """Rank `rank`'s shard of the whole-sequence array x (sequence along `axis`): its chunks
    concatenated in chunk_spans' order. NumPy or CuPy."""
    spans = chunk_spans(rank, world, x.shape[axis], zigzag)
    xp = _xp(x)
    take = lambda start, n: xp.take(x, xp.arange(start, start + n), axis=axis)  # noqa: E731
    return xp.concatenate([take(s, n) for s, n in spans], axis=axis)


def unshard(shards, world: int, *, axis: int, zigzag: bool):
    """The whole-sequence array from every rank's shard (shards[r] is rank r's), shard's inverse."""
    if len(shards) != world:
        raise ValueError(f"expected {world} shards, got {len(shards)}")
    xp = _xp(shards[0])
    seqlen = sum(s.shape[axis] for s in shards)
    pieces = []
    for r, s in enumerate(shards):
        at = 0
        for start, n in chunk_spans(r, world, seqlen, zigzag):
            pieces.append((start, xp.take(s, xp.arange(at, at + n), axis=axis)))
            at += n
    return xp.concatenate([p for _, p in sorted(pieces, key=lambda item: item[0])], axis=axis)
