import cupy, numpy as np
from cupy_backends.cuda.api import driver
from flashcore_cupy.launch import ParamBlock
from flashcore_cupy.timing import time_latency
res = {}
for rnd in range(3):
    for size in (8, 64, 128, 192, 256, 320, 384, 512, 1024):
        mod = cupy.RawModule(code=f'struct __align__(8) P {{ unsigned char b[{size}]; }};'
                             'extern "C" __global__ void k(const __grid_constant__ P p) {}')
        f = mod.get_function("k"); pb = ParamBlock(size); s = cupy.cuda.get_current_stream()
        fn = lambda i: driver.launchKernel(f.kernel.ptr, 1, 1, 1, 32, 1, 1, 0, s.ptr, pb.argv, 0)
        t = time_latency(fn, 400)
        res.setdefault(size, []).append(t.p50)
for size, v in res.items():
    print(f"param {size:5d} B: latency p50 " + " ".join(f"{x:.2f}" for x in v) + " us")
