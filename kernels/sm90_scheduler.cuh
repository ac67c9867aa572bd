// The Hopper forward kernel's tile scheduler: which work tile a CTA's i-th item is. Its Python
// mirror is flashcore_cupy/configs.py's Sm90Config.work_tile (and schedule, which sets the
// launch's tail_start, items and group); the GPU tests compare the two through the
// FLASHCORE_RECORD_WORK build.
#pragma once
#include "mask.cuh"
#include "params_sm90.cuh"
#include "sequence.cuh"
#include "split_kv.cuh"
#include "variant.cuh"

namespace fc {

// Work item i of the CTA's turn. Tile t is BLOCK_M query rows (64 * CONSUMERS, or
// 64 with SPLIT) of one (head, batch); tiles are numbered by groups of `group` heads,
// so the CTAs running at once share few heads' K/V in L2 (numbering across all heads
// first cost 5-7 % at S = 16k: every head's K/V in flight at once), and within a group
// longest first (m_block descending, the group's heads in turn: causal rows that see
// the most keys start first, and a group's shortest tiles fill the gaps at its end;
// the host picks group = 1 for non-causal problems, see Sm90Config.schedule). Items are dealt
// round-robin to the CTAs; with one CTA per SM the grid is persistent and a CTA's
// next item loads while it stores the current one (the host launches causal
// problems with one CTA per tile instead: see Sm90Config.schedule).
// Items from tail_start on are the last tiles split into one 64-row sub-tile per
// consumer: when the tiles leave a partial last round, that round runs on every
// SM with one consumer each instead of on a few with all of them. A sub-tile is
// worked by consumer 0 alone, as are a tile's rows past Sq by nobody.
// A variant's tiles (V not Plain) run the key tiles of its rows' window: first, first + 1, ...
// (or from the last down: WorkTile::key_tile).
// A KV cache's (S = KvCache<...>, plain only) see their own sequence's keys (seqlen_k, read from
// seqused_k per item). With split-KV (S::kSplitKV: a cache's, or DenseSplit's) item i is split
// i % splits of tile i / splits: its share of the tile's key tiles (or its window's), from first.
// Packed sequences (S = Varlen, no bias): see varlen_item; a tile's rows, keys and masks are its
// sequence's, at rows q_row0 and k_row0 of the packed q and k.
struct WorkTile {
    int row0, head, batch;
    int consumers;           // consumers with rows here (the first ones)
    int n_blocks;            // key tiles of those rows (causal: up to the diagonal)
    int first;               // the first of them (a variant's window, a split's share; else 0)
    int seqlen_k;            // the keys of this tile's sequence (dense: p.seqlen_k)
    int split;               // split-KV: which share (else 0)
    int seqlen_q;            // the queries of this tile's sequence (dense: p.seqlen_q)
    int q_row0, k_row0;      // varlen: the sequence's first row in q (and o) and in k, v; else 0

    // The key tile of a work tile's step j: first + j, or with V::kDescending (variant.cuh) the
    // last one down.
    template <class V>
    __device__ __forceinline__ int key_tile(int j) const { return V::kDescending ? first + n_blocks - 1 - j : first + j; }
};

// Packed sequences: item i is the u-th of sequence `batch`'s ceil(Sq_b / BLOCK_M) * heads items
// (the sequences' items in order; within one, its last row block first, the heads in turn, as a
// dense group's); batch -1 past the last sequence's. The calling warp's every lane takes part: a
// warp-wide scan of 32 sequences' item counts a step.
struct VarlenItem { int batch, u; };
template <class Tile>
__device__ __forceinline__ VarlenItem varlen_item(const Sm90Params& p, int i) {
    const int lane = threadIdx.x % 32;
    int before = 0;   // the items of the sequences before this step's 32
    for (int b0 = 0; b0 < p.batch; b0 += 32) {
        const int b = b0 + lane;
        const int items = b < p.batch ? (seq_span<Varlen>(p, b).seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM * p.heads : 0;
        int upto = items;   // inclusive prefix sum over the lanes
        #pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            const int x = __shfl_up_sync(0xffffffffu, upto, d);
            if (lane >= d) upto += x;
        }
        const u32 past = __ballot_sync(0xffffffffu, before + upto > i);
        if (past != 0) {
            const int at = __ffs(past) - 1;
            return {b0 + at, i - before - __shfl_sync(0xffffffffu, upto - items, at)};
        }
        before += __shfl_sync(0xffffffffu, upto, 31);
    }
    return {-1, 0};
}

template <class Tile, int BLOCK_N, class V = Plain, class S = Dense>
__device__ __forceinline__ WorkTile work_tile(const Sm90Params& p, int i) {
    static_assert(S::kDense || S::kVarlen || (S::kCache && V::kPlain),
                  "the Hopper kernel: dense batches, packed sequences, or a plain KV cache");
    constexpr int C = Tile::kConsumers;
    if constexpr (S::kVarlen) {
        static_assert(!Tile::kSplit, "varlen: whole tiles (64 rows a consumer)");
        const VarlenItem at = varlen_item<Tile>(p, i);
        if (at.batch < 0) return WorkTile{0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0};   // past the sequences' items
        const SeqSpan span = seq_span<S>(p, at.batch);
        const int m_desc = p.by_heads(at.u), m_blocks = (span.seqlen_q + Tile::kBlockM - 1) / Tile::kBlockM;
        const int row0 = (m_blocks - 1 - m_desc) * Tile::kBlockM, rows = min(Tile::kBlockM, span.seqlen_q - row0);
        WorkTile w{row0, at.u - m_desc * p.heads, at.batch, (rows + 63) / 64, 0, 0, span.seqlen_k, 0,
                   span.seqlen_q, span.q_row0, span.k_row0};
        if constexpr (V::kPlain) {
            const int kv_end = FC_KEY_END(span.seqlen_k, span.seqlen_k - span.seqlen_q, p.causal, row0, rows);
            w.n_blocks = kv_end > 0 ? FC_KEY_TILES(BLOCK_N, kv_end) : 0;
        } else {   // the window's key tiles, aligned bottom-right in the sequence (seq_score_mod's)
            const SeqWindow win{span.seqlen_k, span.seqlen_k - span.seqlen_q, p.win_left, p.win_right};
            const TileRange tiles = window_tiles(win, BLOCK_N, row0, rows);
            w.first = tiles.first;
            w.n_blocks = max(tiles.end, tiles.first) - tiles.first;
        }
        return w;
    }
    int split = 0;
    if constexpr (S::kSplitKV) {
        split = i % p.splits;
        i /= p.splits;
    }
    const bool sub = i >= p.tail_start;   // never with SPLIT (its tiles are 64 rows)
    const int t = sub ? p.tail_start + (i - p.tail_start) / C : i;
    const int g = p.by_group_tiles(t), in_group = t - g * p.group * p.m_blocks;
    const int m_desc = p.by_group(in_group);
    const int head_batch = g * p.group + in_group - m_desc * p.group, batch = p.by_heads(head_batch);
    const int row0 = (p.m_blocks - 1 - m_desc) * Tile::kBlockM + (sub ? 64 * ((i - p.tail_start) % C) : 0);
    const int rows = max(0, min(sub ? 64 : Tile::kBlockM, p.seqlen_q - row0));
    const int consumers = Tile::kSplit ? (rows > 0 ? C : 0) : (rows + 63) / 64;
    const int seqlen_k = S::kCache ? cache_keys(p, batch) : p.seqlen_k;
    WorkTile w{row0, head_batch - batch * p.heads, batch, consumers, 0, 0, seqlen_k, split, p.seqlen_q, 0, 0};
    if constexpr (!V::kPlain) {
        const TileRange tiles = window_tiles(p, BLOCK_N, row0, rows);
        w.first = rows > 0 ? tiles.first : 0;
        int end = rows > 0 ? max(tiles.end, tiles.first) : 0;
        if constexpr (S::kSplitKV) {
            split_share(w.first, end, split, p.splits);
            end = max(end, w.first);
        }
        w.n_blocks = end - w.first;
    } else {
        const int kv_end = FC_KEY_END(seqlen_k, seqlen_k - p.seqlen_q, p.causal, row0, rows);
        int end = rows > 0 && kv_end > 0 ? FC_KEY_TILES(BLOCK_N, kv_end) : 0;
        if constexpr (S::kSplitKV) {
            split_share(w.first, end, split, p.splits);
            end = max(end, w.first);
        }
        w.n_blocks = end - w.first;
    }
    return w;
}

// Dynamic deal (S = Varlen, whose tiles differ in length and number many per SM; dense problems
// in the probe build -DFLASHCORE_DYNAMIC, scripts/dev/schedule_probe.py): on a persistent grid a
// CTA's first item is blockIdx.x, each next one p.tile_counter[0]++ + gridDim.x, fetched by the
// producer a work tile ahead (as it starts loading the current one; published once those loads
// are issued) and handed to the consumers through two shared slots: the m-th fetched item (m from
// 0) in slot m % 2, published on full(m % 2) and released by every consumer warp on empty(m % 2).
// The slots and their barriers (40 bytes) follow the kernel's barriers (Sm90Tile::kOffItems;
// configs.Sm90FwdConfig.smem_bytes counts them). The producer that fetches past the items counts
// its CTA done in p.tile_counter[1]; the last CTA done zeroes both for the next launch (one
// launch at a time per counter: the host keeps a pair per stream). One producer thread issues
// (a varlen producer's warp runs along, lane 0 fetching and publishing).
template <class S>
__device__ constexpr bool dynamic_deal() {
#ifdef FLASHCORE_DYNAMIC
    return true;
#else
    return S::kVarlen;
#endif
}

constexpr u32 kItemSlotBytes = 40;   // the slots and their barriers (configs.SM90_ITEM_SLOT_BYTES)
struct ItemSlots {
    u32 at;   // full(0), full(1), empty(0), empty(1), then the two items (shared memory)
    __device__ u32 full(int s) const { return at + 8 * s; }
    __device__ u32 empty(int s) const { return at + 8 * (2 + s); }
    __device__ u32 item(int s) const { return at + 32 + 4 * s; }

    __device__ __forceinline__ void init(int consumer_warps) const {
        for (int s = 0; s < 2; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), consumer_warps);
        }
    }

    // Producer: the CTA's next item from the counter (fetched as a tile starts: the thread waits
    // for it only where publish stores it, after issuing the tile's loads).
    __device__ __forceinline__ int fetch(int* counter) const {
        return atomicAdd(counter, 1) + static_cast<int>(gridDim.x);
    }

    // Producer: publish `next` as the CTA's m-th fetched item.
    __device__ __forceinline__ int publish(int next, int m) const {
        const int s = m % 2;
        if (m >= 2) mbar_wait(empty(s), ((m - 2) / 2) & 1);
        asm volatile("st.shared.u32 [%0], %1;" :: "r"(item(s)), "r"(next) : "memory");
        mbar_arrive(full(s));   // release: the store is visible to the waiters
        return next;
    }

    // Consumer: the CTA's m-th fetched item (every lane waits; lane 0 of each warp releases it).
    __device__ __forceinline__ int take(int m, int lane) const {
        const int s = m % 2;
        mbar_wait(full(s), (m / 2) & 1);
        int next;
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(next) : "r"(item(s)) : "memory");
        __syncwarp();
        if (lane == 0) mbar_arrive(empty(s));
        return next;
    }
};

// The producer's last act: this CTA has fetched past the items; the last CTA zeroes the counters.
__device__ __forceinline__ void items_done(int* counter) {
    __threadfence();
    if (atomicAdd(counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
        counter[0] = 0;
        counter[1] = 0;
        __threadfence();
    }
}

#ifdef FLASHCORE_RECORD_WORK
// Diagnostic build (-DFLASHCORE_RECORD_WORK=<items>; tests/test_attention_gpu.py): for work item
// i (< items), the tile the consumers were given: CTA, row0, head, batch, consumers, n_blocks,
// the item's place in its CTA's turn, and its first key tile. The host compares it with Sm90Config.work_tile,
// the Python schedule the CPU tests hold to their rules. C linkage: the host reads it by name.
extern "C" __device__ int fc_work_log[FLASHCORE_RECORD_WORK][8];
#endif

}  // namespace fc
