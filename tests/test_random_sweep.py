"""scripts/random_sweep.py's case drawing on the CPU: a seed's cases cover every op and option,
and every case is a valid call (validation accepts its arrays and options), so a GPU sweep's
failure is the kernels', not the generator's. The sweep itself runs on a GPU (scripts/gpu_suite.sh)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from flashcore_cupy.merge import check_merge
from flashcore_cupy.validation import TensorSpec, check_kvcache, check_problem, check_varlen

_SPEC = importlib.util.spec_from_file_location("random_sweep", Path(__file__).resolve().parent.parent / "scripts"
                                               / "random_sweep.py")
sweep = sys.modules.setdefault("random_sweep", importlib.util.module_from_spec(_SPEC))
_SPEC.loader.exec_module(sweep)


def _spec(name, a):
    return None if a is None else TensorSpec(name, a.shape, tuple(s // a.itemsize for s in a.strides), a.dtype, 0,
                                             1 << 20)


def _validate(case):
    a, o = case.arrays, case.options
    s = {n: _spec(n, x) for n, x in a.items()}
    mask = dict(causal=o["causal"], scale=None, window=o.get("window"), softcap=o.get("softcap", 0.0),
                alibi_slopes=s.get("alibi_slopes")) if case.op != "merge" else {}
    if case.op in ("attention", "backward"):
        check_problem(s["q"], s["k"], s["v"], layout=o["layout"], bias=s.get("bias"), **mask)
    elif case.op == "varlen":
        check_varlen(s["q"], s["k"], s["v"], s["cu_seqlens_q"], s["cu_seqlens_k"], **mask)
    elif case.op == "kvcache":
        check_kvcache(s["q"], s["k_cache"], s["v_cache"], s["cache_seqlens"], s.get("block_table"), s.get("k_new"),
                      s.get("v_new"), **mask)
    else:
        outs, lses = a["outs"], a["lses"]
        parts = ([_spec("out_a", outs[0]), _spec("lse_a", lses[0]), _spec("out_b", outs[1]), _spec("lse_b", lses[1])]
                 if o["pair"] else [s["outs"], s["lses"]])
        check_merge(parts, None, None)


def test_a_seed_covers_every_op_and_option_with_valid_calls():
    cases = [sweep.draw_case(np.random.default_rng([7, i])) for i in range(2000)]
    for case in cases:
        _validate(case)
    seen = {(c.op, name) for c in cases for name in (*c.options, *c.arrays)}
    for op in ("attention", "backward"):
        for name in ("window", "softcap", "alibi_slopes", "bias", "causal", "layout", "backend"):
            assert (op, name) in seen, (op, name)
    assert ("attention", "poison_out") in seen and ("backward", "deterministic") in seen
    for name in ("window", "softcap", "alibi_slopes", "return_lse"):
        assert ("varlen", name) in seen and ("kvcache", name) in seen, name
    for name in ("block_table", "k_new", "num_splits"):
        assert ("kvcache", name) in seen, name
    pages = {c.arrays["k_cache"].shape[1] for c in cases if c.op == "kvcache" and "block_table" in c.arrays}
    assert {1, 3, 8, 16, 64, 128, 256} <= pages
    assert {c.options["causal"] for c in cases if c.op == "attention"} == {False, True, "top_left"}
    assert any(c.op == "varlen" and (np.diff(c.arrays["cu_seqlens_q"]) == 0).any() for c in cases)   # empty sequences
    assert any(c.op == "merge" and np.isneginf(c.arrays["lses"]).any() for c in cases)
    assert {c.dtype for c in cases if c.op == "merge"} == {"fp16", "bf16", "f32"}


def test_a_case_replays_from_its_seed_and_index():
    a, b = (sweep.draw_case(np.random.default_rng([3, 41])) for _ in range(2))
    assert a.describe() == b.describe() and all(np.array_equal(a.arrays[n], b.arrays[n]) for n in a.arrays)
