"""Stream-K for the Hopper forward's non-causal dense calls: the last round's key tiles spread
over every SM (the Python mirror of kernels/sm90_scheduler.cuh's StreamK: the CPU tests hold the
mirror to the rules below and the kernel's StreamK, compiled for the host, to the mirror; the GPU
tests the kernel to the reference).

The shipped persistent deal gives each CTA whole work tiles in turn, so where the tiles leave a
partial last round (B2 H16 S4k D128: 1024 tiles of 128 rows on 132 SMs, the last round 100
busy) or a head's last row block is partial (S1k D64: 192-row tiles, a 64-row sixth), the busiest
CTA holds more than the average (S1k D64: 3 tiles against 2.59). Here:

- Tiles are numbered whole ones first, head by head (t -> (b*H + h) = t // Mf, row block t % Mf,
  Mf = Sq // block_m), then each head's partial last row block (its consumers with rows, cp).
- The first `dp_items` tiles (whole rounds of whole tiles, a CTA every `grid`-th) run whole.
- The rest are units of work, a key tile of a tile weighing its consumers with rows (C or cp),
  laid end to end (tile s of them from a(s)); CTA c < sk_ctas takes units [c U / n, (c + 1) U / n)
  (n = sk_ctas, U the units), that is every key tile whose first unit lies there. A tile's key
  tiles so fall to CTAs first(s) .. last(s) (`owner` of its first and last key tile's units);
  CTA c's share is that tile's part c - first(s) of parts(s).
- A part of a tile of several stores float32 partials (O / l and the LSE) for its rows; the
  last part to finish merges them into the output (split-KV's merge, kernels/split_kv.cuh).

sk_ctas: every CTA, unless a share would fall under MIN_SHARE key tiles of a whole tile (then
fewer CTAs take bigger shares, so that no tile splits into crumbs).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SHARE = 2   # key tiles of a whole tile a stream-K CTA takes at least


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Part:
    """A stream-K CTA's share of one tile: key tiles [first, first + n_blocks), part `part` of
    the tile's `parts` (1: the whole tile, stored as a dense tile's)."""
    tile: int
    first: int
    n_blocks: int
    part: int
    parts: int


@dataclass(frozen=True)
class StreamK:
    consumers: int     # C: a whole tile's consumers (64 rows each)
    block_n: int
    heads: int
    batch: int
    seqlen_q: int
    seqlen_k: int
    grid: int          # CTAs: one an SM
    dp_items: int      # whole tiles run whole, dealt round the grid
    sk_ctas: int       # CTAs sharing the rest (0: none)

    # --- the geometry (sm90_scheduler.cuh's StreamK computes the same from the params) ---
    @property
    def block_m(self) -> int:
        return 64 * self.consumers

    @property
    def whole_blocks(self) -> int:   # Mf: whole row blocks a head
        return self.seqlen_q // self.block_m

    @property
    def partial_consumers(self) -> int:   # cp: a head's last row block's consumers (0: none)
        return _ceil_div(self.seqlen_q % self.block_m, 64)

    @property
    def whole_tiles(self) -> int:
        return self.whole_blocks * self.heads * self.batch

    @property
    def tiles(self) -> int:
        return self.whole_tiles + (self.heads * self.batch if self.partial_consumers else 0)

    @property
    def key_tiles(self) -> int:   # K: a tile's key tiles
        return _ceil_div(self.seqlen_k, self.block_n)

    def tile(self, t: int) -> tuple[int, int, int, int]:
        """Tile t's (row0, head, batch, consumers with rows)."""
        if t < self.whole_tiles:
            hb, m = divmod(t, self.whole_blocks)
            row0, consumers = m * self.block_m, self.consumers
        else:
            hb, row0, consumers = t - self.whole_tiles, self.whole_blocks * self.block_m, self.partial_consumers
        batch, head = divmod(hb, self.heads)
        return row0, head, batch, consumers

    # --- the units of the tiles past dp_items ---
    @property
    def sk_whole(self) -> int:   # whole tiles among them (they come first)
        return self.whole_tiles - self.dp_items

    @property
    def units(self) -> int:
        return (self.sk_whole * self.consumers + (self.tiles - self.whole_tiles) * self.partial_consumers) * self.key_tiles

    def start(self, s: int) -> tuple[int, int]:
        """(first unit, units a key tile) of stream-K tile s (tile dp_items + s)."""
        whole = self.key_tiles * self.consumers
        if s < self.sk_whole:
            return s * whole, self.consumers
        return self.sk_whole * whole + (s - self.sk_whole) * self.key_tiles * self.partial_consumers, \
            self.partial_consumers

    def span(self, cta: int) -> tuple[int, int]:
        """CTA cta's units [u0, u1)."""
        return cta * self.units // self.sk_ctas, (cta + 1) * self.units // self.sk_ctas

    def owner(self, unit: int) -> int:
        """The CTA whose span holds `unit`."""
        return ((unit + 1) * self.sk_ctas - 1) // self.units

    def tile_of(self, unit: int) -> int:
        """The stream-K tile holding `unit`."""
        whole = self.key_tiles * self.consumers
        if unit < self.sk_whole * whole:
            return unit // whole
        return self.sk_whole + (unit - self.sk_whole * whole) // (self.key_tiles * self.partial_consumers)

    def part(self, cta: int, s: int) -> Part:
        """CTA cta's share of stream-K tile s (n_blocks 0: none)."""
        u0, u1 = self.span(cta)
        a, per = self.start(s)
        k = self.key_tiles
        first = 0 if u0 <= a else min(k, _ceil_div(u0 - a, per))
        end = 0 if u1 <= a else min(k, _ceil_div(u1 - a, per))
        first_cta, last_cta = self.owner(a), self.owner(a + (k - 1) * per)
        return Part(self.dp_items + s, first, max(0, end - first), cta - first_cta, last_cta - first_cta + 1)

    def next(self, cta: int, i: int) -> int | None:
        """The item CTA cta runs after item i (first: i = -1; None past its last), as the kernel's
        StreamK.next: whole tiles i < dp_items round the grid, then dp_items + s for the stream-K
        tiles s its span has key tiles of (its first tile unless no key tile starts in the span
        there, then the tiles up to the one holding its last unit)."""
        if i < self.dp_items:
            j = cta if i < 0 else i + self.grid
            if j < self.dp_items:
                return j
            if cta >= self.sk_ctas or self.units == 0:
                return None
            s = self.tile_of(self.span(cta)[0])
            if self.part(cta, s).n_blocks > 0:
                return self.dp_items + s
            i = self.dp_items + s
        s = i - self.dp_items + 1
        if cta >= self.sk_ctas or s >= self.tiles - self.dp_items or s > self.tile_of(self.span(cta)[1] - 1):
            return None
        return self.dp_items + s if self.part(cta, s).n_blocks > 0 else None

    def items(self, cta: int) -> list[Part]:
        """Everything CTA cta runs, in order: its whole tiles, then its shares."""
        found, i = [], self.next(cta, -1)
        while i is not None:
            found.append(Part(i, 0, self.key_tiles, 0, 1) if i < self.dp_items else self.part(cta, i - self.dp_items))
            i = self.next(cta, i)
        return found

    def parts_of(self, cta: int) -> list[Part]:
        """CTA cta's shares of the stream-K tiles."""
        return [p for p in self.items(cta) if p.tile >= self.dp_items]

    @property
    def max_parts(self) -> int:
        """The most parts a tile has (the partials' slots a tile)."""
        return max((self.part(self.owner(self.start(s)[0]), s).parts
                    for s in range(self.tiles - self.dp_items)), default=1)

    def busiest(self) -> float:
        """The busiest CTA's work in whole tiles (a tile's work: its consumers with rows over C)."""
        loads = [0.0] * self.grid
        for cta in range(self.grid):
            for item in self.items(cta):
                loads[cta] += item.n_blocks * self.tile(item.tile)[3] / (self.key_tiles * self.consumers)
        return max(loads)


def plan(consumers: int, block_n: int, heads: int, batch: int, seqlen_q: int, seqlen_k: int,
         num_sms: int) -> StreamK:
    """The stream-K schedule of a non-causal dense call: whole rounds of whole tiles, then every
    CTA's share of the rest (sk_ctas fewer where shares would fall under MIN_SHARE key tiles)."""
    probe = StreamK(consumers, block_n, heads, batch, seqlen_q, seqlen_k, num_sms, 0, 0)
    dp_items = probe.whole_tiles // num_sms * num_sms
    rest = StreamK(consumers, block_n, heads, batch, seqlen_q, seqlen_k, num_sms, dp_items, 0)
    sk_ctas = max(1, min(num_sms, rest.units // (MIN_SHARE * consumers))) if rest.units else 0
    return StreamK(consumers, block_n, heads, batch, seqlen_q, seqlen_k, num_sms, dp_items, sk_ctas)


def shipped_busiest(config, batch: int, heads: int, seqlen_q: int, num_sms: int) -> tuple[float, float]:
    """(the busiest CTA's work, the average CTA's) in whole tiles under the shipped non-causal
    deal of an Sm90FwdConfig (its schedule and work_tile, the kernel's mirrors): the model stream-K
    is weighed against (scripts/dev/wave_probe.py times both)."""
    plan_ = config.schedule(batch, heads, seqlen_q, num_sms, False)
    m_blocks = _ceil_div(seqlen_q, config.block_m)
    loads = [0.0] * plan_.grid[0]
    for i in range(plan_.items):
        w = config.work_tile(i, seqlen_q=seqlen_q, seqlen_k=seqlen_q, causal=False, heads=heads, m_blocks=m_blocks,
                             group=plan_.group, tail_start=plan_.tail_start)
        loads[i % plan_.grid[0]] += w.consumers / config.consumers
    return max(loads), sum(loads) / num_sms

