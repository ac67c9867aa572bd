// The Hopper forward kernel's epilogue helpers: the split-keys merge of the consumers' softmax
// states, and an accumulator's row stored 16 bytes a lane (the kernels compute which rows go
// where; the backward's dK and dV too).
#pragma once
#include "diagnostics.cuh"
#include "softmax.cuh"

namespace fc {

// One accumulator row half (rows lane / 4 + 8 half of the warp's 16) of a wgmma accumulator N
// columns wide, times `scale`, into the row at `row`: the quad's 8-column blocks four at a time,
// transposed across the quad (two shuffle stages) so that lane q stores block 4g + q whole, one
// 16-byte store (a quad's stores of a row: 64 contiguous bytes; each lane's 4-byte piece of
// every block a store of its own left 16 bytes of a row an instruction, v48's ablation: the
// forward's O stores cost short work tiles 5-12 % of their time). Blocks from `cols` on are not
// stored; `store` is the row's (all lanes shuffle). Needs `row` 16-byte aligned. The Hopper
// forward's O (scale 1 / l) and the backward's dK (the softmax scale) and dV.
template <class T, int N>
__device__ __forceinline__ void store_row16(u16* row, const float (&acc)[N / 8][4], int half, float scale,
                                            bool store, int cols, int lane) {
    static_assert(N % 32 == 0, "N: whole groups of four 8-column blocks");
    const int q = lane % 4;
    #pragma unroll
    for (int g = 0; g < N / 32; ++g) {
        u32 x[4];   // x[i]: this lane's columns 2q, 2q + 1 of block 4g + i
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            x[i] = pack2<T>(acc[4 * g + i][2 * half] * scale, acc[4 * g + i][2 * half + 1] * scale);
        #pragma unroll
        for (int d = 2; d >= 1; d /= 2)   // lane q ends with block 4g + q: x[j] its columns 2j, 2j + 1
            #pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (i & d) continue;
                const bool upper = q & d;
                const u32 recv = __shfl_xor_sync(0xffffffffu, upper ? x[i] : x[i + d], d);
                if (upper) x[i] = recv;
                else x[i + d] = recv;
            }
        const int col = 8 * (4 * g + q);
        if (store && col < cols)
            asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
                         :: "l"(row + col), "r"(x[0]), "r"(x[1]), "r"(x[2]), "r"(x[3]) : "memory");
    }
}

// Whether rows at `base` + any multiple of the element strides are 16-byte aligned (store_row16).
__device__ __forceinline__ bool rows_aligned16(const u16* base, i64 s0, i64 s1, i64 s2) {
    return ((reinterpret_cast<unsigned long long>(base) | static_cast<unsigned long long>(s0 | s1 | s2) * 2) & 15) == 0;
}

// SPLIT: merge the consumers' partial softmax states of the same rows into consumer
// 0's, through `scratch` (the ring, free once all consumers reach the barrier). Each
// thread holds the same rows and columns in every consumer, so it trades with its
// own slot: float k of thread t at scratch[k * 128 + t] (conflict-free); only the
// HALVES row halves that hold queries. A partial state (m, l, O) scales by
// exp2(m - m_max) into the merged one.
template <int HEAD_DIM, int CONSUMERS, int HALVES>
__device__ __forceinline__ void combine_split(float* scratch, int consumer, float (&o)[1][HEAD_DIM / 8][4],
                                              float (&m)[1][2], float (&l)[1][2]) {
    constexpr int kOFloats = HALVES * HEAD_DIM / 4, kFloats = kOFloats + 2 * HALVES;
    constexpr int kBarrier = 1 + CONSUMERS;   // ids 1..CONSUMERS are the ping-pong turns
    // Slots of a half's O pair (dt, e % 2), its m and its l.
    auto o_at = [](int half, int dt, int e) { return ((half * HEAD_DIM / 8 + dt) * 2 + e % 2) * 128; };
    auto m_at = [](int half) { return (kOFloats + half) * 128; };
    auto l_at = [](int half) { return (kOFloats + HALVES + half) * 128; };
    const int t = threadIdx.x % 128;
    named_barrier_sync(kBarrier, 128 * CONSUMERS); FC_TRACE(15);      // every consumer's GEMMs are done
    if (consumer > 0) {
        float* mine = scratch + (consumer - 1) * kFloats * 128 + t;
        #pragma unroll
        for (int half = 0; half < HALVES; ++half) {
            #pragma unroll
            for (int dt = 0; dt < HEAD_DIM / 8; ++dt)
                #pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) mine[o_at(half, dt, e)] = o[0][dt][e];
            mine[m_at(half)] = m[0][half];
            mine[l_at(half)] = l[0][half];
        }
    }
    named_barrier_sync(kBarrier, 128 * CONSUMERS); FC_TRACE(16);
    if (consumer > 0) return;
    #pragma unroll
    for (int c = 1; c < CONSUMERS; ++c) {
        const float* theirs = scratch + (c - 1) * kFloats * 128 + t;
        #pragma unroll
        for (int half = 0; half < HALVES; ++half) {
            const float m_c = theirs[m_at(half)];
            const float m_max = fmaxf(m[0][half], m_c);
            if (m_max == neg_inf()) continue;   // neither has seen a key of these rows
            const float f_own = fast_exp2(m[0][half] - m_max), f_c = fast_exp2(m_c - m_max);
            #pragma unroll
            for (int dt = 0; dt < HEAD_DIM / 8; ++dt)
                #pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e)
                    o[0][dt][e] = o[0][dt][e] * f_own + theirs[o_at(half, dt, e)] * f_c;
            l[0][half] = l[0][half] * f_own + theirs[l_at(half)] * f_c;
            m[0][half] = m_max;
        }
    }
}

}  // namespace fc
