"""The values inside the inference ops' device metadata (cu_seqlens, cache_seqlens, block_table):
read on the host only where a call asks for it, since reading them syncs with the device.

The kernels clamp them (kernels/sequence.cuh says how), so a bad value never makes an access
outside the arrays; with FLASHCORE_CUPY_CHECK_METADATA=1 in the environment the ops check them
here first and raise a ValueError that names the array.
"""

from __future__ import annotations

import os

import numpy as np

ENV = "FLASHCORE_CUPY_CHECK_METADATA"


def checking() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def longest(cu_seqlens) -> int:
    """The longest sequence of prefix sums on the device (a sync), decreasing steps as 0."""
    cu = cu_seqlens.get().astype(np.int64)
    return int(max(0, np.diff(cu).max(initial=0)))


def check_offsets(cu_seqlens, name: str, total: int, max_seqlen: int | None) -> None:
    """Prefix sums from 0, non-decreasing, within the `total` packed rows, no step over max_seqlen."""
    cu = cu_seqlens.get().astype(np.int64)
    if cu[0] != 0:
        raise ValueError(f"{name}[0] is {cu[0]}; expected 0 ({ENV})")
    steps = np.diff(cu)
    if (steps < 0).any():
        at = int(np.argmax(steps < 0))
        raise ValueError(f"{name} decreases at index {at + 1} ({cu[at]} -> {cu[at + 1]}) ({ENV})")
    if cu[-1] > total:
        raise ValueError(f"{name}[-1] is {cu[-1]}, past the {total} packed rows ({ENV})")
    if max_seqlen is not None and steps.size and steps.max() > max_seqlen:
        raise ValueError(f"{name} has a sequence of {steps.max()} rows, over the hint {max_seqlen} ({ENV})")


def check_cache(cache_seqlens, block_table, num_pages: int, page_size: int, capacity: int, n_new: int) -> None:
    """Every sequence's keys after the append within its capacity, and (paged) the pages they use
    inside the pool."""
    used = cache_seqlens.get().astype(np.int64)
    if (used < 0).any():
        raise ValueError(f"cache_seqlens has a negative entry at index {int(np.argmax(used < 0))} ({ENV})")
    over = used + n_new > capacity
    if over.any():
        b = int(np.argmax(over))
        raise ValueError(f"cache_seqlens[{b}] + {n_new} new keys = {used[b] + n_new}, past the {capacity} keys a "
                         f"sequence's cache holds ({ENV})")
    if block_table is not None:
        table = block_table.get()
        for b, n in enumerate(used + n_new):
            pages = table[b, :-(-int(n) // page_size)]
            bad = (pages < 0) | (pages >= num_pages)
            if bad.any():
                raise ValueError(f"block_table[{b}, {int(np.argmax(bad))}] is {pages[bad][0]}, outside the "
                                 f"{num_pages} pages of k_cache ({ENV})")
