"""The mission call's host path piece by piece (best of batches, lambda overhead included)
and the event latency of the current call against a trimmed prototype of its fast path."""
import importlib.util
import threading

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api, launch as L
from flashcore_cupy.timing import time_latency

spec = importlib.util.spec_from_file_location("lp", "scripts/latency_probe.py")
lp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lp)

rng = np.random.default_rng()
q, k, v = (cupy.asarray(rng.standard_normal((1, 8, 512, 64)).astype(np.float16)) for _ in "qkv")
out = cupy.empty_like(q)
fc.attention(q, k, v, out=out)
fc.attention(q, k, v)
run = api.prepared_launch(q, k, v, out=out)
stream = cupy.cuda.get_current_stream().ptr
key = api._signature(q, k, v, out, False, None, "bhsd", False, "auto")
block = next(iter(run._blocks.values()))
dims = run._dims
argv = block.argv
ptrs = (q.data.ptr, k.data.ptr, v.data.ptr)
d = q.data
lock = threading.Lock()
mv = memoryview(block.data)
bdata = block.data
key_num = (q.shape, q.strides, q.dtype.num, d.device_id)
key_obj = (q.shape, q.strides, q.dtype, d.device_id)
cu = L._cu_launch
f, gx, gy, gz, bx, by, bz, smem = dims
spare_key = (api.prepared_launch(q, k, v), stream)

def locked():
    with lock:
        pass


# A trimmed fast path: one read of each array's MemoryPointer, the signature without
# re-reading pointers, the launch inlined (no method call, no star-unpacking).
_proto: dict = {}


def proto(q, k, v, *, causal=False, scale=None, layout="bhsd", return_lse=False, out=None,
          backend="auto"):
    nd = cupy.ndarray
    if type(q) is nd and type(k) is nd and type(v) is nd and out is None and type(causal) is bool:
        qd, kd, vd = q.data, k.data, v.data
        qp, kp, vp = qd.ptr, kd.ptr, vd.ptr
        sig = (q.shape, q.strides, q.dtype, qd.device_id, k.shape, k.strides, k.dtype, kd.device_id,
               v.shape, v.strides, v.dtype, vd.device_id, causal, type(scale), scale, layout,
               return_lse, backend)
        hit = _proto.get(sig)
        if hit is not None and not (qp | kp | vp) & 15:
            launch, args = hit
            s = api._current_stream().ptr
            o = api._spares.pop((launch, s), None)
            o = o[0] if o else cupy.empty(launch.out_shape, dtype=q.dtype)
            with launch._lock:
                blk = launch._blocks.get((qp, kp, vp))
                if blk is not None:
                    L._SM90_POINTERS.pack_into(blk.data, L._SM90_TAIL_AT, o.data.ptr, 0)
                    cu(*args, s, blk.argv, 0)
            api._spares[(launch, s)] = (cupy.empty(launch.out_shape, dtype=q.dtype), None)
            return o
        _proto[sig] = (api.prepared_launch(q, k, v), api.prepared_launch(q, k, v)._dims)
    return fc.attention(q, k, v)


proto(q, k, v)
proto(q, k, v)

pieces = {
    "attention(q, k, v)": lambda: fc.attention(q, k, v),
    "proto(q, k, v)": lambda: proto(q, k, v),
    "attention(out=)": lambda: fc.attention(q, k, v, out=out),
    "_signature": lambda: api._signature(q, k, v, out, False, None, "bhsd", False, "auto"),
    "_launches.get(key)": lambda: api._launches.get(key),
    "launch(..., stream)": lambda: run(q, k, v, out, None, stream),
    "bare _cu_launch(*dims)": lambda: cu(*dims, stream, argv, 0),
    "bare _cu_launch explicit": lambda: cu(f, gx, gy, gz, bx, by, bz, smem, stream, argv, 0),
    "with lock: pass": locked,
    "ptrs tuple": lambda: (q.data.ptr, k.data.ptr, v.data.ptr),
    "_blocks.get(ptrs)": lambda: run._blocks.get(ptrs),
    "pack_into ndarray": lambda: L._SM90_POINTERS.pack_into(bdata, L._SM90_TAIL_AT, 1, 0),
    "pack_into memoryview": lambda: L._SM90_POINTERS.pack_into(mv, L._SM90_TAIL_AT, 1, 0),
    "hash key (dtype objects)": lambda: hash(key_obj),
    "hash key (dtype.num)": lambda: hash(key_num),
    "q.dtype.num": lambda: q.dtype.num,
    "q._c_contiguous": lambda: q._c_contiguous,
    "get_current_stream()": lambda: cupy.cuda.get_current_stream(),
    "get_current_stream(0)": lambda: cupy.cuda.get_current_stream(0),
    "spare pop + put back": lambda: api._spares.__setitem__(spare_key, api._spares.pop(spare_key)),
    "cupy.empty(out_shape)": lambda: cupy.empty(run.out_shape, dtype=q.dtype),
    "api._allocate": lambda: api._allocate(run, q.dtype),
    "pool malloc(out bytes)": lambda: cupy.cuda.alloc(q.nbytes),
    "ndarray(memptr=)": lambda: cupy.ndarray(run.out_shape, q.dtype, d),
    "noop lambda": lambda: None,
}
for name, fn in pieces.items():
    print(f"{name:<28} {lp.host_us(fn):6.3f} {lp.host_us(fn):6.3f} us", flush=True)

print("\nevent latency, GPU idle (p50 / p90 of 300), alternating blocks of 100:")
calls = {"attention": lambda i: fc.attention(q, k, v), "attention(out=)": lambda i: fc.attention(q, k, v, out=out),
         "proto": lambda i: proto(q, k, v), "bare launch": lambda i: cu(*dims, stream, argv, 0)}
lat = {name: [] for name in calls}
for rep in range(3):
    for name, fn in calls.items():
        lat[name].extend(time_latency(fn, 100).us)
for name, us in lat.items():
    print(f"  {name:<14} {np.percentile(us, 50):6.2f} {np.percentile(us, 90):6.2f} us")
