"""Probe: does a non-causal Hopper launch cost its busiest CTA's work (the static deal's
makespan), as the schedule model says? The persistent grid deals work tiles round the CTAs;
where the tiles leave a partial last round (S4k D128: 1024 tiles on 132 SMs, the last round 100
busy) or a head's last row block is partial (S1k D64: 192-row tiles, a 64-row sixth block a
head), the busiest CTA holds more than the average. The model: a tile costs its consumers with
rows over the tile's consumers (a one-consumer tile a third of a three-consumer one), a CTA the
sum of its tiles; the launch its busiest CTA's. This times one config (the base shape's
dispatch) over query lengths around the base's, and prints time per model unit: flat where the
model holds, and then `ideal` (the average CTA's work) bounds what a balanced deal could win.
Beside it the same config as stream-K ("dense_sk", streamk.py: the last round's key tiles spread
over every SM, parts merged in the kernel), its model's busiest CTA, and shipped / stream-K time.
Usage: PYTHONPATH=$PWD python3 scripts/dev/wave_probe.py [--dtype fp16] [B,H,S,D ...]
"""

import argparse
import dataclasses

import cupy
import numpy as np

from flashcore_cupy import api, configs, streamk
from flashcore_cupy.shapes import Shape
from flashcore_cupy.timing import time_kernel
from flashcore_cupy.workload import random_inputs, verify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bases", nargs="*", default=["4,16,1024,64", "2,16,4096,128"])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = ap.parse_args()
    rng = np.random.default_rng()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    num_sms = props["multiProcessorCount"]
    print(f"# {props['name'].decode()} {args.dtype}, {num_sms} SMs; Sk = the base's S throughout")
    for base in args.bases:
        b, h, s, d = (int(x) for x in base.split(","))
        q, k, v = random_inputs(Shape(base, b, h, h, s, s, d, False), args.dtype, rng)
        config = api.plan(q, k, v).config
        if not isinstance(config, configs.Sm90FwdConfig):
            print(f"{base}: dispatch takes {config}, not the Hopper kernel")
            continue
        sk_config = dataclasses.replace(config, seq="dense_sk")
        print(f"\n{base} on {config}:")
        print(f"  {'Sq':>6} {'us':>9} {'busiest':>8} {'ideal':>7} {'us/unit':>8} {'ideal/busiest':>13}  err"
              f"      {'stream-K us':>11} {'busiest':>8} {'speedup':>8}  err")
        for sq in sorted({s - 2 * config.block_m, s - config.block_m, s - 64, s, s + 64, s + config.block_m}):
            shape = Shape(f"{b},{h},{sq},{d}", b, h, h, sq, s, d, False)
            q = random_inputs(shape, args.dtype, rng)[0]
            out = cupy.empty_like(q)
            (t, err), (t_sk, err_sk) = (timed(shape, q, k, v, out, c, rng) for c in (config, sk_config))
            busiest, ideal = streamk.shipped_busiest(config, b, h, sq, num_sms)
            sk_busiest = streamk.plan(config.consumers, config.block_n, h, b, sq, s, num_sms).busiest()
            print(f"  {sq:6d} {t:9.1f} {busiest:8.2f} {ideal:7.2f} {t / busiest:8.2f} {ideal / busiest:13.3f}  {err:.1e}"
                  f"  {t_sk:11.1f} {sk_busiest:8.2f} {t / t_sk:7.3f}x  {err_sk:.1e}", flush=True)


def timed(shape, q, k, v, out, config, rng) -> tuple[float, float]:
    """(p50 us, whole-output error) of `config` on q, k, v."""
    plan = api.plan(q, k, v, out=out, config=config)
    out.fill(np.nan)
    plan.run(q, k, v, out=out)
    err = verify(shape, q, k, v, out, rng)[0]
    return time_kernel(lambda: plan.run(q, k, v, out=out)).p50, err


if __name__ == "__main__":
    main()
