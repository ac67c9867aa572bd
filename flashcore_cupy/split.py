"""Split-KV: how many key ranges a tile's keys run in, and the partials' workspace.

A split's CTA runs its share of a tile's key tiles and stores float32 partials (O / l and the
LSE); the tile's last split to finish merges them into the output and the LSE
(kernels/split_kv.cuh, either forward kernel). Calls split for two reasons:

- To fill the GPU: a decode step's few tiles (attention_kvcache: choose_splits, sm90_splits).
- To bound the keys one accumulator sums: a dense call whose rows see more than
  MAX_CHAIN_KEYS keys (dense_splits). The error of one CTA's float32 O accumulated over every
  key grew linearly with Sk, the same on both kernels as in cuDNN, which does not split (H200,
  fp16, one head, Sq 8, D64: Hopper 6.8e-4 / 2.4e-3 / 1.0e-2 at Sk 1M / 4M / 16M, portable
  1.3e-3 / 4.8e-3 / 2.0e-2 like cuDNN's): a bias of the tensor cores' accumulation into an O
  that grows with the keys, which a shorter chain bounds. Split to 64k keys a chain, with the
  partials merged in float32, both kernels gave 2.9-3.1e-4 at every length, the output's own
  rounding (FlashAttention 2: 2.9-3.4e-4): docs/results/2026-12-04-h200-v38-limits-sweep.
"""

from __future__ import annotations

import threading

MAX_SPLITS = 128          # attention_kvcache's num_splits, and the fill rules'
MAX_CHAIN_KEYS = 1 << 16  # keys one CTA's accumulators sum in a dense call (past them: split)
MAX_DENSE_SPLITS = 1024   # 64M keys at MAX_CHAIN_KEYS
WORKSPACE_BYTES = 1 << 30  # a dense call's partials at most (past them it splits less)


def choose_splits(ctas: int, key_tiles: int, slots: int) -> int:
    """Split-KV's key ranges per (query tile, head, batch), for a grid of `ctas` on a GPU that
    runs `slots` such CTAs at once: the fewest splits whose waves are within 95 % of the best
    filled (a last wave that leaves most slots idle costs as much as a full one; at 90 % the
    H200's B1 Sk 128k decode took 15 splits of 8 tiles, 120 of 132 SMs, 0.92x cuDNN), each range
    at least two key tiles, at most MAX_SPLITS. A grid of a wave or more takes one."""
    if ctas >= slots:
        return 1
    top = max(1, min(key_tiles // 2, MAX_SPLITS))

    def filled(n: int) -> float:
        total = ctas * n
        return total / (-(-total // slots) * slots)

    best = max(filled(n) for n in range(1, top + 1))
    return next(n for n in range(1, top + 1) if filled(n) >= 0.95 * best)


def sm90_splits(tiles: int, key_tiles: int, num_sms: int) -> int:
    """The Hopper decode's split-KV ranges per tile: enough that the CTAs fill half the SMs,
    (num_sms // 2) // tiles, each range at least two key tiles, at most MAX_SPLITS. Half the
    H200's SMs already stream its DRAM's bandwidth, and each split more costs its partials, the
    merge and a CTA's start (v37, CUDA graphs, fp16: B8 Sk 8k's 64 tiles 67.3 us unsplit against
    71.8 with 2 splits and 94.9 with 16; B1 Sk 128k's 8 tiles 135.6 us with 8 splits against
    143.3 with 16 and 209.5 with 4; cuDNN 70.8 and 131.6)."""
    return max(1, min((num_sms // 2) // tiles, key_tiles // 2, MAX_SPLITS))


def resident_ctas(config, arch: str) -> int:
    """CTAs of `config` an SM holds at once: by shared memory (1 KB a CTA reserved) and by
    registers at the kernels' bound of 255 a thread."""
    from .configs import SMEM_LIMIT

    by_smem = (SMEM_LIMIT[arch] + 1024) // (config.smem_bytes + 1024)
    by_regs = 65536 // (256 * config.threads)
    return max(1, min(by_smem, by_regs, 32))


def chain_keys(seqlen_k: int, window: tuple[int, int], block_m: int) -> int:
    """The most keys one tile of block_m query rows sees: Sk, or where a window bounds both
    sides (left, right >= 0) its span over the tile's rows."""
    left, right = window
    if left >= 0 and right >= 0:
        return min(seqlen_k, left + right + block_m)
    return seqlen_k


def chain_splits(chain: int, split_bytes: int, most: int) -> int:
    """The ranges that keep each within MAX_CHAIN_KEYS of a tile's `chain` keys: at most `most`,
    and fewer where the partials (split_bytes a split) would pass WORKSPACE_BYTES."""
    return max(1, min(-(-chain // MAX_CHAIN_KEYS), most, WORKSPACE_BYTES // max(split_bytes, 1)))


def dense_splits(chain: int, block_n: int, tiles: int, slots: int, split_bytes: int) -> int:
    """A dense call's split-KV ranges per tile: one while a tile's rows see at most
    MAX_CHAIN_KEYS keys (chain: chain_keys); past that enough that each range is within it, and
    at least choose_splits' fill of `slots` by `tiles`; fewer where the partials (split_bytes
    a split) would pass WORKSPACE_BYTES."""
    if chain <= MAX_CHAIN_KEYS:
        return 1
    splits = max(-(-chain // MAX_CHAIN_KEYS), choose_splits(tiles, -(-chain // block_n), slots))
    return chain_splits(splits * MAX_CHAIN_KEYS, split_bytes, MAX_DENSE_SPLITS)


class Workspace:
    """A split launch's float32 partials (splits x o_elements and splits x lse_elements) and its
    zeroed counters (the kernel zeroes each again after its merge), one set per stream: a call's
    kernels run in its stream's order, two streams' at once need their own. Allocated on a
    stream's first call (with `out=` given a later call allocates nothing: graph capture)."""

    def __init__(self, splits: int, o_elements: int, lse_elements: int, counters: int):
        self.splits, self.o_elements, self.lse_elements, self.counters = splits, o_elements, lse_elements, counters
        self._spaces: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def get(self, stream: int) -> tuple:
        """(o partials, LSE partials, counters) for the stream handle `stream`."""
        found = self._spaces.get(stream)
        if found is None:
            import cupy
            import numpy as np

            with self._lock:
                found = self._spaces.get(stream) or self._spaces.setdefault(stream, (
                    cupy.empty(self.splits * self.o_elements, np.float32),
                    cupy.empty(self.splits * self.lse_elements, np.float32),
                    cupy.zeros(max(self.counters, 1), np.int32)))
        return found
