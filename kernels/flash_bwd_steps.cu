// The backward's steps around its main kernel (flash_bwd_sm80.cu or flash_bwd_sm90.cu), one
// launch each:
//
//   bwd_prep:    per query row, delta = rowsum(dO * O) in float32 and the forward's LSE in
//                log2 units (+inf for a row that saw no key: P = exp2(S - LSE) is 0 there),
//                rows_pad rows per (batch, head) (past Sq: delta 0, LSE +inf), and the row of
//                the float32 dQ accumulator zeroed;
//   bwd_convert: float32 rows (dQ's accumulator, GQA's dK / dV sums) times a factor, summed
//                over `group` consecutive source heads, into a 16-bit array with any (batch,
//                head, seq) strides; rows past the sums' get zeros (keys no query sees). A CTA
//                per 64 x 64 block, through shared memory.
#include "grid.cuh"
#include "mma_sm80.cuh"
// BwdPrepParams and BwdConvertParams, declared in flashcore_cupy/params.py.
#include "params_bwd_steps.cuh"

namespace fc {

constexpr int kStepWarps = 8;   // 256 threads a block (configs.BwdStepConfig)

// bwd_prep: 8 threads a row (16-byte loads of dout and out, summed across the 8), 32 rows a
// block; the block's rows of dQ's accumulator zeroed in 16-byte stores.
template <class T>
__global__ void __launch_bounds__(32 * kStepWarps)
bwd_prep(const __grid_constant__ BwdPrepParams p) {
    constexpr int kLanes = 8, kRows = 32 * kStepWarps / kLanes;
    const HeadBatch at_grid = fold_head_batch(blockIdx.y, gridDim.y, blockIdx.z, p.heads);
    if (at_grid.batch >= p.batch) return;
    const int head = at_grid.head, batch = at_grid.batch, sub = threadIdx.x % kLanes;
    const int row = blockIdx.x * kRows + threadIdx.x / kLanes;
    const i64 bh = static_cast<i64>(batch) * p.heads + head;
    float sum = 0.f;
    if (row < p.seqlen_q) {
        // validation.py: rows start 16-byte aligned (address and strides)
        const u16* dout = p.dout + batch * p.do_sb + head * p.do_sh + row * p.do_ss;
        const u16* out = p.out + batch * p.o_sb + head * p.o_sh + row * p.o_ss;
        for (int c = 8 * sub; c < p.head_dim; c += 8 * kLanes) {
            const uint4 a = *reinterpret_cast<const uint4*>(dout + c), b = *reinterpret_cast<const uint4*>(out + c);
            const u32 aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
            #pragma unroll
            for (int k = 0; k < 4; ++k)
                sum += to_float<T>(static_cast<u16>(aw[k] & 0xffffu)) * to_float<T>(static_cast<u16>(bw[k] & 0xffffu))
                     + to_float<T>(static_cast<u16>(aw[k] >> 16)) * to_float<T>(static_cast<u16>(bw[k] >> 16));
        }
    }
    #pragma unroll
    for (int o = kLanes / 2; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (sub == 0 && row < p.rows_pad) {
        const float lse = row < p.seqlen_q ? p.lse[bh * p.seqlen_q + row] : neg_inf();
        p.lse2[bh * p.rows_pad + row] = lse == neg_inf() ? -neg_inf() : lse * LOG2E;
        p.delta[bh * p.rows_pad + row] = sum;
    }
    const int row0 = blockIdx.x * kRows, rows = min(kRows, p.rows_pad - row0);
    float4* dq = reinterpret_cast<float4*>(p.dq_accum + (bh * p.rows_pad + row0) * p.dq_cols);
    for (int at = threadIdx.x; at < rows * p.dq_cols / 4; at += 32 * kStepWarps) dq[at] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// bwd_convert: a CTA per 64 x 64 block of a destination head. Its float32 source in 16-byte
// vectors (coalesced): row-major, 4 columns of a row; or (frag_rows) in the Hopper backward's
// dQ blocks, a query tile's rows holding its 64 x 64 blocks (row block rb, column block cb) as
// block rb + cb * (frag_rows / 64), each in its consumer's fragment order (flash_bwd_sm90.cu):
// vector 128 i + j of a block is thread j's n-tile i, rows 16 (j / 32) + (j % 32) / 4 (+ 8),
// columns 8 i + 2 (j % 4) (+ 1). Summed over the group, times the factor, as 16-bit into
// shared memory (zeros past rows_valid); then out in 16-byte row chunks.
constexpr int kConvertBlock = 64, kConvertPitch = kConvertBlock + 8;   // u16 (rows 16-byte aligned)

template <class T>
__global__ void __launch_bounds__(32 * kStepWarps)
bwd_convert(const __grid_constant__ BwdConvertParams p) {
    __shared__ __align__(16) u16 tile[kConvertBlock * kConvertPitch];
    const int col_blocks = (p.head_dim + kConvertBlock - 1) / kConvertBlock;
    const int row0 = (blockIdx.x / col_blocks) * kConvertBlock, col0 = (blockIdx.x % col_blocks) * kConvertBlock;
    const HeadBatch at_grid = fold_head_batch(blockIdx.y, gridDim.y, blockIdx.z, p.heads);
    if (at_grid.batch >= p.batch) return;
    const int head = at_grid.head, batch = at_grid.batch;
    const float* src = p.src + (static_cast<i64>(batch) * p.heads + head) * p.group * p.src_rows * p.src_ld;
    const i64 group_stride = static_cast<i64>(p.src_rows) * p.src_ld;
    i64 block_at = 0;   // frag_rows: where this block's 4096 floats start
    if (p.frag_rows) {
        const int r = row0 % p.frag_rows;
        block_at = static_cast<i64>(row0 - r) * p.src_ld + (r / 64 + (col0 / 64) * (p.frag_rows / 64)) * 4096;
    }
    constexpr int kVectors = kConvertBlock * kConvertBlock / 4, kThreads = 32 * kStepWarps;
    constexpr int kPerThread = kVectors / kThreads;
    // This thread's vectors: v = it * kThreads + threadIdx.x; their first element (r, c) in the
    // block; frag: the vector's second pair 8 rows on, else 2 columns on.
    const int rows_on = p.frag_rows ? 8 : 0;
    auto place = [&](int it, int& r, int& c) {
        const int v = it * kThreads + threadIdx.x, j = v % 128;
        r = p.frag_rows ? 16 * (j / 32) + (j % 32) / 4 : v / (kConvertBlock / 4);
        c = p.frag_rows ? 8 * (v / 128) + 2 * (j % 4) : 4 * (v % (kConvertBlock / 4));
    };
    float4 x[kPerThread];
    #pragma unroll
    for (int it = 0; it < kPerThread; ++it) x[it] = make_float4(0.f, 0.f, 0.f, 0.f);
    #pragma unroll 1
    for (int g = 0; g < p.group; ++g) {
        const float* from = src + g * group_stride;
        #pragma unroll
        for (int it = 0; it < kPerThread; ++it) {
            int r, c;
            place(it, r, c);
            if (row0 + r >= p.rows_valid || col0 + c >= p.head_dim) continue;
            const i64 at = p.frag_rows ? block_at + 4 * (it * kThreads + threadIdx.x)
                                       : static_cast<i64>(row0 + r) * p.src_ld + col0 + c;
            const float4 y = *reinterpret_cast<const float4*>(from + at);
            x[it].x += y.x; x[it].y += y.y; x[it].z += y.z; x[it].w += y.w;
        }
    }
    #pragma unroll
    for (int it = 0; it < kPerThread; ++it) {
        int r, c;
        place(it, r, c);
        if (rows_on && row0 + r + rows_on >= p.rows_valid) { x[it].z = 0.f; x[it].w = 0.f; }
        *reinterpret_cast<u32*>(tile + r * kConvertPitch + c) = pack2<T>(x[it].x * p.factor, x[it].y * p.factor);
        *reinterpret_cast<u32*>(tile + (r + rows_on) * kConvertPitch + c + (rows_on ? 0 : 2)) =
            pack2<T>(x[it].z * p.factor, x[it].w * p.factor);
    }
    __syncthreads();
    constexpr int kChunks = kConvertBlock * kConvertBlock / 8;
    u16* dst = p.dst + batch * p.dst_sb + head * p.dst_sh;
    #pragma unroll
    for (int it = 0; it < kChunks / kThreads; ++it) {
        const int q = it * kThreads + threadIdx.x, r = q / (kConvertBlock / 8), c = 8 * (q % (kConvertBlock / 8));
        const int row = row0 + r, col = col0 + c;
        if (row >= p.rows || col >= p.head_dim) continue;
        const uint4 chunk = *reinterpret_cast<const uint4*>(tile + r * kConvertPitch + c);
        // validation.py: every 16-bit array's rows start 16-byte aligned (address and strides)
        *reinterpret_cast<uint4*>(dst + row * p.dst_ss + col) = chunk;
    }
}

}  // namespace fc
