"""Where a Hopper forward launch's work tiles spend their time: every work item's timeline.

Builds kernels/flash_fwd_sm90.cu with -DFLASHCORE_TRACE_ITEMS=<n> (kernels/diagnostics.cuh):
thread 0 of each warpgroup stores the SM clock at the points of each work item i below (the
consumers' and the producer's), and the item's CTA and SM. Runs each named benchmark shape (its
variant options too) once warm, then splits each consumer's time on each SM into:
  gap      from the previous item's end on that SM (the consumer's, or the previous CTA's) to
           this item's start: a CTA's launch and prologue, or a persistent CTA's next-item work;
  Q wait   start to Q landed;
  ramp     Q landed to the first key tile's P ready (K_0's wait, S_0 alone, the first softmax);
  steps    then to the last P V done (the steady steps: per key tile beside);
  tail     then to the item's end (the turns of tiles its rows skip, the epilogue's stores).
and prints each part's share of the consumers' SM time, the medians per item, and the
producer's Q issue (after the previous item's Q is released) against the consumers' Q landing.
--define adds a candidate's switch (e.g. FLASHCORE_NARROW_EDGES) to the traced build, so that
its parts can be set beside the shipped kernel's. The clock is the SM's (cycles; microseconds
at the device's nominal clock, approximate under boost). The shipped kernel is untouched.
Usage: python3 scripts/dev/item_trace.py --shape NAME [--shape ...] [--define SWITCH ...] [--dtype bf16]
"""

import argparse

import cupy
import numpy as np

from flashcore_cupy import api, bench, configs, loader
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_kernel
from flashcore_cupy.workload import random_inputs

ITEMS = 1 << 15
TRACE = (f"FLASHCORE_TRACE_ITEMS={ITEMS}",)
POINTS = 8   # kernels/diagnostics.cuh's FC_ITEM_POINTS
# FC_ITEM points (kernels/flash_fwd_sm90.cu's consumers; kernels/sm90_producer.cuh's producer)
START, Q_LANDED, FIRST_READY, LAST_PV, END, BLOCKS, WHERE = 0, 1, 2, 3, 4, 6, 7
P_START, P_Q_ISSUED, P_KV_ISSUED = 0, 1, 2


def traced(shape_name: str, dtype: str, defines: tuple[str, ...], rng) -> tuple[np.ndarray, configs.Sm90FwdConfig, float, float]:
    """(fc_items of one warm launch as (items, 4, POINTS), the config, shipped us, traced us)."""
    shape = parse_shape(shape_name)
    q, k, v = random_inputs(shape, dtype, rng)
    arrays = bench.variant_arrays(shape, dtype, rng)
    opts = bench.attention_options(shape, arrays)
    out = cupy.empty_like(q)
    shipped = api.plan(q, k, v, out=out, defines=defines, **opts) if defines else api.plan(q, k, v, out=out, **opts)
    plan = api.plan(q, k, v, out=out, defines=TRACE + defines, **opts)
    if not isinstance(plan.config, configs.Sm90FwdConfig):
        raise SystemExit(f"{shape_name}: {plan.config} is not the Hopper kernel")
    buf = cupy.ndarray((ITEMS * 4 * POINTS,), cupy.uint64,
                       loader.get_global(plan.config, q.device.id, "sm_90a", "fc_items", TRACE + defines))
    run = lambda p: p.run(q, k, v, out=out, **arrays)   # noqa: E731
    t_shipped, t_traced = time_kernel(lambda: run(shipped)).p50, time_kernel(lambda: run(plan)).p50
    buf.fill(0)
    run(plan)
    cupy.cuda.get_current_stream().synchronize()
    return buf.get().reshape(ITEMS, 4, POINTS).astype(np.int64), plan.config, t_shipped, t_traced


def consumer_parts(t: np.ndarray, c: int) -> tuple[dict[str, list[int]], list[float]]:
    """Warpgroup c's (a consumer's) cycles of each part, item by item (see the module's text), and
    its steady steps' cycles per key tile, from fc_items as (items, 4, POINTS)."""
    t = t[t[:, 1, START] != 0]   # (the items run: an SM clock is never 0)
    sm = t[:, 1, WHERE] & 0xFFFFFFFF
    per = {name: [] for name in ("gap", "Q wait", "ramp", "steps", "tail")}
    steps_per_tile = []
    for s in np.unique(sm):
        rows = t[sm == s, c]
        rows = rows[np.argsort(rows[:, START], kind="stable")]
        prev_end = None
        for r in rows:
            if prev_end is not None:
                per["gap"].append(int(r[START] - prev_end))
            per["Q wait"].append(int(r[Q_LANDED] - r[START]))
            if r[BLOCKS] > 0:
                per["ramp"].append(int(r[FIRST_READY] - r[Q_LANDED]))
                per["steps"].append(int(r[LAST_PV] - r[FIRST_READY]))
                per["tail"].append(int(r[END] - r[LAST_PV]))
                if r[BLOCKS] > 1:
                    steps_per_tile.append((r[LAST_PV] - r[FIRST_READY]) / (r[BLOCKS] - 1))
            else:   # no rows or no key tiles here: its turns and nothing else
                per["tail"].append(int(r[END] - r[Q_LANDED]))
            prev_end = r[END]
    return per, steps_per_tile


def report(t: np.ndarray, consumers: int, ghz: float) -> None:
    done = t[:, 1, START] != 0
    us = lambda cycles: cycles / ghz / 1e3   # noqa: E731
    print(f"  items {int(done.sum())} on {len(np.unique(t[done, 1, WHERE] & 0xFFFFFFFF))} SMs")
    for c in range(1, consumers + 1):
        per, steps_per_tile = consumer_parts(t, c)
        total = sum(sum(v) for v in per.values())
        share = "  ".join(f"{name} {100 * sum(v) / total:4.1f}%" for name, v in per.items())
        med = "  ".join(f"{name} {us(np.median(v)):6.2f}" for name, v in per.items() if v)
        blocks = t[done, c, BLOCKS]
        print(f"  consumer {c - 1} ({int((blocks > 0).sum())} items with key tiles, median "
              f"{np.median(blocks[blocks > 0]) if (blocks > 0).any() else 0:.0f}):")
        print(f"    share of its SM time: {share}")
        print(f"    median per item (us): {med}")
        if steps_per_tile:
            print(f"    a steady step (a key tile): median {us(np.median(steps_per_tile)):.3f} us")
    producer = t[done, 0]
    issued = producer[:, P_Q_ISSUED] > 0
    wait_q = producer[issued, P_Q_ISSUED] - producer[issued, P_START]
    landed = t[done][issued, 1, Q_LANDED] - producer[issued, P_Q_ISSUED]
    if issued.any():
        print(f"  producer: median {us(np.median(wait_q)):.2f} us from its item's start to Q issued (the previous "
              f"Q's release); Q landed {us(np.median(landed)):.2f} us after issue (consumer 0's wait ends)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", action="append", required=True)
    parser.add_argument("--define", action="append", default=[], help="a candidate's -D switch, traced too")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = parser.parse_args()
    rng = np.random.default_rng()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    ghz = props["clockRate"] / 1e6
    print(f"{props['name'].decode()}, {args.dtype}; nominal SM clock {ghz:.2f} GHz")
    for name in args.shape:
        for defines in [()] + [(d,) for d in args.define]:
            t, config, t_shipped, t_traced = traced(name, args.dtype, defines, rng)
            label = " + ".join(defines) or "shipped"
            print(f"\n{name} ({config}, {label}): {t_shipped:.1f} us, traced build {t_traced:.1f} us")
            report(t, config.consumers if not config.split else 1, ghz)


if __name__ == "__main__":
    main()
