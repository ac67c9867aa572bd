// FlashAttention backward for Hopper (sm_90a): TMA, wgmma, warp specialisation. The same
// gradients as flash_bwd_sm80.cu (its header states the math), for the plain mask (fc::Plain)
// or a variant (variant.cuh's score step element by element on the transposed tiles: window,
// softcap with its derivative, ALiBi, bias and dbias):
//
//   P = exp2(S * scale log2 e - LSE log2 e),  dP = dO V^T,  dS = P * (dP - delta),
//   dV = P^T dO,  dK = scale dS^T Q,  dQ = scale dS K.
//
// A CTA owns BLOCK_N = 128 keys of one (batch, query head): consumer warpgroup c holds keys
// 64c.. of them, with their dK and dV (64 x HEAD_DIM each) in registers over every query tile
// of BLOCK_M rows that sees some of its keys (rows_seeing, variant.cuh: the causal diagonal
// bounds them). In the producer warpgroup, one thread copies K and V once, then each query
// tile's Q and dO (TMA) and its LSE and delta (bulk copies) into a ring of STAGES slots; another
// (the dQ reducer) adds each tile's dQ blocks into the float32 accumulator.
// Per query tile, consumer c computes everything transposed, keys as the GEMMs' rows:
//
//   S^T  = K_c Q^T       wgmma m64nBLOCK_Mk16, both K-major in shared memory (qk_wgmma)
//   dP^T = V_c dO^T      the same form
//   P^T, dS^T in registers (each column a query row: its LSE and delta from the slot, read
//                        into registers before the GEMMs' waits at head dims 64 and 96), then
//   dV  += P^T dO        wgmma with P^T from registers, dO MN-major (pv_wgmma)
//   dK  += dS^T Q        the same form
//   dS^T -> shared memory; with a tile's lag, once both consumers' of the tile before are
//   there (ds_full):
//   dQ   = dS K          one 64 x 64 block a consumer (rows rb, columns cb of the tile's dQ),
//                        over all 128 keys: dS and K both MN-major (wgmma_ss_mn); the lag lets
//                        the consumers drift apart instead of meeting every tile (v47: a
//                        named barrier there held them in step, one's exponentials never
//                        under the other's GEMMs); with the lag (plain mask) the consumers
//                        also take turns to issue S^T and dP^T (the forward's ping-pong)
//   dQ -> shared memory in fragment order, whence the reducer adds it into the accumulator
//         with one bulk reduction (cp.reduce.async.bulk) a block: the tile's rows of the
//         accumulator hold its blocks one after the other, as bwd_convert reads them (1.14-1.30x
//         faster than each consumer's red.global.add.v2 from registers, v32).
//
// Head dim 256 (SPLIT_D: 64 keys' dK and dV in full would take 256 registers a thread): the CTA
// owns 64 keys, which both consumers share; consumer c holds columns 128c.. of their dK and dV.
// Each computes S^T and dP^T for half the query tile's columns (32c..: wgmma m64n32, B from
// its half of the slot's Q and dO rows) and stores its P^T and dS^T columns into shared
// memory; once both halves are there (the named barrier), dV += P^T dO and dK += dS^T Q run
// over the whole tile with A from shared memory (K-major), and each consumer computes dQ's
// column blocks 2c and 2c + 1 over the 64 keys, added from registers into the accumulator's
// blocks (its fragment order, red.global.add.v4: no shared memory is left for dQ blocks
// beside two ring slots). Until v46 both consumers computed S^T and dP^T over every column
// (P^T and dS^T from registers: 1.4x the tensor work, twice the exponentials).
//
// At the end dK *= scale; dK and dV are stored in the inputs' type, or with GQA added into
// float32 accumulators the host converts. dS^T has two buffers (tile parity): a consumer
// writes tile t's once both consumers' dQ of tile t - 2 have read it (ds_empty; SPLIT_D: once
// both passed tile t-1's barrier). A consumer's dQ block is rewritten once the reducer has
// read it (dq_empty).
//
// Shared memory (1024-byte aligned base; every tile 128B-swizzled in column blocks of 64
// elements, the layout sm90_mainloop.cuh's descriptors describe): K, V (BLOCK_N rows), the
// ring's Q and dO slots (BLOCK_M rows), two dS^T buffers (per key, BLOCK_M / 64 blocks of 64
// query rows: the MN-major A operand of dQ; SPLIT_D: the K-major A of dK too), SPLIT_D's two
// P^T buffers (the same layout), the slots' LSE and delta, the consumers' dQ blocks, the
// barriers. The host mirrors smem_bytes in flashcore_cupy/configs.py (Sm90BwdConfig).
#include "grid.cuh"
#include "sm90.cuh"
#include "mask.cuh"
#include "softmax.cuh"
#include "variant.cuh"
// Sm90BwdParams, the one by-value argument (__grid_constant__): the q, k, v and dout tensor
// maps, then what flashcore_cupy/launch.py packs after them; declared in flashcore_cupy/params.py.
#include "params_sm90_bwd.cuh"
#include "sm90_mainloop.cuh"
#include "sm90_pipeline.cuh"

namespace fc {

template <int HEAD_DIM, int BLOCK_M, int STAGES>
struct Sm90BwdTile {
    static constexpr int kConsumers = 2;
    // SPLIT_D (head dim 256): the consumers share 64 keys and split dK's and dV's columns.
    static constexpr bool kSplitD = HEAD_DIM > 128;
    // dQ a tile late (the consumers need not meet every tile; see the header). Not at head dim
    // 96, where it ran 0.97x of the named barrier's time and the others 1.01-1.08x of it (v47
    // call 5, H100: backward_probe, the earlier kernel file beside this one in one process).
    static constexpr bool kDqLag = !kSplitD && HEAD_DIM != 96;
    // With the lag, the consumers take turns to issue their S^T and dP^T GEMMs (named barriers
    // 2 and 3, the forward's ping-pong: 0's, then 1's, then 0's next): one's exponentials run
    // under the other's GEMMs. v48 (H100, backward_probe, one process): 0.96-0.97x the time at
    // D128, 0.98x D128 causal, 0.99-1.00x at D64; turns for dV, dK and dQ too were 1.01-1.05x.
    // The plain mask's builds only: a window's spilled 384 bytes (D128) and 1156 (D64) with
    // them, and ptxas serialised their wgmma (C7512).
    static constexpr bool kTurns = kDqLag;
    // The slot's LSE and delta read into registers before the GEMMs' waits (the exponentials and
    // dS^T no longer wait on shared loads after them; plain mask): v48 0.91-0.93x the time at
    // D64 S4k, 0.97x at S1k D64 and D96; at D128 1.02-1.05x (without causal), so not there.
    static constexpr bool kRowsEarly = HEAD_DIM <= 96;
    // A row in shared memory and in dQ's accumulator: whole 64-column blocks (D96's second block
    // half zero-filled by TMA; the S, dP, dK and dV GEMMs stop at HEAD_DIM, dQ's runs the block).
    static constexpr int kDPad = (HEAD_DIM + 63) / 64 * 64;
    static constexpr int kBlockN = kSplitD ? 64 : 64 * kConsumers;   // keys of the CTA: 64 a consumer, or shared
    static constexpr int kDkv = kSplitD ? HEAD_DIM / kConsumers : HEAD_DIM;   // dK / dV columns a consumer holds
    static constexpr int kQCols = kSplitD ? BLOCK_M / kConsumers : BLOCK_M;   // query columns of its S^T and dP^T
    static constexpr int kRowBlocks = BLOCK_M / 64;        // dQ's 64 x 64 blocks of a query tile,
    static constexpr int kColBlocks = kDPad / 64;          //   one a consumer (SPLIT_D: two)
    static constexpr u32 kKVBytes = kBlockN * kDPad * 2;     // K or V
    static constexpr u32 kQBytes = BLOCK_M * kDPad * 2;      // a slot's Q or dO
    static constexpr u32 kDSBytes = kBlockN * BLOCK_M * 2;   // a dS^T buffer
    static constexpr u32 kRowBytes = BLOCK_M * 4;            // a slot's LSE or delta
    static constexpr u32 kOffK = 0;
    static constexpr u32 kOffV = kKVBytes;
    static constexpr u32 kOffQ = 2 * kKVBytes;
    static constexpr u32 kOffDO = kOffQ + STAGES * kQBytes;
    static constexpr u32 kOffDS = kOffDO + STAGES * kQBytes;
    static constexpr u32 kOffP = kOffDS + 2 * kDSBytes;     // SPLIT_D: two P^T buffers (as dS^T's)
    static constexpr u32 kOffLse = kOffP + (kSplitD ? 2 * kDSBytes : 0);
    static constexpr u32 kOffDelta = kOffLse + STAGES * kRowBytes;
    // Each consumer's dQ block (64 x 64 float32, in fragment order) for the producer's bulk
    // reduction (SPLIT_D: none, dQ goes from registers).
    static constexpr u32 kDQBytes = 64 * 64 * 4;
    static constexpr u32 kOffDQ = kOffDelta + STAGES * kRowBytes;
    static constexpr u32 kOffBars = kOffDQ + (kSplitD ? 0 : kConsumers * kDQBytes);
    static constexpr u32 kSmemBytes = 1024 + kOffBars + 8 * (5 + 2 * STAGES + 2 * kConsumers);   // + the base's alignment
    // setmaxnreg: the producer drops to 24, the two consumers share the rest (as the forward).
    static constexpr int kProducerRegs = 24;
    static constexpr int kLaunchRegs = 65536 / (128 * (kConsumers + 1)) / 8 * 8;
    static constexpr int kConsumerRegs = (kLaunchRegs * (kConsumers + 1) - kProducerRegs) / kConsumers / 8 * 8;

    static_assert(HEAD_DIM == 64 || HEAD_DIM == 96 || HEAD_DIM == 128 || HEAD_DIM == 256, "HEAD_DIM: 64, 96, 128 or 256");
    static_assert(kRowBlocks * kColBlocks == kConsumers * (kSplitD ? 2 : 1),
                  "BLOCK_M: 128 at HEAD_DIM 64, 64 at 96, 128 and 256 (a dQ block a consumer; SPLIT_D two)");
    static_assert(STAGES >= 1 && STAGES <= 4, "STAGES: 1..4");
    static_assert(kSmemBytes <= kSm90SmemLimit, "shared memory over sm_90's limit");
};

// The backward's mbarriers, after the tiles: K and V landed; each slot's Q, dO, LSE and delta
// landed / released by every consumer warp; each consumer's dQ block stored / read by the
// reducer; each dS^T buffer written / read (by the dQ GEMMs) by every consumer thread.
template <int STAGES>
struct BwdBarriers {
    u32 base;
    __device__ u32 kv_full() const { return base; }
    __device__ u32 q_full(int s) const { return base + 8 * (1 + s); }
    __device__ u32 q_empty(int s) const { return base + 8 * (1 + STAGES + s); }
    __device__ u32 dq_full(int c) const { return base + 8 * (1 + 2 * STAGES + c); }
    __device__ u32 dq_empty(int c) const { return base + 8 * (3 + 2 * STAGES + c); }
    __device__ u32 ds_full(int b) const { return base + 8 * (5 + 2 * STAGES + b); }
    __device__ u32 ds_empty(int b) const { return base + 8 * (7 + 2 * STAGES + b); }
};

// The dynamic shared memory a launch of flash_bwd_sm90 gives (its template arguments):
// configs.Sm90BwdConfig.smem_bytes mirrors it, and test_compile holds the two equal for every
// instantiation it compiles.
template <class T, int HEAD_DIM, int BLOCK_M, int STAGES, class V = Plain>
__device__ constexpr u32 flash_bwd_sm90_smem() { return Sm90BwdTile<HEAD_DIM, BLOCK_M, STAGES>::kSmemBytes; }

template <class T, int HEAD_DIM, int BLOCK_M, int STAGES, class V = Plain>
__global__ void __launch_bounds__(384, 1)
flash_bwd_sm90(const __grid_constant__ Sm90BwdParams p) {
    using Tile = Sm90BwdTile<HEAD_DIM, BLOCK_M, STAGES>;
    constexpr int BN = Tile::kBlockN, NQ = Tile::kQCols, NT = NQ / 8;
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 sbase = (smem_addr(smem) + 1023) & ~1023u;
    const float* s_rows = reinterpret_cast<const float*>(smem + (sbase - smem_addr(smem)));
    const BwdBarriers<STAGES> bar{sbase + Tile::kOffBars};

    const int warpgroup = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    // Grid (heads, key tiles, batch); past 65535 batches, x is heads x batch (grid.cuh). The
    // CTAs take the blocks by groups of head_group heads, key tiles in order within a group
    // (grouped_item): the CTAs running at once share a few heads' Q, dO and dQ rows in L2, and
    // under a causal mask each head's longest key tiles (the first: they see every query tile)
    // start first. The deterministic mode under a plain causal mask takes each group's key tiles
    // last first instead, and adds into a query tile in that order (see the dQ reducer).
    const bool keys_descending = V::kPlain && p.causal && p.dq_sem != nullptr;
    const GridItem at = grouped_item(blockIdx.x, blockIdx.y, gridDim.x, gridDim.y, p.head_group);
    const unsigned bx = at.item, by = keys_descending ? gridDim.y - 1 - at.tile : at.tile;
    const HeadBatch at_grid = fold_head_batch(bx, gridDim.x, blockIdx.z, p.heads);
    if (at_grid.batch >= p.batch) return;
    const int key_tile = static_cast<int>(by), key0 = key_tile * BN, head = at_grid.head, batch = at_grid.batch;
    const int seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k, diag = seqlen_k - seqlen_q;
    // The query rows that see some key of this tile, and a variant's score state.
    ScoreMod mod{};
    if constexpr (!V::kPlain) mod = score_mod<V>(p, batch, head);
    const RowRange rows = V::kPlain ? rows_seeing(seqlen_q, seqlen_k, diag, -1, p.causal ? 0 : -1, key0, BN)
                                    : rows_seeing(seqlen_q, seqlen_k, mod.diag, mod.win_left, mod.win_right, key0, BN);
    const int row_first = rows.begin / BLOCK_M * BLOCK_M;
    const int n_tiles = rows.end > rows.begin ? (rows.end - row_first + BLOCK_M - 1) / BLOCK_M : 0;
    const i64 bh = static_cast<i64>(batch) * p.heads + head;

    if (threadIdx.x == 0) {
        mbar_init(bar.kv_full(), 1);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(bar.q_full(s), 1);
            mbar_init(bar.q_empty(s), 128 * Tile::kConsumers);   // every consumer thread, after its reads
        }
        for (int c = 0; c < Tile::kConsumers; ++c) {
            mbar_init(bar.dq_full(c), 128);   // every thread of consumer c, after its stores
            mbar_init(bar.dq_empty(c), 1);
        }
        for (int b = 0; b < (Tile::kDqLag ? 2 : 0); ++b) {
            mbar_init(bar.ds_full(b), 128 * Tile::kConsumers);
            mbar_init(bar.ds_empty(b), 128 * Tile::kConsumers);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (warpgroup == 0) {   // the producer
        regs_release<Tile::kProducerRegs>();
        if (threadIdx.x == 0 && n_tiles > 0) {
            const int head_kv = head / p.heads_per_kv;
            mbar_expect_tx(bar.kv_full(), 2 * Tile::kKVBytes);
            tma_load_tile<HEAD_DIM>(sbase + Tile::kOffK, p.k, bar.kv_full(), BN, key0, head_kv, batch);
            tma_load_tile<HEAD_DIM>(sbase + Tile::kOffV, p.v, bar.kv_full(), BN, key0, head_kv, batch);
            for (int t = 0; t < n_tiles; ++t) {
                const Ring<STAGES> r{t};
                const int row0 = row_first + t * BLOCK_M;
                if (t >= STAGES) {
                    mbar_wait(bar.q_empty(r.slot()), r.parity() ^ 1);
                    // The consumers' generic reads of the slot (LSE, delta), acquired through
                    // the barrier, before the async proxy's copies into it.
                    fence_async_shared();
                }
                mbar_expect_tx(bar.q_full(r.slot()), 2 * Tile::kQBytes + 2 * Tile::kRowBytes);
                tma_load_tile<HEAD_DIM>(sbase + Tile::kOffQ + r.slot() * Tile::kQBytes, p.q, bar.q_full(r.slot()),
                                        BLOCK_M, row0, head, batch);
                tma_load_tile<HEAD_DIM>(sbase + Tile::kOffDO + r.slot() * Tile::kQBytes, p.dout,
                                        bar.q_full(r.slot()), BLOCK_M, row0, head, batch);
                bulk_load(sbase + Tile::kOffLse + r.slot() * Tile::kRowBytes, p.lse + bh * p.rows_pad + row0,
                          Tile::kRowBytes, bar.q_full(r.slot()));
                bulk_load(sbase + Tile::kOffDelta + r.slot() * Tile::kRowBytes, p.delta + bh * p.rows_pad + row0,
                          Tile::kRowBytes, bar.q_full(r.slot()));
            }
        }
        if (!Tile::kSplitD && threadIdx.x == 32 && n_tiles > 0) {
            // The dQ reducer: each tile's blocks, once stored, added into the accumulator (its
            // tile's rows hold the consumers' blocks one after the other, in fragment order:
            // bwd_convert reads them back), and released once read. Deterministic (dq_sem): the
            // key tiles add into a query tile in a fixed order: wait for the tile's count to reach
            // this key tile's turn, add, wait for the adds to complete, count on. The key tiles
            // that see a query tile are 0..last (no window's left bound on this kernel), each
            // visiting it: ascending (turn = key tile) where they launch in that order; under a
            // plain causal mask descending (turn = last - key tile), as they launch there: each
            // key tile then reaches a query tile after the ones before it in the order, where
            // ascending, key tile 0 came last to every query tile and the others waited on it
            // (v48: 0.64x the default's time on causal rows). A CTA waits only on CTAs launched
            // before it, so the grid cannot fill with waiters.
            for (int t = 0; t < n_tiles; ++t) {
                const int row0 = row_first + t * BLOCK_M;
                float* dst = p.dq_accum + (bh * p.rows_pad + row0) * Tile::kDPad;
                int* sem = p.dq_sem == nullptr ? nullptr : p.dq_sem + bh * (p.rows_pad / BLOCK_M) + row0 / BLOCK_M;
                for (int c = 0; c < Tile::kConsumers; ++c) {
                    mbar_wait(bar.dq_full(c), t & 1);
                    if (c == 0 && sem != nullptr) {
                        const int last = min(static_cast<int>(gridDim.y) - 1,
                                             (min(row0 + BLOCK_M, seqlen_q) - 1 + diag) / BN);
                        const int turn = keys_descending ? last - key_tile : key_tile;
                        while (ld_acquire(sem) != turn) {}
                        fence_async_global();   // the adds below after the count's acquire
                    }
                    bulk_reduce_add(dst + c * (Tile::kDQBytes / 4), sbase + Tile::kOffDQ + c * Tile::kDQBytes,
                                    Tile::kDQBytes);
                }
                bulk_commit();
                if (sem != nullptr) {
                    bulk_wait<0>();         // the adds are done (not only read)
                    fence_async_global();   // and ordered before the count's release
                    red_release_add(sem, 1);
                } else {
                    bulk_wait_read<0>();
                }
                for (int c = 0; c < Tile::kConsumers; ++c) mbar_arrive(bar.dq_empty(c));
            }
            bulk_wait<0>();
        }
        return;
    }

    regs_claim<Tile::kConsumerRegs>();
    const int consumer = warpgroup - 1, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    constexpr int DKV = Tile::kDkv;
    const int c_key0 = key0 + (Tile::kSplitD ? 0 : 64 * consumer);   // this consumer's first key
    const int c_col0 = Tile::kSplitD ? consumer * DKV : 0;           // and dK / dV column
    const int rb = consumer % Tile::kRowBlocks, cb = consumer / Tile::kRowBlocks;   // its dQ block
    // Descriptors: this consumer's K and V rows (A, K-major), slot 0's Q and dO as B (K-major, of
    // S^T and dP^T) and as MN-major B (of dK and dV), dS^T buffer 0's row block rb (MN-major A of
    // dQ) and K's column block cb (MN-major B of dQ).
    const u32 c_rows = Tile::kSplitD ? 0 : consumer * 64 * 128;   // its key rows' offset in a column block
    const u64 k_desc = smem_desc_sw128(sbase + Tile::kOffK + c_rows, 16, 1024);
    const u64 v_desc = smem_desc_sw128(sbase + Tile::kOffV + c_rows, 16, 1024);
    const u64 q_desc0 = smem_desc_sw128(sbase + Tile::kOffQ, 16, 1024);
    const u64 do_desc0 = smem_desc_sw128(sbase + Tile::kOffDO, 16, 1024);
    // (as dK's and dV's B: from this consumer's first column block)
    const u32 c_cols = (c_col0 / 64) * BLOCK_M * 128;
    const u64 q_mn_desc0 = smem_desc_sw128(sbase + Tile::kOffQ + c_cols, BLOCK_M * 128, 1024);
    const u64 do_mn_desc0 = smem_desc_sw128(sbase + Tile::kOffDO + c_cols, BLOCK_M * 128, 1024);
    const u64 ds_desc0 = smem_desc_sw128(sbase + Tile::kOffDS + rb * BN * 128, BN * 128, 1024);
    // (SPLIT_D: column block 0's, each pass's block an advance from it)
    const u64 kt_desc = smem_desc_sw128(sbase + Tile::kOffK + (Tile::kSplitD ? 0 : cb) * BN * 128, BN * 128, 1024);
    // SPLIT_D: P^T and dS^T buffer 0 as the K-major A of dV and dK (keys x the tile's queries);
    // this consumer's query columns of S^T and dP^T (B: its half of the slot's Q and dO rows).
    const u64 pt_desc0 = smem_desc_sw128(sbase + Tile::kOffP, 16, 1024);
    const u64 dst_desc0 = smem_desc_sw128(sbase + Tile::kOffDS, 16, 1024);
    const int q_col0 = Tile::kSplitD ? consumer * NQ : 0;

    float dk[DKV / 8][4], dv[DKV / 8][4];
    #pragma unroll
    for (int dt = 0; dt < DKV / 8; ++dt)
        #pragma unroll
        for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.f;

    // This thread's accumulator rows are keys c_key0 + 16 warp + lane / 4 (+ 8), its columns
    // query rows q_col0 + 8 i + 2 (lane % 4) (+ 1) of the tile.
    const int key_lane = c_key0 + 16 * warp + lane / 4, col_lane = 2 * (lane % 4), q_lane = q_col0 + col_lane;
    // dS^T's shared stores: key k's 16-byte chunk j of a 64-row block at k * 128 + 16 (j ^ k % 8).
    const u32 ds_lane = 128 * ((Tile::kSplitD ? 0 : 64 * consumer) + 16 * warp + lane / 4) + 4 * (lane % 4);
    // A score's 16-byte chunk in a dS^T (or P^T) buffer: n-tile i of the consumer's columns is
    // chunk q_col0 / 8 + i of the tile's query rows, in 64-row blocks.
    auto chunk_at = [&](u32 buf, int i) {
        const int n = q_col0 / 8 + i;
        return buf + (n / 8) * BN * 128 + ds_lane + 16 * ((n % 8) ^ (lane / 4));
    };
    // dQ block (rb, cb) of query tile u = dS K over the CTA's keys, from dS^T buffer u % 2 (the
    // caller waits for both consumers' dS^T there; SPLIT_D: K's column block at k_cols bytes from
    // block 0); then, but with SPLIT_D, to shared memory in fragment order (16 bytes of thread
    // j's n-tile i at (128 i + j) * 16: conflict-free) for the reducer's bulk reduction.
    auto dq_issue = [&](float (&dq)[8][4], int u, u32 k_cols = 0) {
        wgmma_fence();
#ifndef FLASHCORE_ABLATE_NO_DQ   // (timing probes: an empty group keeps the waits' counts)
        #pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
            wgmma_ss_mn<T, 64>(dq, desc_advance(ds_desc0, (u % 2) * Tile::kDSBytes + kk * 2048),
                               desc_advance(kt_desc, k_cols + kk * 2048), kk > 0);
#endif
        wgmma_commit();
    };
    auto dq_store = [&](const float (&dq)[8][4], int u) {
        if (u > 0) mbar_wait(bar.dq_empty(consumer), (u - 1) & 1);
        const u32 dq_smem = sbase + Tile::kOffDQ + consumer * Tile::kDQBytes + 16 * (threadIdx.x % 128);
        #pragma unroll
        for (int i = 0; i < 8; ++i)
            asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};"
                         :: "r"(dq_smem + i * 128 * 16), "f"(dq[i][0]), "f"(dq[i][1]), "f"(dq[i][2]), "f"(dq[i][3])
                         : "memory");
        fence_async_shared();
        mbar_arrive(bar.dq_full(consumer));
    };
    // Turns (Tile::kTurns, plain mask): consumer c waits on named barrier 2 + c, the other
    // arrives there.
    constexpr bool kTurns = Tile::kTurns && V::kPlain;
    auto await_turn = [&] { if constexpr (kTurns) named_barrier_sync(2 + consumer, 256); };
    auto pass_turn = [&](bool last_turn) {
        if constexpr (kTurns)
            if (!(last_turn && consumer == 1)) named_barrier_arrive(2 + (consumer ^ 1), 256);
    };
    constexpr bool kRowsEarly = Tile::kRowsEarly && V::kPlain;
    if (n_tiles > 0) mbar_wait(bar.kv_full(), 0);
    if (kTurns && consumer == 1 && n_tiles > 0) named_barrier_arrive(2, 256);   // consumer 0 first
    if (Tile::kDqLag) mbar_arrive(bar.ds_full(1));   // buffer 1 "written" before tile 0 (its dQ dropped)
    for (int t = 0; t < n_tiles; ++t) {
        const Ring<STAGES> r{t};
        const int row0 = row_first + t * BLOCK_M, slot = r.slot();
        mbar_wait(bar.q_full(slot), r.parity());
        float st[1][NT][4], dpt[1][NT][4];
        await_turn();
        qk_wgmma<T, BN, HEAD_DIM, NQ, BLOCK_M>(st[0], k_desc, desc_advance(q_desc0, slot * Tile::kQBytes + q_col0 * 128));
        qk_wgmma<T, BN, HEAD_DIM, NQ, BLOCK_M>(dpt[0], v_desc, desc_advance(do_desc0, slot * Tile::kQBytes + q_col0 * 128));
        pass_turn(t == n_tiles - 1);
        // P^T: the columns' LSE from the slot; hidden pairs (past Sk, above the diagonal, outside
        // a window) 0. A variant's scores go through the forward's score step first.
        const float* lse = s_rows + (Tile::kOffLse + slot * Tile::kRowBytes) / 4;
        const float* delta = s_rows + (Tile::kOffDelta + slot * Tile::kRowBytes) / 4;
        float2 lse_r[kRowsEarly ? NT : 1], delta_r[kRowsEarly ? NT : 1];   // (kRowsEarly)
        if constexpr (kRowsEarly) {
            #pragma unroll
            for (int i = 0; i < NT; ++i) lse_r[i] = *reinterpret_cast<const float2*>(lse + 8 * i + q_lane);
        }
        wgmma_wait<1>();
        fence_registers(st[0]);
        float raw[V::kSoftcap ? NT : 1][4];   // softcap's derivative needs the raw scores
        if constexpr (V::kPlain) {
            const bool partial = FC_TILE_PARTIAL(64, seqlen_k, diag, p.causal, c_key0, row0);
            #pragma unroll
            for (int i = 0; i < NT; ++i) {
                const float2 l2 = kRowsEarly ? lse_r[i] : *reinterpret_cast<const float2*>(lse + 8 * i + q_lane);
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float x = st[0][i][e] * p.scale_log2 - (e % 2 ? l2.y : l2.x);
                    const int key = key_lane + 8 * (e / 2), row = row0 + 8 * i + q_lane + e % 2;
                    st[0][i][e] = partial && FC_KEY_HIDDEN(seqlen_k, diag, p.causal, row, key) ? 0.f : fast_exp2(x);
                }
            }
        } else {
            const bool partial = tile_partial(mod, 64, c_key0, row0, BLOCK_M);
            // units 1 (a scale that is not positive, no softcap): the scale goes in first
            const float pre = !V::kSoftcap && !(mod.scale_log2 > 0.f) ? mod.scale_log2 : 1.f;
            #pragma unroll
            for (int i = 0; i < NT; ++i) {
                const float2 l2 = *reinterpret_cast<const float2*>(lse + 8 * i + q_lane);
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = key_lane + 8 * (e / 2), row = row0 + 8 * i + q_lane + e % 2;
                    if constexpr (V::kSoftcap) raw[i][e] = st[0][i][e];
                    float x = st[0][i][e] * pre;
                    FC_SCORE_STEP(V, x, mod, static_cast<float>(row + mod.diag - key), (bias_at<T, V::kBias>(mod, row, key)));
                    const bool hidden = key >= seqlen_k || (mod.win_right >= 0 && key > row + mod.diag + mod.win_right) ||
                                        (mod.win_left >= 0 && key < row + mod.diag - mod.win_left);
                    st[0][i][e] = partial && hidden ? 0.f : fast_exp2(x * mod.units - (e % 2 ? l2.y : l2.x));
                }
            }
        }
        // P^T: into registers (A of dV), or with SPLIT_D this consumer's query columns into
        // shared memory (both consumers' then the A of dV).
        u32 pa[NT / 2][4], dsa[NT / 2][4];
        // Once the slot's GEMMs are done (Q, dO, LSE and delta of it read), every thread releases
        // its own reads (an arrive orders only the arriving thread's accesses: one lane's after a
        // __syncwarp left racecheck reporting the next bulk copies into the slot against the
        // other lanes' reads).
        auto release_slot = [&] {
            fence_registers(dk);
            fence_registers(dv);
            if constexpr (!Tile::kSplitD) {
                fence_registers(pa);
                fence_registers(dsa);
            }
            mbar_arrive(bar.q_empty(slot));
        };
        const u32 ds_buf = sbase + Tile::kOffDS + (t % 2) * Tile::kDSBytes;
        if constexpr (Tile::kSplitD) {
            const u32 pt_buf = sbase + Tile::kOffP + (t % 2) * Tile::kDSBytes;
            #pragma unroll
            for (int i = 0; i < NT; ++i)
                #pragma unroll
                for (int h = 0; h < 2; ++h)   // key + 8 h: same chunk pattern (k % 8 unchanged), 8 rows on
                    asm volatile("st.shared.u32 [%0], %1;" :: "r"(chunk_at(pt_buf, i) + h * 8 * 128),
                                 "r"(pack2<T>(st[0][i][2 * h], st[0][i][2 * h + 1])) : "memory");
        } else {
            pack_p<T, NT>(pa, st[0]);
        }
        if constexpr (kRowsEarly) {
            #pragma unroll
            for (int i = 0; i < NT; ++i) delta_r[i] = *reinterpret_cast<const float2*>(delta + 8 * i + q_lane);
        }
        wgmma_wait<0>();
        fence_registers(dpt[0]);
        // dS^T = P^T (dP^T - delta), into registers (A of dK) and shared memory (A of dQ;
        // SPLIT_D: of dK too). Its buffer was last read by both consumers' dQ GEMMs at tile t - 1.
        if (Tile::kDqLag && t >= 1) mbar_wait(bar.ds_empty(t % 2), ((t - 1) / 2) & 1);
        #pragma unroll
        for (int i = 0; i < NT; ++i) {
            const float2 d2 = kRowsEarly ? delta_r[i] : *reinterpret_cast<const float2*>(delta + 8 * i + q_lane);
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                float ds = st[0][i][e] * (dpt[0][i][e] - (e % 2 ? d2.y : d2.x));
                if constexpr (V::kBias != 0) {   // dbias: the score's gradient, over its broadcasts
                    const int key = key_lane + 8 * (e / 2), row = row0 + 8 * i + q_lane + e % 2;
                    if (p.dbias != nullptr && row < seqlen_q && key < seqlen_k && ds != 0.f)
                        atomicAdd(p.dbias + batch * p.dbias_sb + head * p.dbias_sh + row * p.dbias_ss + key, ds);
                }
                if constexpr (V::kSoftcap) {
                    const float th = fast_tanh(raw[i][e] * mod.cap_scale);
                    ds *= 1.f - th * th;
                }
                dpt[0][i][e] = ds;
            }
            #pragma unroll
            for (int h = 0; h < 2; ++h)
                asm volatile("st.shared.u32 [%0], %1;" :: "r"(chunk_at(ds_buf, i) + h * 8 * 128),
                             "r"(pack2<T>(dpt[0][i][2 * h], dpt[0][i][2 * h + 1])) : "memory");
        }
        if constexpr (!Tile::kSplitD) {
            pack_p<T, NT>(dsa, dpt[0]);
            pv_wgmma<T, DKV, BLOCK_M>(dv, pa, desc_advance(do_mn_desc0, slot * Tile::kQBytes));
            pv_wgmma<T, DKV, BLOCK_M>(dk, dsa, desc_advance(q_mn_desc0, slot * Tile::kQBytes));
        }
        fence_async_shared();
        if constexpr (Tile::kDqLag) {
            // This thread's dS^T of tile t is stored; dQ of the tile before (a tile's lag: the
            // consumers need not meet every tile, so one's exponentials can run under the
            // other's GEMMs), its slot's and dS^T buffer's reads released once done. At tile 0
            // the GEMM runs on buffer 1's unwritten contents (its ds_full arrived before the
            // loop) and is dropped: no branch around a GEMM or its wait, which would make ptxas
            // serialise every wgmma (C7512); its reads are released as any.
            mbar_arrive(bar.ds_full(t % 2));
            mbar_wait(bar.ds_full((t + 1) % 2), (t / 2) & 1);   // the tile before's from both
            float dq[8][4];
            dq_issue(dq, t + 1);
            wgmma_wait<0>();
            release_slot();
            fence_registers(dq);
            mbar_arrive(bar.ds_empty((t + 1) % 2));
            if (t >= 1) dq_store(dq, t - 1);
            continue;
        }
        named_barrier_sync(1, 128 * Tile::kConsumers);   // both consumers' dS^T (SPLIT_D: and P^T) are in shared memory
        if constexpr (!Tile::kSplitD) {   // (head dim 96) dQ of this tile
            float dq[8][4];
            dq_issue(dq, t);
            wgmma_wait<0>();
            fence_registers(dq);
            release_slot();
            dq_store(dq, t);
        }
        if constexpr (Tile::kSplitD) {
            // dV += P^T dO and dK += dS^T Q over the whole query tile, A from shared memory.
            pv_wgmma_ss<T, DKV, BLOCK_M>(dv, desc_advance(pt_desc0, (t % 2) * Tile::kDSBytes),
                                         desc_advance(do_mn_desc0, slot * Tile::kQBytes));
            pv_wgmma_ss<T, DKV, BLOCK_M>(dk, desc_advance(dst_desc0, (t % 2) * Tile::kDSBytes),
                                         desc_advance(q_mn_desc0, slot * Tile::kQBytes));
            // dQ's column blocks of this consumer (64 x 64 each, over the CTA's 64 keys), added
            // from registers into the accumulator's blocks in their fragment order (thread j's
            // n-tile i at floats 512 i + 4 j of a block, as the reducer's bulk adds lay them).
            constexpr int kMine = Tile::kColBlocks / Tile::kConsumers;
            float* dq_tile = p.dq_accum + (bh * p.rows_pad + row0) * Tile::kDPad + 4 * (threadIdx.x % 128);
            #pragma unroll
            for (int pass = 0; pass < kMine; ++pass) {
                const int cb_d = consumer * kMine + pass;
                float dq[8][4];
                dq_issue(dq, t, cb_d * BN * 128);
                wgmma_wait<0>();
                fence_registers(dq);
                // a thread's four floats of an n-tile, contiguous in fragment order: one reduction
                float* dst = dq_tile + cb_d * 4096;
#ifndef FLASHCORE_ABLATE_NO_DQ_ADD
                #pragma unroll
                for (int i = 0; i < 8; ++i) red_add4(dst + 512 * i, dq[i]);
#endif
            }
            release_slot();
        }
    }
    if (Tile::kDqLag && n_tiles > 0) {   // the last tile's dQ
        const int u = n_tiles - 1;
        mbar_wait(bar.ds_full(u % 2), ((u + 1) / 2) & 1);
        float dq[8][4];
        dq_issue(dq, u);
        wgmma_wait<0>();
        fence_registers(dq);
        dq_store(dq, n_tiles - 1);
    }

    // dK *= scale; this thread's keys and columns out: stored, or added over the GQA group.
    const float scale = p.scale;
    const int head_kv = head / p.heads_per_kv;
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int key = key_lane + 8 * h;
        if (key >= seqlen_k) continue;
        #pragma unroll
        for (int dt = 0; dt < DKV / 8; ++dt) {
            const int col = c_col0 + 8 * dt + col_lane;
            if (col >= p.head_dim) continue;
            const float k0 = dk[dt][2 * h] * scale, k1 = dk[dt][2 * h + 1] * scale;
            const float v0 = dv[dt][2 * h], v1 = dv[dt][2 * h + 1];
            if (p.dk_accum == nullptr) {
                *reinterpret_cast<u32*>(p.dk + batch * p.dk_sb + head_kv * p.dk_sh + key * p.dk_ss + col) = pack2<T>(k0, k1);
                *reinterpret_cast<u32*>(p.dv + batch * p.dv_sb + head_kv * p.dv_sh + key * p.dv_ss + col) = pack2<T>(v0, v1);
            } else {
                // per kv head (atomics over its group), or deterministic per query head (each
                // element added once; bwd_convert sums the group in order)
                const int acc_head = p.dkv_by_q_head ? head : head_kv, acc_heads = p.dkv_by_q_head ? p.heads : p.heads_kv;
                const i64 at = ((static_cast<i64>(batch) * acc_heads + acc_head) * seqlen_k + key) * p.head_dim + col;
                red_add2(p.dk_accum + at, k0, k1);
                red_add2(p.dv_accum + at, v0, v1);
            }
        }
    }
}

}  // namespace fc
