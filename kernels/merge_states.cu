// merge_states: partial attention results over disjoint key sets merged by their natural-log
// LSE (flashcore_cupy.reference.merge_states is the spec; the math: merge.cuh's merge_row), a
// warp a row. Inputs and output in fp16, bf16 or float32 (the TI and TO type tags). Split-KV's
// combine writes the LSE of rows (batch, query, head) as (batch, head, query) (lse_seq, lse_heads).
#include "merge.cuh"
// MergeParams, declared in flashcore_cupy/params.py.
#include "params_merge.cuh"

namespace fc {

constexpr int kMergeWarps = 8;          // rows a block (configs.MergeConfig)
constexpr int kMergeMaxDv = 512;        // columns a row: kMergeMaxDv / 32 accumulators a lane

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
    const i64 row_at = static_cast<i64>(row) * p.dv;
    i64 lse_at = row;
    if (p.lse_heads > 0) {   // rows (a, s, h) -> (a, h, s): a bshd output's LSE as (B, H, S)
        const int h = row % p.lse_heads, rest = row / p.lse_heads;
        lse_at = (static_cast<i64>(rest / p.lse_seq) * p.lse_heads + h) * p.lse_seq + rest % p.lse_seq;
    }
    merge_row<TI, TO, kMergeMaxDv>(p.splits, p.dv, lse_of, outs_of, row_at, p.out, row_at,
                                   p.lse_out == nullptr ? nullptr : p.lse_out + lse_at, lane);
}

}  // namespace fc
