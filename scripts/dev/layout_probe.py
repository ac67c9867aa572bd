"""Does a long shape's kernel time depend on where its tensors lie in memory?

The shipped S = 4k D128 kernel runs at ~408 us in some processes and ~441 in others
(PERF_HISTORY v19). This times it, and cuDNN on the same arrays as a control, with q, k, v
and the output placed in one buffer at chosen gaps, in one process, several rounds.
Usage: python3 scripts/dev/layout_probe.py [SHAPE] [fp16|bf16] [ROUNDS] [--once]
--once: one launch of ours per layout, untimed, for Nsight Compute to compare.
"""

import sys

import cupy
import numpy as np

from flashcore_cupy import api
from flashcore_cupy.bench import peer_call
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_throughput
from flashcore_cupy.workload import random_inputs, verify

once = "--once" in sys.argv
argv = [a for a in sys.argv[1:] if a != "--once"]
shape = parse_shape(argv[0] if argv else "b2-h16-s4k-d128")
dtype = argv[1] if len(argv) > 1 else "fp16"
rounds = int(argv[2]) if len(argv) > 2 else 2
rng = np.random.default_rng()
GAPS = {"0": 0, "4K": 4 << 10, "64K": 64 << 10, "1M": 1 << 20, "2M+4K": (2 << 20) + (4 << 10),
        "7M": 7 << 20}


def cudnn(q, k, v):
    fn, context = peer_call(shape, "sdpa_cudnn", q, k, v)
    with context():
        return time_throughput(fn, 10).p50


def prepared(q, k, v, out):
    launch = api.plan(q, k, v, causal=shape.causal, out=out).launch
    return launch


def ours(q, k, v, out):
    launch = prepared(q, k, v, out)
    out.fill(np.nan)
    launch(q, k, v, out, None)
    err = verify(shape, q, k, v, out, rng, rows=64)[0]   # the whole output's
    return time_throughput(lambda i: launch(q, k, v, out, None), 10).p50, err, launch.config


def packed(gap: int, order=("q", "k", "v", "out")):
    """q, k, v and out in one buffer, in `order`, each `gap` bytes after the previous."""
    src = dict(zip("qkv", random_inputs(shape, dtype, rng)))
    nbytes = {n: src["q" if n == "out" else n].nbytes for n in order}
    buf = cupy.empty(sum(nbytes.values()) + 4 * gap, dtype=np.uint8)
    views, at = {}, 0
    for n in order:
        like = src["q" if n == "out" else n]
        views[n] = buf[at:at + nbytes[n]].view(like.dtype).reshape(like.shape)
        at += nbytes[n] + gap
    for n in "qkv":
        views[n][...] = src[n]
    return views, buf


print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} {shape.name} {dtype}")
layouts = [("fresh arrays", None, None)] + [(f"packed gap {g}", GAPS[g], ("q", "k", "v", "out"))
                                            for g in GAPS] + [
    ("packed gap 0, v before k", 0, ("q", "v", "k", "out")),
    ("packed gap 0, out first", 0, ("out", "q", "k", "v"))]
for r in range(rounds):
    for label, gap, order in layouts:
        if gap is None:
            q, k, v = random_inputs(shape, dtype, rng)
            out, keep = cupy.empty_like(q), None
        else:
            views, keep = packed(gap, order)
            q, k, v, out = views["q"], views["k"], views["v"], views["out"]
        if once:
            prepared(q, k, v, out)(q, k, v, out, None)
            cupy.cuda.get_current_stream().synchronize()
            print(f"round {r} {label}", flush=True)
        else:
            t, err, cfg = ours(q, k, v, out)
            c = cudnn(q, k, v)
            addrs = " ".join(f"{n}={x.data.ptr % (1 << 30) >> 20:4d}M+{x.data.ptr % (1 << 20):7d}"
                             for n, x in zip(("q", "k", "v", "o"), (q, k, v, out)))
            print(f"round {r} {label:<26} ours {t:7.1f} us  cudnn {c:7.1f} us  ratio {c / t:5.3f}  "
                  f"err {err:.1e}  [{addrs}]  {cfg}", flush=True)
        del q, k, v, out, keep
        cupy.get_default_memory_pool().free_all_blocks()
