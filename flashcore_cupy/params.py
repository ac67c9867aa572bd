"""Kernel parameter structs, declared once: the Python packing and the C++ structs come from here.

Each kernel takes one struct by value. A Schema lists its fields in order with their C++ types;
`struct` packs them with C's layout (natural alignment, padding where C puts it, the size rounded
up to the struct's alignment), and `header` writes the C++ struct with a static_assert on its size
and on every field's offset, so a kernel whose struct drifted from this file fails to compile.
`python scripts/gen_params.py` writes kernels/params_*.cuh; tests/test_params.py checks that they
are current and that NVRTC accepts them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

# C++ type -> (struct codes, size, alignment). Pointers travel as addresses (ints); FastDiv as
# its (mul, shr) pair; TensorMap as the 128 bytes tma.encode_maps writes in place.
_TYPES = {
    "const u16*": ("Q", 8, 8), "u16*": ("Q", 8, 8), "float*": ("Q", 8, 8), "int*": ("Q", 8, 8),
    "const int*": ("Q", 8, 8),
    "const float*": ("Q", 8, 8), "const void*": ("Q", 8, 8), "void*": ("Q", 8, 8),
    "i64": ("q", 8, 8), "int": ("i", 4, 4), "float": ("f", 4, 4), "u32": ("I", 4, 4),
    "FastDiv": ("II", 8, 4), "TensorMap": ("128s", 128, 64),
}


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str
    doc: str = ""


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


class Schema:
    """One kernel's parameter struct: its fields' offsets, the packing and the C++ text."""

    def __init__(self, name: str, fields: list[Field], doc: str):
        self.name, self.fields, self.doc = name, tuple(fields), doc
        self.offsets: dict[str, int] = {}
        end, self.align = 0, max(_TYPES[f.ctype][2] for f in fields)
        for f in self.fields:
            end = _round_up(end, _TYPES[f.ctype][2])
            self.offsets[f.name] = end
            end += _TYPES[f.ctype][1]
        self.size = _round_up(end, self.align)
        self.names = tuple(f.name for f in self.fields)
        self.struct = self._struct(0, len(self.fields), self.size)

    def _struct(self, lo: int, hi: int, end: int) -> struct.Struct:
        """Fields lo..hi-1, with C's padding between them and up to byte `end` of the struct."""
        codes, at = ["<"], self.offsets[self.fields[lo].name]
        for f in self.fields[lo:hi]:
            codes.append("x" * (self.offsets[f.name] - at) + _TYPES[f.ctype][0])
            at = self.offsets[f.name] + _TYPES[f.ctype][1]
        codes.append("x" * (end - at))
        return struct.Struct("".join(codes))

    def run(self, first: str, last: str | None = None) -> tuple[int, struct.Struct]:
        """(offset, Struct) of the fields first..last (to the struct's end when last is None):
        what a launch repacks per call, or packs after the parts written in place."""
        lo = self.names.index(first)
        hi = len(self.fields) if last is None else self.names.index(last) + 1
        end = self.size if last is None else self.offsets[last] + _TYPES[self.fields[hi - 1].ctype][1]
        return self.offsets[first], self._struct(lo, hi, end)

    def values(self, fields: dict[str, Any], first: str | None = None) -> list:
        """The values of the fields from `first` on (all by default), in order and flattened
        for `struct` (a FastDiv as its two numbers); every field must be given."""
        names = self.names[self.names.index(first):] if first else self.names
        missing = set(names) - set(fields)
        if missing:
            raise KeyError(f"{self.name}: no value for {sorted(missing)}")
        out = []
        for name in names:
            value = fields[name]
            out.extend(value if isinstance(value, tuple) else (value,))
        return out

    def header(self) -> str:
        width = max(len(f.ctype) + 1 + len(f.name) for f in self.fields) + 1
        lines = [f"// {self.doc}", f"struct {self.name} {{"]
        for f in self.fields:
            decl = f"{f.ctype} {f.name};"
            lines.append(f"    {decl:<{width}} // {f.doc}" if f.doc else f"    {decl}")
        lines.append("};")
        check = "declared in flashcore_cupy/params.py: run scripts/gen_params.py"
        lines.append(f'static_assert(sizeof({self.name}) == {self.size}, "{self.name}: {check}");')
        for f in self.fields:
            lines.append(f"static_assert(FC_OFFSETOF({self.name}, {f.name}) == {self.offsets[f.name]}, "
                         f'"{self.name}::{f.name}");')
        return "\n".join(lines)


def _strides(prefix: str, doc: str) -> list[Field]:
    return [Field(f"{prefix}_sb", "i64", doc), Field(f"{prefix}_sh", "i64"), Field(f"{prefix}_ss", "i64")]


def stride_values(prefix: str, bhs: tuple[int, int, int]) -> dict[str, int]:
    """The values of _strides(prefix)'s fields: {prefix_sb, prefix_sh, prefix_ss}."""
    return {f"{prefix}_s{d}": st for d, st in zip("bhs", bhs)}


def _variant_fields() -> list[Field]:
    """A variant's run-time values (kernels/variant.cuh's score_mod reads them by these names,
    in either kernel's params); a plain kernel reads none of them."""
    return [
        Field("diag", "int", "off: query i's aligned key is i + diag"),
        Field("win_left", "int", "window sides, -1 unbounded"), Field("win_right", "int"),
        Field("cap_scale", "float", "scale / softcap"), Field("cap_log2", "float", "softcap * log2(e)"),
        Field("alibi", "const float*", "slopes; null: none"),
        Field("alibi_sb", "i64", "slope strides (batch, head), elements"), Field("alibi_sh", "i64"),
        Field("bias", "const void*", "null: none"),
        *_strides("bias", "(batch, head, row) strides, elements; 0 broadcasts"),
    ]


def _paged_fields() -> list[Field]:
    """A KV cache's run-time layout (kernels/sequence.cuh reads them by these names, in the
    forward's params and the append's)."""
    return [
        Field("seqused_k", "const int*", "KV cache: cache_seqlens (B,); a sequence's keys: seqused_k[b] + new_keys"),
        Field("block_table", "const int*", "paged: (B, bt_cols) page indices; null: a (B, S_max) cache"),
        Field("bt_sb", "i64", "block_table's row stride, elements"),
        Field("new_keys", "int", "keys appended this call (Sn)"),
        Field("page_size", "int", "paged: keys a page"), Field("num_pages", "int", "paged: pages in the pool"),
    ]


def cache_field_names() -> tuple[str, ...]:
    """The KV-cache and split-KV fields both forward kernels' params hold (_paged_fields,
    _split_fields): launch.py gives a dense call's defaults for them."""
    return tuple(f.name for f in (*_paged_fields(), *_split_fields()))


def _varlen_fields() -> list[Field]:
    """Packed sequences' offsets (kernels/sequence.cuh's seq_span reads them by these names)."""
    return [
        Field("cu_seqlens_q", "const int*", "varlen: (B + 1) offsets of the sequences' rows in q, o"),
        Field("cu_seqlens_k", "const int*", "varlen: (B + 1) offsets of their keys in k, v"),
    ]


def _sequence_fields() -> list[Field]:
    """Where the sequences are (kernels/sequence.cuh's policies): packed (varlen) offsets, a
    KV cache, and split-KV partials. A dense call's kernel reads none of them."""
    return [
        *_varlen_fields(),
        *_paged_fields(),
        Field("pack", "int", "KV cache: query heads packed into a tile's rows (GQA; row r: query r / pack "
                             "of head blockIdx.y * pack + r % pack); 1: none"),
        *_split_fields(),
    ]


def _split_fields() -> list[Field]:
    """Split-KV's partials (kernels/split_kv.cuh reads them by these names, in either forward
    kernel's params)."""
    return [
        Field("splits", "int", "split-KV: key ranges a (query tile, head, batch); 1: none"),
        Field("o_accum", "float*", "split-KV: float32 partial outputs, at o's strides + split * o_split; "
                                   "null: out written directly"),
        Field("lse_accum", "float*", "split-KV: float32 partial LSE, at lse's strides + split * lse_split"),
        Field("o_split", "i64"), Field("lse_split", "i64"),
        Field("split_count", "int*", "split-KV: a zeroed int per tile; its last split merges the partials into "
                                     "o and lse (and zeroes it); null: merge_states does"),
    ]


# The portable kernel (kernels/flash_fwd_sm80.cu).
FWD_SM80 = Schema("FwdParams", [
    Field("q", "const u16*"), Field("k", "const u16*"), Field("v", "const u16*"), Field("o", "u16*"),
    Field("lse", "float*", "null: not requested"),
    *_strides("q", "(batch, head, seq) strides, elements"), *_strides("k", ""), *_strides("v", ""),
    *_strides("o", ""), *_strides("lse", "(batch, head, row) strides of the LSE, elements"),
    Field("seqlen_q", "int", "dense: Sq; varlen: total_q (rows of q)"),
    Field("seqlen_k", "int", "dense: Sk; varlen: total_k; KV cache: the keys a sequence can hold"),
    Field("head_dim", "int", "q's and k's"), Field("head_dim_v", "int", "v's and the output's"),
    Field("heads_per_kv", "int"),
    Field("scale_log2", "float", "scale * log2(e)"),
    Field("causal", "int"),
    Field("grid_heads", "int", "the grid's heads (Hq / pack), folded with the batch over y, z (grid.cuh)"),
    Field("batch", "int", "dense: B; varlen: sequences"),
    *_variant_fields(),
    *_sequence_fields(),
], "The portable forward kernel's one argument (flash_fwd).")

# The Hopper kernel (kernels/flash_fwd_sm90.cu).
FWD_SM90 = Schema("Sm90Params", [
    Field("q", "TensorMap", "4-D maps (d, seq, head, batch), boxes of 64 columns"),
    Field("k", "TensorMap"), Field("v", "TensorMap"),
    Field("o", "u16*"), Field("lse", "float*", "null: not requested"),
    *_strides("o", "output (batch, head, seq) strides, elements"),
    Field("seqlen_q", "int"), Field("seqlen_k", "int"), Field("head_dim", "int", "q's and k's"),
    Field("head_dim_v", "int", "v's and the output's"),
    Field("scale_log2", "float", "scale * log2(e)"),
    Field("causal", "int"),
    Field("heads", "int", "work tiles: m_blocks x heads x batch"), Field("batch", "int"),
    Field("m_blocks", "int"),
    Field("group", "int", "heads numbered together (see work_tile)"),
    Field("tail_start", "int", "see work_tile"), Field("n_items", "int"),
    Field("pack", "int", "packed GQA: query heads per tile row block (heads = Hkv); else 1"),
    Field("by_group_tiles", "FastDiv", "n / (group * m_blocks)"), Field("by_group", "FastDiv"),
    Field("by_heads", "FastDiv"), Field("by_heads_per_kv", "FastDiv"),
    *_variant_fields(),
    # a KV cache (kernels/sequence.cuh): seqlen_k is the keys a sequence can hold
    *_paged_fields(),
    Field("by_page_size", "FastDiv", "paged: key / page_size"),
    *_strides("lse", "split-KV: (batch, head, row) strides of the partial LSE, elements"),
    *_split_fields(),
    Field("tile_counter", "int*", "probe builds (-DFLASHCORE_DYNAMIC): two zeroed ints, the next work item "
                                  "and the CTAs done (kernels/sm90_scheduler.cuh); else null"),
    # packed sequences (kernels/sequence.cuh): seqlen_q and seqlen_k are total_q and total_k
    *_varlen_fields(),
    # a paged cache gathered row by row (pages that do not tile the key tiles: sm90_producer.cuh)
    Field("k_rows", "const u16*", "paged gather: k's pool (the map's address); else null"),
    Field("v_rows", "const u16*", "paged gather: v's pool"),
    *_strides("k", "paged gather: the pools' (page, head, slot) strides, elements"),
    *_strides("v", "paged gather: v's"),
], "The Hopper forward kernel's one argument (flash_fwd_sm90), __grid_constant__.")

def _bwd_gradients() -> list[Field]:
    """Both backward kernels' gradient outputs after dq_accum, in this order."""
    return [
        Field("dk", "u16*"), Field("dv", "u16*"),
        Field("dk_accum", "float*", "GQA: float32 (batch, kv head, seq, head_dim) sums; else null"),
        Field("dv_accum", "float*"),
        Field("dbias", "float*", "float32 dbias, added into (zeroed by the host); null: not asked"),
        Field("dq_sem", "int*", "deterministic: a zeroed count per (batch, head, query tile); else null"),
    ]


def _bwd_problem(query_tiles: Field) -> list[Field]:
    """Both backward kernels' problem fields after their strides, with the field that sizes
    their per-row arrays (query_tiles), then the variant's."""
    return [
        Field("seqlen_q", "int"), Field("seqlen_k", "int"), Field("head_dim", "int"),
        Field("heads", "int", "query heads"), Field("heads_kv", "int"), Field("heads_per_kv", "int"),
        Field("batch", "int"), query_tiles,
        Field("dkv_by_q_head", "int", "GQA accumulators per query head (deterministic), else per kv head"),
        Field("scale_log2", "float", "scale * log2(e)"), Field("scale", "float"),
        Field("causal", "int"),
        *_variant_fields(),
    ]


# The portable backward kernel (kernels/flash_bwd_sm80.cu).
BWD_SM80 = Schema("BwdParams", [
    Field("q", "const u16*"), Field("k", "const u16*"), Field("v", "const u16*"),
    Field("dout", "const u16*"),
    Field("lse", "const float*", "the forward's * log2(e), +inf: no key; (batch, head, q_tiles * BLOCK_M)"),
    Field("delta", "const float*", "rowsum(dout * out), float32, as lse (0 past Sq)"),
    Field("dq_accum", "float*", "float32 dQ / scale, added into (zeroed by bwd_prep)"),
    *_bwd_gradients(),
    *_strides("q", "(batch, head, seq) strides, elements"), *_strides("k", ""), *_strides("v", ""),
    *_strides("do", ""), *_strides("dq", ""), *_strides("dk", ""), *_strides("dv", ""),
    *_strides("dbias", "(batch, head, row) strides of dbias, elements; 0 where the bias broadcasts"),
    *_bwd_problem(Field("q_tiles", "int", "query tiles per (batch, head)")),
], "The portable backward kernel's one argument (flash_bwd).")

# The Hopper backward kernel (kernels/flash_bwd_sm90.cu). Its LSE, delta and dQ accumulator
# have rows_pad rows per (batch, head): whole query tiles, so the tiles' copies and adds stay
# inside them.
BWD_SM90 = Schema("Sm90BwdParams", [
    Field("q", "TensorMap", "4-D maps (d, seq, head, batch), boxes of 64 columns"),
    Field("k", "TensorMap"), Field("v", "TensorMap"), Field("dout", "TensorMap"),
    Field("lse", "const float*", "the forward's LSE * log2(e), +inf for a row with no key; (batch, head, rows_pad)"),
    Field("delta", "const float*", "rowsum(dout * out), float32, as lse (0 past Sq)"),
    Field("dq_accum", "float*", "float32 dQ / scale, (batch, head, rows_pad, HEAD_DIM), added into (zeroed)"),
    *_bwd_gradients(),
    *_strides("dk", "(batch, head, seq) strides, elements"), *_strides("dv", ""),
    *_strides("dbias", "(batch, head, row) strides of dbias, elements; 0 where the bias broadcasts"),
    *_bwd_problem(Field("rows_pad", "int", "Sq rounded up to the query tile")),
    Field("head_group", "int", "the CTAs take their grid's blocks (numbered x + X y) by groups of this "
                               "many heads, key tiles in order within a group and its heads in turn "
                               "(grid.cuh's grouped_item); 0 or >= X: the grid's own order, heads fastest"),
], "The Hopper backward kernel's one argument (flash_bwd_sm90), __grid_constant__.")

# The backward's steps around its main kernel (kernels/flash_bwd_steps.cu).
BWD_PREP = Schema("BwdPrepParams", [
    Field("dout", "const u16*"), Field("out", "const u16*"),
    Field("lse", "const float*", "the forward's, (batch, head, seq) contiguous"),
    Field("lse2", "float*", "out: LSE * log2(e), +inf for no key; (batch, head, rows_pad)"),
    Field("delta", "float*", "out: rowsum(dout * out), as lse2"),
    Field("dq_accum", "float*", "zeroed: (batch, head, rows_pad, dq_cols) float32"),
    *_strides("do", "(batch, head, seq) strides, elements"), *_strides("o", ""),
    Field("seqlen_q", "int"), Field("rows_pad", "int", "rows per (batch, head) of lse2, delta, dq_accum"),
    Field("heads", "int"), Field("batch", "int"), Field("head_dim", "int"), Field("dq_cols", "int"),
], "The backward's preprocess (bwd_prep): delta, the LSE in log2 units, dQ's accumulator zeroed.")

BWD_CONVERT = Schema("BwdConvertParams", [
    Field("src", "const float*", "(batch, heads * group, src_rows, src_ld) float32"),
    Field("dst", "u16*"), *_strides("dst", "(batch, head, seq) strides, elements"),
    Field("src_rows", "int"), Field("src_ld", "int"),
    Field("group", "int", "consecutive source heads summed into each destination head"),
    Field("rows_valid", "int", "rows with sums; zeros from there"), Field("rows", "int", "rows written"),
    Field("heads", "int", "destination heads"), Field("batch", "int"), Field("head_dim", "int"),
    Field("frag_rows", "int", "0: src rows as they are; else query tiles of this many rows, each "
                              "holding 64 x 64 blocks in the Hopper backward's fragment order"),
    Field("factor", "float"),
], "The backward's postprocess (bwd_convert): float32 sums into a 16-bit gradient.")

# merge_states (kernels/merge_states.cu): partial attention results merged by their LSE.
MERGE = Schema("MergeParams", [
    Field("outs", "const void*", "split 0's outputs, (rows, dv) contiguous, in the kernel's input type"),
    Field("outs_b", "const void*", "split 1's outputs where given apart (the pair form); else null: "
                                   "split i at outs + i * split_stride"),
    Field("lses", "const float*", "split 0's natural-log LSE, (rows,)"),
    Field("lses_b", "const float*", "split 1's where given apart; else null: split i at lses + i * rows"),
    Field("out", "void*", "(rows, dv) contiguous, in the kernel's output type"),
    Field("lse_out", "float*", "(rows,); null: not written"),
    Field("split_stride", "i64", "elements between splits' outputs"),
    Field("splits", "int"), Field("rows", "int"), Field("dv", "int", "at most kMergeMaxDv"),
    Field("lse_seq", "int", "rows (a, s, h) of lse_seq x lse_heads: lse_out at (a, h, s); 0: as the rows"),
    Field("lse_heads", "int"),
], "merge_states: lse = log(sum_i exp(lse_i)), out = sum_i exp(lse_i - lse) out_i; every lse_i -inf: 0, -inf.")

# The KV cache's append (kernels/kvcache_append.cu): k_new, v_new into the cache in place.
APPEND = Schema("AppendParams", [
    Field("k_new", "const u16*"), Field("v_new", "const u16*"), Field("k", "u16*", "the caches"),
    Field("v", "u16*"),
    *_strides("kn", "k_new's (batch, head, seq) strides, elements"), *_strides("vn", ""),
    *_strides("k", "the caches' (batch or page, head, seq or slot) strides, elements"), *_strides("v", ""),
    *_paged_fields(),
    Field("seqlen_k", "int", "the keys a sequence can hold: appends past them are dropped"),
    Field("batch", "int"), Field("heads_kv", "int"), Field("head_dim", "int"),
], "The KV cache's append (kvcache_append): key i of k_new[b] to position seqused_k[b] + i.")

HEADERS = {"params_sm80.cuh": (FWD_SM80,), "params_sm90.cuh": (FWD_SM90,),
           "params_sm80_bwd.cuh": (BWD_SM80,), "params_sm90_bwd.cuh": (BWD_SM90,),
           "params_bwd_steps.cuh": (BWD_PREP, BWD_CONVERT), "params_merge.cuh": (MERGE,),
           "params_append.cuh": (APPEND,)}


def render(file_name: str) -> str:
    """The text of kernels/<file_name>."""
    body = "\n\n".join(s.header() for s in HEADERS[file_name])
    return ("// Generated by scripts/gen_params.py from flashcore_cupy/params.py: edit that file, not this.\n"
            "#pragma once\n\n"
            "// NVRTC has no <cstddef> and no __builtin_offsetof; EDG's __INTADDR__ gives a member's\n"
            "// offset as a constant expression (NVRTC 12.9 and 13.5 checked).\n"
            "#ifndef FC_OFFSETOF\n#define FC_OFFSETOF(S, m) __INTADDR__(&(((S*)0)->m))\n#endif\n\n"
            "namespace fc {\n\n" + body + "\n\n}  // namespace fc\n")
