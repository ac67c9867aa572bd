"""The mission call's per-call host pieces on CuPy arrays (best of batches of 100, us per
call, lambda overhead included): CuPy attribute reads, the current signature and lookup, and
candidate cheaper keys. Run from the repository root with PYTHONPATH=$PWD."""
import time

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api

rng = np.random.default_rng()
q, k, v = (cupy.asarray(rng.standard_normal((1, 8, 512, 64)).astype(np.float16)) for _ in "qkv")
out = cupy.empty_like(q)
fc.attention(q, k, v, out=out)
fc.attention(q, k, v)
d = q.data
nd = cupy.ndarray
key = api._signature(q, k, v, out, False, None, "bhsd", False, "auto")[0]


def sig_contig(q, k, v):
    qd, kd, vd = q.data, k.data, v.data
    return (q.shape, q._c_contiguous or q.strides, q.dtype, qd.device_id,
            k.shape, k._c_contiguous or k.strides, k.dtype, kd.device_id,
            v.shape, v._c_contiguous or v.strides, v.dtype, vd.device_id), (qd.ptr, kd.ptr, vd.ptr)


def best(fn, batch=100, batches=50):
    for _ in range(batch):
        fn()
    b = float("inf")
    for _ in range(batches):
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        b = min(b, (time.perf_counter() - t) / batch * 1e6)
    cupy.cuda.get_current_stream().synchronize()
    return b


pieces = {
    "noop lambda": lambda: None,
    "q.shape": lambda: q.shape,
    "q.strides": lambda: q.strides,
    "q.dtype": lambda: q.dtype,
    "q.data": lambda: q.data,
    "d.ptr": lambda: d.ptr,
    "d.device_id": lambda: d.device_id,
    "q._c_contiguous": lambda: q._c_contiguous,
    "q.size": lambda: q.size,
    "type(q) is nd": lambda: type(q) is nd,
    "api._signature": lambda: api._signature(q, k, v, out, False, None, "bhsd", False, "auto"),
    "_launches.get(key)": lambda: api._launches.get(key),
    "sig_contig": lambda: sig_contig(q, k, v),
    "_get_device()": lambda: api._get_device(),
    "_current_stream(0).ptr": lambda: api._current_stream(0).ptr,
    "attention(out=)": lambda: fc.attention(q, k, v, out=out),
    "attention()": lambda: fc.attention(q, k, v),
}
for _ in range(2):
    for name, fn in pieces.items():
        print(f"{name:<28} {best(fn):7.3f} us", flush=True)
    print()
