// Diagnostic builds that scripts/dev asks for with -D switches (the `defines` of
// flashcore_cupy/loader.py); in the product build every macro here is empty, and the kernels'
// SASS is what it is without them.
//   FLASHCORE_TRACE           FC_TRACE(n): thread 0 of each warpgroup stores the SM clock at point
//                             n into fc_trace[(CTA * 4 + warpgroup) * FC_TRACE_POINTS + n];
//                             FC_TRACE_NS(n) the global timer (scripts/dev/trace_sm90.py).
//   FLASHCORE_ABLATE_NO_EXP2  the scores' exponentials become their argument (FFMA only)
//   FLASHCORE_ABLATE_NO_SOFTMAX, _NO_PV, _NO_QK, _NO_TURNS: the Hopper kernel's step loop with
//                             P = S, without the P V or the S GEMM (empty wgmma groups keep the
//                             waits' counts), or without ping-pong turns (scripts/dev/ablate_sm90.py)
//   FLASHCORE_ABLATE_NO_DQ    the Hopper backward without dQ's GEMM (an empty group; head dim
//                             256: nor its adds); _NO_DQ_ADD (head dim 256): without dQ's adds
//                             (scripts/dev/backward_probe.py --ablate NO_DQ --ablate NO_DQ_ADD)
//   FLASHCORE_ABLATE_NO_STORE the Hopper forward's epilogue without O's stores (its LSE's kept)
//   FLASHCORE_O_STORE32       the Hopper forward's O stored 4 bytes a lane on every output (v48's
//                             16-byte stores off: the fallback path for unaligned outputs)
//   FLASHCORE_ABLATE_ASCENDING  the Hopper forward's variants run their key tiles first to last
//                             (Variant::kDescending in variant.cuh; ablate_sm90.py)
//   FLASHCORE_DYNAMIC         the Hopper forward's persistent CTAs take their next tile from a
//                             counter (sm90_scheduler.cuh; scripts/dev/schedule_probe.py)
//   FLASHCORE_STREAM_ITEMS=<n> which Hopper forward tiles stream (flash_fwd_sm90.cu's stream_items;
//                             scripts/dev/stream_probe.py): 1 (the product's) a dense batch's, 0
//                             none, 2 packed sequences' too
//   FLASHCORE_TRACE_ITEMS=<n> FC_ITEM(i, n): thread 0 of each warpgroup of the Hopper forward stores
//                             the SM clock at point n of work item i (< the define) into
//                             fc_items[(i * 4 + warpgroup) * FC_ITEM_POINTS + n]; FC_ITEM_SET(i, n, v)
//                             a value there, FC_ITEM_WHERE(i) its CTA and SM (scripts/dev/item_trace.py:
//                             where a work tile's time goes)
#pragma once

#define FC_TRACE_POINTS 24
#ifdef FLASHCORE_TRACE
extern "C" __device__ unsigned long long fc_trace[4096 * 4 * FC_TRACE_POINTS];
#define FC_TRACE_AT(n) fc_trace[(blockIdx.x * 4 + threadIdx.x / 128) * FC_TRACE_POINTS + (n)]
#define FC_TRACE(n) do { if (threadIdx.x % 128 == 0) FC_TRACE_AT(n) = clock64(); } while (0)
#define FC_TRACE_NS(n)                                                                     \
    do {                                                                                   \
        if (threadIdx.x % 128 == 0) {                                                      \
            unsigned long long t_;                                                         \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                         \
            FC_TRACE_AT(n) = t_;                                                           \
        }                                                                                  \
    } while (0)
#else
#define FC_TRACE(n) do {} while (0)
#define FC_TRACE_NS(n) do {} while (0)
#endif

#define FC_ITEM_POINTS 8
#ifdef FLASHCORE_TRACE_ITEMS
extern "C" __device__ unsigned long long fc_items[FLASHCORE_TRACE_ITEMS * 4 * FC_ITEM_POINTS];
#define FC_ITEM_SET(i, n, v_)                                                             \
    do {                                                                                   \
        if (threadIdx.x % 128 == 0 && (i) >= 0 && (i) < FLASHCORE_TRACE_ITEMS)              \
            fc_items[((i) * 4 + threadIdx.x / 128) * FC_ITEM_POINTS + (n)] = (v_);         \
    } while (0)
#define FC_ITEM(i, n) FC_ITEM_SET(i, n, clock64())
// point 7 of item i: its CTA (high word) and SM
#define FC_ITEM_WHERE(i)                                                                   \
    do {                                                                                   \
        unsigned sm_;                                                                      \
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm_));                                   \
        FC_ITEM_SET(i, 7, static_cast<unsigned long long>(blockIdx.x) << 32 | sm_);        \
    } while (0)
#else
#define FC_ITEM_SET(i, n, v_) do {} while (0)
#define FC_ITEM(i, n) do {} while (0)
#define FC_ITEM_WHERE(i) do {} while (0)
#endif

#ifdef FLASHCORE_ABLATE_NO_EXP2
#define FC_SCORE_EXP2(x) (x)
#else
#define FC_SCORE_EXP2(x) fast_exp2(x)
#endif
