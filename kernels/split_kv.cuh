// Split-KV (a KV cache's, or a long dense Sk's: S::kSplitKV, splits > 1): each split of a tile's key tiles ends in float32 partials that
// merge_states (kernels/merge_states.cu) combines by their LSE. Both forward kernels store them
// here, from the accumulators every mma/wgmma m16 layout shares: thread `lane` holds rows
// lane / 4 and lane / 4 + 8 of each 16-row slice, columns 8 dt + 2 (lane % 4) and the next.
#pragma once
#include "merge.cuh"
#include "mma_sm80.cuh"
#include "sequence.cuh"
#include "softmax.cuh"

namespace fc {

// A split's O / l and LSE, float32, at o_accum / lse_accum (the params' o and lse strides, then
// split * o_split / lse_split) for tile rows first_row + 16 mt + lane / 4 + 8 half (below `rows`;
// GQA-packed as packed_row(row, pack, head) says); a split that saw no key of a row writes 0 and
// -inf (the merge does not read it). HALVES: the row halves a warp's 16-row slice holds (1: the
// Hopper kernel's 8-row warps, whose second half is not theirs).
template <int D_TILES, int M_TILES, int HALVES = 2, class P>
__device__ __forceinline__ void write_partials(const P& p, const float (&o_acc)[M_TILES][D_TILES][4],
                                               const float (&m)[M_TILES][2], const float (&l)[M_TILES][2],
                                               int split, int batch, int head, int first_row, int rows, int pack,
                                               int lane) {
    float* o_batch = p.o_accum + split * p.o_split + batch * p.o_sb;
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int half = 0; half < HALVES; ++half) {
            const float l_row = quad_sum(l[mt][half]);
            const float inv_l = l_row > 0.f ? 1.f / l_row : 0.f;
            const int row = first_row + mt * 16 + lane / 4 + 8 * half;
            if (row >= rows) continue;
            const PackedRow at = packed_row(row, pack, head);
            float* o = o_batch + at.head * p.o_sh + at.query * p.o_ss;
            #pragma unroll
            for (int dt = 0; dt < D_TILES; ++dt) {
                const int col = dt * 8 + 2 * (lane % 4);
                if (col < p.head_dim_v)
                    *reinterpret_cast<float2*>(o + col) =
                        make_float2(o_acc[mt][dt][2 * half] * inv_l, o_acc[mt][dt][2 * half + 1] * inv_l);
            }
            if (lane % 4 == 0)
                p.lse_accum[split * p.lse_split + batch * p.lse_sb + at.head * p.lse_sh + at.query * p.lse_ss] =
                    row_lse(m[mt][half], l_row);
        }
}

// Split `split` of `splits`' share of key tiles [first, end): equal shares, the last ones short
// (or empty), in place.
__device__ __forceinline__ void split_share(int& first, int& end, int split, int splits) {
    const int per_split = (end - first + splits - 1) / splits;
    first += split * per_split;
    end = min(end, first + per_split);
}

// The in-kernel combine (split_count given): each split's CTA, once its partials are stored,
// counts itself on its rows' counter (`counter`: a tile's, or a Hopper consumer's 64 rows'); the
// last one merges every split's partials of tile rows [first_row, end_row) into o (T, at o's
// strides: the partials' too) and the LSE (at lse_at(row's PackedRow); null lse: none),
// merge.cuh's math, and zeroes the counter for the next call (a replayed graph finds it so).
// The caller's `threads` threads (whole warps, `thread` this one's index) stored the partials;
// `sync` is their barrier, and `last` a shared int of theirs that no other thread touches past
// it (the portable kernel's Q tile; no static shared memory: its tiles fill sm_86's).
template <class T, int MAX_DV, class P, class Sync, class LseAt>
__device__ __forceinline__ void merge_if_last_split(const P& p, int counter, int batch, int head0, int first_row,
                                                    int end_row, int pack, int thread, int threads, int* last,
                                                    Sync sync, LseAt lse_at) {
    __threadfence();   // this thread's partials, visible device-wide before the count says so
    sync();
    if (thread == 0) *last = atomicAdd(p.split_count + counter, 1) == p.splits - 1;
    sync();
    if (!*last) return;
    __threadfence();
    for (int row = first_row + thread / 32; row < end_row; row += threads / 32) {
        const PackedRow at = packed_row(row, pack, head0);
        const i64 o_at = batch * p.o_sb + at.head * p.o_sh + at.query * p.o_ss;
        const i64 l_at = batch * p.lse_sb + at.head * p.lse_sh + at.query * p.lse_ss;
        merge_row<f32, T, MAX_DV>(
            p.splits, p.head_dim_v, [&](int i) { return __ldcg(p.lse_accum + i * p.lse_split + l_at); },
            [&](int i) -> const void* { return p.o_accum + i * p.o_split; }, o_at, p.o, o_at,
            p.lse == nullptr ? nullptr : p.lse + lse_at(at), thread % 32);
    }
    if (thread == 0) p.split_count[counter] = 0;
}

}  // namespace fc
