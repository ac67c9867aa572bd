"""A/B of the mission call's host path in one process: the previous package (082bc2c, as
flashcore_cupy_base from .ab_base) against the working tree's, host time per call (best of
batches) and event latency with the GPU idle, beside SDPA's cuDNN backend."""
import sys

import cupy
import numpy as np

sys.path.insert(0, ".ab_base")
import flashcore_cupy as fc  # noqa: E402
import flashcore_cupy_base as base  # noqa: E402
from flashcore_cupy import workload  # noqa: E402
from flashcore_cupy.bench import peer_call  # noqa: E402
from flashcore_cupy.shapes import parse_shape  # noqa: E402
from flashcore_cupy.timing import time_latency  # noqa: E402

sys.path.insert(0, "scripts")
from latency_probe import host_us  # noqa: E402

shape = parse_shape("mission")
rng = np.random.default_rng()
sets = workload.input_sets(shape, "fp16", rng)
q, k, v = sets[0]
out = cupy.empty_like(q)
for s in sets:
    fc.attention(*s)
    base.attention(*s)
calls = {
    "base attention": lambda i: base.attention(*sets[i % len(sets)]),
    "new attention": lambda i: fc.attention(*sets[i % len(sets)]),
    "base attention(out=)": lambda i: base.attention(q, k, v, out=out),
    "new attention(out=)": lambda i: fc.attention(q, k, v, out=out),
}
contexts = {}
peer = peer_call(shape, "sdpa_cudnn", q, k, v)
if peer is not None:
    calls["sdpa_cudnn"], contexts["sdpa_cudnn"] = peer
print(cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
print("\nhost time per call, us (best of batches; two passes):")
for name, fn in calls.items():
    if name in contexts:
        with contexts[name]():
            print(f"  {name:<24} {host_us(lambda: fn(0)):6.2f} {host_us(lambda: fn(0)):6.2f}")
    else:
        print(f"  {name:<24} {host_us(lambda: fn(0)):6.2f} {host_us(lambda: fn(0)):6.2f}")
for name, fn in {"cupy.empty": lambda: cupy.empty(q.shape, dtype=q.dtype),
                 "cupy.ndarray": lambda: cupy.ndarray(q.shape, q.dtype)}.items():
    print(f"  {name:<24} {host_us(fn):6.2f} {host_us(fn):6.2f}")

print("\nevent latency with the GPU idle, us (8 alternating blocks of 50 each):")
lat = {name: [] for name in calls}
for rep in range(8):
    for name, fn in (calls.items() if rep % 2 == 0 else reversed(calls.items())):
        if name in contexts:
            with contexts[name]():
                lat[name].extend(time_latency(fn, 50).us)
        else:
            lat[name].extend(time_latency(fn, 50).us)
cudnn = np.percentile(lat["sdpa_cudnn"], 50) if "sdpa_cudnn" in lat else None
for name, us in lat.items():
    p50 = np.percentile(us, 50)
    ratio = f"{p50 / cudnn:6.3f}x cuDNN" if cudnn else ""
    print(f"  {name:<24} p50 {p50:6.2f}  p90 {np.percentile(us, 90):6.2f}  {ratio}")
