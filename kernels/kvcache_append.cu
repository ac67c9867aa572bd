// The KV cache's append (flashcore_cupy/reference.py's attention_kvcache is the spec): key i of
// k_new[b] and v_new[b] goes to position seqused_k[b] + i of sequence b's cache, in place,
// before the attention reads the cache (on the same stream). A thread per 16-byte chunk of a
// (batch, key, head) row. Positions past what a sequence can hold and pages outside the pool are
// not written (kernels/sequence.cuh's clamps; the attention reads them the same way).
#include "sequence.cuh"
// AppendParams, declared in flashcore_cupy/params.py.
#include "params_append.cuh"

namespace fc {

constexpr int kAppendThreads = 256;   // configs.AppendConfig.threads

template <bool PAGED>
__global__ void __launch_bounds__(kAppendThreads)
kvcache_append(const __grid_constant__ AppendParams p) {
    const int chunks = p.head_dim / 8;
    const i64 total = static_cast<i64>(p.batch) * p.new_keys * p.heads_kv * chunks;
    for (i64 i = static_cast<i64>(blockIdx.x) * kAppendThreads + threadIdx.x; i < total;
         i += static_cast<i64>(gridDim.x) * kAppendThreads) {
        const int c = static_cast<int>(i % chunks);
        i64 rest = i / chunks;
        const int head = static_cast<int>(rest % p.heads_kv);
        rest /= p.heads_kv;
        const int key = static_cast<int>(rest % p.new_keys), batch = static_cast<int>(rest / p.new_keys);
        const int pos = cache_used(p, batch) + key;
        if (pos >= p.seqlen_k) continue;
        const i64 k_at = cache_offset<PAGED>(p, batch, pos, p.k_sb, p.k_ss);
        const i64 v_at = cache_offset<PAGED>(p, batch, pos, p.v_sb, p.v_ss);
        if (k_at < 0 || v_at < 0) continue;
        const int col = c * 8;
        *reinterpret_cast<uint4*>(p.k + k_at + head * p.k_sh + col) = *reinterpret_cast<const uint4*>(
            p.k_new + batch * p.kn_sb + key * p.kn_ss + head * p.kn_sh + col);
        *reinterpret_cast<uint4*>(p.v + v_at + head * p.v_sh + col) = *reinterpret_cast<const uint4*>(
            p.v_new + batch * p.vn_sb + key * p.vn_ss + head * p.vn_sh + col);
    }
}

}  // namespace fc
