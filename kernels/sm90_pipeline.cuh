// The Hopper kernels' shared-memory pipeline: a ring of STAGES K/V slots with full/empty
// mbarriers (and Q's), TMA tile loads counted on them, and wgmma descriptors stepped inside a
// tile. Shared by the forward kernel (flash_fwd_sm90.cu) and, to come, the backward.
#pragma once
#include "sm90.cuh"

namespace fc {

// Shared-memory barriers, one 8-byte word each, after the tiles. K and V slots
// fill and empty separately: K_j is free once S_j has landed, long before P_j V_j
// frees V_j, so the next K load starts a step earlier.
template <int STAGES>
struct Barriers {
    u32 base;
    // Q's slot s: slot 0's barriers first, a second slot's (Sm90Tile::kQSlots) after the rings'.
    __device__ u32 q_full(int s = 0) const { return s == 0 ? base : base + 8 * (2 + 4 * STAGES); }
    __device__ u32 q_empty(int s = 0) const { return s == 0 ? base + 8 : base + 8 * (3 + 4 * STAGES); }
    __device__ u32 k_full(int s) const { return base + 8 * (2 + s); }
    __device__ u32 v_full(int s) const { return base + 8 * (2 + STAGES + s); }
    __device__ u32 k_empty(int s) const { return base + 8 * (2 + 2 * STAGES + s); }
    __device__ u32 v_empty(int s) const { return base + 8 * (2 + 3 * STAGES + s); }
};

// A tile of `rows` rows as ceil(HEAD_DIM/64) TMA boxes (one per column block), counted on `bar`;
// or, from tile row `at` (a multiple of 8: the swizzle repeats every 8 rows), the map's box
// rows of it (a page's: the box is smaller than the tile).
template <int HEAD_DIM>
__device__ __forceinline__ void tma_load_tile(u32 dst, const TensorMap& map, u32 bar, int rows,
                                              int row0, int head, int batch, int at = 0) {
    #pragma unroll
    for (int cb = 0; cb < (HEAD_DIM + 63) / 64; ++cb)
        tma_load_4d(dst + (cb * rows + at) * 128, &map, bar, cb * 64, row0, head, batch);
}

// Ring position of the CTA's it-th K/V tile (counted across work tiles).
template <int STAGES>
struct Ring {
    int it;
    __device__ int slot() const { return it % STAGES; }
    __device__ u32 parity() const { return static_cast<u32>((it / STAGES) & 1); }
};

// Rows [from, ROWS) of a K/V tile set to zero by the 128 threads of a warpgroup, visible to its
// wgmma reads after (the async proxy) through named barrier `barrier`: a KV cache's rows past a
// sequence's end, which the cache's map spans with whatever the cache held there. A row is 128
// bytes in each column block, its 16-byte chunks permuted only among themselves by the swizzle.
template <int HEAD_DIM, int ROWS>
__device__ __forceinline__ void clear_tile_rows(u32 tile, int from, int barrier) {
    constexpr int kChunks = HEAD_DIM / 8;
    for (int c = max(from, 0) * kChunks + static_cast<int>(threadIdx.x % 128); c < ROWS * kChunks; c += 128) {
        const u32 at = tile + ((c % kChunks) / 8 * ROWS + c / kChunks) * 128 + (c % 8) * 16;
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" :: "r"(at), "r"(0u) : "memory");
    }
    fence_async_shared();
    named_barrier_sync(barrier, 128);
}

// A k-step's descriptor differs from its tile's only in the start address, bits 0..13
// (addr >> 4) of the low word, which no offset inside a tile carries out of (shared
// memory ends below 2^18 bytes): the tile's descriptor plus the offset. Built per k-step
// from the address instead, each took ~8 instructions in the GEMM issue path (SASS v12).
__device__ __forceinline__ u64 desc_advance(u64 desc, u32 bytes) {
    return (desc & 0xFFFFFFFF00000000ull) | static_cast<u32>(static_cast<u32>(desc) + (bytes >> 4));
}

}  // namespace fc
