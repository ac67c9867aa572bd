// Merging partial attention results over disjoint key sets by their natural-log LSE, one row
// at a time (flashcore_cupy.reference.merge_states is the spec):
//
//   m = max_i lse_i,  w_i = exp(lse_i - m),  lse = m + log(sum_i w_i),
//   out = sum_i w_i out_i / sum_i w_i;   every lse_i -inf (no split saw a key): out 0, lse -inf.
//
// A warp merges a row: its lanes reduce the splits' maximum and weight sum, then each lane adds
// up columns lane, lane + 32, ... (coalesced) over the splits, the split's weight broadcast.
// merge_states.cu runs it a warp a row; split-KV's last split of a tile runs it in the forward
// kernels (split_kv.cuh). Inputs are read through the L2 (.cg): another CTA of the same kernel
// may have written them.
#pragma once
#include "mma_sm80.cuh"

namespace fc {

struct f32 {};   // a float32 array's tag, beside mma_sm80.cuh's fp16 and bf16
template <class T> constexpr bool kIsF32 = false;
template <> constexpr bool kIsF32<f32> = true;

template <class T>
__device__ __forceinline__ float load_elem(const void* base, i64 at) {
    if constexpr (kIsF32<T>) {
        return __ldcg(static_cast<const float*>(base) + at);
    } else {
        return to_float<T>(__ldcg(static_cast<const unsigned short*>(base) + at));
    }
}

template <class T>
__device__ __forceinline__ void store_elem(void* base, i64 at, float x) {
    if constexpr (kIsF32<T>) {
        static_cast<float*>(base)[at] = x;
    } else {
        static_cast<u16*>(base)[at] = to_u16<T>(x);
    }
}

// One row by a warp: split i's LSE lse_of(i) and outputs at src_of(i) + in_at (dv columns, in
// TI); the merged row to out + out_at (TO), its LSE to *lse_out (null: not written) by lane 0.
template <class TI, class TO, int MAX_DV, class LseOf, class SrcOf>
__device__ __forceinline__ void merge_row(int splits, int dv, LseOf lse_of, SrcOf src_of, i64 in_at, void* out,
                                          i64 out_at, float* lse_out, int lane) {
    float m = -__int_as_float(0x7f800000);
    for (int i = lane; i < splits; i += 32) m = fmaxf(m, lse_of(i));
    #pragma unroll
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const bool seen = m > -__int_as_float(0x7f800000);
    float total = 0.f;
    if (seen)
        for (int i = lane; i < splits; i += 32) total += expf(lse_of(i) - m);
    #pragma unroll
    for (int o = 16; o > 0; o /= 2) total += __shfl_xor_sync(0xffffffffu, total, o);
    const float inv = seen ? 1.f / total : 0.f;

    constexpr int kCols = (MAX_DV + 31) / 32;
    float acc[kCols];
    #pragma unroll
    for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
    if (seen)
        for (int i = 0; i < splits; ++i) {
            const float w = expf(lse_of(i) - m) * inv;   // 0 for a -inf partial
            if (w == 0.f) continue;                         // its outputs are not read
            const void* src = src_of(i);
            #pragma unroll
            for (int c = 0; c < kCols; ++c) {
                const int col = 32 * c + lane;
                if (col < dv) acc[c] += w * load_elem<TI>(src, in_at + col);
            }
        }
    #pragma unroll
    for (int c = 0; c < kCols; ++c) {
        const int col = 32 * c + lane;
        if (col < dv) store_elem<TO>(out, out_at + col, acc[c]);
    }
    __syncwarp();   // every lane's reads of the row's LSEs before lse_out (which may alias one)
    if (lane == 0 && lse_out != nullptr) *lse_out = seen ? m + logf(total) : m;
}

}  // namespace fc
