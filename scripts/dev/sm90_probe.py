"""Correctness probe of the Hopper kernel, with a diagnosis when it is wrong.

For each case: relative error against float64, NaN count, and the error per
64-column block and per 64-row block of the output, so a wrong descriptor,
swizzle or mask shows up as a pattern. Exits 1 on any failure.
Usage: python3 scripts/dev/sm90_probe.py
"""

import sys

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import reference
from flashcore_cupy.workload import TOLERANCE, np_dtype

CASES = [   # dtype, D, causal, (B, Hq, Hkv), (Sq, Sk)
    ("fp16", 64, False, (1, 2, 2), (128, 128)),
    ("fp16", 64, False, (1, 2, 2), (256, 512)),
    ("fp16", 128, False, (1, 2, 2), (128, 128)),
    ("fp16", 128, False, (1, 2, 2), (256, 512)),
    ("bf16", 128, False, (1, 2, 2), (256, 512)),
    ("fp16", 64, True, (1, 2, 2), (384, 384)),
    ("fp16", 128, True, (2, 4, 2), (300, 700)),
    ("fp16", 96, False, (1, 3, 1), (200, 333)),
    ("bf16", 128, True, (1, 2, 1), (1000, 1000)),
]


def block_errors(out, ref, axis_len, axis):
    errs = []
    for start in range(0, axis_len, 64):
        sl = [slice(None)] * 4
        sl[axis] = slice(start, start + 64)
        o, r = out[tuple(sl)], ref[tuple(sl)]
        errs.append(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30))
    return " ".join(f"{e:.0e}" for e in errs[:12])


rng = np.random.default_rng()
failed = 0
for dtype, d, causal, (b, hq, hkv), (sq, sk) in CASES:
    def draw(h, s):
        return cupy.asarray(rng.standard_normal((b, h, s, d), dtype=np.float32).astype(np_dtype(dtype)))
    q, k, v = draw(hq, sq), draw(hkv, sk), draw(hkv, sk)
    out = cupy.full(q.shape, np.nan, dtype=q.dtype)
    try:
        fc.attention(q, k, v, causal=causal, out=out, backend="sm90")
        cupy.cuda.get_current_stream().synchronize()
    except Exception as e:   # noqa: BLE001 - report and go on
        print(f"{dtype} D{d} causal={causal} {sq}x{sk}: ERROR {type(e).__name__}: {e}")
        failed += 1
        continue
    ref = reference.attention(q, k, v, causal=causal)
    got = out.get().astype(np.float64)
    err = reference.rel_error(out, ref)
    nans = int(np.isnan(got).sum())
    ok = err <= TOLERANCE[dtype] and nans == 0
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {dtype} D{d} causal={causal} b{b}h{hq}kv{hkv} {sq}x{sk}: "
          f"rel err {err:.2e}, NaN {nans}")
    if not ok:
        print(f"     by 64 columns: {block_errors(np.nan_to_num(got), ref, d, 3)}")
        print(f"     by 64 rows:    {block_errors(np.nan_to_num(got), ref, sq, 2)}")
        print(f"     out[0,0,0,:8] {got[0, 0, 0, :8]}\n     ref[0,0,0,:8] {ref[0, 0, 0, :8]}")
sys.exit(1 if failed else 0)
