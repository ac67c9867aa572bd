"""Probe: the variant rows of the shape list (bench_shapes.json, version 2), timed side by side
(throughput, CUDA events, medians): flashcore with the variant, flashcore_plain (the same
shape with the variant's options off, causal kept) on the auto and portable backends, and
SDPA through the benchmark's mask (cuDNN, memory-efficient). TFLOP/s count visible pairs
(Shape.flops). A quick look without the benchmark's checks and input rotation: `flashcore-cupy
bench --shape NAME` measures these rows properly.

  PYTHONPATH=$PWD python3 scripts/dev/variant_probe.py [--shapes NAME,...] [--dtype fp16] [--tile 128,3 --tile 64,2,3]
"""

import argparse
import contextlib
import dataclasses
import sys

import numpy as np

from flashcore_cupy import api, bench, configs, timing, workload
from flashcore_cupy.shapes import bench_shapes


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--tile", action="append", default=[],
                    help="also time the Hopper kernel dispatch chose with BLOCK_N[,STAGES[,CONSUMERS]] "
                         "instead (repeatable: --tile 128 --tile 128,3 --tile 64,2,3)")
    args = ap.parse_args()
    import cupy

    torch = bench._torch()
    if torch is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    wanted = set(filter(None, args.shapes.split(",")))
    for shape in bench_shapes():
        if not shape.is_variant or shape.unsupported() or (wanted and shape.name not in wanted):
            continue
        for dt in args.dtype.split(","):
            rng = np.random.default_rng(1)
            q, k, v = workload.random_inputs(shape, dt, rng)
            arrays = bench.variant_arrays(shape, dt, rng)
            opts = bench.attention_options(shape, arrays)
            plain = bench.attention_options(shape.plain(), {})
            fns = {
                "flashcore": lambda i: api.attention(q, k, v, **opts),
                "flashcore_sm80": lambda i: api.attention(q, k, v, backend="sm80", **opts),
                "flashcore_plain": lambda i: api.attention(q, k, v, **plain),
                "flashcore_plain_sm80": lambda i: api.attention(q, k, v, backend="sm80", **plain),
            }
            chosen = api.plan(q, k, v, **opts).config
            for text in args.tile:
                given_tile = [int(x) for x in text.split(",")]
                block_n, stages, consumers = given_tile + [chosen.stages, chosen.consumers][len(given_tile) - 1:]
                if isinstance(chosen, configs.Sm90FwdConfig) and \
                        (block_n, stages, consumers) != (chosen.block_n, chosen.stages, chosen.consumers):
                    cfg = dataclasses.replace(chosen, block_n=block_n, stages=stages, consumers=consumers)
                    tile = api.plan(q, k, v, config=cfg, **opts)
                    run = (lambda t: lambda i: t.run(q, k, v, **arrays))(tile)
                    fns[f"flashcore_n{block_n}s{stages}c{consumers}"] = run
            ctx = {name: contextlib.nullcontext for name in fns}
            given = None if torch is None else bench.sdpa_mask(
                shape, arrays, torch, torch.float16 if dt == "fp16" else torch.bfloat16)
            if given is not None:
                mask, is_causal = given
                tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
                for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                                      ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
                    call = lambda i: torch.nn.functional.scaled_dot_product_attention(   # noqa: E731
                        tq, tk, tv, attn_mask=mask, is_causal=is_causal,
                        enable_gqa=shape.heads_q != shape.heads_kv)
                    try:
                        with sdpa_kernel(backend):
                            call(0)
                        torch.cuda.synchronize()
                    except RuntimeError as e:
                        print(f"  {name}: unavailable ({str(e).splitlines()[0][:80]})")
                        continue
                    fns[name] = call
                    ctx[name] = (lambda be: lambda: sdpa_kernel(be))(backend)
            for fn in fns.values():
                fn(0)
            sm80_out = fns["flashcore_sm80"](0)
            for name in [n for n in fns if n == "flashcore" or n.startswith("flashcore_n")]:
                diff = float(cupy.linalg.norm((fns[name](0) - sm80_out).astype(cupy.float32)) /
                             cupy.linalg.norm(sm80_out.astype(cupy.float32)))
                print(f"{shape.name} {dt} {name}: rel diff to the portable kernel {diff:.2e}")
            print(f"{shape.name} {dt}: dispatch chose {chosen}")
            cupy.cuda.Device().synchronize()
            result = timing.time_side_by_side({n: (fns[n], ctx[n]) for n in fns}, args.samples, calls=5,
                                              warmup_s=0.05, rounds=5)
            ours = result["flashcore"].p50
            full = shape.batch * shape.heads_q * shape.seqlen_q * shape.seqlen_k
            print(f"{shape.name} {dt}: visible pairs {shape.visible_pairs / full:.3f} of all")
            for name, t in result.items():
                flops = shape.plain().flops if name.startswith("flashcore_plain") else shape.flops
                print(f"  {name:22s} {t.p50:10.1f} us  {flops / t.p50 / 1e6:7.1f} TFLOP/s  flashcore x{t.p50 / ours:.2f}")
            sys.stdout.flush()
            fns.clear()
            cupy.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
