"""temporary: the attention fast path piece by piece on the device's host (best of batches)."""
import numpy as np, cupy
import flashcore_cupy as fc
from flashcore_cupy import api, launch as L
import importlib.util
spec = importlib.util.spec_from_file_location("lp", "scripts/latency_probe.py"); lp = importlib.util.module_from_spec(spec); spec.loader.exec_module(lp)
from flashcore_cupy.timing import time_latency

rng = np.random.default_rng()
q, k, v = (cupy.asarray(rng.standard_normal((1, 8, 512, 64)).astype(np.float16)) for _ in "qkv")
out = cupy.empty_like(q)
fc.attention(q, k, v, out=out)
run = api.prepared_launch(q, k, v, out=out)
stream = cupy.cuda.get_current_stream().ptr
key = api._signature(q, k, v, out, False, None, "bhsd", False, "auto")
block = next(iter(run._blocks.values()))
dims = run._dims
d = q.data
pieces = {
    "attention(out=)": lambda: fc.attention(q, k, v, out=out),
    "_run(launch, out given)": lambda: api._run(run, q, k, v, out),
    "launch(..., stream)": lambda: run(q, k, v, out, None, stream),
    "bare _cu_launch": lambda: L._cu_launch(*dims, stream, block.argv, 0),
    "_signature": lambda: api._signature(q, k, v, out, False, None, "bhsd", False, "auto"),
    "_launches.get(key)": lambda: api._launches.get(key),
    "hash(key)": lambda: hash(key),
    "_get_device()": lambda: api._get_device(),
    "_current_stream().ptr": lambda: api._current_stream().ptr,
    "q.shape": lambda: q.shape,
    "q.strides": lambda: q.strides,
    "q.dtype": lambda: q.dtype,
    "q.data": lambda: q.data,
    "q.data.ptr": lambda: q.data.ptr,
    "d.device_id": lambda: d.device_id,
    "type(q) is ndarray": lambda: type(q) is cupy.ndarray,
    "pack pointers": lambda: L._SM90_POINTERS.pack_into(block.data, L._SM90_TAIL_AT, 1, 0),
    "lock": lambda: run._lock.__enter__() or run._lock.__exit__(None, None, None),
    "noop lambda": lambda: None,
}
for name, fn in pieces.items():
    print(f"{name:<28} {lp.host_us(fn):6.3f} us")
