"""Kernel configurations and the choice of one per problem.

A `Sm80FwdConfig` is the single source of a kernel instantiation: it yields the
NVRTC name expression, the launch geometry and the dynamic shared memory.
Nothing else computes grid, block or shared-memory sizes.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Literal, NamedTuple

# Per-block shared-memory limits (bytes) of the archs this package compiles for.
SMEM_LIMIT = {
    "sm_80": 163 * 1024,
    "sm_86": 99 * 1024,
    "sm_89": 99 * 1024,
    "sm_90a": 227 * 1024,
}
SUPPORTED_ARCHS = tuple(SMEM_LIMIT)
GRID_YZ_MAX = 65535   # CUDA's cap on a grid's y and z


def fold_heads_batch(x: int, heads: int, batch: int) -> tuple[int, int, int]:
    """A grid of x blocks per (head, batch): (x, heads, batch) while both fit y and z; past
    that, heads x batch numbered over y and z, the head fastest (kernels/grid.cuh's
    fold_head_batch undoes either; the last row's blocks past the end return)."""
    if heads <= GRID_YZ_MAX and batch <= GRID_YZ_MAX:
        return (x, heads, batch)
    items = heads * batch
    y = min(items, GRID_YZ_MAX)
    return (x, y, -(-items // y))
DTYPES = ("fp16", "bf16")
HEAD_DIM_BUCKETS = (32, 64, 96, 128, 160, 192, 224, 256)   # template HEAD_DIM; runtime D pads up
MAX_HEAD_DIM = HEAD_DIM_BUCKETS[-1]


BIAS_KINDS = ("none", "16bit", "fp32")   # fc::Variant's BIAS: 0, 1 (the inputs' type), 2


@dataclass(frozen=True)
class KernelVariant:
    """The compile-time part of an attention variant: `fc::Plain` or `fc::Variant` in
    kernels/variant.cuh. window: the keys are a window's (left, right; a causal mask its
    right = 0) rather than the plain mask's (key < Sk and the bottom-right causal flag); every
    score option takes the window's mask. softcap / alibi: the scores are capped / get ALiBi;
    bias: "none", "16bit" (the inputs' dtype) or "fp32". The run-time values (window sides,
    slopes, the bias) are the launch's."""

    window: bool = False
    softcap: bool = False
    alibi: bool = False
    bias: str = "none"

    def __post_init__(self):
        if self.bias not in BIAS_KINDS:
            raise ValueError(f"bias kind must be one of {BIAS_KINDS}, got {self.bias!r}")
        if not self.window and (self.softcap or self.alibi or self.bias != "none"):
            raise ValueError("score options run under the window mask: window=True")

    @property
    def plain(self) -> bool:
        return not self.window

    @property
    def expression(self) -> str:
        if self.plain:
            return "fc::Plain"
        b = lambda x: "true" if x else "false"   # noqa: E731
        return f"fc::Variant<{b(self.softcap)}, {b(self.alibi)}, {BIAS_KINDS.index(self.bias)}>"

    def __str__(self) -> str:
        parts = [n for n in ("softcap", "alibi") if getattr(self, n)]
        parts += [f"bias-{self.bias}"] if self.bias != "none" else []
        return "+".join(parts) or ("window" if self.window else "plain")


PLAIN = KernelVariant()

# Where a forward kernel's sequences are (kernels/sequence.cuh's policies): dense batches,
# packed varlen sequences, a contiguous KV cache, a paged one gathered row by row, a paged one
# whose pages hold whole key tiles.
SEQ_KINDS = ("dense", "dense_split", "varlen", "cache", "paged", "paged_tiles")
_SEQ_EXPRESSIONS = {"dense": "fc::Dense", "dense_split": "fc::DenseSplit", "varlen": "fc::Varlen",
                    "cache": "fc::KvCache<fc::kCacheContiguous>", "paged": "fc::KvCache<fc::kCachePageRows>",
                    "paged_tiles": "fc::KvCache<fc::kCachePageTiles>"}
CACHE_KINDS = ("cache", "paged", "paged_tiles")
# The Hopper kernel's: a paged cache there is loaded by TMA boxes of whole pages (or tiles) where
# they tile a key tile ("paged_tiles"), else gathered row by row by cp.async ("paged").
SM90_SEQ_KINDS = ("dense", "dense_split", "varlen", "cache", "paged", "paged_tiles")
SM90_ITEM_SLOT_BYTES = 40   # a dynamic deal's two item slots and their four barriers, after the kernel's


@dataclass(frozen=True)
class Sm80FwdConfig:
    """One instantiation of `fc::flash_fwd` in kernels/flash_fwd_sm80.cu."""

    dtype: str        # "fp16" | "bf16"
    head_dim: int     # template HEAD_DIM (the runtime head dim rounded up)
    warps: int
    m_tiles: int      # 16-row slices per warp
    block_n: int      # keys per K/V tile
    stages: int       # K/V tiles in flight (shared-memory ring)
    variant: KernelVariant = PLAIN
    seq: str = "dense"   # SEQ_KINDS

    kernel_file = "flash_fwd_sm80.cu"

    def __post_init__(self):
        if self.seq not in SEQ_KINDS:
            raise ValueError(f"seq must be one of {SEQ_KINDS}, got {self.seq!r}")

    @property
    def name_expression(self) -> str:
        extra = "" if self.variant.plain else f", {self.variant.expression}"
        if self.seq != "dense":
            extra = f", {self.variant.expression}, {_SEQ_EXPRESSIONS[self.seq]}"
        return (f"fc::flash_fwd<fc::{self.dtype}, {self.head_dim}, {self.warps}, "
                f"{self.m_tiles}, {self.block_n}, {self.stages}{extra}>")

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def block_m(self) -> int:
        return 16 * self.warps * self.m_tiles

    @property
    def smem_bytes(self) -> int:
        # Mirrors FwdTile::kSmemBytes (flash_fwd_smem; test_compile holds them equal): Q, then
        # `stages` K and V tiles; rows padded by 8 elements.
        row = self.head_dim + 8
        return 2 * row * (self.block_m + 2 * self.stages * self.block_n)

    def grid(self, batch: int, heads_q: int, seqlen_q: int) -> tuple[int, int, int]:
        return fold_heads_batch(-(-seqlen_q // self.block_m), heads_q, batch)

    def __str__(self) -> str:
        text = f"{self.dtype} D{self.head_dim} {self.block_m}x{self.block_n} w{self.warps} s{self.stages}"
        text = text if self.variant.plain else f"{text} {self.variant}"
        return text if self.seq == "dense" else f"{text} {self.seq}"


@dataclass(frozen=True)
class Sm80BwdConfig:
    """One instantiation of `fc::flash_bwd` in kernels/flash_bwd_sm80.cu: a CTA per block_n keys
    of one (batch, query head), over query tiles of block_m = 16 * warps rows; each warp keeps
    dK and dV of 16 keys x head_dim / d_split columns."""

    dtype: str        # "fp16" | "bf16"
    head_dim: int     # template HEAD_DIM (the runtime head dim rounded up)
    warps: int        # 2, 4 or 8
    d_split: int      # 1, 2 or 4: parts of the head dim (block_n = block_m / d_split)
    variant: KernelVariant = PLAIN

    kernel_file = "flash_bwd_sm80.cu"

    @property
    def name_expression(self) -> str:
        extra = "" if self.variant.plain else f", {self.variant.expression}"
        return f"fc::flash_bwd<fc::{self.dtype}, {self.head_dim}, {self.warps}, {self.d_split}{extra}>"

    @property
    def threads(self) -> int:
        return 32 * self.warps

    @property
    def block_m(self) -> int:
        return 16 * self.warps

    @property
    def block_n(self) -> int:
        return self.block_m // self.d_split

    @property
    def smem_bytes(self) -> int:
        # Mirrors BwdTile::kSmemBytes (flash_bwd_smem; test_compile holds them equal): K, V
        # (block_n rows), Q_i, dO_i (block_m rows), rows padded by 8 elements; P and dS (block_m
        # rows of block_n + 8); the query tile's LSE and delta.
        row = self.head_dim + 8
        return 2 * (2 * self.block_n * row + 2 * self.block_m * row + 2 * self.block_m * (self.block_n + 8)) \
            + 8 * self.block_m

    def grid(self, batch: int, heads_q: int, seqlen_k: int) -> tuple[int, int, int]:
        return fold_heads_batch(-(-seqlen_k // self.block_n), heads_q, batch)

    def rows_pad(self, seqlen_q: int) -> int:
        """Rows per (batch, head) of the LSE, delta and dQ accumulator: whole query tiles."""
        return -(-seqlen_q // self.block_m) * self.block_m

    def __str__(self) -> str:
        text = f"bwd {self.dtype} D{self.head_dim} {self.block_m}x{self.block_n} w{self.warps}"
        return text if self.variant.plain else f"{text} {self.variant}"


def bwd_config(dtype: str, head_dim: int, variant: KernelVariant = PLAIN) -> Sm80BwdConfig:
    """The portable backward's tile for a head dim bucket: four warps, 64 query rows; past D64
    the head dim split in two (32 keys a CTA), so that each warp's dK and dV (16 keys x
    head_dim / d_split) fit its registers; past D192 two warps (the tiles fit sm_86's 99 KB)."""
    return Sm80BwdConfig(dtype, head_dim, 4 if head_dim <= 192 else 2, 1 if head_dim <= 64 else 2, variant)


@dataclass(frozen=True)
class Sm90BwdConfig:
    """One instantiation of `fc::flash_bwd_sm90` in kernels/flash_bwd_sm90.cu (sm_90a; the plain
    mask or a variant): a CTA per 128 keys of one (batch, query head), two consumer warpgroups of 64 keys
    and a producer, over query tiles of block_m rows (128 at head dim 64, 64 at 128: one
    64 x 64 block of the tile's dQ a consumer, which the dQ accumulator holds in fragment order:
    bwd_convert's frag_rows = block_m) through a ring of `stages` slots. Head dim 256 (split_d):
    a CTA per 64 keys that both consumers share, each computing S^T and dP^T for half the query
    tile, holding half of dK's and dV's columns and adding two of dQ's blocks from registers."""

    dtype: str        # "fp16" | "bf16"
    head_dim: int     # 64 | 96 | 128 | 256 (the runtime head dim rounded up; TMA zero-fills the rest)
    stages: int = 2
    variant: KernelVariant = PLAIN
    head_group: int = 0   # the CTAs take the grid's blocks by groups of this many heads (a launch scalar; bwd_head_group)

    kernel_file = "flash_bwd_sm90.cu"
    arch = "sm_90a"
    threads = 384

    @property
    def split_d(self) -> bool:
        """The consumers split dK's and dV's columns (Sm90BwdTile::kSplitD)."""
        return self.head_dim > 128

    @property
    def d_pad(self) -> int:
        """Columns of a row in shared memory and in dQ's accumulator: whole 64-column blocks
        (Sm90BwdTile::kDPad; D96's GEMMs stop at 96 but its dQ blocks span 128)."""
        return -(-self.head_dim // 64) * 64

    @property
    def block_n(self) -> int:
        return 64 if self.split_d else 128

    @property
    def block_m(self) -> int:
        return 128 if self.head_dim == 64 else 64

    @property
    def name_expression(self) -> str:
        extra = "" if self.variant.plain else f", {self.variant.expression}"
        return f"fc::flash_bwd_sm90<fc::{self.dtype}, {self.head_dim}, {self.block_m}, {self.stages}{extra}>"

    @property
    def smem_bytes(self) -> int:
        # Mirrors Sm90BwdTile::kSmemBytes (test_compile holds them equal): K and V; the ring's Q,
        # dO, LSE and delta; two dS^T buffers (split_d: and two P^T buffers); the consumers' dQ
        # blocks; the barriers (BwdBarriers); 1024 for the base's alignment.
        kv = self.block_n * self.d_pad * 2
        q = self.block_m * self.d_pad * 2
        dq = 0 if self.split_d else 2 * 64 * 64 * 4
        return 1024 + 2 * kv + 2 * self.stages * q + (4 if self.split_d else 2) * self.block_n * self.block_m * 2 \
            + 2 * self.stages * self.block_m * 4 + dq + 8 * (9 + 2 * self.stages)

    def grid(self, batch: int, heads_q: int, seqlen_k: int) -> tuple[int, int, int]:
        """(heads, key tiles, batch); past 65535 batches, (heads x batch, key tiles, 1)
        (kernels/grid.cuh). The CTAs take its blocks by groups of head_group heads."""
        tiles = -(-seqlen_k // self.block_n)
        return (heads_q, tiles, batch) if batch <= GRID_YZ_MAX else (heads_q * batch, tiles, 1)

    def rows_pad(self, seqlen_q: int) -> int:
        """Rows per (batch, head) of the LSE, delta and dQ accumulator: whole query tiles."""
        return -(-seqlen_q // self.block_m) * self.block_m

    def __str__(self) -> str:
        text = f"bwd sm90 {self.dtype} D{self.head_dim} {self.block_m}x{self.block_n} s{self.stages}"
        return text if self.variant.plain else f"{text} {self.variant}"


SM90_BWD_HEAD_DIMS = (64, 96, 128, 256)


def bwd_head_group(masked: bool, heads: int, seqlen_q: int, d_pad: int) -> int:
    """The Hopper backward's head_group (kernels/grid.cuh's grouped_item: the CTAs take the
    blocks by groups of this many heads, key tiles in order within a group). With no mask every
    key tile has the same work: a head's tiles one after the other (1), so the CTAs running at
    once share one or two heads' Q, dO and dQ rows in L2 (1.3x at D256 S4k, v46). Under a mask
    (causal, a window) the first key tiles see the most query tiles: groups of heads as the
    forward's causal tiles (causal_group), the rows a head's CTAs share (Q, dO: 2 bytes an
    element; dQ's accumulator: 4) counted as its K/V there."""
    return causal_group(heads, seqlen_q * d_pad * 8) if masked else 1


def sm90_bwd_width(head_dim: int) -> int:
    """The Hopper backward's built width a head dim runs at (TMA zero-fills the rest)."""
    return next(b for b in SM90_BWD_HEAD_DIMS if b >= head_dim)


@dataclass(frozen=True)
class BwdStepConfig:
    """`fc::bwd_prep` or `fc::bwd_convert` in kernels/flash_bwd_steps.cu, on every arch:
    bwd_prep a warp per row, 32 rows a block; bwd_convert a block per 64 x 64 of a head."""

    kernel: Literal["bwd_prep", "bwd_convert"]
    dtype: str

    kernel_file = "flash_bwd_steps.cu"
    threads = 256
    smem_bytes = 0
    ROWS_PER_BLOCK = 32   # bwd_prep: 8 threads a row (kStepWarps x 32 / 8)
    CONVERT_BLOCK = 64    # bwd_convert: kConvertBlock
    variant = PLAIN

    @property
    def name_expression(self) -> str:
        return f"fc::{self.kernel}<fc::{self.dtype}>"

    def grid(self, batch: int, heads: int, rows: int, head_dim: int) -> tuple[int, int, int]:
        if self.kernel == "bwd_prep":
            return fold_heads_batch(max(1, -(-rows // self.ROWS_PER_BLOCK)), heads, batch)
        blocks = -(-rows // self.CONVERT_BLOCK) * -(-head_dim // self.CONVERT_BLOCK)
        return fold_heads_batch(max(1, blocks), heads, batch)

    def __str__(self) -> str:
        return f"{self.kernel} {self.dtype}"


MERGE_DTYPES = ("fp16", "bf16", "f32")   # merge_states' partials and outputs


@dataclass(frozen=True)
class MergeConfig:
    """`fc::merge_states<TI, TO>` in kernels/merge_states.cu, on every arch: a warp per row,
    8 rows a block, rows of at most MAX_DV columns."""

    dtype_in: str    # MERGE_DTYPES
    dtype_out: str

    kernel_file = "merge_states.cu"
    threads = 256
    smem_bytes = 0
    ROWS_PER_BLOCK = 8   # kMergeWarps
    MAX_DV = 512         # kMergeMaxDv
    variant = PLAIN

    @property
    def name_expression(self) -> str:
        return f"fc::merge_states<fc::{self.dtype_in}, fc::{self.dtype_out}>"

    def grid(self, rows: int) -> tuple[int, int, int]:
        return (max(1, -(-rows // self.ROWS_PER_BLOCK)), 1, 1)

    def __str__(self) -> str:
        return f"merge_states {self.dtype_in} -> {self.dtype_out}"


@dataclass(frozen=True)
class AppendConfig:
    """`fc::kvcache_append<PAGED>` in kernels/kvcache_append.cu, on every arch: k_new and v_new
    into a KV cache (contiguous or paged), a thread per 16-byte chunk; any 16-bit dtype."""

    paged: bool

    kernel_file = "kvcache_append.cu"
    threads = 256   # kAppendThreads
    smem_bytes = 0
    variant = PLAIN

    @property
    def name_expression(self) -> str:
        return f"fc::kvcache_append<{'true' if self.paged else 'false'}>"

    def grid(self, chunks: int, num_sms: int) -> tuple[int, int, int]:
        return (max(1, min(-(-chunks // self.threads), 8 * num_sms)), 1, 1)

    def __str__(self) -> str:
        return f"kvcache_append {'paged' if self.paged else 'contiguous'}"


class WorkTile(NamedTuple):
    """One work item of the Hopper kernel, as its work_tile gives it (Sm90FwdConfig.work_tile)."""
    row0: int
    head: int
    batch: int
    consumers: int   # consumers with rows here (the first ones)
    n_blocks: int    # key tiles of those rows (causal: up to the diagonal)
    first: int = 0   # the first of them (a variant's window; plain: 0)


class Sm90Schedule(NamedTuple):
    """How a problem's work tiles map onto the Hopper kernel's CTAs (Sm90FwdConfig.schedule)."""
    grid: tuple[int, int, int]
    tail_start: int   # work items from here on are 64-row sub-tiles of the last tiles
    items: int        # work items: tiles before tail_start, then consumers per later tile
    group: int = 1    # (batch, head)s numbered together, longest tiles first (see work_tile)


# Causal tiles are numbered longest first across a group of heads, so the grid ends on
# short tiles. Head by head, each head's longest tile came after the previous head's
# shortest: a greedy model of the block scheduler (132 SMs, B2 H16 S4k) gave a makespan
# 12 % over the ideal, 0.1 % with groups of 4 or 8. A group's K/V stays within this much
# L2 (heads numbered across all at once cost 5-7 % at S = 16k, PERF_HISTORY v7).
_CAUSAL_GROUP_HEADS = 8
_CAUSAL_GROUP_KV_BYTES = 16 << 20


def causal_group(batch_heads: int, kv_bytes_per_head: int) -> int:
    """The largest divisor of batch_heads (so every group is full) of at most
    _CAUSAL_GROUP_HEADS heads whose K/V fits in _CAUSAL_GROUP_KV_BYTES (at least 1)."""
    most = min(_CAUSAL_GROUP_HEADS, max(1, _CAUSAL_GROUP_KV_BYTES // max(1, kv_bytes_per_head)))
    return next(g for g in range(most, 0, -1) if batch_heads % g == 0)


@dataclass(frozen=True)
class Sm90FwdConfig:
    """One instantiation of `fc::flash_fwd_sm90` in kernels/flash_fwd_sm90.cu (sm_90a only)."""

    dtype: str        # "fp16" | "bf16"
    head_dim: int     # 64 | 96 | 128 | 192 | 256 (the runtime head dim rounded up; TMA zero-fills the rest)
    block_n: int      # keys per K/V tile: 64 | 80 | 96 | 112 | 128 | 176 | 192
    stages: int       # K/V tiles in flight (TMA ring)
    consumers: int    # consumer warpgroups, 64 query rows each (shared ones with split)
    pingpong: bool    # consumers take turns issuing GEMMs (needs 2+)
    split: bool = False   # consumers share 64 rows and split the keys (small grids)
    producers: int = 1    # TMA-issuing threads: 1 (Q, K and V) or 2 (Q and K; V)
    warp_rows: int = 16   # query rows per warp's 16-row GEMM slice: 8 halves split tiles to 32 rows
    variant: KernelVariant = PLAIN
    seq: str = "dense"    # "dense", "dense_split" (split-KV), "varlen" (no bias), or a plain KV cache: "cache" | "paged_tiles" | "paged" (gathered)
    head_dim_v: int | None = None   # V's and O's width where it differs from head_dim (a built width)

    kernel_file = "flash_fwd_sm90.cu"
    arch = "sm_90a"

    def __post_init__(self):
        if self.seq not in SM90_SEQ_KINDS:
            raise ValueError(f"seq must be one of {SM90_SEQ_KINDS}, got {self.seq!r}")
        if self.seq == "varlen" and (self.split or self.variant.bias != "none"):
            raise ValueError("a Hopper varlen config has whole tiles and no bias")
        if self.seq in CACHE_KINDS and not (self.split and self.warp_rows == 16 and self.variant.plain):
            raise ValueError("a Hopper KV-cache config has split tiles of 16-row warps and no variant")
        if self.head_dim_v == self.head_dim:
            raise ValueError("head_dim_v: None where V's width is head_dim (one config, one name)")

    @property
    def dv(self) -> int:
        """V's and the output's width in the kernel (the template's DV)."""
        return self.head_dim_v or self.head_dim

    @property
    def name_expression(self) -> str:
        extra = "" if self.variant.plain else f", {self.variant.expression}"
        if self.seq != "dense":
            extra = f", {self.variant.expression}, {_SEQ_EXPRESSIONS[self.seq]}"
        return (f"fc::flash_fwd_sm90<fc::{self.dtype}, {self.head_dim}, {self.dv}, {self.block_n}, "
                f"{self.stages}, {self.consumers}, {'true' if self.pingpong else 'false'}, "
                f"{'true' if self.split else 'false'}, {self.producers}, {self.warp_rows}{extra}>")

    @property
    def threads(self) -> int:
        return 128 * (self.consumers + 1)   # + the producer warpgroup

    @property
    def block_m(self) -> int:
        return 4 * self.warp_rows if self.split else 64 * self.consumers

    @property
    def q_box_rows(self) -> int:
        """Rows of Q's TMA box (Sm90Tile::kQBoxRows): the tile, or one 8-row box per warp."""
        return self.block_m if self.warp_rows == 16 else 8

    @property
    def d_pad(self) -> int:
        """Columns of a Q or K row in shared memory: whole 64-column blocks (Sm90Tile::kDPad)."""
        return -(-self.head_dim // 64) * 64

    @property
    def dv_pad(self) -> int:
        """Columns of a V row in shared memory (Sm90Tile::kDvPad)."""
        return -(-self.dv // 64) * 64

    @property
    def combine_bytes(self) -> int:
        """Split tiles: the combine's scratch (O, m and l of every consumer but the first's
        row halves), which must fit in the K/V ring (Sm90Tile's static_assert)."""
        return (self.consumers - 1) * 128 * (self.warp_rows // 8) * (self.dv // 4 + 2) * 4

    @property
    def smem_bytes(self) -> int:
        # Mirrors flash_fwd_sm90_smem (Sm90FwdSmem; test_compile holds them equal): 1024 bytes of
        # alignment slack, Q's slots (64 rows at least), the K and V rings, barriers; a bias
        # variant's per-warp bias tiles (BiasStage) at the next 128 bytes.
        bias_at, slot = self._bias_layout()
        return 1024 + bias_at + self.bias_slots * slot

    # The sequence kinds whose tiles stream: the kernel's FLASHCORE_STREAM_ITEMS (1, shipped:
    # dense; 0: none; 2: varlen too), which probes of other builds set on a subclass.
    STREAMED_SEQS = ("dense",)

    @property
    def streamed(self) -> bool:
        """Whether the kernel streams its work tiles (flash_fwd_sm90.cu's stream_items): whole
        tiles of a dense batch without a bias, not three consumers' with a variant (they spill)."""
        return (self.seq in self.STREAMED_SEQS and not self.split and self.variant.bias == "none"
                and (self.variant.plain or self.consumers < 3))

    @property
    def q_slots(self) -> int:
        """Q's slots in shared memory (the kernel's q_slots): two where the tiles stream and a
        second fits (the next work tile's Q loads under this one), else one."""
        return 2 if self.streamed and 1024 + self._layout_end(2) <= SMEM_LIMIT[self.arch] else 1

    def _layout_end(self, q_slots: int) -> int:
        """Where the tile's layout ends (the kernel's layout_end): Q's slots, the K and V rings,
        the barriers (a second Q slot's last), the dynamic deal's item slots."""
        tiles = 2 * (self.d_pad * (q_slots * max(self.block_m, 64) + self.stages * self.block_n) +
                     self.dv_pad * self.stages * self.block_n)
        end = tiles + 8 * (2 + 4 * self.stages) + 16 * (q_slots - 1)
        if self.seq == "varlen":   # the dynamic deal's item slots (sm90_scheduler.cuh's ItemSlots)
            end += SM90_ITEM_SLOT_BYTES
        return end

    def _bias_layout(self) -> tuple[int, int]:
        """(where the bias tiles start, one slot of them for every warp), as flash_fwd_sm90.cu."""
        end = self._layout_end(self.q_slots)
        if self.variant.bias == "none":
            return end, 0
        elem = 4 if self.variant.bias == "fp32" else 2
        return -(-end // 128) * 128, 4 * self.consumers * self.warp_rows * self.block_n * elem

    @property
    def bias_slots(self) -> int:
        """A bias variant's tiles in flight per warp: two where they fit beside the ring, else
        one (the kernel's kBiasSlots)."""
        bias_at, slot = self._bias_layout()
        return 2 if 1024 + bias_at + 2 * slot <= SMEM_LIMIT[self.arch] else 1

    def work_tiles(self, batch: int, heads_q: int, seqlen_q: int) -> int:
        return -(-seqlen_q // self.block_m) * heads_q * batch

    def schedule(self, batch: int, heads_q: int, seqlen_q: int, num_sms: int,
                 causal: bool, kv_bytes_per_head: int = 0) -> Sm90Schedule:
        """Non-causal: persistent, one CTA per SM (a CTA takes the whole register file)
        looping over the work items. When the tiles leave a partial last round that
        would still fit on the SMs as one 64-row sub-tile per consumer, those tiles
        are split so: the round then runs on every SM, one consumer each, instead of
        on a few with all of them. Causal tiles differ in length, and a static deal
        of them can leave SMs idle (at S = 16k, 128 tiles per head over 132 SMs gave
        some CTAs only short tiles: 0.74x cuDNN), so there each tile is its own CTA
        and the hardware hands the next one to whichever SM frees up, longest first
        over groups of heads (causal_group; kv_bytes_per_head: K and V per query head)."""
        tiles = self.work_tiles(batch, heads_q, seqlen_q)
        if self.split:   # its combine reuses the K/V ring: one work tile per CTA
            return Sm90Schedule((tiles, 1, 1), tiles, tiles)
        if causal:
            return Sm90Schedule((tiles, 1, 1), tiles, tiles, causal_group(batch * heads_q, kv_bytes_per_head))
        tail = tiles % num_sms if tiles > num_sms else 0
        sub_tiles = 0 < tail and tail * self.consumers <= num_sms and self.consumers > 1
        tail_start = tiles - tail if sub_tiles else tiles
        items = tail_start + (tiles - tail_start) * self.consumers
        return Sm90Schedule((min(items, num_sms), 1, 1), tail_start, items)

    def work_tile(self, i: int, *, seqlen_q: int, seqlen_k: int, causal: bool, heads: int, m_blocks: int,
                  group: int, tail_start: int, window: tuple[int, int, int] | None = None) -> WorkTile:
        """Work item i, as flash_fwd_sm90.cu's work_tile computes it from the launch's scalars
        (heads: the kernel's, Hkv when GQA is packed; a debug build records the kernel's own,
        which the GPU tests compare with this). Tiles are numbered by groups of `group` heads,
        longest first within a group; items from tail_start on are 64-row sub-tiles, one per
        consumer, of the last tiles. window: a variant's (diag, left, right) (variant.cuh's
        window_tiles: its rows' keys as tiles from `first`)."""
        c = self.consumers
        sub = i >= tail_start
        t = tail_start + (i - tail_start) // c if sub else i
        g, in_group = divmod(t, group * m_blocks)
        m_desc = in_group // group
        head_batch = g * group + in_group - m_desc * group
        row0 = (m_blocks - 1 - m_desc) * self.block_m + (64 * ((i - tail_start) % c) if sub else 0)
        rows = max(0, min(64 if sub else self.block_m, seqlen_q - row0))
        consumers = (c if rows > 0 else 0) if self.split else (rows + 63) // 64
        if window is not None:
            diag, left, right = window
            begin = max(0, row0 + diag - left) if left >= 0 else 0
            end = min(seqlen_k, row0 + rows + diag + right) if right >= 0 else seqlen_k
            if rows <= 0 or end <= begin:
                return WorkTile(row0, head_batch % heads, head_batch // heads, consumers, 0, 0)
            first = begin // self.block_n
            return WorkTile(row0, head_batch % heads, head_batch // heads, consumers,
                            -(-end // self.block_n) - first, first)
        kv_end = min(seqlen_k, row0 + rows + seqlen_k - seqlen_q) if causal else seqlen_k
        return WorkTile(row0, head_batch % heads, head_batch // heads, consumers,
                        -(-kv_end // self.block_n) if rows > 0 and kv_end > 0 else 0)

    def varlen_work_tiles(self, seqlens_q: list[int], seqlens_k: list[int], heads: int, causal: bool,
                          items: int) -> list[WorkTile]:
        """A varlen launch's `items` work items, as flash_fwd_sm90.cu's work_tile gives them
        (sm90_scheduler.cuh's varlen_item): sequence by sequence, each ceil(Sq_b / block_m) *
        heads items, its last row block first with the heads in turn; then items past the
        sequences' (batch -1: a CTA stops at the first it meets) up to `items`."""
        tiles = []
        for b, (sq, sk) in enumerate(zip(seqlens_q, seqlens_k)):
            m_blocks = -(-sq // self.block_m)
            for u in range(m_blocks * heads):
                m_desc, head = divmod(u, heads)
                row0 = (m_blocks - 1 - m_desc) * self.block_m
                rows = min(self.block_m, sq - row0)
                kv_end = min(sk, row0 + rows + sk - sq) if causal else sk
                tiles.append(WorkTile(row0, head, b, -(-rows // 64), -(-kv_end // self.block_n) if kv_end > 0 else 0))
        return (tiles + [WorkTile(0, 0, -1, 0, 0)] * items)[:items]

    def __str__(self) -> str:
        return (f"sm90 {self.dtype} D{self.head_dim}{f'/{self.head_dim_v}' if self.head_dim_v else ''} "
                f"{self.block_m}x{self.block_n} "
                f"c{self.consumers} s{self.stages}{' pp' if self.pingpong else ''}"
                f"{' split' if self.split else ''}{' p2' if self.producers == 2 else ''}"
                f"{' w8' if self.warp_rows == 8 else ''}{'' if self.variant.plain else f' {self.variant}'}"
                f"{'' if self.seq == 'dense' else f' {self.seq}'}")


# Tile table: arch family -> (largest template head dim, tile) rows, the first row whose
# head-dim bound covers the problem winning. Measurements behind each choice are in
# docs/PERF_NOTES.md and PERF_HISTORY.md.
#  - D <= 64: 128 query rows as 4 warps x 2 slices (FA2's 128-row tile); 128-key
#    tiles were rejected: S alone would take 128 registers per thread and spills.
#  - D <= 128: 4 warps x 2 slices (32 rows per warp) share each K/V fragment
#    between two mma, which beat 8 warps x 1 slice by 25-30 % on the H200.
#    64-key tiles are ~9 % faster than 32-key ones but need 254 registers: they
#    fit without spills on sm_90a; sm_80 spilled 12 bytes (NVRTC 12.9) until the
#    kernel took V's own head dim (v39: 0 bytes at 255), and keeps 32-key tiles
#    (no sm_80 GPU to time the change on).
#  - D > 128: Q no longer fits in registers next to O; 32-key tiles keep S small.
#    128 rows need 101 KB of shared memory, over sm_86/89's 99 KB: 64 rows there.
def _tile(warps: int, m_tiles: int, block_n: int, stages: int) -> dict:
    return dict(warps=warps, m_tiles=m_tiles, block_n=block_n, stages=stages)


_TILE_TABLE: dict[str, tuple[tuple[int, dict], ...]] = {
    "sm_90a": ((64, _tile(warps=4, m_tiles=2, block_n=64, stages=3)),
               (128, _tile(warps=4, m_tiles=2, block_n=64, stages=2)),
               (256, _tile(warps=8, m_tiles=1, block_n=32, stages=2))),
    "sm_80": ((64, _tile(warps=4, m_tiles=2, block_n=64, stages=3)),
              (128, _tile(warps=4, m_tiles=2, block_n=32, stages=3)),
              (256, _tile(warps=8, m_tiles=1, block_n=32, stages=2))),
    "small_smem": ((64, _tile(warps=4, m_tiles=2, block_n=64, stages=3)),
                   (128, _tile(warps=4, m_tiles=2, block_n=32, stages=3)),
                   (256, _tile(warps=4, m_tiles=1, block_n=32, stages=2))),
}
_ARCH_FAMILY = {"sm_80": "sm_80", "sm_90a": "sm_90a", "sm_86": "small_smem", "sm_89": "small_smem"}
# When 128-row tiles would leave SMs idle (short sequences, few heads) or most
# rows empty (decode), 64-row tiles (4 warps x 1 slice) double the CTAs and halve
# each warp's serial work;
# with little work per CTA, a deeper ring hides more of the load latency.
_SHORT_Q = 64   # at most this many queries (decode): 64-row tiles waste half as much
_SMALL_GRID_TILE = {64: _tile(warps=4, m_tiles=1, block_n=64, stages=3),
                    128: _tile(warps=4, m_tiles=1, block_n=64, stages=2),
                    256: _tile(warps=4, m_tiles=1, block_n=32, stages=2)}


def arch_family(arch: str) -> str:
    # Archs newer than the table (sm_100, sm_120, ...) take the conservative tiles.
    return _ARCH_FAMILY.get(arch, "small_smem")


def bucket_head_dim(head_dim: int) -> int:
    return next(b for b in HEAD_DIM_BUCKETS if b >= head_dim)


class DispatchKey(NamedTuple):
    """A problem class, the key of the tuned tables (tuning.py): the kernel family, dtype,
    head-dim bucket and grid class ("large", "small", or for the Hopper kernel "tiny"). Its
    text form, what tune files hold, is "sm90/fp16/d128/large" (the portable family's has no
    prefix: "fp16/d128/large")."""
    family: str      # "sm80" (portable) or "sm90" (Hopper)
    dtype: str
    head_dim: int
    grid: str

    def __str__(self) -> str:
        prefix = "" if self.family == "sm80" else f"{self.family}/"
        return f"{prefix}{self.dtype}/d{self.head_dim}/{self.grid}"

    @classmethod
    def parse(cls, text: str) -> "DispatchKey":
        """The key whose text form is `text`; ValueError for anything else."""
        parts = text.split("/")
        family = parts.pop(0) if len(parts) == 4 else "sm80"
        if not (len(parts) == 3 and family in ("sm80", "sm90") and parts[0] in DTYPES
                and parts[1][:1] == "d" and parts[1][1:].isdigit() and parts[2] in ("large", "small", "tiny")):
            raise ValueError(f"not a dispatch key: {text!r} (expected e.g. 'sm90/fp16/d128/large')")
        return cls(family, parts[0], int(parts[1][1:]), parts[2])


def sm80_problem_class(arch: str, dtype: str, head_dim: int, batch_heads: int, seqlen_q: int,
                  num_sms: int) -> tuple[DispatchKey, Sm80FwdConfig]:
    """(dispatch key, default config) of one problem on the portable kernel."""
    hd = bucket_head_dim(head_dim)
    bound, tile = next((b, t) for b, t in _TILE_TABLE[arch_family(arch)] if hd <= b)
    config = Sm80FwdConfig(dtype, hd, **tile)
    small = batch_heads * -(-seqlen_q // config.block_m) < num_sms or seqlen_q <= _SHORT_Q
    if small:
        config = Sm80FwdConfig(dtype, hd, **_SMALL_GRID_TILE[bound])
    return DispatchKey("sm80", dtype, hd, "small" if small else "large"), config


@functools.lru_cache(maxsize=None)
def choose_sm80_config(arch: str, dtype: str, head_dim: int, batch_heads: int = 1 << 30,
                  seqlen_q: int = 1 << 30, num_sms: int = 1,
                  tuned: tuple[tuple[DispatchKey, Sm80FwdConfig], ...] = ()) -> Sm80FwdConfig:
    """The kernel config for one problem (pure; cached): a tuned entry, else the table's."""
    key, default = sm80_problem_class(arch, dtype, head_dim, batch_heads, seqlen_q, num_sms)
    return dict(tuned).get(key, default)


# Hopper kernel (sm_90a): (head-dim bucket, grid) -> tile.
# Measured on the H200 (docs/PERF_HISTORY.md, sm90 v5-v6): D128 takes 128 query rows
# (two consumer warpgroups taking turns) x 128-key tiles in a 2-slot TMA ring;
# D64's GEMMs are half as long against the same softmax, so a third consumer
# (192 rows) keeps the tensor cores fed (+5 % over two). Grids that leave SMs
# idle (the mission shape, decode) take 64-row tiles, one per CTA, whose two
# consumers split the keys between them and merge at the end (sm90 v10: mission
# kernel 6.9 -> 6.3 us against one consumer of 64 rows x 128 keys). Decode streams
# many key tiles through a short ring: K and V from producer threads of their own
# (v12, H100: 128-key tiles in 2 slots 209 -> 119 us; 64-key tiles in 4 slots with
# one producer, the previous choice, 136-141 us). Grids that even 64-row split tiles
# leave half idle, but 32-row ones fit in one wave (the mission shape: 64 -> 128 CTAs),
# take 32-row split tiles of 8 rows per warp (PERF_HISTORY v24).
SM90_ARCH = "sm_90a"
#
# Wider heads (D96 keeps D128's tiles: its rows take as much shared memory, half a column block
# zero-filled). D192 and D256 hold O in 96 and 128 registers a consumer thread, and their K/V
# rows are 384 and 512 bytes: 112- and 80-key tiles (FA3's) in a 2-slot ring beside 128 rows of Q
# fill the 227 KB; their split tiles take 64 keys (a power of two: paged caches' boxes tile it).
SM90_HEAD_DIMS = (64, 96, 128, 192, 256)
SM90_GRIDS = ("large", "small", "tiny")
_SM90_WIDE = {"large": dict(stages=2, consumers=2, pingpong=True),
              "small": dict(block_n=64, consumers=2, pingpong=False, split=True, producers=2),
              "tiny": dict(block_n=64, consumers=2, pingpong=False, split=True, producers=2, warp_rows=8)}
_SM90_TILES = {
    (64, "large"): dict(block_n=128, stages=2, consumers=3, pingpong=True),
    (128, "large"): dict(block_n=128, stages=2, consumers=2, pingpong=True),
    (64, "small"): dict(block_n=128, stages=4, consumers=2, pingpong=False, split=True),
    (128, "small"): dict(block_n=128, stages=2, consumers=2, pingpong=False, split=True, producers=2),
    (64, "tiny"): dict(block_n=128, stages=4, consumers=2, pingpong=False, split=True, warp_rows=8),
    (128, "tiny"): dict(block_n=128, stages=2, consumers=2, pingpong=False, split=True, producers=2,
                        warp_rows=8),
    (192, "large"): dict(block_n=112, **_SM90_WIDE["large"]),
    (192, "small"): dict(stages=4, **_SM90_WIDE["small"]),
    (192, "tiny"): dict(stages=4, **_SM90_WIDE["tiny"]),
    (256, "large"): dict(block_n=80, **_SM90_WIDE["large"]),
    (256, "small"): dict(stages=2, **_SM90_WIDE["small"]),
    (256, "tiny"): dict(stages=2, **_SM90_WIDE["tiny"]),
}
_SM90_TILES.update({(96, grid): _SM90_TILES[128, grid] for grid in SM90_GRIDS})
# V narrower than Q and K (DeepSeek's MLA: 192 / 128): where V's tiles leave room, longer key
# tiles than the wider head's (D192 / 128 at 128 keys: 209 KB, O in 64 registers).
_SM90_PAIR_TILES = {(192, 128, "large"): dict(block_n=128)}
SM90_PAIRS = ((192, 128),)   # (D, Dv) pairs dispatch has its own tiles for (all_configs lists them)
Sm90Mode = Literal["off", "auto", "force"]


def sm90_config(dtype: str, head_dim: int, grid: str = "large") -> Sm90FwdConfig:
    hd = sm90_width(head_dim)
    return Sm90FwdConfig(dtype, hd, **_SM90_TILES[hd, grid])


def sm90_width(head_dim: int) -> int:
    """The Hopper kernel's built width a head dim runs at (TMA zero-fills the rest)."""
    return next(b for b in SM90_HEAD_DIMS if b >= head_dim)


def with_value_dim(config: Sm80FwdConfig | Sm90FwdConfig, head_dim: int,
                   head_dim_v: int) -> Sm80FwdConfig | Sm90FwdConfig:
    """The config of a call whose V (and output) has head_dim_v columns, from the one dispatch chose
    for max(head_dim, head_dim_v): the portable kernel's (its HEAD_DIM spans both; columns past
    each load as zeros) unchanged; the Hopper kernel's at Q/K's and V's own widths, on a pair's
    own tile where _SM90_PAIR_TILES has one (else the wider head's tile, which fits both)."""
    if not isinstance(config, Sm90FwdConfig) or head_dim == head_dim_v:
        return config
    d, dv = sm90_width(head_dim), sm90_width(head_dim_v)
    grid = "tiny" if config.warp_rows == 8 else "small" if config.split else "large"
    return dataclasses.replace(config, head_dim=d, head_dim_v=None if dv == d else dv,
                               **_SM90_PAIR_TILES.get((d, dv, grid), {}))


def sm90_cache_config(dtype: str, head_dim: int, paged: bool, gather: bool = False) -> Sm90FwdConfig:
    """The Hopper kernel's tile for a KV-cache decode step: the small grids' split tile (64 rows
    of the packed GQA group, two consumers splitting the keys), with the cache's sequence policy
    (gather: a paged cache whose pages are not TMA boxes that tile a key tile, copied row by row)."""
    seq = ("paged" if gather else "paged_tiles") if paged else "cache"
    return dataclasses.replace(sm90_config(dtype, head_dim, "small"), seq=seq)


# Packed sequences' plain D128 tiles: three consumers over 64-key tiles (192 query rows, 2 slots)
# instead of the dense 128 x 128 (v50 call 3, H100, inference_probe, 20 samples, fp16 / bf16
# TFLOP/s: the 16-sequence row 524 / 540 against 480 / 512, the 64-sequence row 422 / 441
# against 412 / 408). Variants keep variant_config's tiles (not timed with this one).
_SM90_VARLEN_TILES = {128: dict(block_n=64, stages=2, consumers=3)}


def sm90_varlen_config(dtype: str, head_dim: int, variant: KernelVariant = PLAIN) -> Sm90FwdConfig:
    """The Hopper kernel's tile for packed sequences: the large grids' whole tiles (a variant's
    as variant_config makes them; plain D128 its own, _SM90_VARLEN_TILES), with the varlen
    sequence policy."""
    config = variant_config(sm90_config(dtype, head_dim, "large"), variant)
    if variant.plain and config.head_dim in _SM90_VARLEN_TILES:
        config = dataclasses.replace(config, **_SM90_VARLEN_TILES[config.head_dim])
    return dataclasses.replace(config, seq="varlen")


SM90_PRODUCER_REGISTERS = 24   # the producer warpgroup's after setmaxnreg (Sm90Tile::kProducerRegs)
SM90_GATHER_PRODUCER_REGISTERS = 48   # a gathered paged cache's (seq "paged": kGatherProducerRegs)


def sm90_producer_registers(config: "Sm90FwdConfig") -> int:
    """The producer warpgroup's registers after setmaxnreg in `config`'s kernel."""
    return SM90_GATHER_PRODUCER_REGISTERS if config.seq == "paged" else SM90_PRODUCER_REGISTERS


def sm90_consumer_registers(consumers: int, producer: int = SM90_PRODUCER_REGISTERS) -> int:
    """Registers per consumer thread after setmaxnreg (mirrors Sm90Tile::consumer_regs): the
    launch bound's share of the 64K file (multiples of 8) for every warpgroup, less the
    producer's drop to `producer`, split among the consumers, in multiples of 8, at most 256."""
    launch = 65536 // (128 * (consumers + 1)) // 8 * 8
    return min(256, (launch * (consumers + 1) - producer) // consumers // 8 * 8)


def sm90_problem_class(dtype: str, head_dim: int, batch_heads: int, seqlen_q: int,
                       num_sms: int) -> tuple[DispatchKey, Sm90FwdConfig]:
    """(dispatch key, default config) of a problem on the Hopper kernel."""
    def tiles(grid: str) -> int:
        return batch_heads * -(-seqlen_q // sm90_config(dtype, head_dim, grid).block_m)

    if seqlen_q <= _SHORT_Q:
        grid = "small"
    else:
        grid = "large" if tiles("large") >= num_sms else "tiny" if tiles("tiny") <= num_sms else "small"
    config = sm90_config(dtype, head_dim, grid)
    return DispatchKey("sm90", dtype, config.head_dim, grid), config


def dispatch_class(arch: str, dtype: str, head_dim: int, batch_heads: int, seqlen_q: int,
                   num_sms: int) -> tuple[DispatchKey, Sm80FwdConfig | Sm90FwdConfig]:
    """(dispatch key, default config) of the kernel `auto` runs a problem on."""
    if arch == SM90_ARCH and head_dim <= SM90_HEAD_DIMS[-1]:
        return sm90_problem_class(dtype, head_dim, batch_heads, seqlen_q, num_sms)
    return sm80_problem_class(arch, dtype, head_dim, batch_heads, seqlen_q, num_sms)


@functools.lru_cache(maxsize=None)
def choose_kernel(arch: str, dtype: str, head_dim: int, batch_heads: int = 1 << 30,
                  seqlen_q: int = 1 << 30, num_sms: int = 1,
                  tuned: tuple[tuple[DispatchKey, Sm80FwdConfig | Sm90FwdConfig], ...] = (),
                  sm90: Sm90Mode = "auto") -> Sm80FwdConfig | Sm90FwdConfig:
    """The kernel for one problem (pure; cached): a tuned entry, else the table's.

    sm90="auto": the Hopper kernel on sm_90a at every head dim (small tiles where the
    large ones would leave SMs idle), else the portable kernel
    (`choose_sm80_config`); "force": the Hopper kernel's large tiles (the caller has
    checked that it can run); "off": the portable kernel.
    """
    if sm90 == "force":
        default = sm90_config(dtype, head_dim)
        return dict(tuned).get(DispatchKey("sm90", dtype, default.head_dim, "large"), default)
    if sm90 == "auto":
        key, default = dispatch_class(arch, dtype, head_dim, batch_heads, seqlen_q, num_sms)
        return dict(tuned).get(key, default)
    return choose_sm80_config(arch, dtype, head_dim, batch_heads, seqlen_q, num_sms, tuned)


def variant_config(config: Sm80FwdConfig | Sm90FwdConfig, variant: KernelVariant,
                   sides: tuple[int, int] | None = None) -> Sm80FwdConfig | Sm90FwdConfig:
    """The config a variant runs on, from the plain one dispatch chose: the same tile where its
    registers allow (NVRTC 12.9, sm_80 and sm_90a, tests/test_compile.py). Hopper: see below.
    Portable: score
    options (softcap, ALiBi, bias) spilled at 32 rows per warp or 128 keys, so they take 16
    rows per warp and at most 64 keys; a window alone spilled only on the tiles that need the most
    registers plain (slices per warp x keys x head dim of 12288 or more: D128 at 64 keys; D96 at
    64 keys since the folded grid's head and batch, grid.cuh, took 4 more). sides: the
    call's window (left, right) with the causal fold, from dispatch: a narrow one takes
    window_config's tile on Hopper."""
    if variant.plain:
        return config
    scores = variant.softcap or variant.alibi or variant.bias != "none"
    if isinstance(config, Sm90FwdConfig):
        # Score options spilled with three consumers (160 registers each), a softcap or a bias
        # with 192-key tiles: they take two consumers, and with a softcap or a bias at most 128
        # keys (ALiBi alone fits D128's 192-key tile: 0 bytes spilled, 1-3 % faster in v40's probe).
        # A float32 bias's staged tiles (BiasStage, one per warp) of 128 keys do not fit beside
        # D128's ring: 64 keys there.
        if scores:
            wide = variant.softcap or variant.bias != "none"
            config = dataclasses.replace(config, block_n=min(config.block_n, 128) if wide else config.block_n,
                                         consumers=config.consumers if config.split else min(config.consumers, 2))
        if variant.bias == "fp32" and config.head_dim > 64 and config.warp_rows == 16:
            config = dataclasses.replace(config, block_n=min(config.block_n, 64))
        # D192 and D256 fill the 227 KB with their ring: beside a bias's staged tiles it takes 64
        # keys, then two slots.
        for smaller in (dict(block_n=64), dict(stages=2)):
            if dataclasses.replace(config, variant=variant).smem_bytes > SMEM_LIMIT[config.arch]:
                config = dataclasses.replace(config, **smaller)
        # sides: the call's window (left, right) after the causal fold, where dispatch knows it
        span = None if sides is None or min(sides) < 0 else sides[0] + sides[1] + 1 + config.block_m
        return window_config(dataclasses.replace(config, variant=variant), span)
    tight = config.m_tiles * config.block_n * config.head_dim >= 12288
    return dataclasses.replace(config, m_tiles=1 if scores or tight else config.m_tiles,
                               block_n=min(config.block_n, 64) if scores else config.block_n, variant=variant)


DECODE_ROWS = 16   # a KV-cache call with at most this many tile rows (after GQA packing) decodes


def seq_config(config: Sm80FwdConfig, seq: str, variant: KernelVariant = PLAIN,
               rows: int | None = None, arch: str = SM90_ARCH) -> Sm80FwdConfig:
    """The portable config of a varlen or KV-cache call (seq: SEQ_KINDS), from dispatch's plain
    dense one: a KV cache's few query rows (decode, speculative verification), split-KV (its
    partials' merge spilled at 32 rows a warp, D96 and D128) and every variant take 16 rows per warp (the KV cache at D128 and a varlen window at D96 spilled with 32), and
    a variant variant_config's tile (NVRTC 12.9, sm_80 and sm_90a: tests/test_compile.py).
    rows: a KV-cache call's tile rows (Sq x the GQA pack); up to DECODE_ROWS, at head dims up to
    128, it takes one warp of 16 rows a CTA (decode_config for `arch`)."""
    if seq in CACHE_KINDS or seq == "dense_split" or not variant.plain:
        config = dataclasses.replace(config, m_tiles=1)
    if seq == "paged":   # gather_kv: a lane looks up two rows of a tile
        config = dataclasses.replace(config, block_n=min(config.block_n, 64))
    if seq in CACHE_KINDS and rows is not None and rows <= DECODE_ROWS and config.head_dim <= 128:
        config = decode_config(config, arch)   # (over D128 one warp's O and S spilled)
    return dataclasses.replace(variant_config(config, variant), seq=seq)


def decode_config(config: Sm80FwdConfig, arch: str) -> Sm80FwdConfig:
    """A decode step's tile: one warp of 16 query rows (decode's rows, GQA-packed, fill one) and
    64-key tiles, so that a CTA computes no empty warps' rows and several CTAs share an SM: 3
    stages (two K/V tiles in flight while the third is computed) where two such CTAs fit the
    arch's shared memory (109 KB at D128 on sm_90a), else 2."""
    decode = dataclasses.replace(config, warps=1, m_tiles=1, block_n=64, stages=3)
    if 2 * decode.smem_bytes > SMEM_LIMIT[arch]:
        decode = dataclasses.replace(decode, stages=2)
    return decode


# A window this narrow (the keys one Hopper work tile's rows see) over 192-key tiles computes
# many hidden keys at its two edges: 128-key tiles ran window1k S8k D128 (1151 keys a 128-row
# tile) 7 % faster (v29 probe, one run: 329 against 355 us); a 4k window keeps 192.
NARROW_WINDOW_KEYS = 2048


def window_config(config: Sm80FwdConfig | Sm90FwdConfig, span: int | None) -> Sm80FwdConfig | Sm90FwdConfig:
    """The tile of a Hopper variant whose work tiles' rows see `span` keys at most (a window
    bounded on both sides; None: unbounded): 128-key tiles for a narrow one, else unchanged."""
    if (isinstance(config, Sm90FwdConfig) and not config.variant.plain and span is not None
            and span <= NARROW_WINDOW_KEYS and config.block_n > 128):
        return dataclasses.replace(config, block_n=128)
    return config


def all_configs(arch: str) -> list[Sm80FwdConfig | Sm90FwdConfig]:
    """Every config the tables can give on `arch` (tuned tables can add more: see
    tuning.dispatchable_configs)."""
    portable = {choose_sm80_config(arch, dt, hd, batch_heads=1, seqlen_q=sq, num_sms=2)
                for dt in DTYPES for hd in HEAD_DIM_BUCKETS for sq in (1, 1 << 20)}
    hopper = ({sm90_config(dt, hd, grid) for dt in DTYPES for hd in SM90_HEAD_DIMS for grid in SM90_GRIDS} |
              {with_value_dim(sm90_config(dt, max(pair), grid), *pair) for dt in DTYPES for pair in SM90_PAIRS
               for grid in SM90_GRIDS} if arch == SM90_ARCH else set())
    return sorted(portable | hopper, key=lambda c: (c.kernel_file, c.dtype, c.head_dim, c.block_m))
