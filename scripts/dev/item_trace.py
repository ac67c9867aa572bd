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
--define adds a candidate's switch (a -D name of kernels/diagnostics.cuh) to the traced build, so
that its parts can be set beside the shipped kernel's; FLASHCORE_DYNAMIC on a dense row also
takes schedule_probe.py's persistent grid (its tiles dealt from a counter, as varlen's are, and
unstreamed). The
clock is the SM's (cycles; microseconds at the device's nominal clock, approximate under boost).
The shipped kernel is untouched.
Dense and varlen rows (a varlen row: its Hopper launch on packed inputs of its lengths).
Usage: python3 scripts/dev/item_trace.py --shape NAME [--shape ...] [--define SWITCH ...] [--dtype bf16]
"""

import argparse
import contextlib
from pathlib import Path

import cupy
import numpy as np

from flashcore_cupy import api, bench, configs, loader
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_kernel
from flashcore_cupy.workload import np_dtype, random_inputs

ITEMS = 1 << 15
TRACE = (f"FLASHCORE_TRACE_ITEMS={ITEMS}",)
POINTS = 8   # kernels/diagnostics.cuh's FC_ITEM_POINTS
# FC_ITEM points (kernels/flash_fwd_sm90.cu's consumers; kernels/sm90_producer.cuh's producer)
START, Q_LANDED, FIRST_READY, LAST_PV, END, BLOCKS, WHERE = 0, 1, 2, 3, 4, 6, 7
P_START, P_Q_ISSUED, P_KV_ISSUED = 0, 1, 2


def traced(shape_name: str, dtype: str, defines: tuple[str, ...], rng) -> tuple[np.ndarray, configs.Sm90FwdConfig, float, float]:
    """(fc_items of one warm launch as (items, 4, POINTS), the config, shipped us, traced us)."""
    shape = parse_shape(shape_name)
    if shape.kind == "varlen":
        config, launches = _varlen_launches(shape, dtype, defines, rng)
    else:
        q, k, v = random_inputs(shape, dtype, rng)
        arrays = bench.variant_arrays(shape, dtype, rng)
        opts = bench.attention_options(shape, arrays)
        out = cupy.empty_like(q)
        dynamic = "FLASHCORE_DYNAMIC" in defines
        if dynamic:   # schedule_probe.py's dynamic build: its tiles unstreamed
            defines = defines + ("FLASHCORE_STREAM_ITEMS=0",)
        with _schedule(dynamic):
            plans = [api.plan(q, k, v, out=out, defines=d, **opts) for d in (defines, TRACE + defines)]
            config = plans[1].config
            launches = [(lambda p: lambda: p.run(q, k, v, out=out, **arrays))(p) for p in plans]
            for p, run in zip(plans, launches):
                if dynamic:   # (a zeroed counter pair, which the kernel's last CTA zeroes again)
                    counter = cupy.zeros(2, np.int32)
                    _KEEP.append(counter)
                    p.launch.scalars["tile_counter"] = counter.data.ptr
                run()   # (the first run inside: the launch takes the probe's shared memory then)
    if not isinstance(config, configs.Sm90FwdConfig):
        raise SystemExit(f"{shape_name}: {config} is not the Hopper kernel")
    buf = cupy.ndarray((ITEMS * 4 * POINTS,), cupy.uint64,
                       loader.get_global(config, cupy.cuda.Device().id, "sm_90a", "fc_items", TRACE + defines))
    t_shipped, t_traced = (time_kernel(run).p50 for run in launches)
    buf.fill(0)
    launches[1]()
    cupy.cuda.get_current_stream().synchronize()
    return buf.get().reshape(ITEMS, 4, POINTS).astype(np.int64), config, t_shipped, t_traced


_KEEP = []   # the dynamic deal's counters, alive as long as their launches


def _schedule(dynamic: bool):
    """-DFLASHCORE_DYNAMIC on a dense row: schedule_probe.py's persistent grid with its item slots
    (tiles dealt from a counter, as varlen's); otherwise nothing."""
    if not dynamic:
        return contextlib.nullcontext()
    import importlib.util
    spec = importlib.util.spec_from_file_location("schedule_probe", Path(__file__).with_name("schedule_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe.probe_build(True, True)


def _varlen_launches(shape, dtype: str, defines: tuple[str, ...], rng):
    """A varlen row's Hopper config and its launches, built with `defines` and with the trace too,
    on packed inputs of the row's sequence lengths (causal as the row)."""
    from flashcore_cupy import validation, varlen

    cu = cupy.asarray(np.concatenate([[0], np.cumsum(shape.seqlens)]).astype(np.int32))
    total = int(sum(shape.seqlens))
    q, k, v = (cupy.asarray(rng.standard_normal((total, h, shape.head_dim), dtype=np.float32).astype(np_dtype(dtype)))
               for h in (shape.heads_q, shape.heads_kv, shape.heads_kv))
    problem, _ = validation.check_varlen(*(api._spec(a, n) for a, n in (
        (q, "q"), (k, "k"), (v, "v"), (cu, "cu_seqlens_q"), (cu, "cu_seqlens_k"))),
        causal=shape.causal, scale=None, window=None, softcap=0.0, alibi_slopes=None)
    config = configs.sm90_varlen_config(dtype, shape.head_dim, problem.kernel_variant)
    out = cupy.empty_like(q)
    ptrs = dict(q=q.data.ptr, k=k.data.ptr, v=v.data.ptr, o=out.data.ptr, cu_seqlens_q=cu.data.ptr,
                cu_seqlens_k=cu.data.ptr)
    sms = api.device_info(q.device.id).num_sms
    built = [varlen._sm90_launch(problem, config, (out.strides[1] // out.itemsize, out.strides[0] // out.itemsize),
                                 "sm_90a", sms, d) for d in (defines, TRACE + defines)]
    # The launches hold bare addresses: the arrays live as long as they do (freed here, out's
    # memory went to the deal's counters, allocated at the first launch: v44-v45's illegal
    # address and illegal instruction).
    _KEEP.append((q, k, v, out, cu))
    return config, [(lambda b: lambda: b.start(ptrs, cupy.cuda.get_current_stream().ptr))(b) for b in built]


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
