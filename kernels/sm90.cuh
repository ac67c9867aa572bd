// Hopper (sm_90a) building blocks as inline PTX: mbarriers, TMA tile loads,
// wgmma shared-memory descriptors and ordering, register reallocation.
#pragma once
#include "wgmma_sm90.cuh"

namespace fc {

// Dynamic shared memory a CTA may opt into on sm_90 (227 KB: configs.SMEM_LIMIT["sm_90a"]).
constexpr u32 kSm90SmemLimit = 232448;

// ---- mbarrier (shared-memory transaction barrier) --------------------------

__device__ __forceinline__ void mbar_init(u32 bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the async (TMA) proxy.
__device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` of TMA data the phase must wait for.
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}

// Wait until the phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n.reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

// ---- TMA -------------------------------------------------------------------

// Box at coordinates (c0 innermost .. c3) of a 4-D tensor map into shared memory;
// completion is counted in bytes on `bar`. Out-of-range elements arrive as zeros.
__device__ __forceinline__ void tma_load_4d(u32 dst, const void* tensor_map, u32 bar, int c0, int c1,
                                            int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
        "[%0], [%1, {%2, %3, %4, %5}], [%6];"
        :: "r"(dst), "l"(reinterpret_cast<u64>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
           "r"(bar)
        : "memory");
}

// `bytes` (a multiple of 16) contiguous bytes from global memory into shared memory (both
// 16-byte aligned), counted on `bar` as a TMA box is.
__device__ __forceinline__ void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
        :: "r"(dst), "l"(reinterpret_cast<u64>(src)), "r"(bytes), "r"(bar) : "memory");
}

// Makes this thread's shared-memory stores visible to the async proxy (a wgmma that reads
// them as an operand); then a barrier among the threads that stored.
__device__ __forceinline__ void fence_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// `bytes` (a multiple of 16) of float32 in shared memory added element by element into global
// memory (both 16-byte aligned), as one bulk reduction of the async proxy; a thread's bulk
// operations are committed as groups and waited for (reading done, or all done) by group.
__device__ __forceinline__ void bulk_reduce_add(float* dst, u32 src, u32 bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
                 :: "l"(dst), "r"(src), "r"(bytes) : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" :: "n"(N) : "memory");
}

template <int N>
__device__ __forceinline__ void bulk_wait() {
    asm volatile("cp.async.bulk.wait_group %0;" :: "n"(N) : "memory");
}

// Orders this thread's async-proxy global accesses (bulk copies and reductions) with its
// generic ones (a flag's acquire before, its release after).
__device__ __forceinline__ void fence_async_global() {
    asm volatile("fence.proxy.async.global;" ::: "memory");
}

__device__ __forceinline__ int ld_acquire(const int* flag) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    return v;
}

__device__ __forceinline__ void red_release_add(int* flag, int v) {
    asm volatile("red.release.gpu.global.add.s32 [%0], %1;" :: "l"(flag), "r"(v) : "memory");
}

// Two float32 adds into global memory (8-byte aligned) as one vector reduction (sm_90).
__device__ __forceinline__ void red_add2(float* dst, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" :: "l"(dst), "f"(a), "f"(b) : "memory");
}

// Four float32 adds into global memory (16-byte aligned) as one vector reduction (sm_90).
__device__ __forceinline__ void red_add4(float* dst, const float (&x)[4]) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(dst), "f"(x[0]), "f"(x[1]), "f"(x[2]),
                 "f"(x[3]) : "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map) {
    asm volatile("prefetch.tensormap [%0];" :: "l"(reinterpret_cast<u64>(tensor_map)) : "memory");
}

// ---- wgmma -----------------------------------------------------------------

// Shared-memory matrix descriptor for a 128B-swizzled operand (PTX ISA, "Matrix
// Descriptor Format"): start address, leading and stride byte offsets, all >> 4.
// Tiles are 1024-byte aligned, so the base-offset field stays 0.
__device__ __forceinline__ u64 smem_desc_sw128(u32 addr, u32 leading_bytes, u32 stride_bytes) {
    return static_cast<u64>((addr & 0x3FFFF) >> 4) |
           static_cast<u64>((leading_bytes & 0x3FFFF) >> 4) << 16 |
           static_cast<u64>((stride_bytes & 0x3FFFF) >> 4) << 32 |
           1ull << 62;
}

// Orders register writes (accumulators, A fragments) before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

// Wait until at most N committed wgmma groups are still running.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
}

// After a wgmma_wait: pins the registers an in-flight wgmma wrote (accumulators)
// or read (A fragments) to this point, so the compiler neither reads nor reuses
// them earlier.
template <int R, int C>
__device__ __forceinline__ void fence_registers(float (&x)[R][C]) {
    #pragma unroll
    for (int i = 0; i < R; ++i)
        #pragma unroll
        for (int j = 0; j < C; ++j) asm volatile("" : "+f"(x[i][j]) :: "memory");
}

template <int R, int C>
__device__ __forceinline__ void fence_registers(u32 (&x)[R][C]) {
    #pragma unroll
    for (int i = 0; i < R; ++i)
        #pragma unroll
        for (int j = 0; j < C; ++j) asm volatile("" : "+r"(x[i][j]) :: "memory");
}

// ---- warp specialisation ---------------------------------------------------

template <int REGS>
__device__ __forceinline__ void regs_release() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" :: "n"(REGS));
}

template <int REGS>
__device__ __forceinline__ void regs_claim() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" :: "n"(REGS));
}

// Hardware barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (whole
// warps): sync waits for the count to be reached; arrive counts without waiting.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(threads) : "memory");
}

// ---- what the parameter struct holds (params_sm90.cuh) ----------------------------------

// CUtensorMap: 128 opaque bytes, 64-byte aligned, passed in the __grid_constant__ params.
struct alignas(64) TensorMap { unsigned char bytes[128]; };

// n / d for 0 <= n < 2^31 as a multiply-high and a shift (Granlund & Montgomery), with
// (mul, shr) chosen for d on the host (launch.py: fast_divisor; mul = 0 means d = 1).
// work_tile's three runtime divisions cost the producer ~0.5 us before its first copy
// (H100 trace of the mission kernel, PERF_HISTORY v13).
struct FastDiv {
    u32 mul, shr;
    __device__ __forceinline__ int operator()(int n) const {
        return mul ? static_cast<int>(__umulhi(static_cast<u32>(n), mul) >> shr) : n;
    }
};

}  // namespace fc
