// The Hopper kernels' consumer GEMMs: S = Q K^T from shared memory and O += P V with P from
// registers, each one wgmma group (the step loops that order them are the kernels'). The
// backward runs the same two forms on other operands (flash_bwd_sm90.cu).
#pragma once
#include "diagnostics.cuh"
#include "sm90_pipeline.cuh"

namespace fc {

// S(64 x BLOCK_N) = Q_c K^T: HEAD_DIM/16 k-steps, both operands K-major, in column blocks of
// 64 (A_ROWS rows a block for A, B_ROWS for B: BLOCK_N, or more where B is part of a block's
// rows). The forward's S = Q K^T (A_ROWS: Q's rows) and the backward's S^T = K Q^T and
// dP^T = V dO^T (A_ROWS: the key tile's; head dim 256: half the query tile's rows as B).
template <class T, int A_ROWS, int HEAD_DIM, int BLOCK_N, int B_ROWS = BLOCK_N>
__device__ __forceinline__ void qk_wgmma(float (&s)[BLOCK_N / 8][4], u64 q_desc, u64 k_desc) {
#ifdef FLASHCORE_ABLATE_NO_QK
    wgmma_fence(); wgmma_commit(); return;   // an empty group keeps the waits' counts
#endif
    wgmma_fence();
    #pragma unroll
    for (int ks = 0; ks < HEAD_DIM / 16; ++ks) {
        const u32 cb = ks / 4, in_block = (ks % 4) * 32;
        wgmma_ss<T, BLOCK_N>(s, desc_advance(q_desc, cb * A_ROWS * 128 + in_block),
                             desc_advance(k_desc, cb * B_ROWS * 128 + in_block), ks > 0);
    }
    wgmma_commit();
}

// O(64 x HEAD_DIM) += P V: BLOCK_N/16 k-steps, P from registers, V MN-major (the backward's
// dV += P^T dO and dK += dS^T Q).
template <class T, int HEAD_DIM, int BLOCK_N>
__device__ __forceinline__ void pv_wgmma(float (&o)[HEAD_DIM / 8][4], const u32 (&a)[BLOCK_N / 16][4],
                                         u64 v_desc) {
#ifdef FLASHCORE_ABLATE_NO_PV
    wgmma_fence(); wgmma_commit(); return;   // an empty group keeps the waits' counts
#endif
    wgmma_fence();
    #pragma unroll
    for (int kk = 0; kk < BLOCK_N / 16; ++kk)
        wgmma_rs<T, HEAD_DIM>(o, a[kk], desc_advance(v_desc, kk * 2048), true);
    wgmma_commit();
}

// The same with A from shared memory: K-major, one 64-column block (BLOCK_N / 16 <= 4 k-steps
// along its 128-byte rows): the head-dim-256 backward's dV += P^T dO and dK += dS^T Q, P^T and
// dS^T stored by both consumers.
template <class T, int HEAD_DIM, int BLOCK_N>
__device__ __forceinline__ void pv_wgmma_ss(float (&o)[HEAD_DIM / 8][4], u64 a_desc, u64 v_desc) {
    static_assert(BLOCK_N <= 64, "A: one 64-column block");
    wgmma_fence();
    #pragma unroll
    for (int kk = 0; kk < BLOCK_N / 16; ++kk)
        wgmma_ss_bmn<T, HEAD_DIM>(o, desc_advance(a_desc, kk * 32), desc_advance(v_desc, kk * 2048), true);
    wgmma_commit();
}

}  // namespace fc
