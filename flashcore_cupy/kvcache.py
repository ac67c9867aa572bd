"""attention_kvcache: new queries against a KV cache, contiguous or paged, with the new keys and
values appended in place first (flash_attn's flash_attn_with_kvcache), and split-KV.

The spec is `flashcore_cupy.reference.attention_kvcache`. A call is up to three launches on
CuPy's current stream: the append (kernels/kvcache_append.cu), a forward kernel with the KvCache
sequence policy (kernels/sequence.cuh: the Hopper kernel for a plain decode step on sm_90, see
sm90_cache_plan, else the portable one); where the keys are split (split.py), each tile's last
split merges the float32 partials (kernels/split_kv.cuh). No host sync; the partials' workspace
is allocated on a signature's first call on a stream and reused after it, so with `out=` given a
later call allocates nothing but its LSE and can be captured in a CUDA graph.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np

from . import api, metadata, tma
from .api import _as_device_array, _spec
from .configs import (SM90_ARCH, SM90_HEAD_DIMS, AppendConfig, Sm90FwdConfig, choose_sm80_config, fold_heads_batch,
                      seq_config, sm90_cache_config)
from .launch import (AppendLaunch, Sm80SeqLaunch, Sm90SeqLaunch, fast_divisor, problem_scalars, sequence_scalars,
                     sm90_cache_map_specs, sm90_scalars, variant_scalars)
from .params import stride_values
from .split import MAX_SPLITS, Workspace, chain_splits, choose_splits, resident_ctas, sm90_splits
from .validation import CacheLayout, Problem, check_kvcache, check_no_overlap, check_out, layout_strides

_lock = threading.Lock()


def attention_kvcache(q: Any, k_cache: Any, v_cache: Any, *, cache_seqlens: Any, block_table: Any = None,
                      k_new: Any = None, v_new: Any = None, causal: bool = False, scale: float | None = None,
                      window: tuple[int, int] | None = None, softcap: float = 0.0, alibi_slopes: Any = None,
                      num_splits: int = 0, return_lse: bool = False, out: Any = None):
    """Attention of q over each sequence's cached keys, after appending k_new and v_new.

    q: (B, Sq, Hq, D), Sq >= 1 (decode, speculative verification, chunked prefill). The caches:
    (B, S_max, Hkv, D), or paged (num_pages, page_size, Hkv, D) with block_table int32
    (B, pages per sequence): sequence b's position t is in page block_table[b, t // page_size],
    slot t % page_size (any page size). cache_seqlens: int32 (B,), the keys already cached.
    k_new, v_new: (B, Sn, Hkv, D), written in place at positions cache_seqlens[b] .. + Sn - 1
    (cache_seqlens itself is not changed); query i then sees the cache_seqlens[b] + Sn keys, the
    causal mask (bool) and window aligned bottom-right. softcap, alibi_slopes as in `attention`.
    num_splits: 0 chooses how many key ranges each (query tile, head) is split into (split-KV, a
    merge of float32 partials after); n forces n.
    Values on the device are not checked (that would sync): a sequence's keys past what it can
    hold are dropped (not appended, not attended), a page index outside the pool reads as zeros
    and is not written, a negative cache_seqlens counts as 0; FLASHCORE_CUPY_CHECK_METADATA=1
    checks them on the host first (a sync).
    Returns out (B, Sq, Hq, D) in q's dtype (out=: a C-contiguous buffer of that shape), and
    with return_lse the float32 LSE (B, Hq, Sq)."""
    sig = _signature(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, alibi_slopes, out,
                     (causal, type(scale), scale, window, type(softcap), softcap, type(num_splits), num_splits,
                      type(return_lse), return_lse))
    try:
        call = _calls.get(sig) if sig is not None else None
    except TypeError:   # an unhashable option: validation names it
        sig = call = None
    arrays = dict(cache_seqlens=cache_seqlens, block_table=block_table, k_new=k_new, v_new=v_new,
                  alibi_slopes=alibi_slopes)
    if call is not None and out is not None and api._out_overlaps(call[3], tuple(
            0 if a is None else a.data.ptr for a in (q, k_cache, v_cache, k_new, v_new)), out):
        call = None   # out= over an input: validation raises, naming both
    if call is None:
        q, k_cache, v_cache, out, arrays, call = _prepare(q, k_cache, v_cache, out, arrays, causal, scale, window,
                                                          softcap, num_splits, return_lse)
        if sig is not None:
            with _lock:
                if len(_calls) > 1024:
                    _calls.clear()
                _calls[sig] = call
    plan, layout, n_new, _ = call
    import cupy

    with cupy.cuda.Device(q.data.device_id):
        if metadata.checking():
            metadata.check_cache(arrays["cache_seqlens"], arrays["block_table"], layout.num_pages,
                                 layout.page_size, layout.capacity, n_new)
        stream = cupy.cuda.get_current_stream()
        out = cupy.ndarray(q.shape, q.dtype) if out is None else out
        lse = cupy.ndarray(plan.lse_shape, np.float32) if return_lse else None
        plan.run(q, k_cache, v_cache, out, lse, arrays, stream)
    return (out, lse) if return_lse else out


def _signature(q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, alibi_slopes, out,
               options: tuple) -> tuple | None:
    """A call's key for the fast path (everything validation looked at but the addresses:
    shapes, strides, dtypes and devices of every array, the options), None when it is not for
    it (an array that is not a CuPy one, a 16-bit array's address off 16 bytes). A C-contiguous
    array's strides stand as True (its shape decides them), as api._signature's."""
    nd = api._NDARRAY
    key = []
    for i, a in enumerate((q, k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, alibi_slopes, out)):
        if a is None:
            key.append(None)
            continue
        if type(a) is not nd:
            return None
        data = a.data
        if i in (0, 1, 2, 5, 6, 8) and data.ptr & api._ALIGN_MASK:
            return None
        key.append((a.shape, a._c_contiguous or a.strides, a.dtype, data.device_id))
    return (*key, options)


def _prepare(q, k_cache, v_cache, out, arrays: dict, causal, scale, window, softcap, num_splits, return_lse):
    """The first call of a signature: every check (naming the argument), then its plan; returns
    the arrays as device arrays and (plan, layout, new keys)."""
    q, k_cache, v_cache = (_as_device_array(a, n) for a, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")))
    arrays = {n: None if a is None else _as_device_array(a, n) for n, a in arrays.items()}
    if arrays["cache_seqlens"] is None:
        raise ValueError("cache_seqlens is required: an int32 (B,) CUDA array")
    specs = {n: None if a is None else _spec(a, n) for n, a in arrays.items()}
    problem, layout, n_new = check_kvcache(
        _spec(q, "q"), _spec(k_cache, "k_cache"), _spec(v_cache, "v_cache"), specs["cache_seqlens"],
        specs["block_table"], specs["k_new"], specs["v_new"], causal=causal, scale=scale, window=window,
        softcap=softcap, alibi_slopes=specs["alibi_slopes"])
    if isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer)) or not 0 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be an int from 0 (automatic) to {MAX_SPLITS}, got {num_splits!r}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if out is not None:
        out = _as_device_array(out, "out")
        check_out(_spec(out, "out"), problem)
        if not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous, got strides {out.strides} (bytes)")
    # what the launches write (out; the caches where keys are appended) against what they read
    caches = [_spec(k_cache, "k_cache"), _spec(v_cache, "v_cache")]
    check_no_overlap([None if out is None else _spec(out, "out"), *(caches if n_new else [])],
                     [_spec(q, "q"), *(specs[n] for n in ("cache_seqlens", "block_table", "k_new", "v_new",
                                                          "alibi_slopes")), *([] if n_new else caches)])
    new_strides = {} if not n_new else {**stride_values("kn", layout_strides(specs["k_new"], "bshd")),
                                        **stride_values("vn", layout_strides(specs["v_new"], "bshd"))}
    import cupy

    with cupy.cuda.Device(problem.device):
        plan = _plan(problem, layout, n_new, int(num_splits), tuple(sorted(new_strides.items())))
    spans = None if out is None else api._relative_spans(q, k_cache, v_cache, arrays["k_new"], arrays["v_new"], out)
    return q, k_cache, v_cache, out, arrays, (plan, layout, n_new, spans)


# Validated signatures (_signature) -> (plan, layout, new keys, the arrays' relative byte spans
# with out=): a later call with the same one skips validation.
_calls: dict[tuple, tuple] = {}


class _Plan:
    """One call signature's launches: the append and the attention, and (split) the partials'
    workspace per stream. The attention runs on the Hopper kernel where sm90_cache_plan takes
    the call, else on the portable one."""

    def __init__(self, problem: Problem, layout: CacheLayout, n_new: int, num_splits: int,
                 new_strides: tuple[tuple[str, int], ...]):
        p = problem
        dev = api.device_info(p.device)
        b, sq, hq, d = p.batch, p.seqlen_q, p.heads_q, p.head_dim
        hopper = sm90_cache_plan(p, layout, dev.arch)
        if hopper is not None:
            config, pack = hopper
            m_blocks = 1 if pack > 1 else math.ceil(sq / config.block_m)
            slots = dev.num_sms   # a CTA takes an SM's registers
        else:
            # GQA: the query heads of a kv head share a tile (rows (query, head)), so K/V stream
            # once per kv head; ALiBi's slope is per head, so it keeps a head a tile
            pack = p.heads_q // p.heads_kv if p.variant.alibi is None else 1
            rows = sq * pack
            base = choose_sm80_config(dev.arch, p.dtype, d, b * hq // pack, rows, dev.num_sms)
            config = seq_config(base, "paged" if layout.paged else "cache", p.kernel_variant, rows, dev.arch)
            if layout.paged and layout.page_size % config.block_n == 0:   # every key tile in one page
                config = dataclasses.replace(config, seq="paged_tiles")
            m_blocks = math.ceil(rows / config.block_m)
            slots = dev.num_sms * resident_ctas(config, dev.arch)
        tiles = m_blocks * (hq // pack) * b
        self.config = config
        key_tiles = math.ceil(layout.capacity / config.block_n)
        # Hopper: half the SMs stream the DRAM, but a tile of pages smaller than it (a TMA box
        # and a lookup a page, from one lane) streams at about half a CTA's speed: those fill them,
        # as do gathered pages (the producer warps' 16-byte copies: 0.70x the contiguous cache at
        # page 1, v45).
        small_pages = layout.paged and (layout.page_size < config.block_n or config.seq == "paged")
        self.splits = num_splits or max(
            sm90_splits(tiles, key_tiles, dev.num_sms) if hopper is not None and not small_pages
            else choose_splits(tiles, key_tiles, slots),
            # and ranges of at most MAX_CHAIN_KEYS keys (the accumulators' precision: split.py)
            chain_splits(layout.capacity, 4 * (b * sq * hq * d + b * sq * hq), MAX_SPLITS))
        if self.splits > 1:   # partials (split, B, Sq, Hq, D) and (split, B, Sq, Hq), the output's strides
            o_strides, lse_strides = (sq * hq * d, d, hq * d), (sq * hq, 1, hq)
            split_fields = dict(o_split=b * sq * hq * d, lse_split=b * sq * hq)
        else:                 # out (B, Sq, Hq, D) C-contiguous, LSE (B, Hq, Sq)
            o_strides, lse_strides = (sq * hq * d, d, hq * d), (hq * sq, sq, 1)
            split_fields = {}
        cache = self._cache_fields(layout, n_new)
        if hopper is not None:
            heads, heads_per_kv = (p.heads_kv, 1) if pack > 1 else (hq, hq // p.heads_kv)
            # one work tile a CTA (split tiles), split i % splits of tile i / splits
            # (one query a sequence: the causal mask hides nothing; speculative rows: by query)
            causal = p.causal and (pack == 1 or sq > 1)
            # gathered pages: the pools' strides (their maps are not read)
            gather = dict(**stride_values("k", p.k_strides), **stride_values("v", p.v_strides)) \
                if config.seq == "paged" else {}
            scalars = sm90_scalars(p, o_strides, causal, heads, heads_per_kv, m_blocks, 1, tiles, tiles * self.splits,
                                   pack, **cache, by_page_size=fast_divisor(cache["page_size"]),
                                   **stride_values("lse", lse_strides), splits=self.splits, **split_fields, **gather)
            specs = sm90_cache_map_specs(p, layout.paged, layout.num_pages, layout.page_size, config, pack)
            self.attention = Sm90SeqLaunch.build_seq(config, p.device, dev.arch, (tiles * self.splits, 1, 1), scalars,
                                                     specs)
        else:
            strides = {"q": p.q_strides, "k": p.k_strides, "v": p.v_strides, "o": o_strides, "lse": lse_strides}
            scalars = {n: st for t, ts in strides.items() for n, st in stride_values(t, ts).items()}
            scalars.update(problem_scalars(p), **variant_scalars(p),
                           **sequence_scalars(splits=self.splits, pack=pack, **split_fields, **cache),
                           grid_heads=hq // pack)
            self.attention = Sm80SeqLaunch.build(config, p.device, dev.arch,
                                                 fold_heads_batch(m_blocks * self.splits, hq // pack, b), scalars)
        self.append = None
        if n_new:
            append = dict(**cache, seqlen_k=layout.capacity, batch=b, heads_kv=p.heads_kv, head_dim=d,
                          **stride_values("k", p.k_strides), **stride_values("v", p.v_strides), **dict(new_strides))
            self.append = AppendLaunch.build(AppendConfig(layout.paged), p.device, dev.arch, dev.num_sms, append)
        # Split partials: a tile's last split merges them (a counter a tile; the Hopper kernel's
        # a consumer's rows).
        counters = tiles * (config.consumers if hopper is not None else 1)
        self.workspace = Workspace(self.splits, b * sq * hq * d, b * sq * hq, counters) if self.splits > 1 else None
        self.shape = (b, sq, hq, d)
        self.lse_shape = (b, hq, sq)

    @staticmethod
    def _cache_fields(layout: CacheLayout, n_new: int) -> dict:
        return dict(new_keys=n_new, page_size=layout.page_size if layout.paged else 1,
                    num_pages=layout.num_pages if layout.paged else 0, bt_sb=layout.table_stride)

    def run(self, q, k_cache, v_cache, out, lse, arrays: dict, stream) -> None:
        ptr = lambda name: 0 if arrays[name] is None else arrays[name].data.ptr   # noqa: E731
        meta = dict(seqused_k=ptr("cache_seqlens"), block_table=ptr("block_table"))
        if self.append is not None:
            self.append.start(dict(k_new=ptr("k_new"), v_new=ptr("v_new"), k=k_cache.data.ptr, v=v_cache.data.ptr,
                                   **meta), stream.ptr)
        pointers = dict(q=q.data.ptr, k=k_cache.data.ptr, v=v_cache.data.ptr, alibi=ptr("alibi_slopes"),
                        o=out.data.ptr, lse=0 if lse is None else lse.data.ptr, k_rows=k_cache.data.ptr,
                        v_rows=v_cache.data.ptr, **meta)
        if self.splits == 1:
            self.attention.start(pointers, stream.ptr)
            return
        o_acc, lse_acc, counters = self.workspace.get(stream.ptr)
        self.attention.start(dict(pointers, o_accum=o_acc.data.ptr, lse_accum=lse_acc.data.ptr,
                                  split_count=counters.data.ptr), stream.ptr)


def sm90_gathers_pages(page_size: int, block_n: int) -> bool:
    """Whether the Hopper kernel gathers pages of page_size keys row by row (seq "paged") rather
    than load them as TMA boxes: where no box of whole pages tiles a key tile of block_n (a box
    is a multiple of 8 rows, the swizzle's period, and a page or a tile in one)."""
    return bool(page_size % 8 or (page_size % block_n and block_n % page_size))


def sm90_cache_plan(p: Problem, layout: CacheLayout, arch: str) -> tuple[Sm90FwdConfig, int] | None:
    """The Hopper kernel's config and GQA pack (query heads a tile's rows) for a KV-cache call, or
    None where it does not take it: sm_90 only, a plain problem (causal at most) of a built head
    dim; one query a sequence (decode: its GQA group of up to 64 heads packed into a tile's
    rows), or speculative rows that fit one tile (Sq x the group <= 64, the group dividing 64:
    (query, head) rows); and maps the driver takes. A paged cache's pages are TMA boxes where they
    tile the key tiles (a multiple of 8 keys that divides block_n or that block_n divides); other
    page sizes are gathered row by row (seq "paged"), where the pool's rows (page x slot: one index,
    validation holding a page's stride to page_size slots) number below 2^31."""
    if arch != SM90_ARCH or not p.kernel_variant.plain or p.head_dim > SM90_HEAD_DIMS[-1]:
        return None
    size = layout.page_size
    gather = layout.paged and sm90_gathers_pages(size, sm90_cache_config(p.dtype, p.head_dim, True).block_n)
    if gather and layout.num_pages * size >= 2 ** 31:
        return None
    config = sm90_cache_config(p.dtype, p.head_dim, layout.paged, gather)
    group = p.heads_q // p.heads_kv
    if p.seqlen_q == 1:
        pack = group if group <= 64 else 1
    elif p.seqlen_q * group <= config.block_m and config.block_m % group == 0:
        pack = group
    else:
        return None
    specs = sm90_cache_map_specs(p, layout.paged, layout.num_pages, size, config, pack)
    if any(tma.unsupported_reason(spec) for spec in specs):
        return None
    return config, pack


_plans: dict[tuple, _Plan] = {}


def _plan(problem: Problem, layout: CacheLayout, n_new: int, num_splits: int,
          new_strides: tuple[tuple[str, int], ...]) -> _Plan:
    key = (problem, layout, n_new, num_splits, new_strides)
    found = _plans.get(key)
    if found is None:
        with _lock:
            if len(_plans) > 1024:
                _plans.clear()
            found = _plans.get(key) or _plans.setdefault(key, _Plan(problem, layout, n_new, num_splits, new_strides))
    return found
