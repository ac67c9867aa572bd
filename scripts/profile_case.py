"""A few dispatch-chosen calls of one benchmark shape, for a profiler to pick one from: the
forward, or with `backward` the backward of a saved forward.
Usage: python3 scripts/profile_case.py SHAPE [fp16|bf16] [forward|backward]"""

import sys

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.workload import random_inputs

shape = parse_shape(sys.argv[1])
dtype = sys.argv[2] if len(sys.argv) > 2 else "fp16"
backward = len(sys.argv) > 3 and sys.argv[3] == "backward"
rng = np.random.default_rng()
q, k, v = random_inputs(shape, dtype, rng)
if backward:
    out, lse = fc.attention(q, k, v, causal=shape.causal_arg, return_lse=True)
    dout = random_inputs(shape, dtype, rng)[0]
for _ in range(4):
    if backward:
        fc.attention_backward(dout, q, k, v, out, lse, causal=shape.causal_arg)
    else:
        fc.attention(q, k, v, causal=shape.causal_arg)
cupy.cuda.get_current_stream().synchronize()
