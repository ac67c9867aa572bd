// merge_states: partial attention results over disjoint key sets merged by their natural-log
// LSE (flashcore_cupy.reference.merge_states is the spec):
//
//   m = max_i lse_i,  w_i = exp(lse_i - m),  lse = m + log(sum_i w_i),
//   out = sum_i w_i out_i / sum_i w_i;   every lse_i -inf (no split saw a key): out 0, lse -inf.
//
// A warp per row: its lanes reduce the splits' maximum and weight sum, then each lane adds up
// columns lane, lane + 32, ... (coalesced) over the splits, the split's weight broadcast.
// Inputs and output in fp16, bf16 or float32 (the TI and TO type tags). Split-KV's combine
// writes the LSE of rows (batch, query, head) as (batch, head, query) (lse_seq, lse_heads).
#include "mma_sm80.cuh"
// MergeParams, declared in flashcore_cupy/params.py.
#include "params_merge.cuh"

namespace fc {

struct f32 {};   // a float32 array's tag, beside mma_sm80.cuh's fp16 and bf16
template <class T> constexpr bool kIsF32 = false;
template <> constexpr bool kIsF32<f32> = true;

constexpr int kMergeWarps = 8;          // rows a block (configs.MergeConfig)
constexpr int kMergeMaxDv = 512;        // columns a row: kMergeMaxDv / 32 accumulators a lane

template <class T>
__device__ __forceinline__ float load_elem(const void* base, i64 at) {
    if constexpr (kIsF32<T>) {
        return static_cast<const float*>(base)[at];
    } else {
        return to_float<T>(static_cast<const u16*>(base)[at]);
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

template <class TI, class TO>
__global__ void __launch_bounds__(32 * kMergeWarps)
merge_states(const __grid_constant__ MergeParams p) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * kMergeWarps + threadIdx.x / 32;
    if (row >= p.rows) return;
    auto lse_of = [&](int i) {
        return i == 1 && p.lses_b != nullptr ? p.lses_b[row] : p.lses[static_cast<i64>(i) * p.rows + row];
    };
    auto outs_of = [&](int i) -> const void* {
        if (i == 1 && p.outs_b != nullptr) return p.outs_b;
        const i64 elems = static_cast<i64>(i) * p.split_stride;
        return kIsF32<TI> ? static_cast<const void*>(static_cast<const float*>(p.outs) + elems)
                                  : static_cast<const void*>(static_cast<const u16*>(p.outs) + elems);
    };
    float m = -__int_as_float(0x7f800000);
    for (int i = lane; i < p.splits; i += 32) m = fmaxf(m, lse_of(i));
    #pragma unroll
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const bool seen = m > -__int_as_float(0x7f800000);
    float total = 0.f;
    if (seen)
        for (int i = lane; i < p.splits; i += 32) total += expf(lse_of(i) - m);
    #pragma unroll
    for (int o = 16; o > 0; o /= 2) total += __shfl_xor_sync(0xffffffffu, total, o);
    const float inv = seen ? 1.f / total : 0.f;

    constexpr int kCols = kMergeMaxDv / 32;
    float acc[kCols];
    #pragma unroll
    for (int c = 0; c < kCols; ++c) acc[c] = 0.f;
    const i64 row_at = static_cast<i64>(row) * p.dv;
    if (seen)
        for (int i = 0; i < p.splits; ++i) {
            const float w = expf(lse_of(i) - m) * inv;   // 0 for a -inf partial
            if (w == 0.f) continue;                         // its outputs are not read
            const void* src = outs_of(i);
            #pragma unroll
            for (int c = 0; c < kCols; ++c) {
                const int col = 32 * c + lane;
                if (col < p.dv) acc[c] += w * load_elem<TI>(src, row_at + col);
            }
        }
    #pragma unroll
    for (int c = 0; c < kCols; ++c) {
        const int col = 32 * c + lane;
        if (col < p.dv) store_elem<TO>(p.out, row_at + col, acc[c]);
    }
    __syncwarp();   // every lane's reads of the row's LSEs before lse_out (which may alias one)
    if (lane == 0 && p.lse_out != nullptr) {
        i64 at = row;
        if (p.lse_heads > 0) {   // rows (a, s, h) -> (a, h, s): a bshd output's LSE as (B, H, S)
            const int h = row % p.lse_heads, rest = row / p.lse_heads;
            at = (static_cast<i64>(rest / p.lse_seq) * p.lse_heads + h) * p.lse_seq + rest % p.lse_seq;
        }
        p.lse_out[at] = seen ? m + logf(total) : m;
    }
}

}  // namespace fc
