"""Tuned tiles against the defaults, kernel only, A/B/A/B per shape.

For every benchmark shape and dtype whose tuned tile (this GPU's table: the tune
cache over the shipped defaults) differs from the default one of the kernel `auto`
dispatch runs it on, time the prepared launch of each twice, interleaved, in throughput
mode on the same inputs: the spread between a tile's two timings is the noise the
tuned/default ratio is judged against. Every output is checked against float64 first.
Usage: python3 scripts/tuned_ab.py
"""

import cupy
import numpy as np

from flashcore_cupy import api, configs
from flashcore_cupy.shapes import bench_shapes
from flashcore_cupy.timing import time_throughput
from flashcore_cupy.workload import within_tolerance, random_inputs, verify

dev = api.device_info(cupy.cuda.Device().id)
tuned = api.tuned_table(cupy.cuda.Device().id)
rng = np.random.default_rng()
print(f"{dev.name} ({dev.arch}); tuned entries: {[k for k, _ in tuned]}")
print(f"{'shape':<30} {'dtype':<5} {'default':<30} {'tuned':<30} {'A1':>8} {'B1':>8} {'A2':>8} {'B2':>8} "
      f"{'B/A':>6} {'noise':>6}")
for shape in bench_shapes():
    for dtype in ("fp16", "bf16"):
        args = (dev.arch, dtype, shape.head_dim, shape.batch * shape.heads_q, shape.seqlen_q, dev.num_sms)
        default, best = configs.dispatch_class(*args)[1], configs.choose_kernel(*args, tuned)
        if default == best:
            continue
        q, k, v = random_inputs(shape, dtype, rng)
        out = cupy.empty_like(q)
        launches = {}
        for name, cfg in (("A", default), ("B", best)):
            launches[name] = api.plan(q, k, v, causal=shape.causal, out=out, config=cfg).launch
            out.fill(np.nan)
            launches[name](q, k, v, out, None)
            err, row_err = verify(shape, q, k, v, out, rng, rows=64)
            assert within_tolerance(dtype, err, row_err), (shape.name, str(cfg), err, row_err)
        t = {}
        for rep in (1, 2):
            for name in ("A", "B"):
                t[name + str(rep)] = time_throughput(lambda i: launches[name](q, k, v, out, None), 10).p50
        a, b = (t["A1"] + t["A2"]) / 2, (t["B1"] + t["B2"]) / 2
        noise = max(abs(t["A1"] - t["A2"]) / a, abs(t["B1"] - t["B2"]) / b)
        print(f"{shape.name:<30} {dtype:<5} {str(default):<30} {str(best):<30} {t['A1']:8.1f} {t['B1']:8.1f} "
              f"{t['A2']:8.1f} {t['B2']:8.1f} {b / a:6.3f} {noise:6.3f}", flush=True)
