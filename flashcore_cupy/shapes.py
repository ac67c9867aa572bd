"""The benchmark shape list (bench_shapes.json, version 2) and the CLI's shape syntax."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources

KINDS = ("dense", "decode", "paged", "varlen")


@dataclass(frozen=True)
class Shape:
    """One row of the list. kind: dense, decode (Sq new queries over a contiguous cache of Sk
    keys: the dense call), paged, varlen (the last two: the inference-ops issue). The variant
    fields are attention's options: causal with causal_align "bottom_right" (flash_attn's) or
    "top_left" (SDPA's); window (left, right); softcap; alibi (slopes 2^(-8(h+1)/Hq)); bias (an
    additive (1, Hq, Sq, Sk) bias in the input dtype). head_dim_v: V's head dim where it
    differs from D."""

    name: str
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool
    held_out: bool = False   # never seen by `tune`: the benchmark reports it apart
    kind: str = "dense"
    head_dim_v: int | None = None
    causal_align: str = "bottom_right"
    window: tuple[int, int] | None = None
    softcap: float = 0.0
    alibi: bool = False
    bias: bool = False
    page_size: int | None = None
    seqlens: tuple[int, ...] | None = None

    @property
    def causal_arg(self) -> bool | str:
        """attention's `causal` for this row."""
        return ("top_left" if self.causal_align == "top_left" else True) if self.causal else False

    @property
    def is_variant(self) -> bool:
        """Whether the row has options beyond the plain kernels' (bottom-right causal)."""
        top_left = self.causal and self.causal_align == "top_left"
        return bool(self.window is not None or self.softcap or self.alibi or self.bias or top_left)

    def plain(self) -> "Shape":
        """The same shape with the variant options off, causal kept (bottom-right): what the
        benchmark's flashcore_plain runs."""
        return dataclasses.replace(self, causal_align="bottom_right", window=None, softcap=0.0,
                                   alibi=False, bias=False)

    def unsupported(self, backward: bool = False) -> str | None:
        """Why the benchmark cannot run this row (backward: in its backward modes) yet, or None."""
        if not backward:
            return None
        if self.head_dim_v not in (None, self.head_dim):
            return f"Dv {self.head_dim_v} != D {self.head_dim}: attention_backward takes V of q's head dim"
        if self.seqlen_q == 1 or self.kind == "varlen":
            return "no backward row (one query, or varlen)"
        return None

    @property
    def visible_pairs(self) -> int:
        """Visible (query, key) pairs over the batch and heads; a varlen row's per sequence."""
        from .reference import visible_pairs

        if self.seqlens is not None:
            return self.heads_q * sum(visible_pairs(n, n, self.causal_arg, self.window) for n in self.seqlens)
        return self.batch * self.heads_q * visible_pairs(self.seqlen_q, self.seqlen_k, self.causal_arg,
                                                         self.window)

    @property
    def bytes_moved(self) -> int:
        """Bytes of Q, K and V read and O written once (16-bit): a decode row's GB/s counts them."""
        q = self.batch * self.heads_q * self.seqlen_q * self.head_dim
        kv = self.batch * self.heads_kv * self.seqlen_k * (self.head_dim + (self.head_dim_v or self.head_dim))
        return 2 * (2 * q + kv)

    @property
    def flops(self) -> float:
        """2·pairs·(D + Dv) over the visible (query, key) pairs: a window's or a causal mask's
        TFLOP/s is useful work."""
        return 2.0 * self.visible_pairs * (self.head_dim + (self.head_dim_v or self.head_dim))


def _shape(s: dict) -> Shape:
    seqlens = tuple(s["seqlens"]) if "seqlens" in s else None
    batch = s.get("B", len(seqlens) if seqlens else 1)
    sq = s.get("Sq", max(seqlens) if seqlens else 1)
    sk = s.get("Sk", sq)
    return Shape(s["name"], batch, s["Hq"], s["Hkv"], sq, sk, s["D"], s["causal"], s.get("held_out", False),
                 s.get("kind", "dense"), s.get("Dv"), s.get("causal_align", "bottom_right"),
                 tuple(s["window"]) if "window" in s else None, float(s.get("softcap", 0.0)),
                 bool(s.get("alibi", False)), bool(s.get("bias", False)), s.get("page_size"), seqlens)


def bench_shapes() -> list[Shape]:
    """Every shape of the list, held-out ones and kinds the benchmark skips included."""
    data = json.loads(resources.files(__package__).joinpath("bench_shapes.json").read_text())
    return [_shape(s) for s in data["shapes"]]


def tuning_shapes() -> list[Shape]:
    """The shapes `tune` may see by default: the dense and decode plain rows less the held-out
    ones (paged and varlen rows run other kernels than the tuned dense ones)."""
    return [s for s in bench_shapes()
            if not s.held_out and not s.is_variant and s.head_dim_v in (None, s.head_dim)
            and s.kind in ("dense", "decode")]


def parse_shape(text: str, causal: bool = False) -> Shape:
    """A name from the benchmark list, or 'B,H,S,D' (self-attention, Hkv = H)."""
    for shape in bench_shapes():
        if shape.name == text:
            return dataclasses.replace(shape, causal=shape.causal or causal)
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        names = ", ".join(s.name for s in bench_shapes())
        raise ValueError(f"shape must be one of [{names}] or 'B,H,S,D' with positive "
                         f"integers, got {text!r}")
    b, h, s, d = (int(p) for p in parts)
    return Shape(text, b, h, h, s, s, d, causal)
