"""Where a small call's host time goes: per-call microseconds of each layer (no sync inside).

Probes the mission shape: the full API call, its pieces, and a raw driver launch
through ctypes, each timed over many calls while the GPU queue absorbs the work.
"""

import ctypes
import time

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api
from flashcore_cupy.launch import FWD_PARAMS, _PARAMS_DTYPE

N = 2000


def per_call_us(fn):
    for _ in range(50):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(N):
            fn()
        best.append((time.perf_counter() - t) / N * 1e6)
        cupy.cuda.get_current_stream().synchronize()
    return min(best)


q, k, v = (cupy.asarray(np.random.standard_normal((1, 8, 512, 64)).astype(np.float16)) for _ in range(3))
out = cupy.empty_like(q)
fc.attention(q, k, v)
fc.attention(q, k, v, backend="sm80")
auto = api._launches[api._signature(q, k, v, None, False, None, "bhsd", False, "auto")]
launch = api._launches[api._signature(q, k, v, None, False, None, "bhsd", False, "sm80")]
params = np.frombuffer(FWD_PARAMS.pack(q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, 0,
                                       *launch.scalars), _PARAMS_DTYPE).copy()
kern = launch.kernel
raw = {
    f"attention(q, k, v) [auto: {auto.config}]": lambda: fc.attention(q, k, v),
    f"{type(auto).__name__}(out given)": lambda: auto(q, k, v, out, None),
    "attention(q, k, v, backend='sm80')": lambda: fc.attention(q, k, v, backend="sm80"),
    "attention(q, k, v, out=out, backend='sm80')": lambda: fc.attention(q, k, v, out=out, backend="sm80"),
    "signature + cache lookup": lambda: api._launches.get(
        api._signature(q, k, v, None, False, None, "bhsd", False, "sm80")),
    "cupy.empty(out)": lambda: cupy.empty(launch.out_shape, dtype=q.dtype),
    "pack params": lambda: np.frombuffer(FWD_PARAMS.pack(q.data.ptr, k.data.ptr, v.data.ptr,
                                                         out.data.ptr, 0, *launch.scalars),
                                         _PARAMS_DTYPE).copy(),
    "FwdLaunch(out given)": lambda: launch(q, k, v, out, None),
    "RawKernel call, params prepacked": lambda: kern(launch.grid, (launch.config.threads,), (params,),
                                                     shared_mem=launch.config.smem_bytes),
    "getDevice": lambda: cupy.cuda.runtime.getDevice(),
}

# A raw driver launch through ctypes, for comparison.
libcuda = ctypes.CDLL("libcuda.so.1")
cu_launch = libcuda.cuLaunchKernel
cu_launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
cu_launch.restype = ctypes.c_int
fn_ptr = getattr(getattr(kern, "kernel", kern), "ptr", None)
print("CUfunction handle:", fn_ptr, type(kern), [a for a in dir(kern) if not a.startswith("__")][:30])
if fn_ptr:
    gx, gy, gz = launch.grid
    threads, smem = launch.config.threads, launch.config.smem_bytes

    def ctypes_launch():
        buf = ctypes.create_string_buffer(FWD_PARAMS.size)
        FWD_PARAMS.pack_into(buf, 0, q.data.ptr, k.data.ptr, v.data.ptr, out.data.ptr, 0, *launch.scalars)
        arg = (ctypes.c_void_p * 1)(ctypes.addressof(buf))
        rc = cu_launch(fn_ptr, gx, gy, gz, threads, 1, 1, smem, cupy.cuda.get_current_stream().ptr, arg, None)
        assert rc == 0, rc

    out.fill(np.nan)
    ctypes_launch()
    cupy.cuda.get_current_stream().synchronize()
    ref = fc.attention(q, k, v, backend="sm80")
    print("ctypes launch matches:", bool(cupy.array_equal(out, ref)))
    raw["ctypes cuLaunchKernel (pack + launch)"] = ctypes_launch

for name, fn in raw.items():
    print(f"{name:<60} {per_call_us(fn):7.2f} us/call")
