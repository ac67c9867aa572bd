"""Probe: the backward on dense rows of the shape list, timed side by side (throughput, CUDA
events, medians) against SDPA's backward from the same forward: flashcore (default and
deterministic) and SDPA's cuDNN, flash and memory-efficient backends (autograd's backward of a
saved forward, gradient buffers allocated per call as autograd does); flashcore_sm80 is the
portable kernel where dispatch takes the Hopper one. FLOPs: 2.5x the
forward's visible-pair count. Each flashcore call's gradients are checked against SDPA's first.
A quick look before the benchmark's backward mode exists.

  PYTHONPATH=$PWD python3 scripts/dev/backward_probe.py [--shapes NAME,...] [--dtype fp16]
"""

import argparse
import contextlib
import sys

import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import reference, timing, workload
from flashcore_cupy.shapes import bench_shapes


_PLANS: dict = {}   # a probe build's or config's own plans, by its tag


@contextlib.contextmanager
def _own_plans(tag: str):
    """attention_backward's plans for `tag` apart from the default's: the plans are cached by
    the call's signature alone, so without this a patched build or config, called after the
    default with the same arrays, ran the default's plan (v46: every --ablate, --define and
    --config row of this probe before it timed the default kernel)."""
    from flashcore_cupy import backward
    real = backward._plans
    backward._plans = _PLANS.setdefault(tag, {})
    try:
        yield
    finally:
        backward._plans = real


def _with_define(define: str, call):
    """call() with the Hopper backward compiled with `define` ("A+B": both; the loader's
    diagnostic builds)."""
    from flashcore_cupy import configs, loader
    real = loader.get_function

    def get_function(config, device_id, arch, defines=()):
        extra = tuple(define.split("+")) if isinstance(config, configs.Sm90BwdConfig) else ()
        return real(config, device_id, arch, defines + extra)

    loader.get_function = get_function
    try:
        with _own_plans(define):
            return call()
    finally:
        loader.get_function = real


def _with_choice(tag: str, transform, call):
    """call() with dispatch's Hopper backward config passed through transform(config) (its own
    plans, under `tag`); other configs as dispatch chose them."""
    from flashcore_cupy import backward, configs
    real = backward._choose

    def choose(*a):
        config = real(*a)
        return transform(config) if isinstance(config, configs.Sm90BwdConfig) else config

    backward._choose = choose
    try:
        with _own_plans(tag):
            return call()
    finally:
        backward._choose = real


def _with_kernel_file(name: str, call):
    """call() with dispatch's Hopper backward compiled from kernels/`name` (an earlier version of
    flash_bwd_sm90.cu beside the tree's, same parameters: an A/B in one process)."""
    import dataclasses

    from flashcore_cupy import configs
    kind = type("Sm90BwdFile", (configs.Sm90BwdConfig,), {"kernel_file": name})
    return _with_choice(f"file {name}", lambda c: kind(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)}),
                        call)


def _with_config(fields: dict, call):
    """call() with dispatch's Hopper backward config given `fields` (dataclasses.replace)."""
    import dataclasses
    return _with_choice(repr(sorted(fields.items())), lambda c: dataclasses.replace(c, **fields), call)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="b2-h16-s4k-d128-causal,b1-h16-s16k-d128-causal,b4-h16-s1k-d64")
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--samples", type=int, default=0,
                    help="samples an implementation (default: one a round)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds of turns (default: a whole balanced design, so that each row comes "
                         "first and after each other alike; with 3 rounds of 7 rows, v47 call 1, the "
                         "default kernel's row ran 6-11 %% faster than the same kernel as a --config row)")
    ap.add_argument("--ablate", action="append", default=[],
                    help="also time the Hopper backward built with -DFLASHCORE_ABLATE_<NAME> (wrong "
                         "gradients, time only; repeatable: --ablate NO_DQ --ablate NO_DQ_ADD)")
    ap.add_argument("--skip", default="", help="comma-separated implementations not to time "
                                              "(flashcore_det, flashcore_sm80, sdpa_flash, sdpa_efficient)")
    ap.add_argument("--define", action="append", default=[],
                    help="also time the Hopper backward built with -D<NAME> (a probe build, checked "
                         "like the others; repeatable; A+B: both in one build, e.g. --define FLASHCORE_ABLATE_NO_DQ+FLASHCORE_ABLATE_NO_DQ_ADD)")
    ap.add_argument("--config", action="append", default=[],
                    help="also time the Hopper backward with Sm90BwdConfig fields replaced (checked "
                         "like the others; repeatable: --config stages=1)")
    ap.add_argument("--kernel-file", action="append", default=[],
                    help="also time the Hopper backward compiled from kernels/FILE (an earlier "
                         "flash_bwd_sm90.cu copied there, untracked; checked like the others)")
    args = ap.parse_args()
    import cupy
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    wanted = list(filter(None, args.shapes.split(",")))
    shapes = {s.name: s for s in bench_shapes()}
    for name in wanted:
        shape = shapes[name]
        for dt in args.dtype.split(","):
            rng = np.random.default_rng(1)
            q, k, v = workload.random_inputs(shape, dt, rng)
            causal = shape.causal_arg
            out, lse = fc.attention(q, k, v, causal=causal, return_lse=True)
            dout = workload.random_inputs(shape, dt, rng)[0]
            fns = {
                "flashcore": lambda i: fc.attention_backward(dout, q, k, v, out, lse, causal=causal),
                "flashcore_det": lambda i: fc.attention_backward(dout, q, k, v, out, lse, causal=causal,
                                                                 deterministic=True),
                "flashcore_sm80": lambda i: fc.attention_backward(dout, q, k, v, out, lse, causal=causal,
                                                                  backend="sm80"),
            }
            for name_ in args.ablate:
                fns[f"ablate_{name_.lower()}"] = (lambda d: lambda i: _with_define(d, lambda: fc.attention_backward(
                    dout, q, k, v, out, lse, causal=causal)))(f"FLASHCORE_ABLATE_{name_}")
            for name_ in args.define:
                fns[f"define_{name_.lower()}"] = (lambda d: lambda i: _with_define(d, lambda: fc.attention_backward(
                    dout, q, k, v, out, lse, causal=causal)))(name_)
            for text in args.config:
                fields = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in text.split(",")}
                fns[f"fc_{text}"] = (lambda f: lambda i: _with_config(f, lambda: fc.attention_backward(
                    dout, q, k, v, out, lse, causal=causal)))(fields)
            for name_ in args.kernel_file:
                fns[f"file_{name_}"] = (lambda f: lambda i: _with_kernel_file(f, lambda: fc.attention_backward(
                    dout, q, k, v, out, lse, causal=causal)))(name_)
            skip = set(filter(None, args.skip.split(",")))
            for n in skip & set(fns):
                del fns[n]
            ctx = {n: contextlib.nullcontext for n in fns}
            tq, tk, tv = (torch.from_dlpack(x).detach().requires_grad_() for x in (q, k, v))
            tdo = torch.from_dlpack(dout)
            gqa = shape.heads_q != shape.heads_kv
            for peer, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
                if peer in skip:
                    continue
                try:
                    with sdpa_kernel(backend):
                        o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=bool(causal),
                                                                             enable_gqa=gqa)
                        torch.autograd.grad(o, (tq, tk, tv), tdo, retain_graph=True)
                except RuntimeError as e:
                    print(f"  {peer}: unavailable ({str(e).splitlines()[0][:80]})")
                    continue
                fns[peer] = (lambda o: lambda i: torch.autograd.grad(o, (tq, tk, tv), tdo, retain_graph=True))(o)
                ctx[peer] = (lambda be: lambda: sdpa_kernel(be))(backend)
            if "sdpa_cudnn" in fns:   # a sanity check against a peer (the tests hold us to float64)
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    peer_grads = fns["sdpa_cudnn"](0)
                for mode in ("flashcore", "flashcore_det", "flashcore_sm80", *(f"fc_{c}" for c in args.config),
                             *(f"define_{d.lower()}" for d in args.define), *(f"file_{f}" for f in args.kernel_file)):
                    if mode not in fns:
                        continue
                    ours = fns[mode](0)
                    diffs = [reference.rel_error(a, b.float().cpu().numpy()) for a, b in zip(ours, peer_grads)]
                    print(f"{name} {dt} {mode}: rel diff to cuDNN's dq {diffs[0]:.2e} dk {diffs[1]:.2e} dv {diffs[2]:.2e}")
            for n, fn in fns.items():
                with ctx[n]():
                    fn(0)
            cupy.cuda.Device().synchronize()
            rounds = args.rounds or len(timing.balanced_orders(list(fns)))
            result = timing.time_side_by_side({n: (fns[n], ctx[n]) for n in fns}, args.samples or rounds, calls=3,
                                              warmup_s=0.05, rounds=rounds)
            flops = 2.5 * shape.flops
            ours = result["flashcore"].p50
            print(f"{name} {dt}: backward, {flops / 1e12:.2f} TFLOP")
            for n, t in result.items():
                print(f"  {n:16s} {t.p50:10.1f} us  {flops / t.p50 / 1e6:7.1f} TFLOP/s  flashcore x{t.p50 / ours:.2f}")
            sys.stdout.flush()
            fns.clear()
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
