"""Probe: the Hopper forward's schedule on uneven (causal) work tiles. Dispatch launches those a
CTA per tile (the hardware hands the next tile to whichever SM frees up, but nothing of the next
tile loads under this one's end); the alternatives here run them persistent, one CTA per SM
looping over the tiles (the next tile's K/V and Q load under this one's epilogue), dealt round
the grid as numbered (longest first by groups of heads; a zig-zag deal, odd rounds from the
grid's end, was slower still and is gone: v40), or dynamically (-DFLASHCORE_DYNAMIC: each CTA's next tile from a
counter in global memory, fetched by its producer a tile ahead; the probe gives the kernel the 64
bytes of shared memory its item slots take and a zeroed counter; its tiles unstreamed,
-DFLASHCORE_STREAM_ITEMS=0: a dense window's streamed tiles spill on the dynamic deal). Each is checked against the
reference, then timed side by side with SDPA cuDNN (throughput: 20 calls a sample).
Usage: PYTHONPATH=$PWD python3 scripts/dev/schedule_probe.py [--dtype fp16] SHAPE...
       (a name of the shape list, or B,H,S,D[,causal])
"""

import argparse
import contextlib
import dataclasses

import cupy
import numpy as np

from flashcore_cupy import api, bench, configs
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_side_by_side
from flashcore_cupy.workload import random_inputs, verify, within_tolerance

_shipped_schedule = configs.Sm90FwdConfig.schedule
_shipped_smem = configs.Sm90FwdConfig.smem_bytes
_shipped_streamed = configs.Sm90FwdConfig.STREAMED_SEQS
_ITEM_SLOTS_BYTES = configs.SM90_ITEM_SLOT_BYTES
DYNAMIC = ("FLASHCORE_DYNAMIC", "FLASHCORE_STREAM_ITEMS=0")   # the dynamic deal's build


@contextlib.contextmanager
def probe_build(persistent: bool, dynamic: bool):
    """Plans made (and first run) inside take the persistent schedule, and with `dynamic` the
    unstreamed tiles' shared memory (one Q slot) and the item slots'."""
    configs.Sm90FwdConfig.schedule = persistent_schedule if persistent else _shipped_schedule
    if dynamic:
        configs.Sm90FwdConfig.STREAMED_SEQS = ()
        configs.Sm90FwdConfig.smem_bytes = property(lambda self: _shipped_smem.fget(self) + _ITEM_SLOTS_BYTES)
    try:
        yield
    finally:
        configs.Sm90FwdConfig.schedule = _shipped_schedule
        configs.Sm90FwdConfig.smem_bytes = _shipped_smem
        configs.Sm90FwdConfig.STREAMED_SEQS = _shipped_streamed


def persistent_schedule(self, batch, heads_q, seqlen_q, num_sms, causal, kv_bytes_per_head=0):
    """The causal schedule's tiles and head groups, dealt to a persistent grid."""
    plan = _shipped_schedule(self, batch, heads_q, seqlen_q, num_sms, causal, kv_bytes_per_head)
    if not causal or self.split:
        return plan
    return configs.Sm90Schedule((min(plan.items, num_sms), 1, 1), plan.tail_start, plan.items, plan.group)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--samples", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng()
    print(f"# {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()} {args.dtype}")
    for name in args.shapes:
        parts = name.split(",")
        shape = (dataclasses.replace(parse_shape(",".join(parts[:4])), causal=True, name=name)
                 if len(parts) == 5 else parse_shape(name))
        q, k, v = random_inputs(shape, args.dtype, rng)
        arrays = bench.variant_arrays(shape, args.dtype, rng)
        opts = bench.attention_options(shape, arrays)
        fns = {}
        for label, persistent, defines in (("shipped", False, ()), ("persistent", True, ()),
                                           ("persistent dynamic", True, DYNAMIC)):
            dynamic = "FLASHCORE_DYNAMIC" in defines
            out = cupy.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
            with probe_build(persistent, dynamic):
                plan = api.plan(q, k, v, out=out, defines=defines or ("FLASHCORE_SCHEDULE_PROBE",), **opts)
                if dynamic:
                    counter = cupy.zeros(2, np.int32)   # the kernel's last CTA zeroes it again
                    plan.launch.scalars["tile_counter"] = counter.data.ptr
                run = (lambda plan, out: lambda i: plan.run(q, k, v, out=out, **arrays))(plan, out)
                out.fill(np.nan)
                run(0)
            if dynamic:
                out.fill(np.nan)
                run(1)   # a second launch on the counter the first left
                assert int(counter.sum()) == 0, f"the counter was left at {counter.get()}"
            err, row_err = verify(shape, q, k, v, out, rng, rows=64, options=opts)
            ok = within_tolerance(args.dtype, err, row_err)
            print(f"{name:<34} {label:<18} {plan.config}  grid {plan.launch.grid[0]}  err {err:.1e}"
                  f"{'' if ok else '  FAILED'}", flush=True)
            if ok:
                fns[label] = (run, contextlib.nullcontext)
        peer = bench.peer_call(shape, "sdpa_cudnn", q, k, v, arrays, args.dtype)
        if peer is not None:
            fns["sdpa_cudnn"] = peer
        t = time_side_by_side(fns, args.samples, 20, warmup_s=0.0, rounds=args.samples)
        ref = t["sdpa_cudnn"].p50 if "sdpa_cudnn" in t else t["shipped"].p50
        for impl, timing in t.items():
            print(f"{name:<34} {impl:<18} p50 {timing.p50:8.1f} us  p90 {timing.p90:8.1f}  "
                  f"{ref / timing.p50:5.3f}x {'cuDNN' if 'sdpa_cudnn' in t else 'shipped'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
