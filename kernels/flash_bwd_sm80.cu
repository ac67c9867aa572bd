// FlashAttention-2 backward on mma.sync tensor cores (sm_80 and newer): dQ, dK, dV of
//
//   O = softmax(S) V,   S = the forward's scores (the plain mask, or variant.cuh's score step)
//
// given dO, the forward's LSE and delta = rowsum(dO * O) (fp32, flash_bwd_steps.cu's bwd_prep). One CTA owns
// BLOCK_N keys of one (batch, query head) and loops over the query tiles of BLOCK_M = 16 WARPS
// rows that see any of them (the rows of `rows_seeing`, variant.cuh: the causal diagonal or a
// window bound which tiles need no visit). Per query tile i:
//
//   S   = Q_i K^T                         warp w: query rows 16w.. of the tile, all BLOCK_N keys
//         -> the forward's score step (plain mask, or variant_scores), so P is its softmax:
//   P   = exp2(S * units - LSE * log2 e)  (0 where a row sees no key: its LSE is -inf)
//   dP  = dO_i V^T,   dS = P * (dP - delta)   (added into dbias where asked; then softcap's
//                                              1 - tanh^2 of the capped score)
//   dQ_i += dS K                          fp32 atomics into dq_accum (the host scales it)
//   P, dS -> shared memory, then          warp w: 16 keys of the tile x one of D_SPLIT parts
//   dV  += P^T dO_i,   dK += dS^T Q_i     of the head dim (registers, over every query tile)
//
// and at the end dK *= scale; dK and dV are stored in the inputs' type, or with GQA (a kv head
// shared by heads_per_kv query heads, each its own CTA) added into fp32 accumulators the host
// converts (deterministic mode: one per query head, summed by the host; dQ's adds ordered by a
// semaphore per query tile). Every GEMM is mma.sync m16n8k16 through ldmatrix; P^T and dS^T come from shared
// memory by the transposing ldmatrix.
//
// BLOCK_N = BLOCK_M / D_SPLIT: splitting the head dim keeps dK and dV (16 keys x HEAD_DIM /
// D_SPLIT each, a warp) in registers at large head dims.
// Shared memory: K, V (BLOCK_N rows of HEAD_DIM + 8 elements: the forward's padding), Q_i, dO_i
// (BLOCK_M rows), P and dS (BLOCK_M rows of BLOCK_N + 8), the tile's LSE and delta. Loads are cp.async 16 B,
// zero-filled past Sq/Sk and the runtime head dim. The host mirrors smem_bytes() in
// flashcore_cupy/configs.py (Sm80BwdConfig).
#include "grid.cuh"
#include "mma_sm80.cuh"
#include "softmax.cuh"
#include "variant.cuh"
// BwdParams, the one by-value argument, declared in flashcore_cupy/params.py.
#include "params_sm80_bwd.cuh"

namespace fc {

template <int HEAD_DIM, int WARPS, int D_SPLIT>
struct BwdTile {
    static constexpr int kHeadDim = HEAD_DIM;
    static constexpr int kThreads = WARPS * 32;
    static constexpr int kBlockM = 16 * WARPS;           // query rows of a tile: 16 a warp
    static constexpr int kBlockN = kBlockM / D_SPLIT;    // keys of the CTA: 16 a warp of each D part
    static constexpr int kDPart = HEAD_DIM / D_SPLIT;    // dK / dV columns a warp accumulates
    static constexpr int kRowStride = HEAD_DIM + 8;      // Q, K, V, dO rows, elements
    static constexpr int kPStride = kBlockN + 8;         // P, dS rows, elements
    static constexpr int kDSteps = HEAD_DIM / 16;        // k-steps over the head dim
    static constexpr int kDTiles = HEAD_DIM / 8;         // n8 tiles over the head dim
    static constexpr int kPartTiles = kDPart / 8;        // n8 tiles of a warp's dK / dV part
    static constexpr int kNTiles = kBlockN / 8;          // n8 tiles over the keys
    static constexpr int kKeySteps = kBlockN / 16;       // k-steps over the keys (dQ)
    static constexpr int kRowSteps = kBlockM / 16;       // k-steps over the query rows (dK, dV)
    static constexpr int kDChunk = 32;                   // dQ columns per pass (registers)
    static constexpr int kSmemKV = kBlockN * kRowStride;    // K or V, elements
    static constexpr int kSmemQ = kBlockM * kRowStride;     // Q_i or dO_i, elements
    static constexpr int kSmemP = kBlockM * kPStride;       // P or dS, elements
    // K, V, Q_i, dO_i, P, dS, then the query tile's LSE and delta (floats)
    static constexpr u32 kSmemBytes = 2 * (2 * kSmemKV + 2 * kSmemQ + 2 * kSmemP) + 2 * 4 * kBlockM;
    static_assert(HEAD_DIM % 32 == 0 && HEAD_DIM <= 256, "HEAD_DIM: multiple of 32 up to 256");
    static_assert(WARPS == 2 || WARPS == 4 || WARPS == 8, "WARPS: 2, 4 or 8");
    static_assert((D_SPLIT == 1 || D_SPLIT == 2 || D_SPLIT == 4) && WARPS % D_SPLIT == 0 && kDPart % 16 == 0,
                  "D_SPLIT: 1, 2 or 4 parts of the head dim, each a multiple of 16 columns");
};

// A ROWS x HEAD_DIM tile from global memory (row stride `ld`) into a padded shared tile at
// byte address `s`: 16-byte chunks, zero past rows_valid rows and cols_valid columns.
template <class Tile, int ROWS>
__device__ __forceinline__ void load_rows(u32 s, const u16* g, i64 ld, int rows_valid, int cols_valid, int tid) {
    constexpr int kChunks = Tile::kDTiles;
    #pragma unroll 2
    for (int i = tid; i < ROWS * kChunks; i += Tile::kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        const bool ok = r < rows_valid && c * 8 < cols_valid;
        cp_async_16(s + 2 * (r * Tile::kRowStride + c * 8), ok ? g + r * ld + c * 8 : g, ok ? 16 : 0);
    }
}

// acc (16 rows x BLOCK_N columns) = A B^T: A's 16 rows and B's BLOCK_N rows both row-major in
// shared memory (HEAD_DIM long, padded): S = Q K^T and dP = dO V^T. a, b: lane addresses
// (A: row lane % 16, column 8 (lane / 16); B: row lane % 8 + 8 (lane / 16), column
// 8 ((lane / 8) % 2)).
template <class T, class Tile>
__device__ __forceinline__ void gemm_rows(float (&acc)[1][Tile::kNTiles][4], u32 a, u32 b) {
    #pragma unroll
    for (int nt = 0; nt < Tile::kNTiles; ++nt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) acc[0][nt][e] = 0.f;
    #pragma unroll
    for (int ks = 0; ks < Tile::kDSteps; ++ks) {
        u32 af[4];
        ldmatrix_x4(af, a + 2 * ks * 16);
        #pragma unroll
        for (int np = 0; np < Tile::kNTiles / 2; ++np) {
            u32 bf[4];
            ldmatrix_x4(bf, b + 2 * (np * 16 * Tile::kRowStride + ks * 16));
            mma_16816<T>(acc[0][2 * np], af, bf[0], bf[1]);
            mma_16816<T>(acc[0][2 * np + 1], af, bf[2], bf[3]);
        }
    }
}

// acc (16 rows x the warp's D part) += A^T B over the tile's BLOCK_M query rows: A (BLOCK_M
// rows of BLOCK_N, P or dS) and B (BLOCK_M rows of HEAD_DIM, dO or Q) row-major in shared
// memory, the warp's 16 columns of A as its rows: dV += P^T dO, dK += dS^T Q. at: lane
// address of A's transposing loads (row lane % 8 + 8 (lane / 16), column 8 ((lane / 8) % 2) of
// the warp's keys); bt: of B's (row lane % 8 + 8 ((lane / 8) % 2), column 8 (lane / 16) of
// the warp's part).
template <class T, class Tile>
__device__ __forceinline__ void gemm_cols(float (&acc)[Tile::kPartTiles][4], u32 at, u32 bt) {
    #pragma unroll
    for (int kk = 0; kk < Tile::kRowSteps; ++kk) {
        u32 af[4];
        ldmatrix_x4_trans(af, at + 2 * kk * 16 * Tile::kPStride);
        #pragma unroll
        for (int dp = 0; dp < Tile::kPartTiles / 2; ++dp) {
            u32 bf[4];
            ldmatrix_x4_trans(bf, bt + 2 * (kk * 16 * Tile::kRowStride + dp * 16));
            mma_16816<T>(acc[2 * dp], af, bf[0], bf[1]);
            mma_16816<T>(acc[2 * dp + 1], af, bf[2], bf[3]);
        }
    }
}

// dQ of the warp's 16 rows += dS K, kDChunk columns at a time, added into dq (fp32, row stride
// ld) for the rows before seqlen_q and columns before head_dim. ds: dS as the A operand
// (pack_p); kt: lane address of K's transposing loads (as bt above).
template <class T, class Tile>
__device__ __forceinline__ void dq_add(const u32 (&ds)[Tile::kKeySteps][4], u32 kt, float* dq, i64 ld,
                                       int rows_valid, int head_dim, int lane) {
    #pragma unroll 1
    for (int d0 = 0; d0 < Tile::kHeadDim; d0 += Tile::kDChunk) {
        float acc[Tile::kDChunk / 8][4];
        #pragma unroll
        for (int dt = 0; dt < Tile::kDChunk / 8; ++dt)
            #pragma unroll
            for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
        #pragma unroll
        for (int kk = 0; kk < Tile::kKeySteps; ++kk)
            #pragma unroll
            for (int dp = 0; dp < Tile::kDChunk / 16; ++dp) {
                u32 bf[4];
                ldmatrix_x4_trans(bf, kt + 2 * (kk * 16 * Tile::kRowStride + d0 + dp * 16));
                mma_16816<T>(acc[2 * dp], ds[kk], bf[0], bf[1]);
                mma_16816<T>(acc[2 * dp + 1], ds[kk], bf[2], bf[3]);
            }
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = lane / 4 + 8 * half;
            if (r >= rows_valid) continue;
            #pragma unroll
            for (int dt = 0; dt < Tile::kDChunk / 8; ++dt) {
                const int col = d0 + dt * 8 + 2 * (lane % 4);
                if (col < head_dim) atomicAdd(dq + r * ld + col, acc[dt][2 * half]);
                if (col + 1 < head_dim) atomicAdd(dq + r * ld + col + 1, acc[dt][2 * half + 1]);
            }
        }
    }
}

// The dynamic shared memory a launch of flash_bwd gives (its template arguments):
// configs.Sm80BwdConfig.smem_bytes mirrors it, and test_compile holds the two equal for every
// instantiation it compiles.
template <class T, int HEAD_DIM, int WARPS, int D_SPLIT, class V = Plain>
__device__ constexpr u32 flash_bwd_smem() { return BwdTile<HEAD_DIM, WARPS, D_SPLIT>::kSmemBytes; }

template <class T, int HEAD_DIM, int WARPS, int D_SPLIT, class V = Plain>
__global__ void __launch_bounds__(WARPS * 32, 1)
flash_bwd(const BwdParams p) {
    using Tile = BwdTile<HEAD_DIM, WARPS, D_SPLIT>;
    constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, NT = Tile::kNTiles;
    extern __shared__ __align__(16) unsigned char smem[];
    u16* sK = reinterpret_cast<u16*>(smem);
    u16* sV = sK + Tile::kSmemKV;
    u16* sQ = sV + Tile::kSmemKV;
    u16* sdO = sQ + Tile::kSmemQ;
    u16* sP = sdO + Tile::kSmemQ;
    u16* sdS = sP + Tile::kSmemP;
    float* s_lse = reinterpret_cast<float*>(sdS + Tile::kSmemP);   // LSE * log2(e); +inf: no key
    float* s_delta = s_lse + BM;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const HeadBatch at_grid = fold_head_batch(blockIdx.y, gridDim.y, blockIdx.z, p.heads);
    if (at_grid.batch >= p.batch) return;
    const int key0 = blockIdx.x * BN, head = at_grid.head, batch = at_grid.batch;
    const int head_kv = head / p.heads_per_kv;
    const int seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k, head_dim = p.head_dim;
    const int diag = seqlen_k - seqlen_q;

    // The query rows that see some key of this tile, and the mask / score state.
    ScoreMod mod{};
    RowRange rows;
    if constexpr (V::kPlain) {
        rows = rows_seeing(seqlen_q, seqlen_k, diag, -1, p.causal ? 0 : -1, key0, BN);
    } else {
        mod = score_mod<V>(p, batch, head);
        rows = rows_seeing(seqlen_q, seqlen_k, mod.diag, mod.win_left, mod.win_right, key0, BN);
    }
    const float units = V::kPlain ? exp2_fold(p.scale_log2) : mod.units;

    const u16* q_head = p.q + batch * p.q_sb + head * p.q_sh;
    const u16* do_head = p.dout + batch * p.do_sb + head * p.do_sh;
    // LSE (log2 units) and delta: q_tiles * BLOCK_M rows per (batch, head) (bwd_prep's).
    const float* lse_head = p.lse + (static_cast<i64>(batch) * p.heads + head) * p.q_tiles * BM;
    const float* delta_head = p.delta + (static_cast<i64>(batch) * p.heads + head) * p.q_tiles * BM;
    float* dq_head = p.dq_accum + batch * p.dq_sb + head * p.dq_sh;
    float* dbias = p.dbias == nullptr ? nullptr : p.dbias + batch * p.dbias_sb + head * p.dbias_sh;

    load_rows<Tile, BN>(smem_addr(sK), p.k + batch * p.k_sb + head_kv * p.k_sh + key0 * p.k_ss, p.k_ss,
                        seqlen_k - key0, head_dim, tid);
    load_rows<Tile, BN>(smem_addr(sV), p.v + batch * p.v_sb + head_kv * p.v_sh + key0 * p.v_ss, p.v_ss,
                        seqlen_k - key0, head_dim, tid);
    cp_async_commit();

    // This warp's dK / dV: keys 16 (warp % key warps) of the tile, columns of D part
    // warp / key warps.
    constexpr int kKeyWarps = WARPS / D_SPLIT;
    const int warp_key = 16 * (warp % kKeyWarps), part0 = Tile::kDPart * (warp / kKeyWarps);
    float dk[Tile::kPartTiles][4], dv[Tile::kPartTiles][4];
    #pragma unroll
    for (int dt = 0; dt < Tile::kPartTiles; ++dt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;

    // Lane addresses (bytes): row-major A (the warp's 16 rows of Q_i or dO_i), B rows (K or V),
    // transposing loads of P / dS columns (the warp's 16 keys) and of K, dO, Q rows.
    const int warp_row = 16 * warp;
    const u32 a_q = smem_addr(sQ + (warp_row + lane % 16) * Tile::kRowStride + (lane / 16) * 8);
    const u32 a_do = smem_addr(sdO + (warp_row + lane % 16) * Tile::kRowStride + (lane / 16) * 8);
    const int b_row = lane % 8 + (lane / 16) * 8, b_col = ((lane / 8) % 2) * 8;
    const u32 b_k = smem_addr(sK + b_row * Tile::kRowStride + b_col);
    const u32 b_v = smem_addr(sV + b_row * Tile::kRowStride + b_col);
    const u32 at_p = smem_addr(sP + b_row * Tile::kPStride + warp_key + b_col);
    const u32 at_ds = smem_addr(sdS + b_row * Tile::kPStride + warp_key + b_col);
    const int t_row = lane % 8 + ((lane / 8) % 2) * 8, t_col = (lane / 16) * 8;
    const u32 bt_k = smem_addr(sK + t_row * Tile::kRowStride + t_col);
    const u32 bt_do = smem_addr(sdO + t_row * Tile::kRowStride + part0 + t_col);
    const u32 bt_q = smem_addr(sQ + t_row * Tile::kRowStride + part0 + t_col);

    for (int row0 = rows.begin / BM * BM; row0 < rows.end; row0 += BM) {
        __syncthreads();   // the previous tile's reads of Q_i, dO_i, P, dS are done
        load_rows<Tile, BM>(smem_addr(sQ), q_head + row0 * p.q_ss, p.q_ss, seqlen_q - row0, head_dim, tid);
        load_rows<Tile, BM>(smem_addr(sdO), do_head + row0 * p.do_ss, p.do_ss, seqlen_q - row0, head_dim, tid);
        cp_async_commit();
        for (int i = tid; i < BM; i += Tile::kThreads) {
            s_lse[i] = lse_head[row0 + i];
            s_delta[i] = delta_head[row0 + i];
        }
        cp_async_wait<0>();
        __syncthreads();

        // S and the forward's score step for this warp's rows.
        float s[1][NT][4];
        BiasFrag<T, V::kBias, 1, NT, 2> bias;
        if constexpr (!V::kPlain) bias.fetch(mod, row0 + warp_row, key0, lane);
        gemm_rows<T, Tile>(s, a_q, b_k);
        float raw[V::kSoftcap ? NT : 1][4];   // softcap's derivative needs the raw scores
        if constexpr (V::kSoftcap) {
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) raw[nt][e] = s[0][nt][e];
        }
        if constexpr (V::kPlain) {
            if (FC_TILE_PARTIAL(BN, seqlen_k, diag, p.causal, key0, row0 + warp_row))
                scale_and_mask<1, NT, true>(s, p.scale_log2, row0 + warp_row, key0, seqlen_k, diag, p.causal, lane);
            else
                scale_and_mask<1, NT, false>(s, p.scale_log2, 0, 0, 0, 0, false, lane);
        } else {
            const bool mask = tile_partial(mod, BN, key0, row0 + warp_row, 16);
            variant_scores<V, 1, NT, 2>(s, mod, bias, mask, row0 + warp_row, key0, lane);
        }
        // P in place of S.
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const float lse = s_lse[warp_row + lane / 4 + 8 * half];
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c)
                    s[0][nt][2 * half + c] = fast_exp2(s[0][nt][2 * half + c] * units - lse);
        }
        float dp[1][NT][4];
        gemm_rows<T, Tile>(dp, a_do, b_v);
        // dP -> dS (into dp), back through softcap's tanh; P and dS to shared memory.
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = warp_row + lane / 4 + 8 * half;
            const float delta = s_delta[r];
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int e = 2 * half + c;
                    float ds = s[0][nt][e] * (dp[0][nt][e] - delta);
                    if constexpr (V::kBias != 0) {   // dbias: the score's gradient, over its broadcasts
                        const int row = row0 + r, key = key0 + nt * 8 + 2 * (lane % 4) + c;
                        if (dbias != nullptr && row < seqlen_q && key < seqlen_k && ds != 0.f)
                            atomicAdd(dbias + row * p.dbias_ss + key, ds);
                    }
                    if constexpr (V::kSoftcap) {
                        const float t = fast_tanh(raw[nt][e] * mod.cap_scale);
                        ds *= 1.f - t * t;
                    }
                    dp[0][nt][e] = ds;
                }
                const int col = nt * 8 + 2 * (lane % 4);
                *reinterpret_cast<u32*>(sP + r * Tile::kPStride + col) = pack2<T>(s[0][nt][2 * half], s[0][nt][2 * half + 1]);
                *reinterpret_cast<u32*>(sdS + r * Tile::kPStride + col) =
                    pack2<T>(dp[0][nt][2 * half], dp[0][nt][2 * half + 1]);
            }
        }
        u32 ds_frag[Tile::kKeySteps][4];
        pack_p<T, NT>(ds_frag, dp[0]);
        // Deterministic mode: the key tiles add into this query tile's dQ in order, first to
        // last of those that see it (its semaphore counts the ones done; CTAs of lower key tiles
        // start first, so the wait always ends).
        int* sem = p.dq_sem == nullptr ? nullptr : p.dq_sem + (static_cast<i64>(batch) * p.heads + head) * p.q_tiles + row0 / BM;
        if (sem != nullptr) {
            int first = 0;
            if constexpr (!V::kPlain) first = window_tiles(mod, BN, row0, min(BM, seqlen_q - row0)).first;
            if (tid == 0)
                while (*reinterpret_cast<volatile int*>(sem) != static_cast<int>(blockIdx.x) - first) {}
            __syncthreads();
            __threadfence();
        }
        dq_add<T, Tile>(ds_frag, bt_k, dq_head + (row0 + warp_row) * p.dq_ss, p.dq_ss,
                        seqlen_q - row0 - warp_row, head_dim, lane);
        if (sem != nullptr) __threadfence();   // this thread's dQ adds, before the count moves on
        __syncthreads();   // P and dS of every warp are in shared memory
        if (sem != nullptr && tid == 0) atomicAdd(sem, 1);
        gemm_cols<T, Tile>(dv, at_p, bt_do);
        gemm_cols<T, Tile>(dk, at_ds, bt_q);
    }

    cp_async_wait<0>();   // K and V landed even where no query tile came (nothing in flight at exit)

    // dK *= scale; this warp's 16 keys and D part out: stored, or added over the GQA group.
    const float scale = p.scale;
    #pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int key = key0 + warp_key + lane / 4 + 8 * half;
        if (key >= seqlen_k) continue;
        #pragma unroll
        for (int dt = 0; dt < Tile::kPartTiles; ++dt) {
            const int col = part0 + dt * 8 + 2 * (lane % 4);
            if (col >= head_dim) continue;
            const float k0 = dk[dt][2 * half] * scale, k1 = dk[dt][2 * half + 1] * scale;
            const float v0 = dv[dt][2 * half], v1 = dv[dt][2 * half + 1];
            if (p.dk_accum == nullptr) {
                *reinterpret_cast<u32*>(p.dk + batch * p.dk_sb + head_kv * p.dk_sh + key * p.dk_ss + col) = pack2<T>(k0, k1);
                *reinterpret_cast<u32*>(p.dv + batch * p.dv_sb + head_kv * p.dv_sh + key * p.dv_ss + col) = pack2<T>(v0, v1);
            } else {
                // per kv head (atomics over its group), or deterministic per query head (summed on the host)
                const int acc_head = p.dkv_by_q_head ? head : head_kv, acc_heads = p.dkv_by_q_head ? p.heads : p.heads_kv;
                const i64 at = ((static_cast<i64>(batch) * acc_heads + acc_head) * seqlen_k + key) * head_dim + col;
                atomicAdd(p.dk_accum + at, k0);
                atomicAdd(p.dk_accum + at + 1, k1);
                atomicAdd(p.dv_accum + at, v0);
                atomicAdd(p.dv_accum + at + 1, v1);
            }
        }
    }
}

}  // namespace fc
