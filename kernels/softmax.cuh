// Online softmax on accumulator fragments, shared by the sm_80 and sm_90 kernels.
//
// Both kernels hold S and O per warp in mma.sync's C layout (wgmma's m64nN
// accumulator is that layout for each warp's 16 rows): s[mt][nt][e] is row
// g + 8*(e/2) of 16-row slice mt, column 8*nt + 2t + e%2, with g = lane/4 and
// t = lane%4. A row lives in one quad, so row reductions are two shuffles.
//
// HALVES (default 2): the row halves (e / 2) that hold queries. With 1 (the sm_90
// kernel's 8-row warps) only half 0 is scaled, exponentiated and summed, and P's
// half 1 is zero, so whatever the other rows' scores are never reaches O.
#pragma once
#include "diagnostics.cuh"
#include "mask.cuh"
#include "mma_sm80.cuh"

namespace fc {

// S into the units softmax_update expects, masked entries -> -inf. A positive
// scale is folded into softmax_update's exp2 (one FFMA per score instead of a
// multiply here); zero or negative scales pre-multiply here instead, because
// the row maximum of the raw scores only tracks the scaled one when scale > 0.
// Accumulator element e of n-tile nt sits at row g + 8*(e/2), column
// nt*8 + 2t + e%2 of the warp's 16-row slice. PACKED (GQA-packed tiles, kernels/sequence.cuh):
// row r holds query r / pack.
template <int M_TILES, int N_TILES, bool MASK, int HALVES = 2, bool PACKED = false>
__device__ __forceinline__ void scale_and_mask(float (&s)[M_TILES][N_TILES][4], float scale_log2,
                                               int first_row, int first_key, int seqlen_k,
                                               int causal_diag, bool causal, int lane, int pack = 1) {
    if (!(scale_log2 > 0.f)) {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 2 * HALVES; ++e) s[mt][nt][e] *= scale_log2;
    }
    if constexpr (MASK) {
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 0; e < 2 * HALVES; ++e) {
                    int row = first_row + mt * 16 + lane / 4 + 8 * (e / 2);
                    if constexpr (PACKED) row /= pack;
                    const int key = first_key + nt * 8 + 2 * (lane % 4) + e % 2;
                    if (FC_KEY_HIDDEN(seqlen_k, causal_diag, causal, row, key)) s[mt][nt][e] = neg_inf();
                }
    }
}

// The factor softmax's exp2 applies to S as scale_and_mask leaves it: the scale where it
// was left out (positive), else 1 (S already scaled).
__device__ __forceinline__ float exp2_fold(float scale_log2) { return scale_log2 > 0.f ? scale_log2 : 1.f; }

// SHIFTED (one row block, M_TILES = 1): the scores stand in a frame of their own per thread and
// row, shift[half] (scaled log2 units) below their values: a score's exponent is s * fold +
// shift[half] (a causal ALiBi's key-linear scores: variant_scores' LINEAR). m, l and P are as
// without a shift; only the row maxima and the exponentials' bases take it in.
//
// Online softmax, first half: update (m, l) (m in scaled log2 units), turn S
// (from scale_and_mask) into P in place, and return in alpha the factor
// exp2(m_old - m_new) by which each row of O must shrink.
template <int M_TILES, int N_TILES, int HALVES = 2, bool SHIFTED = false>
__device__ __forceinline__ void softmax_update(float (&s)[M_TILES][N_TILES][4], float (&m)[M_TILES][2],
                                               float (&l)[M_TILES][2], float (&alpha)[M_TILES][2],
                                               float scale_log2, const float* shift = nullptr) {
    static_assert(!SHIFTED || M_TILES == 1, "SHIFTED: one row block");
    const float fold = exp2_fold(scale_log2);
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int half = 0; half < HALVES; ++half) {
            float row_max = neg_inf();
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                row_max = fmaxf(row_max, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
            // (shifted: each thread's maximum into the row's common frame before the quad's)
            const float m_new = fmaxf(m[mt][half], SHIFTED ? quad_max(fmaf(row_max, fold, shift[half]))
                                                           : quad_max(row_max) * fold);
            // A row with every key masked so far has m_new = -inf: subtract 0
            // instead, so that exp2 sees -inf - 0, never -inf - (-inf) = NaN.
            const float m_base = m_new == neg_inf() ? 0.f : m_new;
            alpha[mt][half] = fast_exp2(m[mt][half] - m_base);
            m[mt][half] = m_new;
            float row_sum = 0.f;
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) {
                    s[mt][nt][e] = FC_SCORE_EXP2(fmaf(s[mt][nt][e], fold, SHIFTED ? shift[half] - m_base : -m_base));
                    row_sum += s[mt][nt][e];
                }
            l[mt][half] = l[mt][half] * alpha[mt][half] + row_sum;   // per-lane partial; reduced at the end
        }
}

// One 16-key k-step of P (fp32, from softmax_update) as the 16-bit A operand of P V
// (mma.sync's A fragment, and wgmma's from registers): n-tiles 2kk and 2kk + 1 in pairs.
template <class T, int HALVES = 2>
__device__ __forceinline__ void pack_kstep(u32 (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack2<T>(lo[0], lo[1]);
    a[1] = HALVES == 2 ? pack2<T>(lo[2], lo[3]) : 0u;
    a[2] = pack2<T>(hi[0], hi[1]);
    a[3] = HALVES == 2 ? pack2<T>(hi[2], hi[3]) : 0u;
}

// All of a row block's P, k-step by k-step.
template <class T, int N_TILES, int HALVES = 2>
__device__ __forceinline__ void pack_p(u32 (&a)[N_TILES / 2][4], const float (&s)[N_TILES][4]) {
    #pragma unroll
    for (int kk = 0; kk < N_TILES / 2; ++kk) pack_kstep<T, HALVES>(a[kk], s[2 * kk], s[2 * kk + 1]);
}

// A row block's first maximum, for softmax_update_lazy to take as its base: the maximum
// of n-tile 0's columns only (8 of a row's scores), a lower bound of the tile's row
// maximum, so P never underflows against it; where it falls short by more than P's range
// allows (or n-tile 0 is masked: -inf), the lazy update redoes the tile exactly. The full
// row maximum's chain (BLOCK_N / 8 dependent maxima, then the shuffles) held up the first
// exponentials of every row block.
template <int N_TILES, int HALVES = 2, bool SHIFTED = false>
__device__ __forceinline__ void seed_max(const float (&s)[1][N_TILES][4], float (&m)[1][2], float scale_log2,
                                         const float* shift = nullptr) {
    const float fold = exp2_fold(scale_log2);
    #pragma unroll
    for (int half = 0; half < HALVES; ++half) {
        const float top = fmaxf(s[0][0][2 * half], s[0][0][2 * half + 1]);
        m[0][half] = SHIFTED ? quad_max(fmaf(top, fold, shift[half])) : quad_max(top) * fold;
    }
}

// The largest row sum (over one thread's part of a row) that softmax_update_lazy keeps:
// every P in it is at most the sum, so 2^15 keeps P finite in fp16 (65504) and bf16.
constexpr float kLazySumLimit = 32768.f;

// Online softmax with a lazy maximum, P straight into the A operand (as pack_p). The
// exponentials take the running maximum m as it stands, not this tile's: any base gives
// the same softmax (P and l scale together), and the exact update's is only the smallest
// safe one. So no row maximum, no shuffles: what must not happen is a P past fp16's range,
// and each P is at most its thread's row sum, which the update adds up anyway. While
// every such sum in the warp stays under kLazySumLimit (and no row without a key so far,
// m = -inf, gets its first), m stays and alpha = 1 (O keeps its scale); otherwise the tile
// is redone by softmax_update from S, which this leaves as scale_and_mask made it.
template <class T, int N_TILES, int HALVES = 2, bool SHIFTED = false>
__device__ __forceinline__ void softmax_update_lazy(float (&s)[1][N_TILES][4], u32 (&a)[N_TILES / 2][4],
                                                    float (&m)[1][2], float (&l)[1][2],
                                                    float (&alpha)[1][2], float scale_log2,
                                                    const float* shift = nullptr) {
    const float fold = exp2_fold(scale_log2);
    float base[2], row_sum[2] = {0.f, 0.f};
    #pragma unroll
    for (int half = 0; half < HALVES; ++half) {   // (shifted: m in this thread's frame of the row)
        base[half] = m[0][half] == neg_inf() ? 0.f : m[0][half];
        if constexpr (SHIFTED) base[half] -= shift[half];
    }
    #pragma unroll
    for (int nt = 0; nt < N_TILES; ++nt)
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            if (half >= HALVES) {
                a[nt / 2][2 * (nt % 2) + half] = 0u;
                continue;
            }
            const float p0 = FC_SCORE_EXP2(fmaf(s[0][nt][2 * half], fold, -base[half]));
            const float p1 = FC_SCORE_EXP2(fmaf(s[0][nt][2 * half + 1], fold, -base[half]));
            row_sum[half] += p0 + p1;
            a[nt / 2][2 * (nt % 2) + half] = pack2<T>(p0, p1);
        }
    bool redo = false;
    #pragma unroll
    for (int half = 0; half < HALVES; ++half)   // a NaN sum fails both tests and stays NaN
        redo |= row_sum[half] > kLazySumLimit || (m[0][half] == neg_inf() && row_sum[half] > 0.f);
    if (__any_sync(0xffffffffu, redo)) {   // warp-uniform, like rescale_rows's skip
        softmax_update<1, N_TILES, HALVES, SHIFTED>(s, m, l, alpha, scale_log2, shift);
        pack_p<T, N_TILES, HALVES>(a, s[0]);
        return;
    }
    #pragma unroll
    for (int half = 0; half < HALVES; ++half) {
        l[0][half] += row_sum[half];
        alpha[0][half] = 1.f;
    }
}

// Online softmax, second half: O *= alpha row by row. That costs D/4 multiplies
// per row slice, as many issue slots as a tile's mma at 32-key tiles; once the
// running maxima settle, alpha is 1 for the whole warp, so skip it (warp-uniform).
template <int M_TILES, int D_TILES, int HALVES = 2>
__device__ __forceinline__ void rescale_rows(float (&o)[M_TILES][D_TILES][4],
                                             const float (&alpha)[M_TILES][2]) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int half = 0; half < HALVES; ++half)
            if (__any_sync(0xffffffffu, alpha[mt][half] != 1.f)) {
                #pragma unroll
                for (int dt = 0; dt < D_TILES; ++dt) {
                    o[mt][dt][2 * half] *= alpha[mt][half];
                    o[mt][dt][2 * half + 1] *= alpha[mt][half];
                }
            }
}

}  // namespace fc
