"""A few dispatch-chosen calls of one benchmark shape, for a profiler to pick one from.
Usage: python3 scripts/profile_case.py SHAPE [fp16|bf16]"""

import sys

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.workload import random_inputs

shape = parse_shape(sys.argv[1])
q, k, v = random_inputs(shape, sys.argv[2] if len(sys.argv) > 2 else "fp16", np.random.default_rng())
for _ in range(4):
    fc.attention(q, k, v, causal=shape.causal)
cupy.cuda.get_current_stream().synchronize()
