// FlashAttention forward for Hopper (sm_90a): TMA, wgmma, warp specialisation.
//
//   O = softmax(scale * Q K^T + mask) V,   LSE = log(rowsum(exp(scale * Q K^T + mask)))
//
// Same math, masking and outputs as flash_fwd_sm80.cu; what differs is how the
// tiles move and multiply. A work tile is BLOCK_M = 64 * CONSUMERS query rows of
// one (batch, head); a CTA has CONSUMERS + 1 warpgroups and takes work tiles in
// turn (see work_tile):
//
//   producer (warpgroup 0, 24 registers): one thread (or PRODUCERS = 2: one for Q
//     and K, one for V) issues TMA copies: a tile's Q once the previous tile's is
//     released, then K_j and V_j into rings of STAGES slots, each slot refilled
//     once every consumer has released it;
//   consumer c (64 query rows each, the rest of the register file): for each key tile j
//     S   = Q_c K_j^T         wgmma m64nBLOCK_Nk16, Q and K from shared memory
//     P   = online softmax(S) in registers (softmax.cuh, shared with sm_80) with a
//           lazy maximum (seeded by the first key tile's first columns), P straight
//           into the A operand of
//     O  += P V_j             wgmma m64nHEAD_DIMk16, P from registers, V from shared
//   then O /= l and a direct store; LSE as in the sm_80 kernel.
//
// Overlap: inside a consumer, S_{j+1} = Q K_{j+1}^T is issued together with
// O += P_j V_j; across consumers, one's softmax overlaps another's GEMMs.
//
// Packed GQA (decode: Sq = 1, Hq / Hkv = pack in 2..64): a work tile is one (batch, kv
// head), its rows the pack query heads that share that K/V (a Q box of BLOCK_M heads at
// position 0; rows past pack are computed and never stored), so K/V streams once per kv
// head instead of once per query head. A KV cache's speculative rows (Sq > 1, pack * Sq <= 64,
// pack dividing 64) pack the same way, (query, head) rows query-major (row r: query r / pack,
// as the portable kernel's packed_row), from one box of a map whose rows are the heads.
//
// KV cache (S = KvCache<...>, kernels/sequence.cuh; plain decode steps, SPLIT tiles): a work
// tile's keys are its sequence's (seqused_k + new keys, read per item), its K/V tiles loaded
// from the cache's room (contiguous) or page by page (TMA boxes of a page, or of a tile in one;
// the producer's warp looks the pages up; pages that do not tile the key tiles, as pages of 1
// key: gathered row by row by the warp's cp.async, KvCache<kCachePageRows>). Rows of a tile past
// its sequence hold what the cache held there (gathered: zeros): the consumer zeroes V's before
// P V reads them. Split-KV: item i is split
// i % splits of its tile, a share of its key tiles, stored as float32 partials (split_kv.cuh)
// that merge_states combines.
//
// Packed sequences (S = Varlen, plain or a variant without bias; flash_attn's varlen layout):
// the maps span the packed q, k and v as one batch entry, a tile's boxes start at its sequence's
// rows (cu_seqlens), and its keys, causal diagonal and window are its sequence's. Rows of a box past its sequence are the next
// sequence's: their queries are never stored, their keys masked, their V rows zeroed as a KV
// cache's. The tiles (each sequence's longest first: work_tile) go to a persistent grid by the
// dynamic deal (sm90_scheduler.cuh): many tiles of unequal work, the next one's loads under this
// one's end.
//
// SPLIT (small grids: short sequences, decode): a work tile is 64 rows that all
// consumers share; consumer c takes key tiles c, c + CONSUMERS, ... and the
// partial (m, l, O) merge into consumer 0's at the end (combine_split), which
// halves the serial chain of key tiles behind each output row.
//
// WARP_ROWS = 8 (split tiles on grids that even 64-row tiles leave half idle: the
// mission shape): a work tile is 32 rows, the first 8 of each warp's 16-row slice of
// the m64 GEMMs (Q arrives as four 8-row boxes, one per slice; the other rows of Q in
// shared memory are never written, and their scores are never read). Each thread then
// runs the softmax on one row half (HALVES = 1 in softmax.cuh) with P's other half
// zero: every scheduler's exponential chain halves, and twice the SMs share the rows.
//
// Shared memory: every tile is stored as ceil(HEAD_DIM/64) column blocks of 64
// elements (128-byte rows), 128B-swizzled by TMA, which is the layout the wgmma
// descriptors below describe:
//   Q, K (K-major operands):  stride byte offset 1024 (8 rows), k-step of 16 = +32 B
//                             inside a column block, next block + rows * 128 B;
//   V    (MN-major B, transposed): leading byte offset = the column-block size,
//                             stride byte offset 1024, k-step of 16 keys = +2048 B.
// TMA zero-fills rows past Sq/Sk and columns past the runtime head dim, so only
// key tiles past Sk or crossing the causal diagonal need a mask; tiles entirely
// above it are never loaded (bottom-right aligned, as in the sm_80 kernel).
// The host builds the three tensor maps (flashcore_cupy/tma.py) and mirrors
// smem_bytes in flashcore_cupy/configs.py.
//
// Where the parts live: sm90_pipeline.cuh (the K/V ring, its mbarriers, TMA tile loads),
// sm90_scheduler.cuh (work_tile), sm90_producer.cuh (the producer warpgroup),
// sm90_mainloop.cuh (the consumers' GEMMs), sm90_epilogue.cuh (the split combine); this file
// holds the tile constants and the kernel: warp roles, the consumers' step loop, the stores.
#include "sm90.cuh"
#include "softmax.cuh"
#include "variant.cuh"
// Sm90Params, the one by-value argument (__grid_constant__): the q, k and v tensor maps, then
// what flashcore_cupy/launch.py packs after them; declared in flashcore_cupy/params.py.
#include "params_sm90.cuh"
#include "sm90_epilogue.cuh"
#include "sm90_mainloop.cuh"
#include "sm90_pipeline.cuh"
#include "sm90_producer.cuh"
#include "sm90_scheduler.cuh"

namespace fc {

template <int HEAD_DIM, int DV, int BLOCK_N, int STAGES, int CONSUMERS, bool PINGPONG, bool SPLIT, int WARP_ROWS,
          int Q_SLOTS = 1>
struct Sm90Tile {
    static constexpr int kConsumers = CONSUMERS;
    static constexpr bool kSplit = SPLIT;
    static constexpr int kHalves = WARP_ROWS / 8;   // accumulator row halves holding queries
    static constexpr int kBlockM = SPLIT ? 4 * WARP_ROWS : 64 * CONSUMERS;
    static constexpr int kQRows = SPLIT ? 64 : kBlockM;                 // Q's rows in shared memory
    // Q's TMA boxes: the whole tile, or with 8-row warps one box per 16-row slice.
    static constexpr int kQBoxRows = WARP_ROWS == 16 ? kBlockM : 8;
    // Consumers that use (and release) each K/V tile.
    static constexpr int kTileUsers = SPLIT ? 1 : CONSUMERS;
    // How many tiles the producer's K copies run ahead of its V copies (see produce).
    static constexpr int kKAhead = SPLIT ? CONSUMERS - 1 : 0;
    // A row in shared memory: whole 64-column blocks (D96's second block half zero-filled by TMA,
    // and never read: the GEMMs stop at HEAD_DIM and DV, V's and O's head dim).
    static constexpr int kDPad = (HEAD_DIM + 63) / 64 * 64, kDvPad = (DV + 63) / 64 * 64;
    static constexpr u32 kQBytes = kBlockM * kDPad * 2;             // what Q's boxes bring
    static constexpr u32 kKBytes = BLOCK_N * kDPad * 2;             // one K tile
    static constexpr u32 kVBytes = BLOCK_N * kDvPad * 2;            // one V tile
    // Q's slots: one, or two where the next work tile's Q loads under this one: streamed tiles
    // (stream_items).
    static constexpr int kQSlots = Q_SLOTS;
    static constexpr bool kStream = Q_SLOTS == 2;
    static constexpr u32 kQSlotBytes = kQRows * kDPad * 2;
    // Shared layout (offsets from a 1024-byte aligned base): Q's slots, K ring, V ring, barriers
    // (a second Q slot's last), and a bias variant's bias tiles.
    static constexpr u32 kOffK = Q_SLOTS * kQSlotBytes;
    static constexpr u32 kOffV = kOffK + STAGES * kKBytes;
    static constexpr u32 kOffBars = kOffV + STAGES * kVBytes;
    // A bias variant's per-warp bias tiles (BiasStage), after the barriers.
    static constexpr u32 kBarsEnd = kOffBars + 8 * (2 + 4 * STAGES) + 16 * (Q_SLOTS - 1);
    static constexpr u32 kOffBias = (kBarsEnd + 127) / 128 * 128;
    // The dynamic deal's item slots (sm90_scheduler.cuh), after the barriers.
    static constexpr u32 kOffItems = kBarsEnd;
    // Register split of setmaxnreg. The CTA holds what the launch bound gives every thread
    // (ptxas compiles to it: 64K / threads in multiples of 8); setmaxnreg only moves
    // registers inside that allocation, so the consumers share what the producer's drop to
    // 24 frees (asking for more waits forever: four consumers hung at 120). At most 256.
    // A gathered paged cache's producer warps hold a tile's row indices and compute each copy's
    // address (gather_tile): 48 registers (24 spilled; 40 spilled 72 bytes at 128-key tiles under
    // NVRTC 13.5, none under 12.9).
    static constexpr int kProducerRegs = 24, kGatherProducerRegs = 48;
    static constexpr int kLaunchRegs = 65536 / (128 * (CONSUMERS + 1)) / 8 * 8;
    __host__ __device__ static constexpr int consumer_regs(int producer) {
        return (kLaunchRegs * (CONSUMERS + 1) - producer) / CONSUMERS / 8 * 8 > 256
                   ? 256 : (kLaunchRegs * (CONSUMERS + 1) - producer) / CONSUMERS / 8 * 8;
    }
    static constexpr int kConsumerRegs = consumer_regs(kProducerRegs);

    static_assert(HEAD_DIM == 64 || HEAD_DIM == 96 || HEAD_DIM == 128 || HEAD_DIM == 192 || HEAD_DIM == 256,
                  "HEAD_DIM: 64, 96, 128, 192 or 256 (wgmma widths built)");
    static_assert(DV == 64 || DV == 96 || DV == 128 || DV == 192 || DV == 256, "DV: 64, 96, 128, 192 or 256");
    static_assert(BLOCK_N == 64 || BLOCK_N == 80 || BLOCK_N == 96 || BLOCK_N == 112 || BLOCK_N == 128 ||
                  BLOCK_N == 176 || BLOCK_N == 192, "BLOCK_N: 64, 80, 96, 112, 128, 176 or 192 (wgmma widths built)");
    static_assert(STAGES >= 2 && STAGES <= 8, "STAGES: 2..8");
    // Four consumers leave 96 registers per thread at compile time (the launch bound):
    // enough for split tiles of 64 keys only.
    static_assert(CONSUMERS >= 1 && (CONSUMERS <= 3 || (CONSUMERS == 4 && SPLIT && BLOCK_N == 64)),
                  "CONSUMERS: 1..3 warpgroups of 64 rows, or 4 sharing split 64-key tiles");
    static_assert(!PINGPONG || CONSUMERS >= 2, "PINGPONG needs two consumers to take turns");
    static_assert(!SPLIT || (CONSUMERS >= 2 && !PINGPONG && STAGES % CONSUMERS == 0),
                  "SPLIT: 2+ consumers, no ping-pong, ring slots a multiple of the consumers");
    static_assert(WARP_ROWS == 16 || (WARP_ROWS == 8 && SPLIT), "WARP_ROWS: 16, or 8 with SPLIT");
    static_assert(Q_SLOTS == 1 || (Q_SLOTS == 2 && !SPLIT), "Q_SLOTS: 1, or 2 for whole tiles (a CTA's next)");
    // SPLIT combine: each consumer but the first leaves O, m and l (kHalves * (DV / 4 + 2)
    // floats per thread) in the ring, free once every consumer is done with it.
    static_assert(!SPLIT || (CONSUMERS - 1) * 128 * kHalves * (DV / 4 + 2) * 4 <= STAGES * (kKBytes + kVBytes),
                  "SPLIT: the combine's scratch must fit in the K/V ring");
};

// Streamed work tiles: a consumer's turns run as one chain across its CTA's work tiles. A tile's
// last P V waits (pending) to go out with the next tile's first S GEMM (Q' in a second slot,
// loaded under this tile), and its epilogue runs after that pair, so that neither the ramp (K_0,
// S_0 alone, the first softmax) nor the last P V runs alone: window1k's items spent 1.68 and 1.94
// of ~16 us there (v44 item trace). Whole tiles of dense batches without a bias, where a second Q
// slot fits (configs.Sm90FwdConfig.q_slots mirrors it): 1.01-1.05x the unstreamed kernel's speed
// on the dense rows, D64 and D128 (v51, H100). Not three consumers' tiles with a variant: their
// 128 registers a thread spill 8 bytes streamed. Packed sequences' tiles can stream too
// (FLASHCORE_STREAM_ITEMS=2) but lost there (0.94-0.99x, v51); 0 streams none (the probe's A/B:
// scripts/dev/stream_probe.py). A streamed consumer must know its next tile before its last P V:
// the dynamic deal (packed sequences) publishes it once the tile's first copies are issued and a
// streamed consumer takes it as the tile starts (published after all the tile's copies, as
// unstreamed, it would wait on copies that wait on that consumer's own releases: the protocol
// model deadlocks so).
#ifndef FLASHCORE_STREAM_ITEMS
#define FLASHCORE_STREAM_ITEMS 1
#endif
template <class S, class V, class Tile1>
__device__ constexpr bool stream_items() {
    return ((FLASHCORE_STREAM_ITEMS >= 1 && S::kDense) || (FLASHCORE_STREAM_ITEMS >= 2 && S::kVarlen)) &&
           !S::kSplitKV && !Tile1::kSplit && V::kBias == 0 && (V::kPlain || Tile1::kConsumers < 3);
}
template <class S, class Tile1>   // where the kernel's shared memory ends (the barriers, the deal's slots)
__device__ constexpr u32 layout_end() {
    return Tile1::kOffItems + (dynamic_deal<S>() ? kItemSlotBytes : 0);
}
template <class S, class V, class Tile1>   // (Tile1: the tile with one Q slot)
__device__ constexpr int q_slots() {
    return stream_items<S, V, Tile1>() && 1024 + layout_end<S, Tile1>() + Tile1::kQSlotBytes + 16 <= kSm90SmemLimit
               ? 2 : 1;
}

// The kernel's shared memory: the tile's layout (Q's slots, the K and V rings, the barriers), then
// the dynamic deal's item slots or a bias variant's per-warp bias tiles (BiasStage: two slots a
// warp where they fit beside the ring, else one), from a 1024-byte aligned base.
template <class T, int HEAD_DIM, int DV, int BLOCK_N, int STAGES, int CONSUMERS, bool PINGPONG, bool SPLIT,
          int WARP_ROWS, class V, class S>
struct Sm90FwdSmem {
    using Tile1 = Sm90Tile<HEAD_DIM, DV, BLOCK_N, STAGES, CONSUMERS, PINGPONG, SPLIT, WARP_ROWS>;
    using Tile = Sm90Tile<HEAD_DIM, DV, BLOCK_N, STAGES, CONSUMERS, PINGPONG, SPLIT, WARP_ROWS, q_slots<S, V, Tile1>()>;
    static constexpr u32 kBiasSlot = 4 * CONSUMERS * WARP_ROWS * BLOCK_N * (V::kBias == 2 ? 4 : 2);
#ifdef FLASHCORE_BIAS_SLOTS
    static constexpr int kBiasSlots = FLASHCORE_BIAS_SLOTS;   // A/B: -DFLASHCORE_BIAS_SLOTS=1
#else
    static constexpr int kBiasSlots = 1024 + Tile::kOffBias + 2 * kBiasSlot <= kSm90SmemLimit ? 2 : 1;
#endif
    using Stage = BiasStage<T, V::kBias == 2 ? 2 : 1, WARP_ROWS, BLOCK_N, kBiasSlots>;
    static constexpr u32 kEnd = V::kBias != 0 ? Tile::kOffBias + 4 * CONSUMERS * Stage::kBytes : layout_end<S, Tile>();
};

// The dynamic shared memory a launch of flash_fwd_sm90 gives (its template arguments):
// configs.Sm90FwdConfig.smem_bytes mirrors it, and test_compile holds the two equal for every
// instantiation it compiles (with the 1024 bytes of slack for the base's alignment).
template <class T, int HEAD_DIM, int DV, int BLOCK_N, int STAGES, int CONSUMERS, bool PINGPONG, bool SPLIT,
          int PRODUCERS, int WARP_ROWS, class V = Plain, class S = Dense>
__device__ constexpr u32 flash_fwd_sm90_smem() {
    return 1024 + Sm90FwdSmem<T, HEAD_DIM, DV, BLOCK_N, STAGES, CONSUMERS, PINGPONG, SPLIT, WARP_ROWS, V, S>::kEnd;
}

template <class T, int HEAD_DIM, int DV, int BLOCK_N, int STAGES, int CONSUMERS, bool PINGPONG, bool SPLIT,
          int PRODUCERS, int WARP_ROWS, class V = Plain, class S = Dense>
__global__ void __launch_bounds__(128 * (CONSUMERS + 1), 1)
flash_fwd_sm90(const __grid_constant__ Sm90Params p) {
    using Smem = Sm90FwdSmem<T, HEAD_DIM, DV, BLOCK_N, STAGES, CONSUMERS, PINGPONG, SPLIT, WARP_ROWS, V, S>;
    using Tile = typename Smem::Tile;
    constexpr int H = Tile::kHalves;
    constexpr bool kStream = Tile::kStream;   // (stream_items)
#ifdef FLASHCORE_ABLATE_NO_TURNS
    constexpr bool kTurns = false;
#else
    constexpr bool kTurns = PINGPONG;   // consumers take turns issuing their GEMMs
#endif
    static_assert(PRODUCERS == 1 || PRODUCERS == 2, "PRODUCERS: one thread for Q, K and V, or K's and V's own");
    // A KV cache's tiles are SPLIT ones (one consumer a K/V tile: it clears the tile's stale rows
    // alone) of 16-row warps (write_partials' row halves); packed sequences' are whole tiles (each
    // consumer clears the stale rows of the tiles it multiplies: the same zeros).
    static_assert(S::kDense || (S::kVarlen && !SPLIT) || (SPLIT && WARP_ROWS == 16),
                  "KV cache: SPLIT tiles of 16-row warps; varlen: whole tiles");
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 sbase = (smem_addr(smem) + 1023) & ~1023u;   // swizzle atoms need 1024-byte alignment
    const Barriers<STAGES> bar{sbase + Tile::kOffBars};

    // Broadcast from lane 0, so ptxas sees it warp-uniform: what derives from it (the consumer,
    // its Q rows, its turns and key tiles) then lives in uniform registers, and the wgmma
    // descriptors are built there instead of moved over from vector registers (R2UR).
    const int warpgroup = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0); FC_TRACE(0); FC_TRACE_NS(22);
    constexpr int kProducerRegs = gathers_rows<S>() ? Tile::kGatherProducerRegs : Tile::kProducerRegs;
    if (threadIdx.x == 0) {
        for (int s = 0; s < Tile::kQSlots; ++s) {
            mbar_init(bar.q_full(s), 1);
            mbar_init(bar.q_empty(s), 4 * CONSUMERS);      // one arrival per consumer warp
        }
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(bar.k_full(s), gathers_rows<S>() ? gather_arrivals<S, PRODUCERS>() : 1);   // TMA: one thread's expect_tx
            mbar_init(bar.v_full(s), gathers_rows<S>() ? gather_arrivals<S, PRODUCERS>() : 1);
            mbar_init(bar.k_empty(s), 4 * Tile::kTileUsers);   // one arrival per using warp
            mbar_init(bar.v_empty(s), 4 * Tile::kTileUsers);
        }
        if (dynamic_deal<S>()) ItemSlots{sbase + Tile::kOffItems}.init(4 * CONSUMERS);   // every consumer warp takes each item
        mbar_fence_init();
    }
    __syncthreads(); FC_TRACE(1);

    if (warpgroup == 0) {
        regs_release<kProducerRegs>(); FC_TRACE(2);
        if constexpr (gathers_rows<S>()) {   // every warp, PARTS a role (gather_parts)
            constexpr int PARTS = gather_parts<S, PRODUCERS>();
            const int warp = threadIdx.x / 32, part = warp / PRODUCERS;
            if (part < PARTS && warp % PRODUCERS == 0)
                produce<Tile, HEAD_DIM, DV, BLOCK_N, STAGES, true, PRODUCERS == 1, V, S, PARTS>(p, sbase, bar, part);
            if (part < PARTS && warp % PRODUCERS == 1)
                produce<Tile, HEAD_DIM, DV, BLOCK_N, STAGES, false, true, V, S, PARTS>(p, sbase, bar, part);
            return;
        }
        // one thread each (a paged cache, packed sequences: the thread's warp, see produce)
        const int producer = S::kPaged || S::kVarlen || threadIdx.x % 32 == 0 ? threadIdx.x / 32 : -1;
        if (producer == 0) produce<Tile, HEAD_DIM, DV, BLOCK_N, STAGES, true, PRODUCERS == 1, V, S>(p, sbase, bar);
        if (PRODUCERS == 2 && producer == 1)
            produce<Tile, HEAD_DIM, DV, BLOCK_N, STAGES, false, true, V, S>(p, sbase, bar);
        return;
    }

    regs_claim<Tile::consumer_regs(kProducerRegs)>(); FC_TRACE(3);
    const int consumer = warpgroup - 1, lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    const int seqlen_q = p.seqlen_q;
    // Operand descriptors: Q's rows of this consumer (in each column block), ring slot 0's K and V.
    const u64 q_desc = smem_desc_sw128(sbase + (SPLIT ? 0 : consumer * 64 * 128), 16, 1024);
    const u64 k_desc0 = smem_desc_sw128(sbase + Tile::kOffK, 16, 1024);
    const u64 v_desc0 = smem_desc_sw128(sbase + Tile::kOffV, BLOCK_N * 128, 1024);
    auto k_tile = [&](Ring<STAGES> r) { return desc_advance(k_desc0, r.slot() * Tile::kKBytes); };
    auto v_tile = [&](Ring<STAGES> r) { return desc_advance(v_desc0, r.slot() * Tile::kVBytes); };
    auto release = [&](u32 barrier) { if (lane == 0) mbar_arrive(barrier); };
    // A bias variant's tiles (used with a bias only; configs.Sm90FwdConfig.bias_slots mirrors
    // their count).
    constexpr int kBiasSlots = Smem::kBiasSlots;
    using Stage = typename Smem::Stage;
    const Stage stage{reinterpret_cast<char*>(smem) + (sbase - smem_addr(smem)) + Tile::kOffBias +
                      (consumer * 4 + warp) * Stage::kBytes};
    // The host's smem_bytes mirrors the layouts that grow past the barriers (bias tiles, a second
    // Q slot): trap, never overrun.
    if constexpr (V::kBias != 0 || kStream) {
        u32 given;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(given));
        if (given < (sbase - smem_addr(smem)) + Smem::kEnd) __trap();
    }
    // Ping-pong: consumers take turns issuing their GEMMs (hardware barrier 1 + c
    // is consumer c's turn), so one's softmax runs while another's GEMMs do.
    // Per work tile every consumer takes n_blocks + 1 turns, the last consumer
    // opens consumer 0's first and skips its own last pass (nobody would take it).
    auto await_turn = [&] { if constexpr (kTurns) named_barrier_sync(1 + consumer, 256); };
    auto pass_turn = [&](bool last_turn) {
        if constexpr (kTurns)
            if (!(last_turn && consumer == CONSUMERS - 1))
                named_barrier_arrive(1 + (consumer + 1) % CONSUMERS, 256);
    };

    // Streamed tiles: `chain` while a chain of turns is open (its last consumer opened consumer
    // 0's first); `pending` while the last P V of work item pend_i (its V at ring position
    // pend_it) waits for the next turn, O, m, l and P (`carried`) held across tiles for it.
    bool chain = false, pending = false;
    int pend_it = 0, pend_i = 0, next_i = 0;   // (next_i: the dynamic deal's next tile, taken early)
    struct Rows {
        float o[1][DV / 8][4];
        float m[1][2], l[1][2];
        u32 a[BLOCK_N / 16][4];          // P_j as the 16-bit A operand of P V_j
    } carried;

    int it = 0, n_done = 0;                                   // K/V tiles and work items so far
    // The deal (sm90_scheduler.cuh): round the grid, or dynamic (the m-th item after the first
    // taken from the producer's slots).
    constexpr bool kDynamic = dynamic_deal<S>();
    static_assert(!kDynamic || ((S::kDense || S::kVarlen) && PRODUCERS == 1 && !SPLIT && V::kBias == 0),
                  "a dynamic deal: dense or varlen, one producer thread, no split tiles, no bias (its tiles' place)");
    const ItemSlots items{sbase + Tile::kOffItems};
    for (int i = blockIdx.x; i < p.n_items;
         ++n_done, i = kDynamic ? (kStream ? next_i : items.take(n_done - 1, lane)) : i + gridDim.x) {
        const WorkTile w = work_tile<Tile, BLOCK_N, V, S>(p, i);
        // O, the row maxima and sums, and P as P V's A operand: this tile's (streamed: the carried
        // ones, the pending tile's until its last P V has gone out with this tile's first S).
        Rows fresh;
        Rows& rows = kStream ? carried : fresh;
        auto& o = rows.o;
        auto& m = rows.m;
        auto& l = rows.l;
        auto& a = rows.a;
        auto reset_rows = [&] {
            m[0][0] = neg_inf();
            m[0][1] = neg_inf();
            l[0][0] = 0.f;
            l[0][1] = 0.f;
            #pragma unroll
            for (int dt = 0; dt < DV / 8; ++dt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) o[0][dt][e] = 0.f;
        };
        // Epilogue: O /= l straight from registers while the producer already loads the next
        // tile: 16 bytes a lane (store_row16) where the output's rows are 16-byte aligned, else
        // each quad's 16 contiguous bytes of a row. A row is a position of query head w.head, or
        // with packed GQA query head w.head * pack + row at position 0.
        auto store_tile = [&](const WorkTile& w) {
            const int seq_q = S::kVarlen ? w.seqlen_q : seqlen_q;
            const int w_row0 = w.row0 + (SPLIT ? 0 : 64 * consumer) + WARP_ROWS * warp;   // this warp's first query
            const bool packed = p.pack > 1;
#ifdef FLASHCORE_O_STORE32   // (timing probes: every row 4 bytes a lane, as before v48)
            constexpr bool kStore16 = false;
#else
            constexpr bool kStore16 = true;
#endif
            const bool o_vec16 = kStore16 && rows_aligned16(p.o, p.o_sb, p.o_sh, p.o_ss);
            #pragma unroll
            for (int half = 0; half < H; ++half) {
                const float l_row = quad_sum(l[0][half]);
                const float inv_l = l_row > 0.f ? 1.f / l_row : 0.f; FC_TRACE(17);
                const int row = w_row0 + lane / 4 + 8 * half;
                // packed: a KV cache's rows are (query, head)s, query r / pack (one query a dense call's)
                const bool stored = row < (packed ? p.pack * (S::kCache ? seq_q : 1) : seq_q);
                // varlen: the row of packed o and of the LSE's (Hq, total_q) (o_sb 0: one "batch")
                const int q_head = w.head * p.pack + (packed ? (S::kCache ? row % p.pack : row) : 0);
                const int q_pos = packed ? (S::kCache ? row / p.pack : 0) : w.q_row0 + row;
                u16* o_row = p.o + w.batch * p.o_sb + q_head * p.o_sh + q_pos * p.o_ss;
#ifdef FLASHCORE_ABLATE_NO_STORE   // (a bound that p.head_dim_v never passes: O still computed)
                constexpr int kStoreOff = 1 << 20;
#else
                constexpr int kStoreOff = 0;
#endif
                if (o_vec16) {
                    store_row16<T, DV>(o_row, o[0], half, inv_l, stored, p.head_dim_v - kStoreOff, lane);
                } else if (stored) {
                    #pragma unroll
                    for (int dt = 0; dt < DV / 8; ++dt)
                        if (dt * 8 + kStoreOff < p.head_dim_v)
                            *reinterpret_cast<u32*>(o_row + dt * 8 + 2 * (lane % 4)) =
                                pack2<T>(o[0][dt][2 * half] * inv_l, o[0][dt][2 * half + 1] * inv_l);
                }
                if (stored && p.lse != nullptr && lane % 4 == 0)
                    p.lse[(static_cast<i64>(S::kVarlen ? 0 : w.batch) * p.heads * p.pack + q_head) * seqlen_q + q_pos] =
                        row_lse(m[0][half], l_row);
            } FC_TRACE(14); FC_TRACE_NS(23);
        };
        auto finish_pending = [&] {
            fence_registers(o[0]);
            fence_registers(a);
            release(bar.v_empty(Ring<STAGES>{pend_it}.slot()));
            store_tile(work_tile<Tile, BLOCK_N, V, S>(p, pend_i));
            pending = false;
            reset_rows();
        };
        // A turn with no S GEMM of this consumer's: a pending P V goes out alone in it, if any (the
        // chain's last turn: `last`).
        auto flush_turn = [&](bool last) {
            const Ring<STAGES> r{pend_it};
            const bool flushes = pending;
            if (flushes) mbar_wait(bar.v_full(r.slot()), r.parity());
            await_turn();
            if (flushes) pv_wgmma<T, DV, BLOCK_N>(o[0], a, v_tile(r));
            pass_turn(last);
            wgmma_wait<0>();
            if (flushes) finish_pending();
        };
        if (S::kVarlen && w.batch < 0) break;   // past the sequences' items (the producer stops there too)
        FC_ITEM(i, 0); FC_ITEM_WHERE(i);
        const int n_blocks = w.n_blocks;
        // The tile's sequence: its queries (varlen: its own; else p.seqlen_q) and keys.
        const int seq_q = S::kVarlen ? w.seqlen_q : seqlen_q;
        const int seqlen_k = w.seqlen_k, causal_diag = seqlen_k - seq_q;
        const bool has_rows = consumer < w.consumers;
#ifdef FLASHCORE_RECORD_WORK
        if (threadIdx.x == 128 && i < FLASHCORE_RECORD_WORK) {
            const int entry[8] = {static_cast<int>(blockIdx.x), w.row0, w.head, w.batch, w.consumers, n_blocks,
                                  n_done, w.first};
            for (int f = 0; f < 8; ++f) fc_work_log[i][f] = entry[f];
        }
#endif
        const int c_row0 = w.row0 + (SPLIT ? 0 : 64 * consumer);   // this warpgroup's first query
        const int w_row0 = c_row0 + WARP_ROWS * warp;              // this warp's first query
        // This warpgroup's key tiles end at its own rows' part of the causal diagonal. A
        // variant's consumers run all of the tile's (window) key tiles, the mask hiding what
        // their own rows do not see.
        const int c_kv_end = FC_KEY_END(seqlen_k, causal_diag, p.causal, c_row0, 4 * WARP_ROWS);
        const int c_blocks = !has_rows ? 0
                           : V::kPlain ? min(n_blocks, max(0, FC_KEY_TILES(BLOCK_N, c_kv_end) - w.first)) : n_blocks;
        // The key tiles this consumer multiplies: all of its rows' (its k-th is tile k),
        // or with SPLIT every CONSUMERS-th (its k-th is tile consumer + k * CONSUMERS).
        const int my_blocks = !SPLIT ? c_blocks
                            : c_blocks > consumer ? (c_blocks - consumer - 1) / CONSUMERS + 1 : 0;
        auto tile = [&](int k) { return SPLIT ? consumer + k * CONSUMERS : k; };

        if (!pending) reset_rows();   // (streamed: after the pending tile's store)
        float s[1][BLOCK_N / 8][4];      // S_j, then P_j in fp32
        float alpha[1][2];
        // S_j (landed in s) -> P_j in `a` and alpha for O. The lazy update writes `a` during
        // the softmax, so it runs once the previous P V is done; without a row maximum to
        // wait on, that beat running the exact softmax under P V (v15; PERF_HISTORY v18).
        // A variant's scores leave variant_scores in the units softmax takes as its scale.
        ScoreMod mod{};
        if constexpr (!V::kPlain)   // (varlen: the masks aligned bottom-right in the tile's sequence)
            mod = seq_score_mod<V, S>(p, w.batch, w.head, SeqSpan{w.seqlen_q, w.seqlen_k, w.q_row0, w.k_row0});
        // The bias: each warp's tiles staged in shared memory kBiasSlots steps ahead
        // (BiasStage: the first ones now, the next after each score step).
        if constexpr (V::kBias != 0) {
            if (my_blocks > 0) {
                stage.load(0, mod, w_row0, w.key_tile<V>(tile(0)) * BLOCK_N, lane);
                if constexpr (kBiasSlots == 2) {
                    if (my_blocks > 1) stage.load(1, mod, w_row0, w.key_tile<V>(tile(1)) * BLOCK_N, lane);
                    else stage.skip();
                }
            }
        }
        const float softmax_scale = V::kPlain ? p.scale_log2 : mod.units;
        // ALiBi where no key past the diagonal is seen (causal, a window's right side 0): its scores
        // one FFMA each, key-linear (variant_scores' LINEAR), in a frame per row that the softmax
        // takes in (SHIFTED); 0.93x the time of |i + off - j| a score at S4k D128 causal (v44, H100).
#ifndef FLASHCORE_ABLATE_NO_SOFTMAX
        const bool alibi_linear = V::kAlibi && mod.win_right == 0;
#else
        constexpr bool alibi_linear = false;
#endif
        auto softmax_tile = [&](int j, bool first = false) {
            const int key0 = w.key_tile<V>(j) * BLOCK_N;
            if constexpr (V::kPlain) {
                const bool needs_mask = FC_TILE_PARTIAL(BLOCK_N, seqlen_k, causal_diag, p.causal, key0, c_row0);
                // packed (query, head) rows under a causal mask (speculative rows): row r is query
                // r / pack (a decode step's one query sees every key: only Sk bounds its rows)
                if (needs_mask && S::kCache && p.pack > 1 && p.causal)
                    scale_and_mask<1, BLOCK_N / 8, true, H, true>(s, p.scale_log2, w_row0, key0, seqlen_k,
                                                                  causal_diag, p.causal, lane, p.pack);
                else if (needs_mask)
                    scale_and_mask<1, BLOCK_N / 8, true, H>(s, p.scale_log2, w_row0, key0, seqlen_k, causal_diag,
                                                            p.causal, lane);
                else
                    scale_and_mask<1, BLOCK_N / 8, false, H>(s, p.scale_log2, 0, 0, 0, 0, false, lane);
            } else {
                const bool needs_mask = tile_partial(mod, BLOCK_N, key0, c_row0, 4 * WARP_ROWS);
                const int own = SPLIT ? (j - consumer) / CONSUMERS : j;   // this consumer's own-th tile
                const int slot = own % kBiasSlots;
                if constexpr (V::kBias != 0) stage.wait();
                if constexpr (V::kAlibi) {
                    using Reader = decltype(stage.reader(slot));
                    if (alibi_linear)
                        variant_scores<V, 1, BLOCK_N / 8, H, Reader, false, true>(s, mod, stage.reader(slot), needs_mask,
                                                                                 w_row0, key0, lane);
                }
                if (!alibi_linear)
                    variant_scores<V, 1, BLOCK_N / 8, H>(s, mod, stage.reader(slot), needs_mask, w_row0, key0, lane);
                if constexpr (V::kBias != 0) {
                    __syncwarp();   // every lane has read the slot: it may be refilled
                    if (own + kBiasSlots < my_blocks)
                        stage.load(slot, mod, w_row0, w.key_tile<V>(tile(own + kBiasSlots)) * BLOCK_N, lane);
                    else if (kBiasSlots == 2)
                        stage.skip();
                }
                if (alibi_linear) {   // (its softmax takes the row terms the scores left out)
                    float shift[2];
                    alibi_shift<H>(shift, mod, w_row0, key0, lane);
                    if (first) seed_max<BLOCK_N / 8, H, true>(s, m, softmax_scale, shift);
                    softmax_update_lazy<T, BLOCK_N / 8, H, true>(s, a, m, l, alpha, softmax_scale, shift);
                    return;
                }
            }
            if (first) seed_max<BLOCK_N / 8, H>(s, m, softmax_scale);
#ifdef FLASHCORE_ABLATE_NO_SOFTMAX
            pack_p<T, BLOCK_N / 8, H>(a, s[0]); alpha[0][0] = alpha[0][1] = 1.f;
#else
            softmax_update_lazy<T, BLOCK_N / 8, H>(s, a, m, l, alpha, softmax_scale);
#endif
        };

        // Streamed: a tile whose CTA has no next one, or a next one of no key tiles, closes the
        // chain as every tile does unstreamed (its last P V in a turn of its own, n_blocks + 1
        // turns); the others take n_blocks turns and leave the chain open (the last consumer opens
        // a chain at a tile of some key tiles where none is open).
        bool closes = true;
        if constexpr (kStream) {
            // (the dynamic deal's next tile, published once this tile's first copies were issued;
            // past the sequences' tiles a varlen one has no key tiles)
            if constexpr (kDynamic) next_i = items.take(n_done, lane);
            const int next = kDynamic ? next_i : i + static_cast<int>(gridDim.x);
            closes = next >= p.n_items || work_tile<Tile, BLOCK_N, V, S>(p, next).n_blocks == 0;
        }
        if (kTurns && consumer == CONSUMERS - 1 && n_blocks > 0 && !chain) named_barrier_arrive(1, 256);
        chain = kStream && n_blocks > 0 && !closes;
        // wgmma issue stays out of data-dependent branches: ptxas serialises every
        // wgmma of a kernel that waits on one inside a divergent path (C7518).
        // This tile's Q slot (its n_done-th: slot n_done % kQSlots, used n_done / kQSlots times before).
        const int q_slot = n_done % Tile::kQSlots;
        const u64 q_tile = desc_advance(q_desc, q_slot * Tile::kQSlotBytes);
        mbar_wait(bar.q_full(q_slot), (n_done / Tile::kQSlots) & 1); FC_TRACE(4); FC_ITEM(i, 1); FC_ITEM_SET(i, 6, my_blocks);
        // P_k V_k is done: its V tile goes back to the producer, `a` and O are free.
        // A KV cache's tile past its sequence's end: V's rows there are whatever the cache held
        // (the maps span every sequence's room; packed sequences: the next sequence's rows) and a
        // masked P (0) times a NaN is NaN: zero them.
        // A gathered paged cache's tiles (cp.async, the generic proxy) before the wgmma reads them.
        constexpr bool kGather = gathers_rows<S>();
        auto landed = [&] { if constexpr (kGather) fence_async_shared(); };
        auto clear_stale = [&](int k) {
            if constexpr ((S::kCache && !kGather) || S::kVarlen) {   // (gathered rows past it: zeros)
                const int from = seqlen_k - w.key_tile<V>(tile(k)) * BLOCK_N;
                if (from < BLOCK_N)
                    clear_tile_rows<DV, BLOCK_N>(sbase + Tile::kOffV + Ring<STAGES>{it + tile(k)}.slot() *
                                                 Tile::kVBytes, from, 2 + CONSUMERS + consumer);
            }
        };
        auto pv_done = [&](int k) {
            fence_registers(o[0]);
            fence_registers(a);
            release(bar.v_empty(Ring<STAGES>{it + tile(k)}.slot()));
        };
        if (my_blocks > 0) {
            // (streamed: with the previous tile's last P V where it is pending, then its epilogue)
            const Ring<STAGES> r{it + tile(0)}, pend{pend_it};
            const bool merges = kStream && pending;
            mbar_wait(bar.k_full(r.slot()), r.parity()); FC_TRACE(5);
            if (merges) mbar_wait(bar.v_full(pend.slot()), pend.parity());
            landed();
            await_turn();
            qk_wgmma<T, Tile::kQRows, HEAD_DIM, BLOCK_N>(s[0], q_tile, k_tile(r));
            if (merges) pv_wgmma<T, DV, BLOCK_N>(o[0], a, v_tile(pend));
            pass_turn(false);
            wgmma_wait<0>();
            fence_registers(s[0]); FC_TRACE(6);
            release(bar.k_empty(r.slot()));
            if (merges) finish_pending();
            softmax_tile(tile(0), true); FC_TRACE(7); FC_ITEM(i, 2);
        }
        // Step k: S_k = Q K_k^T and O += P_{k-1} V_{k-1} in flight together; then, once
        // both are done, the softmax of S_k (P_k into `a`) and O *= alpha_k.
        for (int k = 1; k < my_blocks; ++k) {
            const Ring<STAGES> r{it + tile(k)}, prev{it + tile(k - 1)};
            mbar_wait(bar.k_full(r.slot()), r.parity());
            mbar_wait(bar.v_full(prev.slot()), prev.parity()); FC_TRACE(8);
            landed();
            clear_stale(k - 1);
            await_turn(); FC_TRACE(20);
            qk_wgmma<T, Tile::kQRows, HEAD_DIM, BLOCK_N>(s[0], q_tile, k_tile(r));
            pv_wgmma<T, DV, BLOCK_N>(o[0], a, v_tile(prev));
            pass_turn(false);
            wgmma_wait<1>();                  // S_k landed (groups retire in order)
            fence_registers(s[0]); FC_TRACE(9);
            release(bar.k_empty(r.slot()));
            wgmma_wait<0>();
            pv_done(k - 1); FC_TRACE(21);
            softmax_tile(tile(k)); FC_TRACE(10);
            rescale_rows<1, DV / 8, H>(o, alpha); FC_TRACE(11);
        }
        // Every S GEMM has landed: Q is free, so the producer loads the next tile's Q
        // during the last P V and the epilogue.
        release(bar.q_empty(q_slot));
        if (!closes && my_blocks > 0 && c_blocks == n_blocks) {   // the last P V waits for the next turn
            if constexpr (S::kVarlen) {   // (its V rows past this tile's sequence cleared now)
                const Ring<STAGES> last{it + tile(my_blocks - 1)};
                mbar_wait(bar.v_full(last.slot()), last.parity());
                clear_stale(my_blocks - 1);
            }
            pending = true;
            pend_it = it + tile(my_blocks - 1);
            pend_i = i;
        } else if (my_blocks > 0) {
            const Ring<STAGES> last{it + tile(my_blocks - 1)};
            mbar_wait(bar.v_full(last.slot()), last.parity());
            landed();
            clear_stale(my_blocks - 1);
            await_turn();
            pv_wgmma<T, DV, BLOCK_N>(o[0], a, v_tile(last));
            pass_turn(closes && c_blocks == n_blocks);
            wgmma_wait<0>();
            pv_done(my_blocks - 1); FC_TRACE(12); FC_ITEM(i, 3);
        }
        // Streamed: turns c_blocks .. n_blocks - 1 release the key tiles this consumer's rows skip,
        // tile t in turn t (turn c_blocks was the last P V's, above, where there was one; a first
        // turn sends a pending P V out alone).
        for (int t = c_blocks; !closes && t < n_blocks; ++t) {
            if (!(t == c_blocks && c_blocks > 0)) flush_turn(false);
            const Ring<STAGES> r{it + t};
            mbar_wait(bar.k_full(r.slot()), r.parity());
            mbar_wait(bar.v_full(r.slot()), r.parity());
            release(bar.k_empty(r.slot()));
            release(bar.v_empty(r.slot()));
        }
        // Key tiles this consumer's rows do not need (causal: the other consumers' part
        // of the diagonal; or it has no rows here): release each once landed and keep
        // taking turns, so that every consumer takes n_blocks + 1. One tile per turn:
        // a tile past the ring's depth loads only after the other consumers have used
        // earlier ones, which takes this consumer's turns.
        // (Streamed: a closing tile's, its first turn sending out a pending P V.)
        for (int turn = c_blocks > 0 ? c_blocks + 1 : 0; closes && !SPLIT && n_blocks > 0 && turn <= n_blocks;
             ++turn) {
            if (turn > 0) {
                const Ring<STAGES> r{it + turn - 1};
                mbar_wait(bar.k_full(r.slot()), r.parity());
                mbar_wait(bar.v_full(r.slot()), r.parity());
                release(bar.k_empty(r.slot()));
                release(bar.v_empty(r.slot()));
            }
            if constexpr (kStream) {
                flush_turn(turn == n_blocks);
            } else {
                await_turn();
                pass_turn(turn == n_blocks);
            }
        }
        it += n_blocks;
        if constexpr (SPLIT)   // one work tile per CTA (see Sm90Config.schedule): the ring is done
            combine_split<DV, CONSUMERS, H>(reinterpret_cast<float*>(smem + (sbase - smem_addr(smem)) +
                                                                        Tile::kOffK), consumer, o, m, l); FC_TRACE(13);
        if (!has_rows) FC_ITEM(i, 4);
        if (!has_rows || (SPLIT && consumer > 0)) continue;
        if constexpr (S::kSplitKV) {
            if (p.o_accum != nullptr) {   // split-KV: this split's float32 partials, from the registers
                const int rows = seqlen_q * p.pack, head0 = w.head * p.pack;
                write_partials<DV / 8, 1, H>(p, o, m, l, w.split, w.batch, head0, w_row0, rows, p.pack, lane);
                // Each consumer's 64 rows (split tiles: consumer 0's, the tile's) have a counter;
                // their last split merges them (final LSE: (B, Hq, Sq)).
                __shared__ int split_last[CONSUMERS];
                if (p.split_count != nullptr)
                    merge_if_last_split<T, DV>(
                        p, i / p.splits * CONSUMERS + consumer, w.batch, head0, c_row0,
                        min(c_row0 + (SPLIT ? Tile::kBlockM : 64), rows),
                        p.pack, threadIdx.x - 128 * (consumer + 1), 128, split_last + consumer,
                        [&] { named_barrier_sync(2 + CONSUMERS + consumer, 128); },
                        [&](PackedRow at) { return (static_cast<i64>(w.batch) * p.heads * p.pack + at.head) * seqlen_q +
                                                   at.query; });
                continue;
            }
        }

        if (kStream && pending) continue;   // (this tile's: stored after its last P V, next turn)
        store_tile(w); FC_ITEM(i, 4);
    }
}

}  // namespace fc
