"""Is a long shape's kernel time set by the SM clock it gets (power), sample by sample?

For several fresh input sets, takes samples of 20 back-to-back calls of ours and of cuDNN
(in turns) and reads the SM clock right after each sample (latency_probe.sm_clock_mhz),
then prints time against clock. Run it beside `nvidia-smi --query-gpu=clocks.sm,power.draw,
clocks_event_reasons.active -lms 20` for the power side.
Usage: python3 scripts/dev/clock_probe.py [SHAPE] [fp16|bf16] [SETS] [SAMPLES]
"""

import contextlib
import sys
from pathlib import Path

import cupy
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # scripts/: the suite's latency probe
from latency_probe import sm_clock_mhz  # noqa: E402

from flashcore_cupy import api
from flashcore_cupy.bench import peer_call
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import _sample, busy_gpu
from flashcore_cupy.workload import random_inputs

shape = parse_shape(sys.argv[1] if len(sys.argv) > 1 else "b2-h16-s4k-d128")
dtype = sys.argv[2] if len(sys.argv) > 2 else "fp16"
sets, samples = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((3, 4), (4, 12)))
rng = np.random.default_rng()
stream = cupy.cuda.get_current_stream()
events = cupy.cuda.Event(), cupy.cuda.Event()


def peers(q, k, v, out):
    """name -> (fn(i), context): the context (cuDNN's backend pin) is entered around each
    sample, outside its events, as the benchmark does."""
    launch = api.plan(q, k, v, causal=shape.causal, out=out).launch
    fns = {"ours": (lambda i: launch(q, k, v, out, None), contextlib.nullcontext)}
    peer = peer_call(shape, "sdpa_cudnn", q, k, v)
    if peer is not None:
        fns["cudnn"] = peer
    return fns


print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} {shape.name} {dtype}: "
      f"us per call over 20 back-to-back calls, SM MHz right after")
busy_gpu()
rows = []
for s in range(sets):
    q, k, v = random_inputs(shape, dtype, rng)
    out = cupy.empty_like(q)
    fns = peers(q, k, v, out)
    for fn, context in fns.values():
        with context():
            _sample(fn, 0, 5, stream, events)   # warm
    for i in range(samples):
        for name, (fn, context) in fns.items():
            with context():
                us = _sample(fn, i, 20, stream, events)
            mhz = sm_clock_mhz()
            rows.append((s, name, us, mhz))
            print(f"set {s} sample {i:2d} {name:<6} {us:7.1f} us  {mhz:6.0f} MHz  "
                  f"{us * mhz / 1e3:8.1f} kcycles", flush=True)
for name in ("ours", "cudnn"):
    r = np.array([(us, mhz) for _, n, us, mhz in rows if n == name])
    if len(r):
        print(f"{name}: us p50 {np.median(r[:, 0]):.1f} (min {r[:, 0].min():.1f} max {r[:, 0].max():.1f}); "
              f"MHz p50 {np.median(r[:, 1]):.0f} (min {r[:, 1].min():.0f} max {r[:, 1].max():.0f}); "
              f"kcycles p50 {np.median(r[:, 0] * r[:, 1] / 1e3):.1f}; corr(us, MHz) "
              f"{np.corrcoef(r[:, 0], r[:, 1])[0, 1]:+.2f}")
