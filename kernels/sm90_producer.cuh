// The Hopper forward kernel's producer warpgroup: TMA copies of Q, K and V into the pipeline.
#pragma once
#include "diagnostics.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_scheduler.cuh"

namespace fc {

// A paged cache gathered row by row (S = KvCache<kCachePageRows>: pages that do not tile the key
// tiles, as pages of 1 key): the producer's warp copies a tile's rows in 16-byte chunks with
// cp.async into the layout TMA's boxes give (column block c / 8 of 128-byte rows, chunk c of
// row r at 16 (c % 8 ^ r % 8): the 128-byte swizzle), zero-filled past the sequence, past the
// head dim (`cols`) and where the page is outside the pool. Each lane's copies arrive on the
// slot's full barrier once they land (cp.async.mbarrier.arrive.noinc: one of the barrier's 32
// expected arrivals, gather_arrivals; v42's compute-sanitizer synccheck called the counting form,
// whose arrivals add their own pending count, a barrier overflow). rows[k]: for tile row 32 k + lane, its row of the pool as one
// (page * page_size + slot) index of slot stride ss (the host checks that a page's stride is
// page_size slots), or -1: zeros. The consumers fence the async proxy after the wait.
template <class S>
__device__ constexpr bool gathers_rows() { return S::kPaged && !S::kPageTiles; }
// Gathered pages take the producer's four warps: PRODUCERS (1, or 2: K's and V's) roles of
// 4 / PRODUCERS warps each, warp w role w % PRODUCERS copying row blocks of part w / PRODUCERS
// (one warp a role fed a slot at half a box-copied tile's speed, v44). -DFLASHCORE_GATHER_ONE_WARP:
// one warp a role, as before (probes).
template <class S, int PRODUCERS>
__device__ constexpr int gather_parts() {
#ifdef FLASHCORE_GATHER_ONE_WARP
    return 1;
#else
    return gathers_rows<S>() ? 4 / PRODUCERS : 1;
#endif
}
// A gathered slot's full barrier: each lane of the role's warps (one arrival a lane: see gather_tile).
template <class S, int PRODUCERS>
__device__ constexpr int gather_arrivals() { return 32 * gather_parts<S, PRODUCERS>(); }

// Row blocks [32 k0, 32 (k0 + BLOCKS)) of a key tile, gathered by one warp.
template <int WIDTH, int BLOCK_N, int BLOCKS>
__device__ __forceinline__ void gather_tile(u32 dst, u32 full, const u16* pool, i64 ss, i64 head_off, int cols,
                                            const int (&rows)[BLOCKS], int k0, int lane) {
    static_assert(BLOCK_N % 32 == 0, "gather: key tiles of whole 32-row blocks");
    constexpr int kChunks = (WIDTH + 63) / 64 * 8;   // a row's 16-byte chunks, in whole column blocks
    #pragma unroll
    for (int k = 0; k < BLOCKS; ++k) {   // 32 rows (lane l's rows[k] is row 32 (k0 + k) + l's)
        #pragma unroll 2
        for (int pass = 0; pass < kChunks; ++pass) {   // their 32 x kChunks chunks, a warp's 32 a pass
            const int id = pass * 32 + lane, r = id / kChunks, c = id % kChunks;
            const int at = __shfl_sync(0xffffffffu, rows[k], r);
            const bool copy = c * 8 < cols && at >= 0;
            cp_async_16(dst + ((c / 8) * BLOCK_N + 32 * (k0 + k) + r) * 128 + 16 * ((c % 8) ^ (r % 8)),
                        copy ? pool + head_off + c * 8 + static_cast<i64>(at) * ss : pool, copy ? 16 : 0);
        }
    }
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" :: "r"(full) : "memory");
}

// Producer: per work tile, Q (once the consumers released its slot's previous one: the previous
// tile's, or with two slots the one before it), then
// the K and V tiles through their rings, each slot refilled once released. With
// PRODUCERS = 1 one thread issues them all (Q, K_0, V_0, K_1, ...); with 2 the K
// thread (Q and K) and the V thread each wait only on their own releases: one thread
// makes each K load wait behind the previous V slot's release, which costs most
// where the ring is short against the keys (decode: 209 -> 119 us on an H100 with
// 2) and nothing where it holds them all (the mission kernel: 6.4 against 6.9 us).
//
// A KV cache (S = KvCache<...>): K/V tiles at their sequence's positions (the maps span each
// sequence's room; a paged cache's map is the pool, one page a "batch" entry). Paged, a tile is
// the map's boxes of min(page_size, BLOCK_N) rows, each at its page: the producer's whole warp
// runs this (PAGED_WARP), lane b looking up box b's page, and lane 0 issues the copies. A page
// index outside the pool, and positions past the sequence, load as zeros (coordinates past the
// map: TMA's fill). Pages that do not tile the key tiles (S = KvCache<kCachePageRows>) are
// gathered row by row by the warp's lanes (gather_tile).
// Packed sequences (S = Varlen): the warp runs this too (work_tile's scan is warp-wide), lane 0
// issuing; boxes at the sequence's rows of the packed tensors (the maps' one batch entry).
template <class Tile, int HEAD_DIM, int DV, int BLOCK_N, int STAGES, bool LOADS_K, bool LOADS_V, class V,
          class S = Dense, int PARTS = 1>
__device__ __forceinline__ void produce(const Sm90Params& p, u32 sbase, const Barriers<STAGES>& bar, int part = 0) {
    const int lane = threadIdx.x % 32;
    const bool issues = !(S::kPaged || S::kVarlen) || lane == 0;   // paged: the warp looks up, lane 0 copies
    constexpr bool kGather = gathers_rows<S>();   // (the warp copies: gather_tile)
    if (issues) {
        if (LOADS_K) {
            prefetch_tensor_map(&p.q);
            prefetch_tensor_map(&p.k);
        }
        if (LOADS_V) prefetch_tensor_map(&p.v);
    }
    int it = 0, n_done = 0;
    constexpr bool kDynamic = dynamic_deal<S>();   // (flash_fwd_sm90 asserts one producer thread)
    const ItemSlots items{sbase + Tile::kOffItems};
    int fetched = 0;
    for (int i = blockIdx.x; i < p.n_items; ++n_done, i = kDynamic ? fetched : i + gridDim.x) {
        const WorkTile w = work_tile<Tile, BLOCK_N, V, S>(p, i);
        if (S::kVarlen && w.batch < 0) break;   // past the sequences' items, as is every later one
        FC_ITEM(i, 0);
        int next = 0;
        if (kDynamic && issues) next = items.fetch(p.tile_counter);   // its latency under this tile's loads
        const int head_kv = p.by_heads_per_kv(w.head);
        // Paged: the page of box `lane` of key tile j (-1: none), looked up before the copies
        // wait for their slot; the copies of key tile j into ring slot `dst` of `map`, on `full`.
        // A box is a page, or a tile in one (its slot: key0 % page_size, 0 for smaller pages).
        auto lookup = [&](int j) {
            if constexpr (S::kPaged) {
                const int box = min(p.page_size, BLOCK_N), key = w.key_tile<V>(j) * BLOCK_N + lane * box;
                if (lane * box < BLOCK_N && key < w.seqlen_k) return table_page(p, w.batch, p.by_page_size(key), 0).page;
            }
            return -1;
        };
        // Gathered pages: this warp's part of the tile, row blocks k0.. (rows[k]: tile row
        // 32 (k0 + k) + lane's row of the pool; -1: none, zeros), looked up before the copies
        // wait for their slot.
        constexpr int kBlocks = BLOCK_N / 32 / PARTS;
        static_assert(BLOCK_N / 32 % PARTS == 0, "gather: whole row blocks a part");
        const int k0 = part * kBlocks;
        auto pool_rows = [&](int j, int (&rows)[kBlocks]) {
            const int key0 = w.key_tile<V>(j) * BLOCK_N;
            #pragma unroll
            for (int k = 0; k < kBlocks; ++k) {
                const int key = key0 + 32 * (k0 + k) + lane, n = p.by_page_size(key);
                const CachePage at = key < w.seqlen_k ? table_page(p, w.batch, n, key - n * p.page_size)
                                                      : CachePage{-1, 0};
                rows[k] = at.page < 0 ? -1 : at.page * p.page_size + at.slot;
            }
        };
        // (a K tile HEAD_DIM columns wide, a V tile DV: a constant `is_v` at each call)
        auto load_box = [&](bool is_v, u32 dst, const TensorMap& map, u32 full, int row0, int batch, int at = 0) {
            if (is_v) tma_load_tile<DV>(dst, map, full, BLOCK_N, row0, head_kv, batch, at);
            else tma_load_tile<HEAD_DIM>(dst, map, full, BLOCK_N, row0, head_kv, batch, at);
        };
        auto load_kv = [&](bool is_v, u32 dst, const TensorMap& map, u32 full, int j, int my_page) {
            const int key0 = w.key_tile<V>(j) * BLOCK_N;
            if constexpr (S::kPaged) {
                const int box = min(p.page_size, BLOCK_N);   // the map's box rows (host: a multiple of 8)
                const int slot = key0 - p.by_page_size(key0) * p.page_size;
                for (int b = 0; b * box < BLOCK_N; ++b) {
                    const int page = __shfl_sync(0xffffffffu, my_page, b);
                    if (issues)
                        load_box(is_v, dst, map, full, slot, page < 0 ? p.num_pages : page, b * box);
                }
            } else if (issues) {
                load_box(is_v, dst, map, full, w.k_row0 + key0, S::kVarlen ? 0 : w.batch);
            }
        };
        if (LOADS_K && part == 0) {   // (Q: one warp's)
            // Q's slot for this tile (its n_done-th), free once its previous tile's S GEMMs are done.
            const int q_slot = n_done % Tile::kQSlots, q_use = n_done / Tile::kQSlots;
            if (q_use > 0) mbar_wait(bar.q_empty(q_slot), (q_use - 1) & 1);
            // A KV cache's speculative rows (Sq > 1 with a packed GQA group): q's map has the
            // heads as its rows and the queries as its heads (kvcache.py), so one box at (the
            // group's first head, query 0) lands query-major: row r is query r / pack.
            const bool q_swapped = S::kCache && p.pack > 1 && p.seqlen_q > 1;
            if (issues) {
                mbar_expect_tx(bar.q_full(q_slot), Tile::kQBytes);
                #pragma unroll
                for (int box = 0; box < Tile::kBlockM / Tile::kQBoxRows; ++box)   // slice `box`'s first rows
                    tma_load_tile<HEAD_DIM>(sbase + q_slot * Tile::kQSlotBytes + box * 16 * 128, p.q, bar.q_full(q_slot),
                                            Tile::kQRows,
                                            q_swapped ? w.head * p.pack : w.q_row0 + w.row0 + box * Tile::kQBoxRows,
                                            q_swapped ? 0 : w.head * p.pack, S::kVarlen ? 0 : w.batch); FC_TRACE(18);
            }
            FC_ITEM(i, 1);
        }
        // K runs kKAhead tiles ahead of V: with split keys each consumer's first S needs
        // its own K tile, and with 64 CTAs loading at once (the mission shape) the L2 serves
        // the copies slowly enough that V_0 ahead of K_1 delayed consumer 1's start.
        for (int j = 0; j < w.n_blocks + Tile::kKAhead; ++j) {
            const int jk = j, jv = j - Tile::kKAhead;
            if constexpr (kGather) {   // every lane copies: see gather_tile
                int rows[kBlocks];
                if (LOADS_K && jk < w.n_blocks) {
                    const Ring<STAGES> r{it + jk};
                    pool_rows(jk, rows);
                    if (it + jk >= STAGES) mbar_wait(bar.k_empty(r.slot()), r.parity() ^ 1);
                    gather_tile<HEAD_DIM, BLOCK_N>(sbase + Tile::kOffK + r.slot() * Tile::kKBytes, bar.k_full(r.slot()),
                                                   p.k_rows, p.k_ss, head_kv * p.k_sh, p.head_dim, rows, k0, lane);
                }
                if (LOADS_V && jv >= 0) {
                    const Ring<STAGES> r{it + jv};
                    pool_rows(jv, rows);
                    if (it + jv >= STAGES) mbar_wait(bar.v_empty(r.slot()), r.parity() ^ 1);
                    gather_tile<DV, BLOCK_N>(sbase + Tile::kOffV + r.slot() * Tile::kVBytes, bar.v_full(r.slot()),
                                             p.v_rows, p.v_ss, head_kv * p.v_sh, p.head_dim_v, rows, k0, lane);
                }
                continue;
            }
            if (LOADS_K && jk < w.n_blocks) {
                const Ring<STAGES> r{it + jk};
                const int page = lookup(jk);
                if (it + jk >= STAGES) mbar_wait(bar.k_empty(r.slot()), r.parity() ^ 1);
                if (issues) mbar_expect_tx(bar.k_full(r.slot()), Tile::kKBytes);
                load_kv(false, sbase + Tile::kOffK + r.slot() * Tile::kKBytes, p.k, bar.k_full(r.slot()),
                        jk, page);
            }
            if (LOADS_V && jv >= 0) {
                const Ring<STAGES> r{it + jv};
                const int page = lookup(jv);
                if (it + jv >= STAGES) mbar_wait(bar.v_empty(r.slot()), r.parity() ^ 1); FC_TRACE(19);
                if (issues) mbar_expect_tx(bar.v_full(r.slot()), Tile::kVBytes);
                load_kv(true, sbase + Tile::kOffV + r.slot() * Tile::kVBytes, p.v, bar.v_full(r.slot()), jv,
                        page);
            }
            // Streamed tiles: the next tile once this one's first copies are issued (its consumers
            // take it as this one starts: see stream_items)
            if (kDynamic && Tile::kStream && j == 0 && issues) items.publish(next, n_done);
        }
        it += w.n_blocks; FC_ITEM(i, 2);
        if constexpr (kDynamic) {
            // the consumers take it when this tile ends
            if (issues && (!Tile::kStream || w.n_blocks == 0)) items.publish(next, n_done);
            fetched = S::kVarlen ? __shfl_sync(0xffffffffu, next, 0) : next;
        }
        if (Tile::kSplit) break;   // a CTA a work tile (Sm90Config.schedule): gridDim.x need not stay live
    }
    if constexpr (kGather) asm volatile("cp.async.wait_all;" ::: "memory");   // none in flight past its exit
    if (kDynamic && issues) items_done(p.tile_counter);
}

}  // namespace fc
