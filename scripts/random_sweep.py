"""A seeded random sweep over every op and option, each case against the float64 reference.

Case i of seed S is drawn from numpy.random.default_rng([S, i]) (draw_case: host arrays and
options), so `--seed S --first i --cases 1` replays it. Ops: attention (causal modes, windows,
softcap, ALiBi, bias, GQA, both layouts, LSE, out= poisoned with NaN, both backends),
attention_backward (the same options, deterministic or not), attention_varlen (ragged and
empty sequences), attention_kvcache (contiguous or paged at page sizes 1..256, appends, forced
or automatic splits, speculative rows) and merge_states (pairs and stacks, -inf partials).
Outputs within workload's bounds (gradients within its gradient bounds; NaN never passes), LSEs
equal in where they are -inf and close elsewhere, appended caches equal element by element.

  PYTHONPATH=$PWD python3 scripts/random_sweep.py --cases 2000 [--seed S] [--max-seconds 540] [--workers 8]

Prints the seed first, a line per failure (op, case index, options), a summary per op; exits 1
on any failure, 2 when the time ran out before the cases did. --workers N runs the cases in N
processes of consecutive ranges (NVRTC's compiles, not the GPU, bound a bare machine's sweep),
prints each one's output and exits with the worst status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

OPS = ("attention", "backward", "varlen", "kvcache", "merge")
_OP_WEIGHTS = (0.34, 0.16, 0.16, 0.24, 0.10)
PAGE_SIZES = (None, None, 1, 3, 8, 16, 64, 128, 256)


@dataclass
class Case:
    op: str
    dtype: str                       # "fp16" | "bf16" (merge: its partials', with "f32")
    arrays: dict                     # host arrays by argument name
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        shapes = {n: a.shape for n, a in self.arrays.items() if hasattr(a, "shape")}
        return f"{self.op} {self.dtype} {shapes} {self.options}"


def _dt(dtype: str):
    import ml_dtypes
    return {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32}[dtype]


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(_dt(dtype))


def _score_options(rng, b: int, hq: int, sq: int, sk: int, dtype: str, bias: bool = True) -> tuple[dict, dict]:
    """(options, arrays) of the score and mask options, each drawn on or off."""
    options, arrays = {}, {}
    if rng.random() < 0.35:
        options["window"] = (int(rng.choice([-1, 0, 1, 5, 40, 200])), int(rng.choice([-1, 0, 1, 7, 64])))
    if rng.random() < 0.3:
        options["softcap"] = float(rng.uniform(1.0, 10.0))
    if rng.random() < 0.3:
        arrays["alibi_slopes"] = rng.uniform(0.0, 0.5, (b, hq) if rng.random() < 0.5 else (hq,)).astype(np.float32)
    if bias and rng.random() < 0.25:
        shape = [b if rng.random() < 0.5 else 1, hq if rng.random() < 0.5 else 1, sq, sk]
        arrays["bias"] = _normal(rng, shape, dtype if rng.random() < 0.5 else "f32")
    return options, arrays


def _dense(rng, dtype: str, grads: bool) -> Case:
    b, hkv, group = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.choice([1, 2, 4]))
    hq, d = hkv * group, int(rng.choice([64, 128, 64, 128, 96, 256] if not grads else [64, 128, 64, 128, 96]))
    sq, sk = int(rng.integers(1, 300)), int(rng.integers(1, 300))
    layout = str(rng.choice(["bhsd", "bshd"]))
    shape = (lambda h, s: (b, h, s, d)) if layout == "bhsd" else (lambda h, s: (b, s, h, d))
    arrays = dict(q=_normal(rng, shape(hq, sq), dtype), k=_normal(rng, shape(hkv, sk), dtype),
                  v=_normal(rng, shape(hkv, sk), dtype))
    options, extra = _score_options(rng, b, hq, sq, sk, dtype)
    arrays.update(extra)
    options.update(causal=[False, True, "top_left"][int(rng.integers(3))], layout=layout,
                   backend=str(rng.choice(["auto", "sm80"])))
    if grads:
        arrays["dout"] = _normal(rng, shape(hq, sq), dtype)
        options["deterministic"] = bool(rng.random() < 0.3)
        return Case("backward", dtype, arrays, options)
    options.update(return_lse=bool(rng.random() < 0.5), poison_out=bool(rng.random() < 0.5))
    return Case("attention", dtype, arrays, options)


def _varlen(rng, dtype: str) -> Case:
    batch = int(rng.integers(1, 5))
    lq = rng.integers(0, 200, batch)
    lk = np.where(rng.random(batch) < 0.5, lq, rng.integers(0, 200, batch))
    hkv, group, d = int(rng.integers(1, 3)), int(rng.choice([1, 2, 4])), int(rng.choice([64, 128]))
    hq = hkv * group
    arrays = dict(q=_normal(rng, (max(int(lq.sum()), 1), hq, d), dtype),
                  k=_normal(rng, (max(int(lk.sum()), 1), hkv, d), dtype),
                  v=_normal(rng, (max(int(lk.sum()), 1), hkv, d), dtype),
                  cu_seqlens_q=np.concatenate([[0], np.cumsum(lq)]).astype(np.int32),
                  cu_seqlens_k=np.concatenate([[0], np.cumsum(lk)]).astype(np.int32))
    options, extra = _score_options(rng, batch, hq, 0, 0, dtype, bias=False)
    arrays.update(extra)
    options.update(causal=bool(rng.random() < 0.5), return_lse=bool(rng.random() < 0.5))
    return Case("varlen", dtype, arrays, options)


def _kvcache(rng, dtype: str) -> Case:
    b, hkv, group = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.choice([1, 2, 4, 8]))
    hq, d = hkv * group, int(rng.choice([64, 128, 64, 128, 256]))
    sq, n_new = int(rng.choice([1, 1, 1, 2, 4])), int(rng.choice([0, 0, 1, 2]))
    room = int(rng.integers(max(n_new, 1), 600))
    seqlens = rng.integers(0, room - n_new + 1, b).astype(np.int32)
    page = PAGE_SIZES[int(rng.integers(len(PAGE_SIZES)))]
    arrays = dict(q=_normal(rng, (b, sq, hq, d), dtype), cache_seqlens=seqlens)
    if page is None:
        arrays["k_cache"], arrays["v_cache"] = (_normal(rng, (b, room, hkv, d), dtype) for _ in range(2))
    else:
        per_seq = -(-room // page)
        pool = b * per_seq + int(rng.integers(0, 3))
        arrays["block_table"] = rng.permutation(pool)[:b * per_seq].reshape(b, per_seq).astype(np.int32)
        arrays["k_cache"], arrays["v_cache"] = (_normal(rng, (pool, page, hkv, d), dtype) for _ in range(2))
    if n_new:
        arrays["k_new"], arrays["v_new"] = (_normal(rng, (b, n_new, hkv, d), dtype) for _ in range(2))
    options, extra = _score_options(rng, b, hq, 0, 0, dtype, bias=False)
    arrays.update(extra)
    options.update(causal=bool(rng.random() < 0.5), num_splits=int(rng.choice([0, 0, 1, 3])),
                   return_lse=bool(rng.random() < 0.5))
    return Case("kvcache", dtype, arrays, options)


def _merge(rng) -> Case:
    dtype = str(rng.choice(["fp16", "bf16", "f32"]))
    splits, dv = int(rng.integers(2, 6)), int(rng.choice([64, 128, 40]))
    rows = tuple(int(n) for n in rng.integers(1, 9, int(rng.integers(1, 4))))
    outs = _normal(rng, (splits, *rows, dv), dtype)
    lses = (rng.standard_normal((splits, *rows)) * 3).astype(np.float32)
    lses[rng.random(lses.shape) < 0.2] = -np.inf   # partials that saw no key
    pair = splits == 2 and rng.random() < 0.5
    return Case("merge", dtype, dict(outs=outs, lses=lses), dict(pair=pair))


def draw_case(rng: np.random.Generator) -> Case:
    op = OPS[int(rng.choice(len(OPS), p=_OP_WEIGHTS))]
    dtype = str(rng.choice(["fp16", "bf16"]))
    if op in ("attention", "backward"):
        return _dense(rng, dtype, grads=op == "backward")
    if op == "varlen":
        return _varlen(rng, dtype)
    if op == "kvcache":
        return _kvcache(rng, dtype)
    return _merge(rng)


# --- running a case ---------------------------------------------------------------------------

def _dev(arrays: dict) -> dict:
    import cupy
    return {n: cupy.asarray(a) for n, a in arrays.items()}


def _close(got, want, dtype: str, what: str) -> str | None:
    from flashcore_cupy import reference, workload

    got = got.get() if hasattr(got, "get") else got
    if dtype == "f32":
        dtype = "fp16"   # float32 partials merged: the tighter bound
    err, row = reference.rel_error(got, want), reference.row_rel_error(got, want)
    return None if workload.within_tolerance(dtype, err, row) else f"{what}: rel err {err:.2e}, worst row {row:.2e}"


def _lse_close(got, want, what: str) -> str | None:
    got = got.get()
    if not (np.isneginf(got) == np.isneginf(want)).all():
        return f"{what}: -inf entries differ"
    fin = np.isfinite(want)
    if not np.allclose(got[fin], want[fin], rtol=2e-3, atol=2e-3):
        return f"{what}: max difference {np.abs(got[fin] - want[fin]).max():.2e}"
    return None


def run_case(case: Case) -> str | None:
    """The case on the GPU against the reference: None, or what failed."""
    import cupy

    import flashcore_cupy as fc
    from flashcore_cupy import reference, workload

    a, o = case.arrays, dict(case.options)
    d = _dev(a)
    if case.op == "attention":
        poison, lse_wanted, backend = o.pop("poison_out"), o.pop("return_lse"), o.pop("backend")
        out = cupy.full(a["q"].shape, np.nan, a["q"].dtype) if poison else None
        extra = {n: d[n] for n in ("alibi_slopes", "bias") if n in d}
        got = fc.attention(d["q"], d["k"], d["v"], out=out, return_lse=lse_wanted, backend=backend, **o, **extra)
        want, want_lse = reference.attention(a["q"], a["k"], a["v"], return_lse=True, **o,
                                             **{n: a[n] for n in extra})
        if lse_wanted:
            return _close(got[0], want, case.dtype, "out") or _lse_close(got[1], want_lse, "lse")
        return _close(got, want, case.dtype, "out")
    if case.op == "backward":
        deterministic, backend = o.pop("deterministic"), o.pop("backend")
        extra = {n: d[n] for n in ("alibi_slopes", "bias") if n in d}
        out, lse = fc.attention(d["q"], d["k"], d["v"], return_lse=True, backend=backend, **o, **extra)
        grads = fc.attention_backward(d["dout"], d["q"], d["k"], d["v"], out, lse, deterministic=deterministic,
                                      backend=backend, **o, **extra)
        want_out = reference.attention(a["q"], a["k"], a["v"], **o, **{n: a[n] for n in extra})
        problem = _close(out, want_out, case.dtype, "out")
        if problem:
            return problem
        # The backward is a function of the out and LSE it is given (delta = rowsum(dout * out)):
        # the reference takes the kernel's, so that the forward's rounding is not charged to it
        # (a bf16 out alone moved dq by 7.5e-2 where dS cancels: seed 20261205, case 1627).
        wants = reference.attention_backward(a["dout"], a["q"], a["k"], a["v"], out.get(), lse.get(), **o,
                                             **{n: a[n] for n in extra})
        for name, g, w in zip(("dq", "dk", "dv"), grads, wants):
            err, row = reference.rel_error(g.get(), w), reference.grad_row_error(g.get(), w)
            if not workload.within_grad_tolerance(case.dtype, err, row):
                return f"{name}: rel err {err:.2e}, worst row {row:.2e}"
        return None
    if case.op == "varlen":
        lse_wanted = o.pop("return_lse")
        extra = {"alibi_slopes": d["alibi_slopes"]} if "alibi_slopes" in d else {}
        got = fc.attention_varlen(d["q"], d["k"], d["v"], d["cu_seqlens_q"], d["cu_seqlens_k"],
                                  return_lse=lse_wanted, **o, **extra)
        want, want_lse = reference.attention_varlen(a["q"], a["k"], a["v"], a["cu_seqlens_q"], a["cu_seqlens_k"],
                                                    return_lse=True, **o, **{n: a[n] for n in extra})
        rows = int(a["cu_seqlens_q"][-1])   # rows past the last sequence are not written
        if lse_wanted:
            return (_close(got[0][:rows], want[:rows], case.dtype, "out")
                    or _lse_close(got[1][:, :rows], want_lse[:, :rows], "lse"))
        return _close(got[:rows], want[:rows], case.dtype, "out")
    if case.op == "kvcache":
        lse_wanted, splits = o.pop("return_lse"), o.pop("num_splits")
        names = ("block_table", "k_new", "v_new", "alibi_slopes")
        got = fc.attention_kvcache(d["q"], d["k_cache"], d["v_cache"], cache_seqlens=d["cache_seqlens"],
                                   num_splits=splits, return_lse=lse_wanted, **o, **{n: d[n] for n in names if n in d})
        k_host, v_host = a["k_cache"].copy(), a["v_cache"].copy()
        want, want_lse = reference.attention_kvcache(a["q"], k_host, v_host, cache_seqlens=a["cache_seqlens"],
                                                     return_lse=True, **o, **{n: a[n] for n in names if n in a})
        if not (np.array_equal(d["k_cache"].get(), k_host) and np.array_equal(d["v_cache"].get(), v_host)):
            return "the caches after the append"
        if lse_wanted:
            return _close(got[0], want, case.dtype, "out") or _lse_close(got[1], want_lse, "lse")
        return _close(got, want, case.dtype, "out")
    # merge
    outs, lses = d["outs"], d["lses"]
    args = (outs[0], lses[0], outs[1], lses[1]) if o["pair"] else (outs, lses)
    got, got_lse = fc.merge_states(*args)
    want, want_lse = reference.merge_states(a["outs"].astype(np.float64), a["lses"].astype(np.float64))
    return _close(got, want, case.dtype, "out") or _lse_close(got_lse, want_lse, "lse")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    ap.add_argument("--first", type=int, default=0, help="the first case index (replays: --first i --cases 1)")
    ap.add_argument("--max-seconds", type=float, default=540.0)
    ap.add_argument("--workers", type=int, default=1, help="processes, each a consecutive range of the cases")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (1 << 32))
    if args.workers > 1:
        return _run_workers(seed, args)
    print(f"random_sweep seed {seed}, cases {args.first}..{args.first + args.cases - 1}", flush=True)
    start, ran = time.monotonic(), {op: 0 for op in OPS}
    failed = {op: 0 for op in OPS}
    for i in range(args.first, args.first + args.cases):
        if time.monotonic() - start > args.max_seconds:
            print(f"time is up after {sum(ran.values())} cases")
            break
        case = draw_case(np.random.default_rng([seed, i]))
        try:
            problem = run_case(case)
        except Exception as e:   # noqa: BLE001 -- a crash is a failure of this case, reported
            problem = f"raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        ran[case.op] += 1
        if problem is not None:
            failed[case.op] += 1
            print(f"FAIL case {i} (seed {seed}): {case.describe()}: {problem}", flush=True)
        if (i - args.first + 1) % 100 == 0:
            print(f"  {i - args.first + 1} cases, {sum(failed.values())} failed, "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    for op in OPS:
        print(f"{op:>10}: {ran[op]} cases, {failed[op]} failed")
    total = sum(ran.values())
    print(f"seed {seed}: {total} cases, {sum(failed.values())} failed")
    if sum(failed.values()):
        return 1
    return 2 if total < args.cases else 0


def _run_workers(seed: int, args) -> int:
    """The cases in args.workers processes of consecutive ranges; their outputs in turn, the
    worst exit status (1 a failure, 2 time out)."""
    print(f"random_sweep seed {seed}, cases {args.first}..{args.first + args.cases - 1}, "
          f"{args.workers} workers", flush=True)
    per = -(-args.cases // args.workers)
    procs = []
    for w in range(args.workers):
        first, count = args.first + w * per, min(per, args.cases - w * per)
        if count > 0:
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--seed", str(seed), "--first", str(first), "--cases", str(count),
                 "--max-seconds", str(args.max_seconds)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
    codes = []
    for proc in procs:
        output, _ = proc.communicate()
        print(output, end="", flush=True)
        codes.append(proc.returncode)
    print(f"seed {seed}: worker exit codes {codes}")
    return 1 if 1 in codes or any(c not in (0, 2) for c in codes) else max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
