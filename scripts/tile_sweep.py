"""Time candidate tile configs of the sm_80 kernel on a few shapes (throughput mode).

Each candidate is validated against the float64 reference before it is timed.
Usage: python3 scripts/tile_sweep.py [--out FILE.json]
"""

import json
import sys

import cupy
import numpy as np

from flashcore_cupy import api
from flashcore_cupy.workload import random_inputs, verify
from flashcore_cupy.configs import FwdConfig
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_throughput

CANDIDATES = {   # shape -> (warps, m_tiles, block_n, stages)
    "b2-h16-s4k-d64": [(4, 2, 64, 2), (4, 2, 64, 3)],
    "b2-h16-s4k-d128": [(4, 2, 32, 3), (4, 2, 64, 2), (4, 2, 64, 3)],
    "b2-h16-s4k-d128-causal": [(4, 2, 32, 3), (4, 2, 64, 2)],
    "mission": [(4, 1, 64, 2), (4, 1, 64, 3)],
}

rng = np.random.default_rng()
results = []
for name in CANDIDATES:
    shape = parse_shape(name)
    q, k, v = random_inputs(shape, "fp16", rng)
    out = cupy.empty_like(q)
    for tile in CANDIDATES[name]:
        cfg = FwdConfig("fp16", shape.head_dim, *tile)
        try:
            *_, launch = api._prepare(q, k, v, out, shape.causal, None, "bhsd", False, "auto", cfg)
        except Exception as e:
            print(f"{name:<26} {str(cfg):<24} failed to build: {e}")
            continue
        out.fill(np.nan)
        launch(q, k, v, out, None)
        err = verify(shape, q, k, v, out, rng)
        t = time_throughput(lambda i: launch(q, k, v, out, None), 10)
        tf = shape.flops / (t.p50 * 1e-6) / 1e12
        results.append(dict(shape=name, config=str(cfg), tile=tile, us_p50=t.p50, tflops=tf, rel_err=err))
        print(f"{name:<26} {str(cfg):<24} {t.p50:9.1f} us {tf:7.1f} TFLOP/s  err {err:.1e}", flush=True)
if len(sys.argv) > 2 and sys.argv[1] == "--out":
    json.dump(results, open(sys.argv[2], "w"), indent=1)
