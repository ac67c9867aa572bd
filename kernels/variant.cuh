// Attention variants: the compile-time policy a kernel is instantiated with, and the score
// step every variant kernel shares. The spec is flashcore_cupy/reference.py's `attention`:
//
//   raw = scale * q . k -> softcap * tanh(raw / softcap) -> - slope * |i + off - j|
//       -> + bias[b, h, i, j] -> -inf where key j is hidden from query i -> softmax
//
// with off = Sk - Sq (0 under top-left causal). A variant kernel's keys are those of a window
// (left, right): key j visible iff j < Sk and i + off - left <= j <= i + off + right, -1
// unbounded on that side; the host folds a causal mask into right = 0 (and passes (-1, -1)
// for none), so a variant kernel has no causal flag of its own.
//
// The plain kernel (fc::Plain: mask.cuh's key < Sk and bottom-right causal flag) keeps every
// kernel's plain path as it was: the kernels test V::kPlain at compile time and run their old
// code; only the variants use what is below.
#pragma once
#include "mask.cuh"
#include "softmax.cuh"

namespace fc {

// A variant: the window mask, and SOFTCAP / ALIBI whether the scores are capped / get ALiBi;
// BIAS: 0 none, 1 a 16-bit bias of the inputs' type, 2 a float32 bias. (The plain mask under
// score options spilled registers on most tiles, the window mask did not: so every variant
// takes the window's.)
// kDescending: the Hopper forward runs a work tile's key tiles last to first. ALiBi's scores
// grow toward the diagonal, so in ascending order each tile's exceeded the lazy softmax's running
// maximum by slope * BLOCK_N (log2 units: over 15 from slope 0.09 at 128 keys) and the tile was
// redone exactly (softmax.cuh); from the diagonal down the maximum comes first. A window's first
// tile in ascending order hides its first columns from most rows (the lazy seed, -inf: redone
// too). Measured on the H200 against ascending (-DFLASHCORE_ABLATE_ASCENDING, ablate_sm90.py):
// ALiBi 1.17x, window1k 1.06x, softcap D256 1.05x, bias 1.03x faster.
template <bool SOFTCAP, bool ALIBI, int BIAS>
struct Variant {
    static constexpr bool kPlain = false;
    static constexpr bool kSoftcap = SOFTCAP;
    static constexpr bool kAlibi = ALIBI;
    static constexpr int kBias = BIAS;
#ifdef FLASHCORE_ABLATE_ASCENDING
    static constexpr bool kDescending = false;
#else
    static constexpr bool kDescending = true;
#endif
    static_assert(BIAS >= 0 && BIAS <= 2, "BIAS: 0 none, 1 16-bit, 2 float32");
};
struct Plain {
    static constexpr bool kPlain = true;
    static constexpr bool kSoftcap = false;
    static constexpr bool kAlibi = false;
    static constexpr int kBias = 0;
    static constexpr bool kDescending = false;
};

// A variant's run-time values for one (batch, head), set up once per CTA from the params.
struct ScoreMod {
    int seqlen_q, seqlen_k;
    int diag;            // off: query i's aligned key is i + diag
    int win_left, win_right;   // window sides, -1 unbounded
    float scale_log2;    // scale * log2(e)
    float cap_scale;     // scale / softcap
    float units;         // what softmax's exp2 multiplies the score step's output by (> 0)
    float slope_units;   // this head's ALiBi slope in those units: slope * log2(e) / units
    float bias_units;    // log2(e) / units
    const void* bias;    // this (batch, head)'s bias, row 0 key 0
    i64 bias_ss;         // its row stride, elements
    bool bias_pairs;     // every row starts at an even element: a key pair is one aligned load
    bool bias_chunks;    // every row starts 16-byte aligned: a tile goes by cp.async (BiasStage)
};

// The variant values of (batch, head) from a kernel's params (either kernel's: both declare
// the fields of flashcore_cupy/params.py's _variant_fields under the same names).
template <class V, class P>
__device__ __forceinline__ ScoreMod score_mod(const P& p, int batch, int head) {
    // The score step leaves tanh(scale q.k / softcap) (units softcap log2(e)), or q.k itself
    // (units scale log2(e); where that is not positive, scale log2(e) q.k, units 1); ALiBi
    // and bias join in those units, and softmax folds them into its exp2 as in the plain
    // kernels, so a window alone costs no multiply per score.
    const float units = V::kSoftcap ? p.cap_log2 : exp2_fold(p.scale_log2);
    ScoreMod m{p.seqlen_q, p.seqlen_k, p.diag, p.win_left, p.win_right, p.scale_log2,
               p.cap_scale, units, 0.f, LOG2E / units, nullptr, p.bias_ss, false, false};
    if constexpr (V::kAlibi) m.slope_units = p.alibi[batch * p.alibi_sb + head * p.alibi_sh] * (LOG2E / units);
    if constexpr (V::kBias != 0) {
        constexpr int kBytes = V::kBias == 2 ? 4 : 2;
        m.bias = static_cast<const char*>(p.bias) + (batch * p.bias_sb + head * p.bias_sh) * kBytes;
        const unsigned long long at = reinterpret_cast<unsigned long long>(m.bias);
        m.bias_pairs = at % (2 * kBytes) == 0 && p.bias_ss % 2 == 0;
        m.bias_chunks = at % 16 == 0 && p.bias_ss * kBytes % 16 == 0;
    }
    return m;
}

// Keys [begin, end) that some query of rows [row0, row0 + rows) sees under a window: where
// end <= begin the rows see none.
struct KeyRange { int begin, end; };

template <class P>
__device__ __forceinline__ KeyRange window_keys(const P& m, int row0, int rows) {
    KeyRange r;
    r.begin = m.win_left >= 0 ? max(0, row0 + m.diag - m.win_left) : 0;
    r.end = m.win_right >= 0 ? min(m.seqlen_k, row0 + rows + m.diag + m.win_right) : m.seqlen_k;
    return r;
}

// The other way round (the backward's): query rows [begin, end) of which some sees a key of
// [key0, key0 + keys), under the mask (diag, left, right) (-1 unbounded; a plain kernel's
// causal flag is right = 0, left = -1); end <= begin: none. Keys past Sk are not seen.
struct RowRange { int begin, end; };

__device__ __forceinline__ RowRange rows_seeing(int seqlen_q, int seqlen_k, int diag, int left, int right,
                                                int key0, int keys) {
    const int key1 = min(key0 + keys, seqlen_k) - 1;   // the last key of the tile that exists
    RowRange r;
    r.begin = right >= 0 ? max(0, key0 - diag - right) : 0;
    r.end = left >= 0 ? min(seqlen_q, key1 - diag + left + 1) : seqlen_q;
    if (key1 < key0) r.end = r.begin;
    return r;
}

// A window's geometry alone (window_keys and window_tiles read these fields of a ScoreMod or a
// kernel's params): a sequence's keys and diagonal where they are not the call's (varlen).
struct SeqWindow { int seqlen_k, diag, win_left, win_right; };

// Those keys as key tiles of block_n: tiles [first, end) (none: 0, 0).
struct TileRange { int first, end; };

template <class P>
__device__ __forceinline__ TileRange window_tiles(const P& m, int block_n, int row0, int rows) {
    const KeyRange keys = window_keys(m, row0, rows);
    const bool any = keys.end > keys.begin;
    return {any ? keys.begin / block_n : 0, any ? FC_KEY_TILES(block_n, keys.end) : 0};
}

// Whether key tile [key0, key0 + block_n) hides a key from some row of [row0, row0 + rows).
__device__ __forceinline__ bool tile_partial(const ScoreMod& m, int block_n, int key0, int row0, int rows) {
    return key0 + block_n > m.seqlen_k || (m.win_right >= 0 && key0 + block_n - 1 > row0 + m.diag + m.win_right) ||
           (m.win_left >= 0 && key0 < row0 + rows - 1 + m.diag - m.win_left);
}

// tanh on the special-function unit (max relative error 2^-10.99).
__device__ __forceinline__ float fast_tanh(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 16-bit bias bits as float: T's type (fp16 or bf16).
template <class T>
__device__ __forceinline__ float bias_bits(u32 bits) {
    if constexpr (T::is_bf16) return __uint_as_float(bits << 16);
    float f;
    asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "h"(static_cast<unsigned short>(bits)));
    return f;
}

// Half c (0: the low 16 bits) of two 16-bit bias values in a word, as float.
template <class T>
__device__ __forceinline__ float bias_half(u32 word, int c) {
    if constexpr (T::is_bf16) return __uint_as_float(c ? word & 0xffff0000u : word << 16);
    float f;
    if (c) asm("{ .reg .f16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi; }" : "=f"(f) : "r"(word));
    else asm("{ .reg .f16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo; }" : "=f"(f) : "r"(word));
    return f;
}

// The bias of (row, key) (ScoreMod.bias: this (batch, head)'s), 0 past Sq or Sk: one load, for
// the Hopper backward's transposed tiles.
template <class T, int BIAS>
__device__ __forceinline__ float bias_at(const ScoreMod& m, int row, int key) {
    if (row >= m.seqlen_q || key >= m.seqlen_k) return 0.f;
    const i64 at = static_cast<i64>(row) * m.bias_ss + key;
    // volatile: the load stays where the score step needs it (hoisted, 32 of them held
    // registers the transposed tiles do not have)
    if constexpr (BIAS == 2) {
        float x;
        asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(x) : "l"(static_cast<const float*>(m.bias) + at));
        return x;
    } else {
        unsigned short bits;
        asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(bits) : "l"(static_cast<const u16*>(m.bias) + at));
        return bias_bits<T>(bits);
    }
}

// A thread's bias for one score tile, in the mma C layout of variant_scores: rows first_row +
// 16 mt + lane / 4 + 8 half, keys first_key + 8 nt + 2 (lane % 4) + {0, 1}. The kernels fetch
// it right after issuing the tile's S GEMM and use it after the GEMM lands, so that the global
// loads overlap the GEMM; each pair of keys is one load where the bias's rows allow it
// (ScoreMod.bias_pairs). Entries past Sq or Sk read nothing and hold 0 (those keys are masked
// and those rows never stored). The loads are volatile: they stay where the kernel puts them,
// between the tensor-core instructions.
template <class T, int BIAS, int M_TILES, int N_TILES, int HALVES>
struct BiasFrag {
    static constexpr int kWords = BIAS == 2 ? 2 : 1;   // one key pair: 2 x 16 bits, or 2 floats
    u32 w[M_TILES][HALVES][N_TILES][kWords];

    __device__ __forceinline__ float at(int mt, int half, int nt, int c) const {
        if constexpr (BIAS == 2) return __uint_as_float(w[mt][half][nt][c]);
        else return bias_half<T>(w[mt][half][nt][0], c);
    }

    __device__ __forceinline__ void fetch(const ScoreMod& m, int first_row, int first_key, int lane) {
        constexpr int kBytes = BIAS == 2 ? 4 : 2;
        #pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt)
            #pragma unroll
            for (int half = 0; half < HALVES; ++half) {
                const int row = first_row + mt * 16 + lane / 4 + 8 * half;
                const int key0 = first_key + 2 * (lane % 4);
                const char* row_ptr = static_cast<const char*>(m.bias) +
                                      (static_cast<i64>(row) * m.bias_ss + key0) * kBytes;
                #pragma unroll
                for (int nt = 0; nt < N_TILES; ++nt) {
                    u32 (&x)[kWords] = w[mt][half][nt];
                    const char* ptr = row_ptr + nt * 8 * kBytes;
                    // keys of this pair in the row: 0, 1 or 2
                    const int keys = row < m.seqlen_q ? min(2, max(0, m.seqlen_k - (key0 + nt * 8))) : 0;
                    #pragma unroll
                    for (int c = 0; c < kWords; ++c) x[c] = 0u;
                    if (keys == 2 && m.bias_pairs) {
                        if constexpr (BIAS == 2)
                            asm volatile("ld.global.nc.v2.b32 {%0, %1}, [%2];" : "=r"(x[0]), "=r"(x[1]) : "l"(ptr));
                        else
                            asm volatile("ld.global.nc.b32 %0, [%1];" : "=r"(x[0]) : "l"(ptr));
                    } else {
                        #pragma unroll
                        for (int c = 0; c < 2; ++c) {
                            if (c >= keys) break;
                            if constexpr (BIAS == 2) {
                                asm volatile("ld.global.nc.b32 %0, [%1];" : "=r"(x[c]) : "l"(ptr + 4 * c));
                            } else {
                                unsigned short bits;
                                asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(bits) : "l"(ptr + 2 * c));
                                x[0] |= static_cast<u32>(bits) << (16 * c);
                            }
                        }
                    }
                }
            }
    }
};

// No bias: nothing to fetch or hold.
template <class T, int M_TILES, int N_TILES, int HALVES>
struct BiasFrag<T, 0, M_TILES, N_TILES, HALVES> {
    __device__ __forceinline__ float at(int, int, int, int) const { return 0.f; }
    __device__ __forceinline__ void fetch(const ScoreMod&, int, int, int) {}
};

// A warp's bias tiles in shared memory: SLOTS tiles of ROWS query rows x BLOCK_N keys, each
// tile's k-th one filled SLOTS score steps before it is read, so its loads have that many
// steps of GEMMs to land. Within a row the 16-byte chunks are swizzled (chunk c of row r at
// c ^ ((r % 8) << shift), shift 1 for float32) so that the score step's reads (8 rows x 4
// lanes, a key pair each) fall in distinct banks. Copies go by cp.async, one commit group per
// tile: 16-byte chunks where the bias rows start 16-byte aligned (ScoreMod.bias_chunks), else
// 4-byte pairs or float32 elements; rows past Sq and keys past Sk are zero-filled and nothing
// is read there. A 16-bit bias whose rows start at odd elements goes element by element
// through registers (ordinary loads: the warp waits for them there).
template <class T, int BIAS, int ROWS, int BLOCK_N, int SLOTS>
struct BiasStage {
    static constexpr int kElem = BIAS == 2 ? 4 : 2;
    static constexpr int kRowBytes = BLOCK_N * kElem;
    static constexpr int kShift = BIAS == 2 ? 1 : 0;
    static constexpr u32 kSlotBytes = ROWS * kRowBytes;
    static constexpr u32 kBytes = SLOTS * kSlotBytes;   // one warp's
    static_assert(kRowBytes / 16 >= (8 << kShift), "the swizzle needs 8 (float32: 16) chunks a row");
    static_assert(SLOTS == 1 || SLOTS == 2, "SLOTS: 1 or 2");
    char* stage;    // this warp's tiles (shared memory)

    // Byte `byte` of row r in slot `slot`.
    __device__ __forceinline__ char* at_byte(int slot, int r, int byte) const {
        return stage + slot * kSlotBytes + r * kRowBytes + (((byte / 16) ^ ((r % 8) << kShift)) * 16) + byte % 16;
    }

    // Rows [row0, row0 + ROWS) x keys [key0, key0 + BLOCK_N) into `slot`, in units of U bytes.
    // Where a row's units divide the warp (kUnits of 8, 16 or 32), each lane copies one unit
    // column, every 32 / kUnits rows: its key bound and its source pointer are set once and the
    // pointer steps by rows; otherwise lane i takes units i, i + 32, ... of the tile.
    template <int U>
    __device__ __forceinline__ void copy(int slot, const ScoreMod& m, int row0, int key0, int lane) const {
        constexpr int kUnits = kRowBytes / U, kPerUnit = U / kElem;
        if constexpr (U >= 4 && 32 % kUnits == 0 && ROWS % (32 / kUnits) == 0) {
            constexpr int kRowsPerPass = 32 / kUnits;
            const int u = lane % kUnits, r0 = lane / kUnits, key = key0 + u * kPerUnit;
            const int key_bytes = min(kPerUnit, max(0, m.seqlen_k - key)) * kElem;
            const char* src = static_cast<const char*>(m.bias) + (static_cast<i64>(row0 + r0) * m.bias_ss + key) * kElem;
            const i64 step = static_cast<i64>(kRowsPerPass) * m.bias_ss * kElem;
            if (U == 16 && row0 + ROWS <= m.seqlen_q && key0 + BLOCK_N <= m.seqlen_k) {   // (warp-uniform)
                #pragma unroll
                for (int n = 0; n < ROWS / kRowsPerPass; ++n, src += step)   // the whole tile: no fill
                    cp_async_16(smem_addr(at_byte(slot, r0 + n * kRowsPerPass, u * U)), src);
                return;
            }
            #pragma unroll
            for (int n = 0; n < ROWS / kRowsPerPass; ++n, src += step) {
                const int r = r0 + n * kRowsPerPass;
                const int bytes = row0 + r < m.seqlen_q ? key_bytes : 0;
                const u32 dst = smem_addr(at_byte(slot, r, u * U));
                if constexpr (U == 16) cp_async_16(dst, bytes > 0 ? src : m.bias, bytes);
                else cp_async_4(dst, bytes > 0 ? src : m.bias, bytes);
            }
        } else {
            #pragma unroll 4
            for (int i = lane; i < ROWS * kUnits; i += 32) {
                const int r = i / kUnits, u = i % kUnits;
                const int row = row0 + r, key = key0 + u * kPerUnit;
                const int keys = row < m.seqlen_q ? min(kPerUnit, max(0, m.seqlen_k - key)) : 0;
                const char* src = static_cast<const char*>(m.bias) + (static_cast<i64>(row) * m.bias_ss + key) * kElem;
                char* dst = at_byte(slot, r, u * U);
                if constexpr (U == 16) cp_async_16(smem_addr(dst), keys > 0 ? src : m.bias, keys * kElem);
                else if constexpr (U == 4) cp_async_4(smem_addr(dst), keys > 0 ? src : m.bias, keys * kElem);
                else *reinterpret_cast<u16*>(dst) = keys > 0 ? *reinterpret_cast<const u16*>(src) : u16(0);
            }
        }
    }

    // Start filling `slot` with the key tile at key0 (one commit group).
    __device__ __forceinline__ void load(int slot, const ScoreMod& m, int row0, int key0, int lane) const {
        if (m.bias_chunks) copy<16>(slot, m, row0, key0, lane);
        else if constexpr (BIAS == 2) copy<4>(slot, m, row0, key0, lane);
        else if (m.bias_pairs) copy<4>(slot, m, row0, key0, lane);
        else copy<2>(slot, m, row0, key0, lane);
        cp_async_commit();
    }

    // No tile to fill: an empty group, so that wait's count stays one group per step.
    __device__ __forceinline__ void skip() const { cp_async_commit(); }

    // The oldest tile in flight has landed for every lane of the warp (before its reads).
    __device__ __forceinline__ void wait() const {
        cp_async_wait<SLOTS - 1>();
        __syncwarp();
    }

    // A reader of `slot` with variant_scores' at(mt, half, nt, c) (mma C layout, rows from the
    // warp's first: see BiasFrag). A thread's two keys c = 0, 1 sit side by side in one 4-byte
    // (float32: 8-byte) word: both reads load that word, which the compiler loads once.
    struct Reader {
        const BiasStage& stage;
        int slot;
        __device__ __forceinline__ float at(int mt, int half, int nt, int c) const {
            const int lane = threadIdx.x % 32;
            const char* e = stage.at_byte(slot, mt * 16 + lane / 4 + 8 * half, (nt * 8 + 2 * (lane % 4)) * kElem);
            if constexpr (BIAS == 2) {
                const float2 pair = *reinterpret_cast<const float2*>(e);
                return c ? pair.y : pair.x;
            } else {
                return bias_half<T>(*reinterpret_cast<const u32*>(e), c);
            }
        }
    };
    __device__ __forceinline__ Reader reader(int slot) const { return {*this, slot}; }
};

// One score's variant step (the mask aside), in ScoreMod.units, on the float lvalue x (q . k as
// the GEMM left it, or scaled already where the units are 1): capped, ALiBi'd at distance
// dist = i + off - j and biased by `bias` (evaluated only with a bias). variant_scores runs it
// over a tile; the Hopper backward over its transposed tiles, element by element. A macro, as
// mask.cuh's: the forward kernels' SASS stays what it was with the steps written inline.
#define FC_SCORE_STEP(V, x, m, dist, bias)                                          \
    do {                                                                           \
        if constexpr (V::kSoftcap) x = fast_tanh(x * (m).cap_scale);               \
        if constexpr (V::kAlibi) x -= (m).slope_units * fabsf(dist);                \
        if constexpr (V::kBias != 0) x = fmaf((bias), (m).bias_units, x);           \
    } while (0)

// A non-plain variant's scores, in place, in the units softmax takes as its scale
// (ScoreMod.units): S of this warp's rows (mma.sync's C layout, see softmax.cuh) from the raw
// q . k to capped, ALiBi'd and biased scores, and with MASK (the tile is partial:
// tile_partial) -inf where a key is hidden. bias: this tile's, fetched. PACKED (GQA-packed
// tiles, no ALiBi or bias: kernels/sequence.cuh): row r holds query r / pack.
// LINEAR (ALiBi where no visible key lies past the diagonal: a window's right side 0, causal):
// there -slope |i + off - j| is slope (j - key0) - slope dist0 (dist0 = i + off - key0, this
// thread's first key key0), so a score takes slope * its key's offset from key0 (one FFMA with
// a constant) and leaves out -slope dist0, the same for the thread's whole row of the tile:
// alibi_shift gives it for the softmax's SHIFTED frame.
template <class V, int M_TILES, int N_TILES, int HALVES, bool MASK, class Bias, bool PACKED = false,
          bool LINEAR = false>
__device__ __forceinline__ void variant_scores(float (&s)[M_TILES][N_TILES][4], const ScoreMod& m,
                                               const Bias& bias, int first_row, int first_key, int lane,
                                               int pack = 1) {
    static_assert(!LINEAR || (V::kAlibi && !PACKED), "LINEAR: ALiBi's scores");
    if constexpr (!V::kSoftcap) {
        if (!(m.scale_log2 > 0.f)) {   // units 1: the scale goes in here (exp2_fold)
            #pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt)
                #pragma unroll
                for (int nt = 0; nt < N_TILES; ++nt)
                    #pragma unroll
                    for (int e = 0; e < 2 * HALVES; ++e) s[mt][nt][e] *= m.scale_log2;
        }
    }
    #pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
        #pragma unroll
        for (int half = 0; half < HALVES; ++half) {
            int row = first_row + mt * 16 + lane / 4 + 8 * half;
            if constexpr (PACKED) row /= pack;
            const int key0 = first_key + 2 * (lane % 4);   // this thread's first key; the rest at + 8 nt + c
            // ALiBi's distance i + off - j at key0, in float (exact below 2^24): per score a
            // subtraction of a constant and a fused |.| multiply-add.
            const float dist0 = static_cast<float>(row + m.diag - key0);
            // Visible keys of this row as offsets from key0: [lo, hi).
            const int hi = (m.win_right >= 0 ? min(m.seqlen_k, row + m.diag + m.win_right + 1) : m.seqlen_k) - key0;
            const int lo = m.win_left >= 0 ? row + m.diag - m.win_left - key0 : -0x7fffffff - 1;
            #pragma unroll
            for (int nt = 0; nt < N_TILES; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int at = nt * 8 + c;
                    float x = s[mt][nt][2 * half + c];
                    if constexpr (LINEAR) {   // FC_SCORE_STEP's, ALiBi less its row term
                        if constexpr (V::kSoftcap) x = fast_tanh(x * m.cap_scale);
                        x = fmaf(m.slope_units, static_cast<float>(at), x);
                        if constexpr (V::kBias != 0) x = fmaf(bias.at(mt, half, nt, c), m.bias_units, x);
                    } else {
                        FC_SCORE_STEP(V, x, m, dist0 - static_cast<float>(at), bias.at(mt, half, nt, c));
                    }
                    if constexpr (MASK) {
                        if (at >= hi || at < lo) x = neg_inf();
                    }
                    s[mt][nt][2 * half + c] = x;
                }
        }
}

// The score step for a tile: masked only where tile_partial says a key is hidden. bias: a
// BiasFrag or a BiasStage (anything with at(mt, half, nt, c)).
template <class V, int M_TILES, int N_TILES, int HALVES, class Bias, bool PACKED = false, bool LINEAR = false>
__device__ __forceinline__ void variant_scores(float (&s)[M_TILES][N_TILES][4], const ScoreMod& m,
                                               const Bias& bias, bool mask, int first_row, int first_key, int lane,
                                               int pack = 1) {
    if (mask)
        variant_scores<V, M_TILES, N_TILES, HALVES, true, Bias, PACKED, LINEAR>(s, m, bias, first_row, first_key, lane, pack);
    else
        variant_scores<V, M_TILES, N_TILES, HALVES, false, Bias, PACKED, LINEAR>(s, m, bias, first_row, first_key, lane, pack);
}

// What variant_scores<..., LINEAR> left out of the thread's rows (half: row first_row + lane / 4
// + 8 half) of the tile at first_key, -slope dist0, in the softmax's scaled log2 units (its
// SHIFTED frame: the units times ScoreMod.units, which softmax folds into its exp2).
template <int HALVES>
__device__ __forceinline__ void alibi_shift(float (&shift)[2], const ScoreMod& m, int first_row, int first_key,
                                            int lane) {
    #pragma unroll
    for (int half = 0; half < HALVES; ++half)
        shift[half] = -(m.slope_units * m.units) *
                      static_cast<float>(first_row + lane / 4 + 8 * half + m.diag - first_key - 2 * (lane % 4));
}

}  // namespace fc
