"""The benchmark shape list (bench_shapes.json) and the CLI's shape syntax."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool
    held_out: bool = False   # never seen by `tune`: the benchmark reports it apart

    @property
    def flops(self) -> float:
        """4·B·Hq·Sq·Sk·D, halved for causal (the visible half of the scores)."""
        f = 4.0 * self.batch * self.heads_q * self.seqlen_q * self.seqlen_k * self.head_dim
        return f / 2 if self.causal else f


def bench_shapes() -> list[Shape]:
    """Every shape of the list, held-out ones included."""
    data = json.loads(resources.files(__package__).joinpath("bench_shapes.json").read_text())
    return [Shape(s["name"], s["B"], s["Hq"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["causal"],
                  s.get("held_out", False))
            for s in data["shapes"]]


def tuning_shapes() -> list[Shape]:
    """The shapes `tune` may see by default: the list less its held-out shapes."""
    return [s for s in bench_shapes() if not s.held_out]


def parse_shape(text: str, causal: bool = False) -> Shape:
    """A name from the benchmark list, or 'B,H,S,D' (self-attention, Hkv = H)."""
    for shape in bench_shapes():
        if shape.name == text:
            return Shape(**{**shape.__dict__, "causal": shape.causal or causal})
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        names = ", ".join(s.name for s in bench_shapes())
        raise ValueError(f"shape must be one of [{names}] or 'B,H,S,D' with positive "
                         f"integers, got {text!r}")
    b, h, s, d = (int(p) for p in parts)
    return Shape(text, b, h, h, s, s, d, causal)
