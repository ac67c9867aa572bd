"""temporary: mission split tiles by ring depth; launch geometry costs."""
import numpy as np, cupy
import flashcore_cupy as fc
from flashcore_cupy import api, configs
from flashcore_cupy.launch import ParamBlock
from flashcore_cupy.timing import time_latency, busy_gpu
from cupy_backends.cuda.api import driver
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lp", "scripts/latency_probe.py"); lp = importlib.util.module_from_spec(spec); spec.loader.exec_module(lp)

rng = np.random.default_rng()
q = cupy.asarray(rng.standard_normal((1, 8, 512, 64)).astype(np.float16))
k, v = (cupy.asarray(rng.standard_normal((1, 8, 512, 64)).astype(np.float16)) for _ in "kv")
out = cupy.empty_like(q)
ref = fc.attention(q, k, v)
launches = {}
for stages in (4, 2):
    for bn in (128,):
        cfg = configs.Sm90Config("fp16", 64, bn, stages, 2, False, True)
        _, _, _, _, L = api._prepare(q, k, v, out, False, None, "bhsd", False, "sm90", config=cfg)
        o = cupy.full_like(q, np.nan); L(q, k, v, o, None); cupy.cuda.Device().synchronize()
        err = float(cupy.linalg.norm((o - ref).astype(cupy.float32)) / cupy.linalg.norm(ref.astype(cupy.float32)))
        launches[f"{cfg} smem {cfg.smem_bytes}"] = L
        print(cfg, "vs auto rel diff", err, "graph us", lp.graph_us(lambda: L(q, k, v, out, None)))
wide_mod = cupy.RawModule(code='struct __align__(64) P { unsigned char b[512]; };'
                               'extern "C" __global__ void wide_kernel(const __grid_constant__ P p) {}',
                          options=("-std=c++17",))
wide = wide_mod.get_function("wide_kernel"); wide.max_dynamic_shared_size_bytes = 200000
wp = ParamBlock(512)
def wd(grid, threads, smem):
    return lambda: driver.launchKernel(wide.kernel.ptr, grid, 1, 1, threads, 1, 1, smem, cupy.cuda.get_current_stream().ptr, wp.argv, 0)
fns = {name: (lambda L=L: L(q, k, v, out, None)) for name, L in launches.items()}
for g, t, s in ((64, 384, 137000), (64, 384, 74000), (64, 384, 0), (64, 128, 0), (1, 32, 0), (128, 384, 137000)):
    fns[f"empty grid {g} threads {t} smem {s}"] = wd(g, t, s)
res = {n: [] for n in fns}
for r in range(6):
    for n, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
        for _ in range(20): f()
        res[n].append(time_latency(lambda i: f(), 60, warmup=5).p50)
for n, xs in res.items():
    print(f"{n:<60} latency p50 median {np.median(xs):6.2f}  blocks {' '.join(f'{x:.2f}' for x in xs)}")
