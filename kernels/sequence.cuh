// Where a kernel's sequences are: the sequence policy (S) the forward kernel is instantiated
// with, beside its variant (V). The specs are flashcore_cupy/reference.py's `attention`,
// `attention_varlen` and `attention_kvcache`:
//
//   Dense          every batch entry Sq queries x Sk keys of (batch, head, seq) strided arrays
//   DenseSplit     Dense with split-KV: a tile's keys in `splits` ranges, each a CTA's, their
//                  float32 partials merged by the tile's last (split_kv.cuh): a long Sk's
//                  (flashcore_cupy/split.py), which bounds the keys one accumulator sums
//   Varlen         packed sequences: batch b's queries are rows cu_seqlens_q[b] .. [b + 1] of
//                  q and o (seq strides; no batch stride), its keys rows cu_seqlens_k[b] ..
//                  [b + 1] of k and v
//   KvCache<PAGING> a KV cache: batch b's keys are its first seqused_k[b] + new_keys positions,
//                  of a (B, S_max) cache (kContiguous) or of the pages block_table[b][t / page_size]
//                  (slot t % page_size) of a (num_pages, page_size) pool: gathered row by row
//                  (kCachePageRows: the portable kernel's loads; the Hopper kernel's cp.async
//                  where its pages are not TMA boxes that tile a key tile), or a key tile at a
//                  time where every tile lies in one page (kCachePageTiles: page_size a
//                  multiple of the tile's keys; on the Hopper kernel, any page a box tiles)
//
// Masks align bottom-right within each sequence (off = Sk_b - Sq_b). Values read on the
// device are clamped so that no access leaves the arrays (the host checks them only with
// FLASHCORE_CUPY_CHECK_METADATA=1):
//   - offsets clamp into [0, rows of the array], and an end before its start gives an empty
//     sequence (decreasing cu_seqlens);
//   - a cache sequence's keys clamp into [0, the positions a sequence can hold];
//   - a page index outside [0, num_pages) reads as zeros and is not written.
#pragma once
#include "mma_sm80.cuh"
#include "variant.cuh"

namespace fc {

// kSplitKV: item i of a grid's x is split i % splits of its tile (p.splits, p.o_accum).
struct Dense {
    static constexpr bool kDense = true, kVarlen = false, kCache = false, kPaged = false, kPageTiles = false;
    static constexpr bool kSplitKV = false;
};
struct DenseSplit : Dense {
    static constexpr bool kSplitKV = true;
};
struct Varlen {
    static constexpr bool kDense = false, kVarlen = true, kCache = false, kPaged = false, kPageTiles = false;
    static constexpr bool kSplitKV = false;
};
enum Paging { kCacheContiguous = 0, kCachePageRows = 1, kCachePageTiles = 2 };
template <int PAGING>
struct KvCache {
    static constexpr bool kDense = false, kVarlen = false, kCache = true;
    static constexpr bool kPaged = PAGING != kCacheContiguous, kPageTiles = PAGING == kCachePageTiles;
    static constexpr bool kSplitKV = true;
};

// One batch entry's sequence: its lengths, and its first row in q / o and in k / v (varlen).
struct SeqSpan {
    int seqlen_q, seqlen_k;
    int q_row0, k_row0;
};

// The keys of cache sequence `batch` after this call's append: seqused_k[b] + new_keys, at most
// the positions it can hold (p.seqlen_k). The append writes positions [seqused, this).
template <class P>
__device__ __forceinline__ int cache_used(const P& p, int batch) {
    return min(max(p.seqused_k[batch], 0), p.seqlen_k);
}
template <class P>
__device__ __forceinline__ int cache_keys(const P& p, int batch) {
    return min(cache_used(p, batch) + p.new_keys, p.seqlen_k);
}

// Where position `key` of paged cache sequence `batch` lives (key < p.seqlen_k): its page and
// slot, through block_table; page -1 where the index is outside the pool (nothing read or
// written there).
struct CachePage { int page, slot; };
template <class P>
__device__ __forceinline__ CachePage table_page(const P& p, int batch, int n, int slot) {   // n = key / page_size
    const int page = p.block_table[batch * p.bt_sb + n];
    if (page < 0 || page >= p.num_pages) return {-1, 0};
    return {page, slot};
}
template <class P>
__device__ __forceinline__ CachePage cache_page(const P& p, int batch, int key) {
    const int n = key / p.page_size;
    return table_page(p, batch, n, key - n * p.page_size);
}

// The element offset of position `key` of cache sequence `batch` (key < p.seqlen_k) for a
// cache of strides (batch or page, seq or slot); -1 where cache_page finds no page.
template <bool PAGED, class P>
__device__ __forceinline__ i64 cache_offset(const P& p, int batch, int key, i64 sb, i64 ss) {
    if constexpr (!PAGED) {
        return batch * sb + key * ss;
    } else {
        const CachePage at = cache_page(p, batch, key);
        return at.page < 0 ? -1 : at.page * sb + at.slot * ss;
    }
}

// Row `row` of a GQA-packed tile (KV cache, pack > 1: the pack query heads of one kv head share
// its K/V tiles): query row / pack of query head head0 + row % pack.
struct PackedRow { int query, head; };
__device__ __forceinline__ PackedRow packed_row(int row, int pack, int head0) {
    return {row / pack, head0 + row % pack};
}

template <class S, class P>
__device__ __forceinline__ SeqSpan seq_span(const P& p, int batch) {
    if constexpr (S::kVarlen) {
        const int q0 = min(max(p.cu_seqlens_q[batch], 0), p.seqlen_q);
        const int q1 = min(max(p.cu_seqlens_q[batch + 1], q0), p.seqlen_q);
        const int k0 = min(max(p.cu_seqlens_k[batch], 0), p.seqlen_k);
        const int k1 = min(max(p.cu_seqlens_k[batch + 1], k0), p.seqlen_k);
        return {q1 - q0, k1 - k0, q0, k0};
    } else if constexpr (S::kCache) {
        return {p.seqlen_q, cache_keys(p, batch), 0, 0};
    } else {
        return {p.seqlen_q, p.seqlen_k, 0, 0};
    }
}

// A variant's score state for (batch, head) of sequence `seq` (seq_span's): its masks aligned
// bottom-right in that sequence where the policy packs or caches sequences (dense: the call's).
template <class V, class S, class P>
__device__ __forceinline__ ScoreMod seq_score_mod(const P& p, int batch, int head, const SeqSpan& seq) {
    ScoreMod mod = score_mod<V>(p, batch, head);
    if constexpr (!S::kDense) {
        mod.seqlen_q = seq.seqlen_q;
        mod.seqlen_k = seq.seqlen_k;
        mod.diag = seq.seqlen_k - seq.seqlen_q;
    }
    return mod;
}

}  // namespace fc
