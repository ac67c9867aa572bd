// FlashAttention-2 forward on mma.sync tensor cores (sm_80 and newer).
//
//   O = softmax(scale * Q K^T + mask) V,   LSE = log(rowsum(exp(scale * Q K^T + mask)))
//
// One CTA owns BLOCK_M = WARPS * 16 * M_TILES query rows of one (batch, head);
// each warp owns M_TILES slices of 16 rows, so every warp reads the same K_j/V_j
// tile and no cross-warp reduction is needed. For each key tile j (BLOCK_N keys):
//
//   S    = Q_i K_j^T * scale * log2(e)                (fp32, registers)
//   m'   = max(m, rowmax(S));  P = exp2(S - m')
//   l    = l * exp2(m - m') + rowsum(P)
//   O    = O * exp2(m - m') + P V_j                    (P re-packed in registers
//                                                       as the A operand)
// and at the end O /= l, LSE = (m + log2 l) * ln 2.
//
// Masking (key >= Sk, causal key > query + Sk - Sq, i.e. bottom-right aligned)
// is applied only to the key tiles that need it; tiles entirely above the
// causal diagonal are never loaded. A row with no visible key gets O = 0 and
// LSE = -inf.
//
// Variants (V, kernels/variant.cuh): windows narrow each CTA's key tiles to the ones its rows
// see (a window's cost grows with Sq * (left + right)); softcap, ALiBi and bias rewrite the
// scores in variant_scores. fc::Plain compiles to the kernel without them.
//
// Sequences (S, kernels/sequence.cuh): Dense batches, packed varlen sequences (a CTA past its
// sequence's rows exits), or a KV cache (paged: a K/V tile in one page copied as a contiguous
// one, tiles over smaller pages gathered row by row, gather_kv).
// GQA packing (KV cache, pack > 1): a tile's rows are (query, head) pairs of the pack query
// heads that share a kv head, so K/V stream once per kv head (decode's 1 query per head fills
// a tile). Split-KV (KV cache, splits > 1): the grid's x holds query tiles x splits; each split
// takes an equal share of its tile's key tiles and writes float32 partial outputs and LSE (o_accum,
// lse_accum) that merge_states combines.
//
// Shared memory: Q (BLOCK_M rows), STAGES x (K_j, V_j) (BLOCK_N rows each), rows padded
// to HEAD_DIM + 8 elements so that the 8 rows of each ldmatrix land on distinct
// banks. Loads are cp.async 16 B, zero-filled past Sq/Sk and past the runtime
// head dim (HEAD_DIM is the head dim rounded up to the template's size).
// Pipeline: K/V tiles live in a ring of STAGES slots; tile j + STAGES - 1 is
// fetched while tile j is computed, so one barrier per tile suffices.
// The host mirrors smem_bytes() in flashcore_cupy/configs.py.
#include "grid.cuh"
#include "mma_sm80.cuh"
#include "softmax.cuh"
#include "variant.cuh"
#include "sequence.cuh"
#include "split_kv.cuh"
// FwdParams, the one by-value argument (one is far cheaper to pass than 23), declared in
// flashcore_cupy/params.py, which launch.py packs it from.
#include "params_sm80.cuh"

namespace fc {

template <int HEAD_DIM, int WARPS, int M_TILES, int BLOCK_N, int STAGES>
struct FwdTile {
    static constexpr int kThreads = WARPS * 32;
    static constexpr int kWarpRows = 16 * M_TILES;
    static constexpr int kBlockM = WARPS * kWarpRows;
    static constexpr int kRowStride = HEAD_DIM + 8;      // elements, see the header
    static constexpr int kDSteps = HEAD_DIM / 16;       // k-steps of Q K^T
    static constexpr int kDTiles = HEAD_DIM / 8;        // n8 tiles of O
    static constexpr int kNTiles = BLOCK_N / 8;         // n8 tiles of S
    static constexpr int kKvSteps = BLOCK_N / 16;       // k-steps of P V
    // Q fragments (M_TILES * HEAD_DIM / 4 registers) stay in registers while
    // they fit beside O and S; past that Q is re-read from shared memory per k-step.
    static constexpr bool kQInRegs = M_TILES * HEAD_DIM <= 128;
    static constexpr int kSmemQ = kBlockM * kRowStride;     // elements
    static constexpr int kSmemKV = BLOCK_N * kRowStride;    // one K or V tile, elements
    static constexpr u32 kSmemBytes = 2 * (kSmemQ + 2 * STAGES * kSmemKV);   // Q, the K tiles, the V tiles

    static_assert(HEAD_DIM % 32 == 0 && HEAD_DIM <= 256, "HEAD_DIM: multiple of 32 up to 256");
    static_assert(BLOCK_N % 16 == 0, "BLOCK_N: multiple of 16");
    static_assert(WARPS >= 1 && WARPS <= 16 && M_TILES >= 1, "bad warp layout");
    static_assert(STAGES >= 2 && STAGES <= 8, "STAGES: 2..8 K/V tiles in flight");
};

// ROWS x HEAD_DIM tile, global (row stride `ld`) -> padded shared memory at
// byte address `s`. Thread t copies 16-byte chunk t % kChunks of rows
// t / kChunks + pass * kRowsPerPass: one pointer and compile-time steps, which
// keeps registers free (threads past kRowsPerPass whole rows sit out).
template <class Tile, int ROWS>
__device__ __forceinline__ void load_tile(u32 s, const u16* g, i64 ld, int rows_valid,
                                          int cols_valid, int tid) {
    constexpr int kChunks = Tile::kDTiles;   // 16-byte chunks per row
    constexpr int kRowsPerPass = Tile::kThreads / kChunks;
    const int r0 = tid / kChunks, c = tid % kChunks;
    if (r0 >= kRowsPerPass) return;
    const bool col_ok = c * 8 < cols_valid;
    const u16* src = g + r0 * ld + c * 8;
    const u32 dst = s + 2 * (r0 * Tile::kRowStride + c * 8);
    #pragma unroll
    for (int pass = 0; pass < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++pass) {
        const int r = r0 + pass * kRowsPerPass;
        if (ROWS % kRowsPerPass != 0 && r >= ROWS) break;
        const bool ok = col_ok && r < rows_valid;
        cp_async_16(dst + 2 * pass * kRowsPerPass * Tile::kRowStride,
                    ok ? src + pass * kRowsPerPass * ld : g, ok ? 16 : 0);
    }
}

// load_tile's copy with row r's source from row_src(r): its address, or null (the row is
// zero-filled and nothing is read): a GQA-packed Q tile's rows.
template <class Tile, int ROWS, class RowSrc>
__device__ __forceinline__ void gather_tile(u32 s, RowSrc row_src, const u16* any, int cols_valid, int tid) {
    constexpr int kChunks = Tile::kDTiles;
    constexpr int kRowsPerPass = Tile::kThreads / kChunks;
    const int r0 = tid / kChunks, c = tid % kChunks;
    if (r0 >= kRowsPerPass) return;
    const bool col_ok = c * 8 < cols_valid;
    const u32 dst = s + 2 * (r0 * Tile::kRowStride + c * 8);
    #pragma unroll
    for (int pass = 0; pass < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++pass) {
        const int r = r0 + pass * kRowsPerPass;
        if (ROWS % kRowsPerPass != 0 && r >= ROWS) break;
        const u16* src = col_ok ? row_src(r) : nullptr;
        cp_async_16(dst + 2 * pass * kRowsPerPass * Tile::kRowStride, src != nullptr ? src + c * 8 : any,
                    src != nullptr ? 16 : 0);
    }
}

// A paged K/V tile pair: row r of both is cache row phys_row(r) (page * page_size + slot: the
// host checks that a page's slots are its stride), or -1 (zero-filled, nothing read). Each lane
// looks up rows lane and lane + 32 (ROWS <= 64) once, and the copies take them by shuffles: a
// lookup per copied row, each behind the previous row's copies, ran paged decode at a quarter
// of the contiguous cache's speed. Every lane of the warp runs the passes (the shuffles).
template <class Tile, int ROWS, class PhysRow>
__device__ __forceinline__ void gather_kv(u32 s_k, u32 s_v, const u16* k, const u16* v, i64 k_ss, i64 v_ss,
                                          PhysRow phys_row, int cols_valid, int tid) {
    static_assert(ROWS <= 64, "gather_kv: a lane looks up two rows");
    constexpr int kChunks = Tile::kDTiles;
    constexpr int kRowsPerPass = Tile::kThreads / kChunks;
    const int lane = tid % 32;
    const int phys_lo = lane < ROWS ? phys_row(lane) : -1;
    const int phys_hi = ROWS > 32 && lane + 32 < ROWS ? phys_row(lane + 32) : -1;
    const int r0 = tid / kChunks, c = tid % kChunks;
    const bool active = r0 < kRowsPerPass && c * 8 < cols_valid;
    const u32 at = 2 * (r0 * Tile::kRowStride + c * 8);
    #pragma unroll
    for (int pass = 0; pass < (ROWS + kRowsPerPass - 1) / kRowsPerPass; ++pass) {
        const int r = r0 + pass * kRowsPerPass;
        const int lo = __shfl_sync(0xffffffffu, phys_lo, r % 32);
        const int hi = ROWS > 32 ? __shfl_sync(0xffffffffu, phys_hi, r % 32) : -1;
        const int phys = r < 32 ? lo : hi;
        if (!active || r >= ROWS) continue;
        const bool ok = phys >= 0;
        const u32 dst = at + 2 * pass * kRowsPerPass * Tile::kRowStride;
        cp_async_16(s_k + dst, ok ? k + phys * k_ss + c * 8 : k, ok ? 16 : 0);
        cp_async_16(s_v + dst, ok ? v + phys * v_ss + c * 8 : v, ok ? 16 : 0);
    }
}

// Per-lane byte addresses of the three ldmatrix patterns within a tile; the
// fragment offsets added to them below are compile-time immediates.
//  A (Q, 16x16 row-major):    lane -> row lane%16, column 8*(lane/16)
//  B (K as K^T, two n8 tiles): lane -> key lane%8 + 8*(lane/16), column 8*((lane/8)%2)
//  B (V, transposed):          lane -> key lane%8 + 8*((lane/8)%2), column 8*(lane/16)
template <class Tile>
struct LaneAddrs {
    u32 q, k, v;
    __device__ __forceinline__ LaneAddrs(const u16* sQ, const u16* sK, const u16* sV, int warp_row,
                                         int lane)
        : q(smem_addr(sQ + (warp_row + lane % 16) * Tile::kRowStride + (lane / 16) * 8)),
          k(smem_addr(sK + (lane % 8 + (lane / 16) * 8) * Tile::kRowStride + ((lane / 8) % 2) * 8)),
          v(smem_addr(sV + (lane % 8 + ((lane / 8) % 2) * 8) * Tile::kRowStride + (lane / 16) * 8)) {}
};

// Byte offset of element (row, col) in a padded tile.
template <class Tile>
__device__ constexpr u32 tile_offset(int row, int col) { return 2u * (row * Tile::kRowStride + col); }

// S(rows of this warp, BLOCK_N) = Q K_j^T
template <class T, class Tile, int M_TILES>
__device__ __forceinline__ void qk_gemm(float (&s)[M_TILES][Tile::kNTiles][4],
                                        const u32 (&q_frag)[M_TILES][Tile::kDSteps][4],
                                        u32 q_addr, u32 k_addr) {
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int nt = 0; nt < Tile::kNTiles; ++nt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;

    #pragma unroll
    for (int ks = 0; ks < Tile::kDSteps; ++ks) {
        u32 a[M_TILES][4];
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
            if constexpr (Tile::kQInRegs) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[mt][ks][e];
            } else {
                ldmatrix_x4(a[mt], q_addr + tile_offset<Tile>(mt * 16, ks * 16));
            }
        }
        #pragma unroll
        for (int np = 0; np < Tile::kNTiles / 2; ++np) {
            // B = K^T: rows of K are the n index; non-transposed ldmatrix gives b0/b1
            // of n-tiles 2np and 2np+1.
            u32 b[4];
            ldmatrix_x4(b, k_addr + tile_offset<Tile>(np * 16, ks * 16));
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                mma_16816<T>(s[mt][2 * np], a[mt], b[0], b[1]);
                mma_16816<T>(s[mt][2 * np + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// O += P V_j, with P taken straight from the S accumulators.
template <class T, class Tile, int M_TILES>
__device__ __forceinline__ void pv_gemm(float (&o)[M_TILES][Tile::kDTiles][4],
                                        const float (&p)[M_TILES][Tile::kNTiles][4],
                                        u32 v_addr) {
    #pragma unroll
    for (int kk = 0; kk < Tile::kKvSteps; ++kk) {
        u32 a[M_TILES][4];
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) pack_kstep<T>(a[mt], p[mt][2 * kk], p[mt][2 * kk + 1]);
        #pragma unroll
        for (int dp = 0; dp < Tile::kDTiles / 2; ++dp) {
            // B = V (k = key, n = d) stored [key][d]: the transposed ldmatrix gives
            // b0/b1 of d-tiles 2dp and 2dp+1.
            u32 b[4];
            ldmatrix_x4_trans(b, v_addr + tile_offset<Tile>(kk * 16, dp * 16));
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                mma_16816<T>(o[mt][2 * dp], a[mt], b[0], b[1]);
                mma_16816<T>(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
            }
        }
    }
}


// The dynamic shared memory a launch of flash_fwd gives (its template arguments):
// configs.Sm80FwdConfig.smem_bytes mirrors it, and test_compile holds the two equal for every
// instantiation it compiles.
template <class T, int HEAD_DIM, int WARPS, int M_TILES, int BLOCK_N, int STAGES, class V = Plain,
          class S = Dense>
__device__ constexpr u32 flash_fwd_smem() { return FwdTile<HEAD_DIM, WARPS, M_TILES, BLOCK_N, STAGES>::kSmemBytes; }

template <class T, int HEAD_DIM, int WARPS, int M_TILES, int BLOCK_N, int STAGES, class V = Plain,
          class S = Dense>
__global__ void __launch_bounds__(WARPS * 32, 1)
flash_fwd(const FwdParams p) {
    using Tile = FwdTile<HEAD_DIM, WARPS, M_TILES, BLOCK_N, STAGES>;
    // GQA packing (KV cache, pack > 1): tile row r is query r / pack of query head head + r % pack
    // (kernels/sequence.cuh's packed_row), the grid's y one block of pack heads.
    constexpr bool kPacked = S::kCache;
    const int pack = kPacked ? p.pack : 1;
    const HeadBatch at_grid = fold_head_batch(blockIdx.y, gridDim.y, blockIdx.z, p.grid_heads);
    if (at_grid.batch >= p.batch) return;
    const int head = at_grid.head * pack, batch = at_grid.batch;
    const SeqSpan seq = seq_span<S>(p, batch);
    // HEAD_DIM covers q's and k's head dim and v's (head_dim_v: the output's); columns past each
    // load as zeros, so S and O come out the same, O's past head_dim_v never stored.
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, head_dim = p.head_dim, head_dim_v = p.head_dim_v;
    const bool causal = p.causal;
    extern __shared__ __align__(16) unsigned char smem[];
    u16* sQ = reinterpret_cast<u16*>(smem);
    u16* sK = sQ + Tile::kSmemQ;                 // STAGES K tiles, then STAGES V tiles
    u16* sV = sK + STAGES * Tile::kSmemKV;
    constexpr u32 kSlotBytes = 2 * Tile::kSmemKV;

    const int tid = threadIdx.x, lane = tid % 32;
    const int warp_row = (tid / 32) * Tile::kWarpRows;
    int m_block = gridDim.x - 1 - blockIdx.x;   // longest causal rows start first
    int split = 0;
    if constexpr (S::kSplitKV) {
        split = m_block % p.splits;
        m_block /= p.splits;
    }
    const int row0 = m_block * Tile::kBlockM;
    const int rows = seqlen_q * pack;   // the tile rows of this (batch, head block)
    if constexpr (!S::kDense)
        if (row0 >= rows) return;   // a varlen tile past its sequence (the grid fits the longest)
    const int head_kv = head / p.heads_per_kv;
    // The queries of this tile's rows: [q_first, q_first + q_rows)
    const int q_first = kPacked ? row0 / pack : row0;
    const int q_rows = kPacked ? (min(row0 + Tile::kBlockM, rows) - 1) / pack - q_first + 1 : Tile::kBlockM;

    const u16* q_tile = p.q + batch * p.q_sb + head * p.q_sh + (seq.q_row0 + row0) * p.q_ss;
    // a paged cache's batch stride is its page stride: gather_kv's rows go through cache_page
    const int kv_batch = S::kPaged ? 0 : batch;
    const u16* k_head = p.k + kv_batch * p.k_sb + head_kv * p.k_sh + seq.k_row0 * p.k_ss;
    const u16* v_head = p.v + kv_batch * p.v_sb + head_kv * p.v_sh + seq.k_row0 * p.v_ss;

    // Key j is visible to query i iff j <= i + causal_diag (bottom-right aligned).
    const int causal_diag = seqlen_k - seqlen_q;
    // Key tiles [j_begin, n_blocks): past them every key is hidden from this CTA's rows.
    int j_begin = 0, n_blocks;
    ScoreMod mod;
    if constexpr (V::kPlain) {
        const int kv_end = FC_KEY_END(seqlen_k, causal_diag, causal, q_first, q_rows);
        n_blocks = FC_KEY_TILES(BLOCK_N, kv_end);
    } else {
        mod = seq_score_mod<V, S>(p, batch, head, seq);   // this sequence's masks (packed or cached)
        const TileRange tiles = window_tiles(mod, BLOCK_N, q_first, min(q_rows, seqlen_q - q_first));
        j_begin = tiles.first;
        n_blocks = tiles.end;
    }
    if constexpr (S::kSplitKV) split_share(j_begin, n_blocks, split, p.splits);   // split-KV: this split's share

    const LaneAddrs<Tile> addr(sQ, sK, sV, warp_row, lane);
    // K_j and V_j into ring slot j % STAGES, as one commit group.
    auto load_kv = [&](int j) {
        const int key0 = j * BLOCK_N, slot = j % STAGES;
        if constexpr (S::kPageTiles) {   // the tile lies in one page: one lookup, load_tile's copies
            const CachePage at = cache_page(p, batch, key0);
            const i64 row = at.page < 0 ? 0 : static_cast<i64>(at.page) * p.page_size + at.slot;
            const int valid = at.page < 0 ? 0 : seqlen_k - key0;   // a page outside the pool: zeros
            load_tile<Tile, BLOCK_N>(smem_addr(sK) + slot * kSlotBytes, k_head + row * p.k_ss, p.k_ss, valid,
                                     head_dim, tid);
            load_tile<Tile, BLOCK_N>(smem_addr(sV) + slot * kSlotBytes, v_head + row * p.v_ss, p.v_ss, valid,
                                     head_dim_v, tid);
        } else if constexpr (S::kPaged) {
            gather_kv<Tile, BLOCK_N>(smem_addr(sK) + slot * kSlotBytes, smem_addr(sV) + slot * kSlotBytes, k_head,
                                     v_head, p.k_ss, p.v_ss, [&](int r) {
                const CachePage at = key0 + r < seqlen_k ? cache_page(p, batch, key0 + r) : CachePage{-1, 0};
                return at.page < 0 ? -1 : at.page * p.page_size + at.slot;
            }, head_dim, tid);
        } else {
            load_tile<Tile, BLOCK_N>(smem_addr(sK) + slot * kSlotBytes, k_head + key0 * p.k_ss, p.k_ss,
                                     seqlen_k - key0, head_dim, tid);
            load_tile<Tile, BLOCK_N>(smem_addr(sV) + slot * kSlotBytes, v_head + key0 * p.v_ss, p.v_ss,
                                     seqlen_k - key0, head_dim_v, tid);
        }
    };

    // Prologue: Q joins tile 0's group; tiles 1..STAGES-2 follow, one group each
    // (empty groups past the end keep the wait counts uniform).
    if constexpr (kPacked) {
        const u16* q_batch = p.q + batch * p.q_sb;
        gather_tile<Tile, Tile::kBlockM>(smem_addr(sQ), [&](int r) -> const u16* {
            if (row0 + r >= rows) return nullptr;
            const PackedRow at = packed_row(row0 + r, pack, head);
            return q_batch + at.head * p.q_sh + at.query * p.q_ss;
        }, p.q, head_dim, tid);
    } else {
        load_tile<Tile, Tile::kBlockM>(smem_addr(sQ), q_tile, p.q_ss, seqlen_q - row0, head_dim, tid);
    }
    #pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) {
        if (j_begin + j < n_blocks) load_kv(j_begin + j);
        cp_async_commit();
    }

    float o_acc[M_TILES][Tile::kDTiles][4];
    float m[M_TILES][2], l[M_TILES][2];
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        #pragma unroll
        for (int dt = 0; dt < Tile::kDTiles; ++dt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) o_acc[mt][dt][e] = 0.f;
        m[mt][0] = m[mt][1] = neg_inf();
        l[mt][0] = l[mt][1] = 0.f;
    }
    u32 q_frag[M_TILES][Tile::kDSteps][4];

    for (int j = j_begin; j < n_blocks; ++j) {
        cp_async_wait<STAGES - 2>();   // tile j (and Q) landed for this thread ...
        __syncthreads();               // ... and for all; every warp is done with tile j-1
        if (j + STAGES - 1 < n_blocks) load_kv(j + STAGES - 1);   // into tile j-1's slot
        cp_async_commit();

        if constexpr (Tile::kQInRegs) {
            if (j == j_begin) {
                #pragma unroll
                for (int mt = 0; mt < M_TILES; ++mt)
                    #pragma unroll
                    for (int ks = 0; ks < Tile::kDSteps; ++ks)
                        ldmatrix_x4(q_frag[mt][ks], addr.q + tile_offset<Tile>(mt * 16, ks * 16));
            }
        }

        const int key0 = j * BLOCK_N;
        const u32 slot_offset = (j % STAGES) * kSlotBytes;
        float s[M_TILES][Tile::kNTiles][4];
        BiasFrag<T, V::kBias, M_TILES, Tile::kNTiles, 2> bias;   // loads in flight under the S GEMM
        if constexpr (!V::kPlain) bias.fetch(mod, row0 + warp_row, key0, lane);
        qk_gemm<T, Tile, M_TILES>(s, q_frag, addr.q, addr.k + slot_offset);
        float alpha[M_TILES][2];
        if constexpr (V::kPlain) {
            const bool needs_mask = FC_TILE_PARTIAL(BLOCK_N, seqlen_k, causal_diag, causal, key0, q_first);
            if (needs_mask)
                scale_and_mask<M_TILES, Tile::kNTiles, true, 2, kPacked>(s, p.scale_log2, row0 + warp_row, key0,
                                                                         seqlen_k, causal_diag, causal, lane, pack);
            else
                scale_and_mask<M_TILES, Tile::kNTiles, false>(s, p.scale_log2, 0, 0, 0, 0, false, lane);
            softmax_update<M_TILES, Tile::kNTiles>(s, m, l, alpha, p.scale_log2);
        } else {
            const bool needs_mask = tile_partial(mod, BLOCK_N, key0, q_first, q_rows);
            variant_scores<V, M_TILES, Tile::kNTiles, 2, decltype(bias), kPacked>(s, mod, bias, needs_mask,
                                                                                  row0 + warp_row, key0, lane, pack);
            softmax_update<M_TILES, Tile::kNTiles>(s, m, l, alpha, mod.units);
        }
        rescale_rows<M_TILES, Tile::kDTiles>(o_acc, alpha);
        pv_gemm<T, Tile, M_TILES>(o_acc, s, addr.v + slot_offset);
    }

    // Epilogue: O /= l, staged through the Q tile for 16-byte coalesced stores.
    cp_async_wait<0>();
    if constexpr (S::kSplitKV) {
        if (p.o_accum != nullptr) {   // split-KV: this split's float32 partials, from the registers
            write_partials<Tile::kDTiles, M_TILES>(p, o_acc, m, l, split, batch, head, row0 + warp_row, rows, pack, lane);
            if (p.split_count != nullptr) {   // the tile's last split merges them (LSE (B, Hq, Sq))
                const int tile = (batch * p.grid_heads + at_grid.head) * (gridDim.x / p.splits) + m_block;
                const int heads = p.grid_heads * pack;
                merge_if_last_split<T, HEAD_DIM>(
                    p, tile, batch, head, row0, min(row0 + Tile::kBlockM, rows), pack, tid, WARPS * 32,
                    reinterpret_cast<int*>(sQ), [] { __syncthreads(); },
                    [&](PackedRow at) { return (static_cast<i64>(batch) * heads + at.head) * seqlen_q + at.query; });
            }
            return;
        }
    }
    __syncthreads();
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float l_row = quad_sum(l[mt][half]);
            const float inv_l = l_row > 0.f ? 1.f / l_row : 0.f;
            const int r = warp_row + mt * 16 + lane / 4 + 8 * half;
            #pragma unroll
            for (int dt = 0; dt < Tile::kDTiles; ++dt)
                *reinterpret_cast<u32*>(sQ + r * Tile::kRowStride + dt * 8 + 2 * (lane % 4)) =
                    pack2<T>(o_acc[mt][dt][2 * half] * inv_l, o_acc[mt][dt][2 * half + 1] * inv_l);
            if (p.lse != nullptr && lane % 4 == 0 && row0 + r < rows) {
                if constexpr (kPacked) {
                    const PackedRow at = packed_row(row0 + r, pack, head);
                    p.lse[batch * p.lse_sb + at.head * p.lse_sh + at.query * p.lse_ss] = row_lse(m[mt][half], l_row);
                } else {
                    p.lse[batch * p.lse_sb + head * p.lse_sh + (seq.q_row0 + row0 + r) * p.lse_ss] =
                        row_lse(m[mt][half], l_row);
                }
            }
        }
    __syncthreads();
    u16* o_tile = p.o + batch * p.o_sb + head * p.o_sh + (seq.q_row0 + row0) * p.o_ss;
    constexpr int kChunks = HEAD_DIM / 8;
    #pragma unroll
    for (int i = tid; i < Tile::kBlockM * kChunks; i += Tile::kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        if (row0 + r < rows && c * 8 < head_dim_v) {
            u16* dst = o_tile + r * p.o_ss;
            if constexpr (kPacked) {
                const PackedRow at = packed_row(row0 + r, pack, head);
                dst = p.o + batch * p.o_sb + at.head * p.o_sh + at.query * p.o_ss;
            }
            *reinterpret_cast<uint4*>(dst + c * 8) = *reinterpret_cast<const uint4*>(sQ + r * Tile::kRowStride + c * 8);
        }
    }
}

}  // namespace fc
