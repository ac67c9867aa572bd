// The Hopper forward kernel's producer warpgroup: TMA copies of Q, K and V into the pipeline.
#pragma once
#include "diagnostics.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_scheduler.cuh"

namespace fc {

// Producer: per work tile, Q (once the consumers released the previous one), then
// the K and V tiles through their rings, each slot refilled once released. With
// PRODUCERS = 1 one thread issues them all (Q, K_0, V_0, K_1, ...); with 2 the K
// thread (Q and K) and the V thread each wait only on their own releases: one thread
// makes each K load wait behind the previous V slot's release, which costs most
// where the ring is short against the keys (decode: 209 -> 119 us on an H100 with
// 2) and nothing where it holds them all (the mission kernel: 6.4 against 6.9 us).
template <class Tile, int HEAD_DIM, int BLOCK_N, int STAGES, bool LOADS_K, bool LOADS_V, class V>
__device__ __forceinline__ void produce(const Sm90Params& p, u32 sbase, const Barriers<STAGES>& bar) {
    if (LOADS_K) {
        prefetch_tensor_map(&p.q);
        prefetch_tensor_map(&p.k);
    }
    if (LOADS_V) prefetch_tensor_map(&p.v);
    int it = 0, n_done = 0;
    for (int i = blockIdx.x; i < p.n_items; i += gridDim.x, ++n_done) {
        const WorkTile w = work_tile<Tile, BLOCK_N, V>(p, i);
        const int head_kv = p.by_heads_per_kv(w.head);
        if (LOADS_K) {
            if (n_done > 0) mbar_wait(bar.q_empty(), (n_done - 1) & 1);
            mbar_expect_tx(bar.q_full(), Tile::kQBytes);
            #pragma unroll
            for (int box = 0; box < Tile::kBlockM / Tile::kQBoxRows; ++box)   // slice `box`'s first rows
                tma_load_tile<HEAD_DIM>(sbase + box * 16 * 128, p.q, bar.q_full(), Tile::kQRows,
                                        w.row0 + box * Tile::kQBoxRows, w.head * p.pack, w.batch); FC_TRACE(18);
        }
        // K runs kKAhead tiles ahead of V: with split keys each consumer's first S needs
        // its own K tile, and with 64 CTAs loading at once (the mission shape) the L2 serves
        // the copies slowly enough that V_0 ahead of K_1 delayed consumer 1's start.
        for (int j = 0; j < w.n_blocks + Tile::kKAhead; ++j) {
            const int jk = j, jv = j - Tile::kKAhead;
            if (LOADS_K && jk < w.n_blocks) {
                const Ring<STAGES> r{it + jk};
                if (it + jk >= STAGES) mbar_wait(bar.k_empty(r.slot()), r.parity() ^ 1);
                mbar_expect_tx(bar.k_full(r.slot()), Tile::kKVBytes);
                tma_load_tile<HEAD_DIM>(sbase + Tile::kOffK + r.slot() * Tile::kKVBytes, p.k,
                                        bar.k_full(r.slot()), BLOCK_N, (w.first + jk) * BLOCK_N, head_kv, w.batch);
            }
            if (LOADS_V && jv >= 0) {
                const Ring<STAGES> r{it + jv};
                if (it + jv >= STAGES) mbar_wait(bar.v_empty(r.slot()), r.parity() ^ 1); FC_TRACE(19);
                mbar_expect_tx(bar.v_full(r.slot()), Tile::kKVBytes);
                tma_load_tile<HEAD_DIM>(sbase + Tile::kOffV + r.slot() * Tile::kKVBytes, p.v,
                                        bar.v_full(r.slot()), BLOCK_N, (w.first + jv) * BLOCK_N, head_kv, w.batch);
            }
        }
        it += w.n_blocks;
    }
}

}  // namespace fc
