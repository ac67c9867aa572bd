"""One-off probe: dense split-KV (split.MAX_CHAIN_KEYS lowered) per shape and backend, the rows
that miss the reference (batch, head, row ranges)."""
import numpy as np
import cupy

import flashcore_cupy as fc
from flashcore_cupy import reference, split

split.MAX_CHAIN_KEYS = 256
rng = np.random.default_rng(0)
for backend in ("sm80", "auto"):
    for (b, hq, hkv) in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 2, 1)):
        for sq in (8, 16, 64, 77):
            sk = 300
            q, k, v = (cupy.asarray(rng.standard_normal(s).astype(np.float16))
                       for s in ((b, hq, sq, 64), (b, hkv, sk, 64), (b, hkv, sk, 64)))
            out = fc.attention(q, k, v, backend=backend)
            plan = fc.plan(q, k, v, backend=backend)
            ref = reference.attention(q, k, v)
            got = out.get().astype(np.float64)
            err = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
            bad = np.argwhere(err > 1e-2)
            print(backend, (b, hq, hkv), sq, type(plan.launch).__name__, getattr(plan.launch, "splits", 1),
                  f"err {reference.rel_error(out, ref):.2e}", "bad rows", len(bad), bad[:6].tolist(), flush=True)
