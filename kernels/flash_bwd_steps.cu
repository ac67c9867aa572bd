// The backward's steps around its main kernel (flash_bwd_sm80.cu or flash_bwd_sm90.cu), one
// launch each, a warp per row:
//
//   bwd_prep:    per query row, delta = rowsum(dO * O) in float32 and the forward's LSE in
//                log2 units (+inf for a row that saw no key: P = exp2(S - LSE) is 0 there),
//                rows_pad rows per (batch, head) (past Sq: delta 0, LSE +inf), and the row of
//                the float32 dQ accumulator zeroed;
//   bwd_convert: float32 rows (dQ's accumulator, GQA's dK / dV sums) times a factor, summed
//                over `group` consecutive source heads, into a 16-bit array with any (batch,
//                head, seq) strides; rows past the sums' get zeros (keys no query sees).
#include "mma_sm80.cuh"
// BwdPrepParams and BwdConvertParams, declared in flashcore_cupy/params.py.
#include "params_bwd_steps.cuh"

namespace fc {

constexpr int kStepWarps = 8, kStepRowsPerWarp = 4;   // 32 rows a block (configs.BwdStepConfig)

__device__ __forceinline__ float warp_sum(float x) {
    #pragma unroll
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

template <class T>
__global__ void __launch_bounds__(32 * kStepWarps)
bwd_prep(const BwdPrepParams p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, head = blockIdx.y, batch = blockIdx.z;
    const i64 bh = static_cast<i64>(batch) * p.heads + head;
    const u16* dout = p.dout + batch * p.do_sb + head * p.do_sh;
    const u16* out = p.out + batch * p.o_sb + head * p.o_sh;
    #pragma unroll 1
    for (int i = 0; i < kStepRowsPerWarp; ++i) {
        const int row = (blockIdx.x * kStepWarps + warp) * kStepRowsPerWarp + i;
        if (row >= p.rows_pad) return;
        float sum = 0.f;
        if (row < p.seqlen_q)
            for (int c = lane; c < p.head_dim; c += 32)
                sum += to_float<T>(dout[row * p.do_ss + c]) * to_float<T>(out[row * p.o_ss + c]);
        sum = warp_sum(sum);
        if (lane == 0) {
            const float lse = row < p.seqlen_q ? p.lse[bh * p.seqlen_q + row] : neg_inf();
            p.lse2[bh * p.rows_pad + row] = lse == neg_inf() ? -neg_inf() : lse * LOG2E;
            p.delta[bh * p.rows_pad + row] = sum;
        }
        float* dq = p.dq_accum + (bh * p.rows_pad + row) * p.dq_cols;
        for (int c = lane; c < p.dq_cols; c += 32) dq[c] = 0.f;
    }
}

// Where (row, c) of a source head is: row-major, or (frag_rows) in the Hopper backward's dQ
// blocks: a query tile's rows hold its 64 x 64 blocks (row block rb, column block cb) as block
// rb + cb * (frag_rows / 64), each in its consumer's fragment order (flash_bwd_sm90.cu): thread
// 32 w + 4 (r % 8) + (c % 8) / 2 keeps element 2 ((r % 16) / 8) + c % 2 of n-tile c / 8 at
// (128 n-tile + thread) * 4 + element, for r = 16 w + ... in the block.
__device__ __forceinline__ i64 src_at(const BwdConvertParams& p, int row, int c) {
    if (p.frag_rows == 0) return static_cast<i64>(row) * p.src_ld + c;
    const int r = row % p.frag_rows, rr = r % 64, cc = c % 64;
    const int block = r / 64 + (c / 64) * (p.frag_rows / 64);
    const int thread = 32 * (rr / 16) + 4 * (rr % 8) + (cc % 8) / 2;
    return static_cast<i64>(row - r) * p.src_ld + block * 4096 + ((cc / 8) * 128 + thread) * 4 + 2 * ((rr % 16) / 8) + cc % 2;
}

template <class T>
__global__ void __launch_bounds__(32 * kStepWarps)
bwd_convert(const BwdConvertParams p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, head = blockIdx.y, batch = blockIdx.z;
    u16* dst = p.dst + batch * p.dst_sb + head * p.dst_sh;
    const float* src = p.src + (static_cast<i64>(batch) * p.heads + head) * p.group * p.src_rows * p.src_ld;
    #pragma unroll 1
    for (int i = 0; i < kStepRowsPerWarp; ++i) {
        const int row = (blockIdx.x * kStepWarps + warp) * kStepRowsPerWarp + i;
        if (row >= p.rows) return;
        for (int c = lane; c < p.head_dim; c += 32) {
            float x = 0.f;
            if (row < p.rows_valid)
                for (int g = 0; g < p.group; ++g) x += src[static_cast<i64>(g) * p.src_rows * p.src_ld + src_at(p, row, c)];
            dst[row * p.dst_ss + c] = to_u16<T>(x * p.factor);
        }
    }
}

}  // namespace fc
