// Which keys each query sees, and a row's LSE: the one definition the kernels share (the
// forward kernels today; the backward and inference kernels build on it). The spec is
// flashcore_cupy/reference.py's `visible`: key j is visible to query i iff j < Sk and, with a
// causal mask, j <= i + diag, diag = Sk - Sq (bottom-right aligned, flash_attn's).
// Each kernel passes the scalars from where it keeps them (the Hopper kernel reads `causal`
// from its __grid_constant__ params at each use). Macros, not inline functions: as functions
// returning the same expressions, ptxas commuted comparisons and scheduled the kernels
// differently; as macros every dispatchable config's SASS is what it was when each kernel
// wrote them out.
#pragma once
#include "mma_sm80.cuh"

namespace fc {

// One past the last key any of the query rows [row0, row0 + rows) sees (<= 0: none).
#define FC_KEY_END(seqlen_k, diag, causal, row0, rows) \
    ((causal) ? min((seqlen_k), (row0) + (rows) + (diag)) : (seqlen_k))

// The block_n-key tiles from tile 0 that cover keys [0, key_end) (none for key_end <= 0):
// tiles past them, above the causal diagonal, are never loaded.
#define FC_KEY_TILES(block_n, key_end) ((key_end) > 0 ? ((key_end) + (block_n) - 1) / (block_n) : 0)

// Whether key tile [key0, key0 + block_n) hides a key from some row at or after row0: it runs
// past Sk or crosses the diagonal. Only such tiles are masked element by element.
#define FC_TILE_PARTIAL(block_n, seqlen_k, diag, causal, key0, row0) \
    ((key0) + (block_n) > (seqlen_k) || ((causal) && (key0) + (block_n) - 1 > (row0) + (diag)))

// Whether query `row` does not see `key`.
#define FC_KEY_HIDDEN(seqlen_k, diag, causal, row, key) \
    ((key) >= (seqlen_k) || ((causal) && (key) > (row) + (diag)))

// A row's natural-log LSE from its softmax state (m in log2 units, l the sum of exp2):
// -inf for a row that saw no key.
__device__ __forceinline__ float row_lse(float m, float l) {
    return l > 0.f ? (m + log2f(l)) * LN2 : neg_inf();
}

}  // namespace fc
