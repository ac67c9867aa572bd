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
    __device__ u32 q_full() const { return base; }
    __device__ u32 q_empty() const { return base + 8; }
    __device__ u32 k_full(int s) const { return base + 8 * (2 + s); }
    __device__ u32 v_full(int s) const { return base + 8 * (2 + STAGES + s); }
    __device__ u32 k_empty(int s) const { return base + 8 * (2 + 2 * STAGES + s); }
    __device__ u32 v_empty(int s) const { return base + 8 * (2 + 3 * STAGES + s); }
};

// A tile of `rows` rows as HEAD_DIM/64 TMA boxes (one per column block), counted on `bar`.
template <int HEAD_DIM>
__device__ __forceinline__ void tma_load_tile(u32 dst, const TensorMap& map, u32 bar, int rows,
                                              int row0, int head, int batch) {
    #pragma unroll
    for (int cb = 0; cb < HEAD_DIM / 64; ++cb)
        tma_load_4d(dst + cb * rows * 128, &map, bar, cb * 64, row0, head, batch);
}

// Ring position of the CTA's it-th K/V tile (counted across work tiles).
template <int STAGES>
struct Ring {
    int it;
    __device__ int slot() const { return it % STAGES; }
    __device__ u32 parity() const { return static_cast<u32>((it / STAGES) & 1); }
};

// A k-step's descriptor differs from its tile's only in the start address, bits 0..13
// (addr >> 4) of the low word, which no offset inside a tile carries out of (shared
// memory ends below 2^18 bytes): the tile's descriptor plus the offset. Built per k-step
// from the address instead, each took ~8 instructions in the GEMM issue path (SASS v12).
__device__ __forceinline__ u64 desc_advance(u64 desc, u32 bytes) {
    return (desc & 0xFFFFFFFF00000000ull) | static_cast<u32>(static_cast<u32>(desc) + (bytes >> 4));
}

}  // namespace fc
