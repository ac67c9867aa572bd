"""The ring's schedule: which rank's K/V a rank holds at each step, and what each block of
(query chunk, key chunk) needs.

At step s (0 .. N - 1) rank r holds the K/V shard of rank (r - s) mod N, attends its own
queries to it, and passes it to rank r + 1 (receiving rank r - 1's). In the backward the held
shard travels with its float32 dK/dV accumulators, and one last pass after step N - 1 brings
them home; dQ stays local. A block is one query chunk against one key chunk, in global
positions; under a causal mask a key chunk wholly after the query chunk is skipped, one wholly
before it is full, and only the diagonal is masked; a window skips the chunks outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .sharding import chunk_spans

Kind = Literal["full", "masked", "skip"]


def ring_source(rank: int, step: int, world: int) -> int:
    """The rank whose K/V shard rank `rank` holds at step `step`."""
    return (rank - step) % world


def block_kind(q_span: tuple[int, int], k_span: tuple[int, int], causal: bool,
               window: tuple[int, int] | None) -> Kind:
    """What the block of queries q_span x keys k_span ((global start, length) each) needs under
    the mask: key j is visible to query i iff (not causal or j <= i) and, with window (left,
    right), i - left <= j <= i + right (-1: unbounded on that side)."""
    (qs, qn), (ks, kn) = q_span, k_span
    q_last, k_last = qs + qn - 1, ks + kn - 1
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0
    # the offsets j - i the block spans, against the visible band [-left, right]
    lo, hi = ks - q_last, k_last - qs
    band_lo = float("-inf") if left < 0 else -left
    band_hi = float("inf") if right < 0 else right
    if hi < band_lo or lo > band_hi:
        return "skip"
    if band_lo <= lo and hi <= band_hi:
        return "full"
    return "masked"


@dataclass(frozen=True)
class Block:
    step: int            # ring step
    source: int          # the rank whose K/V (and, backward, dK/dV) this is
    q_chunk: int         # index among this rank's query chunks
    k_chunk: int         # index among the source's key chunks
    q_span: tuple[int, int]
    k_span: tuple[int, int]
    kind: Kind


def rank_blocks(rank: int, world: int, seqlen: int, *, causal: bool, window: tuple[int, int] | None = None,
                zigzag: bool | None = None) -> list[Block]:
    """Every block rank `rank` computes over the ring's steps, in order (skipped ones left out).
    zigzag defaults to causal."""
    zigzag = causal if zigzag is None else zigzag
    mine = chunk_spans(rank, world, seqlen, zigzag)
    blocks = []
    for step in range(world):
        source = ring_source(rank, step, world)
        for qi, q_span in enumerate(mine):
            for ki, k_span in enumerate(chunk_spans(source, world, seqlen, zigzag)):
                kind = block_kind(q_span, k_span, causal, window)
                if kind != "skip":
                    blocks.append(Block(step, source, qi, ki, q_span, k_span, kind))
    return blocks
