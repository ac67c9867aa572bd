"""Clocks and power while one implementation runs back to back (a one-off probe, v53).

tile_ab (v53, H100) put our S4k D128 kernel at 415.6 us a call in latency mode (the GPU idle
before each call) and 443.3 us in throughput mode (20 calls back to back), where cuDNN's moved
447 -> 451 us. Question: do our sustained calls run at lower clocks (power) than cuDNN's?
For each implementation: busy_gpu, then calls back to back for --seconds while nvidia-smi
samples power, SM clock and the throttle reasons every 50 ms; per-call time over each half.
Usage: python3 scripts/dev/power_probe.py [--dtype fp16] [--seconds 4] SHAPE
"""

import argparse
import contextlib
import subprocess
import time

import cupy
import numpy as np

from flashcore_cupy import api
from flashcore_cupy.bench import peer_call
from flashcore_cupy.configs import Sm90FwdConfig
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import busy_gpu
from flashcore_cupy.workload import random_inputs

parser = argparse.ArgumentParser()
parser.add_argument("shape")
parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
parser.add_argument("--seconds", type=float, default=4.0)
args = parser.parse_args()
shape = parse_shape(args.shape)
q, k, v = random_inputs(shape, args.dtype, np.random.default_rng())
fns = {}
for block_n in (128, 192):
    cfg = Sm90FwdConfig(args.dtype, shape.head_dim, block_n, 2, 2, True)
    out = cupy.empty_like(q)
    launch = api.plan(q, k, v, causal=shape.causal, out=out, config=cfg).launch
    fns[str(cfg)] = (lambda launch=launch, out=out: launch(q, k, v, out, None)), contextlib.nullcontext
fn, ctx = peer_call(shape, "sdpa_cudnn", q, k, v)
fns["sdpa_cudnn"] = (lambda: fn(0)), ctx

print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} {args.dtype} {args.shape}")
stream = cupy.cuda.get_current_stream()
reasons_field = next(f for f in ("clocks_event_reasons.active", "clocks_throttle_reasons.active", "pstate")
                     if subprocess.run(["nvidia-smi", f"--query-gpu={f}", "--format=csv"],
                                       capture_output=True).returncode == 0)
for name, (call, context) in fns.items():
    with context():
        busy_gpu()
        smi = subprocess.Popen(["nvidia-smi", f"--query-gpu=power.draw,clocks.sm,{reasons_field}",
                                "--format=csv,noheader,nounits", "-lms", "50"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        halves = []
        for half in range(2):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds / 2:
                for _ in range(20):
                    call()
                n += 20
                if n % 200 == 0:
                    stream.synchronize()
            end.record(stream)
            end.synchronize()
            halves.append(cupy.cuda.get_elapsed_time(start, end) * 1e3 / n)
        smi.terminate()
        rows = [line.split(",") for line in smi.communicate()[0].strip().splitlines()]
    rows = [r for r in rows if len(r) == 3][6:]   # past the 0.3 s of idle
    power = np.array([float(r[0]) for r in rows])
    clock = np.array([float(r[1]) for r in rows])
    reasons = sorted({r[2].strip() for r in rows})
    print(f"{name:<34} {halves[0]:7.1f} / {halves[1]:7.1f} us a call (first / second half)  "
          f"power p50 {np.median(power):5.0f} W max {power.max():5.0f}  sm clock p50 {np.median(clock):5.0f} "
          f"min {clock.min():5.0f} MHz  throttle reasons {reasons}", flush=True)
