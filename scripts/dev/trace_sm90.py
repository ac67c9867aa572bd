"""Where one Hopper kernel launch spends its time: a timeline per CTA and warpgroup.

Compiles a copy of kernels/flash_fwd_sm90.cu with timestamps (clock64, and the global
nanosecond timer at entry and exit) written by each warpgroup's first thread right after
the source lines named in POINTS, launches it in place of dispatch's kernel for a few
small shapes (or the benchmark shapes named), and prints for each point the median and
max over CTAs of the time since that warpgroup's entry, plus the spread of CTA entries
and exits across the grid. A point whose line is not in the kernel (an edited kernel, an
A/B base tree) is left out. The library's kernel is untouched: the copy lives in this
process only. A stamp orders against other stamps and barriers, not against the
arithmetic around it, so a point can read a little early. In a loop, a point holds its
last pass: "step 1" is a CTA's last step.
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

N_POINTS = 24
ENTRY_NS, EXIT_NS = 22, 23       # slots holding the global timer
# (anchor in the kernel source, occurrence, point id, label): the stamp goes right after it.
POINTS = [
    ("const int warpgroup = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);", 0, 0, "entry"),
    ("    __syncthreads();", 0, 1, "after __syncthreads"),
    ("regs_release<Tile::kProducerRegs>();", 0, 2, "producer: registers released"),
    ("w.row0 + box * Tile::kQBoxRows, w.head * p.pack, w.batch);", 0, 18,
     "producer: Q issued"),
    ("if (it + jv >= STAGES) mbar_wait(bar.v_empty(r.slot()), r.parity() ^ 1);", 0, 19,
     "producer: last V copy issuing"),
    ("regs_claim<Tile::kConsumerRegs>();", 0, 3, "consumer: registers claimed"),
    ("mbar_wait(bar.q_full(), n_done & 1);", 0, 4, "consumer: Q landed"),
    ("mbar_wait(bar.k_full(r.slot()), r.parity());", 0, 5, "consumer: K_0 landed"),
    ("fence_registers(s[0]);", 0, 6, "consumer: S_0 done"),
    ("softmax_tile(tile(0), true);", 0, 7, "consumer: P_0 ready"),
    ("mbar_wait(bar.v_full(prev.slot()), prev.parity());", 0, 8, "consumer: step 1 K, V landed"),
    ("await_turn();", 1, 20, "consumer: step 1 turn taken"),
    ("fence_registers(s[0]);", 1, 9, "consumer: step 1 S done"),
    ("pv_done(k - 1);", 0, 21, "consumer: step 1 P V done"),
    ("softmax_tile(tile(k));", 0, 10, "consumer: step 1 softmax done"),
    ("rescale_rows<1, HEAD_DIM / 8, H>(o, alpha);", 0, 11, "consumer: step 1 O rescaled"),
    ("pv_done(my_blocks - 1);", 0, 12, "consumer: last PV done"),
    ("named_barrier_sync(kBarrier, 128 * CONSUMERS);", 0, 15, "combine: every GEMM done"),
    ("named_barrier_sync(kBarrier, 128 * CONSUMERS);", 1, 16, "combine: partials stored"),
    ("consumer, o, m, l);", 0, 13, "consumer: split combined"),
    ("const float inv_l = l_row > 0.f ? 1.f / l_row : 0.f;", 0, 17, "epilogue: 1/l (second half)"),
    ("neg_inf();\n        }", 0, 14, "consumer 0: output stored"),
]

_PRELUDE = r"""
__device__ unsigned long long fc_trace[4096 * 4 * %d];
#define FC_STAMP(n) do { if (threadIdx.x %% 128 == 0) fc_trace[(blockIdx.x * 4 + threadIdx.x / 128) * %d + (n)] = clock64(); } while (0)
#define FC_STAMP_NS(n) do { if (threadIdx.x %% 128 == 0) { unsigned long long t_; asm volatile("mov.u64 %%0, %%%%globaltimer;" : "=l"(t_)); fc_trace[(blockIdx.x * 4 + threadIdx.x / 128) * %d + (n)] = t_; } } while (0)
""" % (N_POINTS, N_POINTS, N_POINTS)


def traced_source() -> tuple[str, list]:
    """The kernel source with stamps, and the points found in it (in POINTS order)."""
    src = (loader.KERNEL_DIR / "flash_fwd_sm90.cu").read_text()
    found = []
    for anchor, occurrence, point, label in POINTS:
        at = -1
        for _ in range(occurrence + 1):
            at = src.find(anchor, at + 1)
            if at < 0:
                break
        if at < 0:   # not in this version of the kernel (an A/B base tree, say)
            continue
        end = at + len(anchor)
        stamp = f" FC_STAMP({point});"
        if point == 0:
            stamp += f" FC_STAMP_NS({ENTRY_NS});"
        if point == 14:
            stamp += f" FC_STAMP_NS({EXIT_NS});"
        src = src[:end] + stamp + src[end:]
        found.append((point, label))
    head = src.find("namespace fc {")
    return src[:head] + _PRELUDE + src[head:], found


def traced_launch(launch):
    src, found = traced_source()
    function, module = loader.variant_function(launch.config, launch.device, "sm_90a", src)
    return dataclasses.replace(launch, function=function, _blocks={}), module, found


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
        launch = api.prepared_launch(q, k, v, causal=causal, out=out)
        traced, module, found = traced_launch(launch)
        buf = cupy.ndarray((4096 * 4 * N_POINTS,), cupy.uint64, module.get_global("fc_trace"))
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
            report(cupy.asnumpy(buf), grid, launch.config.consumers + 1, found)


if __name__ == "__main__":
    main()
