"""One causal and one non-causal call per kernel family and Hopper tile kind, and a decode step
(one query, three query heads per kv head: the Hopper kernel packs them into one tile), small
enough for compute-sanitizer; exits 1 on a wrong result."""

import sys

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api, configs, reference, workload

rng = np.random.default_rng()
# sm90 forces the Hopper kernel's large tiles; auto takes its split-keys tiles here: 32-row
# ones of 8-row warps, and 64-row ones for the decode step
backends = ["sm80"] + (["sm90", "auto"] if api.device_info(0).arch == configs.SM90_ARCH else [])
ok = True
for backend in backends:
    for causal, (sq, sk) in ((False, (200, 333)), (True, (333, 200)), (True, (1, 333))):
        for dtype, d in ((np.float16, 64), (np.float16, 128)):
            q = cupy.asarray(rng.standard_normal((2, 3, sq, d)).astype(dtype))
            k, v = (cupy.asarray(rng.standard_normal((2, 1, sk, d)).astype(dtype)) for _ in range(2))
            out, lse = fc.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
            cupy.cuda.get_current_stream().synchronize()
            ref = reference.attention(q, k, v, causal=causal)
            err, row = reference.rel_error(out, ref), reference.row_rel_error(out, ref)
            print(f"{backend} causal={causal} D={d} {sq}x{sk}: rel err {err:.2e}, worst row {row:.2e}")
            ok &= workload.within_tolerance("fp16", err, row)
sys.exit(0 if ok else 1)
