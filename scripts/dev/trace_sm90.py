"""Where one Hopper kernel launch spends its time: a timeline per CTA and warpgroup.

Builds kernels/flash_fwd_sm90.cu with -DFLASHCORE_TRACE (kernels/diagnostics.cuh): each
warpgroup's first thread writes clock64 (and the global nanosecond timer at entry and exit) at
the FC_TRACE points named in POINTS. Launches that build in place of dispatch's kernel for a
few small shapes (or the benchmark shapes named), and prints for each point the median and
max over CTAs of the time since that warpgroup's entry, plus the spread of CTA entries and
exits across the grid. The shipped kernel is untouched (without the switch the points are
empty). A stamp orders against other stamps and barriers, not against the arithmetic around
it, so a point can read a little early. In a loop, a point holds its last pass: "step 1" is
a CTA's last step.
Usage: python3 scripts/dev/trace_sm90.py [--shape NAME ...]
"""

import argparse
import dataclasses
import time

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api, loader
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import busy_gpu, time_graph_replay
from flashcore_cupy.workload import random_inputs

N_POINTS = 24                    # kernels/diagnostics.cuh's FC_TRACE_POINTS
ENTRY_NS, EXIT_NS = 22, 23       # slots holding the global timer
TRACE = ("FLASHCORE_TRACE",)     # the -D switch of kernels/diagnostics.cuh
# (point id, label): FC_TRACE(id) in kernels/flash_fwd_sm90.cu stamps it
POINTS = [
    (0, "entry"), (1, "after __syncthreads"), (2, "producer: registers released"),
    (18, "producer: Q issued"), (19, "producer: last V copy issuing"),
    (3, "consumer: registers claimed"), (4, "consumer: Q landed"), (5, "consumer: K_0 landed"),
    (6, "consumer: S_0 done"), (7, "consumer: P_0 ready"), (8, "consumer: step 1 K, V landed"),
    (20, "consumer: step 1 turn taken"), (9, "consumer: step 1 S done"), (21, "consumer: step 1 P V done"),
    (10, "consumer: step 1 softmax done"), (11, "consumer: step 1 O rescaled"),
    (12, "consumer: last PV done"), (15, "combine: every GEMM done"), (16, "combine: partials stored"),
    (13, "consumer: split combined"), (17, "epilogue: 1/l (second half)"), (14, "consumer 0: output stored"),
]


def traced_launch(launch):
    """`launch` with the traced build of its kernel, and that build's fc_trace buffer."""
    function = loader.get_function(launch.config, launch.device, "sm_90a", TRACE)
    buf = cupy.ndarray((4096 * 4 * N_POINTS,), cupy.uint64,
                       loader.get_global(launch.config, launch.device, "sm_90a", "fc_trace", TRACE))
    return dataclasses.replace(launch, function=function, _blocks={}), buf


def report(trace: np.ndarray, grid: int, warpgroups: int, found: list) -> None:
    t = trace[:grid * 4 * N_POINTS].reshape(grid, 4, N_POINTS)[:, :warpgroups].astype(np.int64)
    entry_ns, exit_ns = t[:, :, ENTRY_NS], t[:, 1, EXIT_NS]
    clk0 = t[:, :, 0]
    ok = (clk0 > 0).all(axis=1)
    t, entry_ns, exit_ns, clk0 = t[ok], entry_ns[ok], exit_ns[ok], clk0[ok]
    first = entry_ns.min()
    # cycles -> ns from consumer 0's entry-to-store span against the global timer
    span_clk = t[:, 1, 14] - t[:, 1, 0]
    span_ns = exit_ns - entry_ns[:, 1]
    ghz = np.median(span_clk[span_ns > 0] / span_ns[span_ns > 0]) if (span_ns > 0).any() else 1.8
    print(f"  CTAs {ok.sum()}; SM clock ~{ghz:.2f} GHz; CTA entries spread {(entry_ns.max() - first):.0f} ns, "
          f"first entry to last store {(exit_ns.max() - first):.0f} ns")
    print(f"  {'point':<34} " + "".join(f"{'wg' + str(w) + ' p50/max ns':>22}" for w in range(warpgroups)))
    for point, label in found:
        cells = []
        for w in range(warpgroups):
            d = t[:, w, point] - clk0[:, w]
            d = d[t[:, w, point] > 0]
            cells.append(f"{np.median(d) / ghz:10.0f} /{d.max() / ghz:8.0f}  " if d.size else f"{'-':>22}")
        print(f"  {label:<34} " + "".join(f"{c:>22}" for c in cells))


def problems(shape_names):
    """(label, q, k, v, causal): the named benchmark shapes, or the mission kernel's sizes."""
    rng = np.random.default_rng()
    for name in shape_names:
        shape = parse_shape(name)
        yield (name, *random_inputs(shape, "fp16", rng), shape.causal)
    if shape_names:
        return
    for b, h, sq, sk, d in ((1, 8, 512, 512, 64), (1, 8, 512, 128, 64), (1, 1, 64, 64, 64),
                            (1, 1, 64, 512, 64)):
        q = cupy.asarray(rng.standard_normal((b, h, sq, d)).astype(np.float16))
        k, v = (cupy.asarray(rng.standard_normal((b, h, sk, d)).astype(np.float16)) for _ in "kv")
        yield f"B{b} H{h} Sq{sq} Sk{sk} D{d}", q, k, v, False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", action="append", default=[])
    args = parser.parse_args()
    dev = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{dev}")
    for label, q, k, v, causal in problems(args.shape):
        out = cupy.empty_like(q)
        fc.attention(q, k, v, causal=causal, out=out)
        launch = api.plan(q, k, v, causal=causal, out=out).launch
        traced, buf = traced_launch(launch)
        grid = launch.grid[0]
        base_us = time_graph_replay(lambda: launch(q, k, v, out, None)).p50
        traced_us = time_graph_replay(lambda: traced(q, k, v, out, None)).p50
        print(f"\n{label}: {launch.config}, grid {grid}; graph replay "
              f"{base_us:.2f} us, traced {traced_us:.2f} us")
        for situation in ("after idle", "back to back (4th of 4)"):
            busy_gpu()
            time.sleep(0.001)
            buf.fill(0)
            cupy.cuda.get_current_stream().synchronize()
            for _ in range(4 if situation.startswith("back") else 1):
                traced(q, k, v, out, None)
            cupy.cuda.get_current_stream().synchronize()
            print(f" {situation}:")
            report(cupy.asnumpy(buf), grid, launch.config.consumers + 1, POINTS)


if __name__ == "__main__":
    main()
