"""The ring's schedule: which rank's K/V a rank holds at each step, and what each block of
(query chunk, key chunk) needs.

At step s (0 .. N - 1) rank r holds the K/V shard of rank (r - s) mod N, attends its own
queries to it, and passes it to rank r + 1 (receiving rank r - 1's). In the backward the held
shard travels with its float32 dK/dV accumulators, and one last pass after step N - 1 brings
them home; dQ stays local. A block is one query chunk against one key chunk, in global
positions; under a causal mask a key chunk wholly after the query chunk is skipped, one wholly
before it is full, and only the diagonal is masked; a window skips the chunks outside it.
`block_call` restates a masked block's mask in the kernels' own terms (a causal flag and a
window aligned bottom-right on the block's leading rows and keys), so no block needs a bias.
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


@dataclass(frozen=True)
class BlockCall:
    """A block as one attention call on its leading `rows` queries and `keys` keys, with the
    kernels' own options (aligned bottom-right: off = keys - rows). The block's later queries
    see none of its keys and its later keys are visible to none of its queries."""
    rows: int
    keys: int
    causal: bool
    window: tuple[int, int] | None

    def options(self) -> dict:
        """The call's mask as attention's keyword arguments."""
        return dict(causal=self.causal, window=self.window)


def block_call(q_span: tuple[int, int], k_span: tuple[int, int], causal: bool,
               window: tuple[int, int] | None) -> BlockCall:
    """The block of queries q_span x keys k_span under block_kind's mask (in global positions)
    as a call the kernels run without a bias.

    In the block's own positions i, j (d = q start - k start) key j is visible to query i iff
    i + d - L <= j <= i + d + R (L the window's left, R its right or 0 under a causal mask;
    either unbounded). A call on the first `rows` queries and `keys` keys with window (l, r)
    keeps i + (keys - rows) - l <= j <= i + (keys - rows) + r, so l = keys - rows - d + L and
    r = d + R - (keys - rows). Both must be >= 0: keys past the last query's band (n + d + R)
    are dropped, then queries whose band starts past the last key (rows = keys - d + L); since
    L + R >= 0 that leaves both >= 0. A bound no pair of the call crosses is left off (-1), and
    r = 0 is the causal flag. ValueError for a block with no visible pair."""
    (qs, n), (ks, m) = q_span, k_span
    if block_kind(q_span, k_span, causal, window) == "skip":
        raise ValueError(f"block {q_span} x {k_span} has no visible pair")
    left, right = window if window is not None else (-1, -1)
    lo = left if left >= 0 else None                   # L
    hi = 0 if causal else (right if right >= 0 else None)   # R
    d = qs - ks
    keys = m if hi is None else min(m, n + d + hi)
    rows = n if lo is None else min(n, keys - d + lo)
    shift = keys - rows
    # a bound binds iff some pair of the call lies past it
    l_k = shift - d + lo if lo is not None and rows - 1 + d - lo > 0 else -1
    r_k = d + hi - shift if hi is not None and keys - 1 > d + hi else -1
    if r_k == 0:
        return BlockCall(rows, keys, True, None if l_k < 0 else (l_k, 0))
    return BlockCall(rows, keys, False, None if (l_k, r_k) == (-1, -1) else (l_k, r_k))
