"""Command line: `flashcore-cupy run | info | check | bench | tune | warmup` (also `python -m flashcore_cupy`)."""

from __future__ import annotations

import os
import sys
import time

import click
import numpy as np

from . import configs, loader
from .shapes import parse_shape
from .workload import TOLERANCE


def gpu_missing_reason() -> str | None:
    """Why no CUDA GPU is usable here (CuPy missing, no driver, no device), or None."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:   # no cupy, no driver, no device: all mean "no GPU here"
        return f"{type(e).__name__}: {str(e).strip()[:160]}"
    return None if n > 0 else "CUDA reports 0 devices"


def gpu_count() -> int:
    if gpu_missing_reason() is not None:
        return 0
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


@click.group()
def main() -> None:
    """flashcore-cupy: fused FlashAttention kernels for CuPy, compiled at run time."""


@main.command()
@click.option("--shape", "shape_text", default="mission", show_default=True,
              help="A benchmark shape name, or B,H,S,D.")
@click.option("--dtype", type=click.Choice(list(TOLERANCE)), default="fp16", show_default=True)
@click.option("--causal", is_flag=True, help="Causal mask (bottom-right aligned).")
@click.option("--iters", type=click.IntRange(1), default=100, show_default=True)
def run(shape_text: str, dtype: str, causal: bool, iters: int) -> None:
    """Run one shape on the GPU: check it against float64, then time it."""
    try:
        shape = parse_shape(shape_text, causal)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shape") from None
    if shape.unsupported():
        raise click.BadParameter(f"{shape.name}: {shape.unsupported()}", param_hint="--shape")
    if shape.kind in ("paged", "varlen"):
        raise click.BadParameter(f"{shape.name}: `run` times the dense call; `bench --shape {shape.name}` runs "
                                 f"{shape.kind} rows", param_hint="--shape")
    if gpu_count() == 0:
        click.echo("no CUDA GPU found: `flashcore-cupy run` needs one; "
                   "`flashcore-cupy check` compiles the kernels without a GPU.")
        sys.exit(2)
    import cupy

    from . import api, bench, naive, workload
    from .timing import time_latency

    rng = np.random.default_rng()
    dev = cupy.cuda.Device()
    info = api.device_info(dev.id)
    name, arch = info.name, info.arch
    options = bench.attention_options(shape, bench.variant_arrays(shape, dtype, rng))
    q, k, v = workload.random_inputs(shape, dtype, rng)
    out = cupy.full(q.shape, np.nan, dtype=q.dtype)   # poisoned: every element must be written
    start = time.perf_counter()
    api.attention(q, k, v, out=out, **options)
    cupy.cuda.get_current_stream().synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    config = api.plan(q, k, v, out=out, **options).config   # the first call's plan, kept
    shown = {key: val for key, val in options.items() if not hasattr(val, "shape")}
    click.echo(f"{shape.name}: B={shape.batch} Hq={shape.heads_q} Hkv={shape.heads_kv} "
               f"Sq={shape.seqlen_q} Sk={shape.seqlen_k} D={shape.head_dim} {dtype} "
               f"{shown}{' +alibi' if shape.alibi else ''}{' +bias' if shape.bias else ''} "
               f"on {name} ({arch}), kernel {config}")
    click.echo(f"first call: {first_ms:.1f} ms "
               f"(kernel compile or CuPy disk-cache load, then the run)")
    err, row_err = workload.verify(shape, q, k, v, out, rng, options=options)
    passed = workload.within_tolerance(dtype, err, row_err)
    click.echo(f"check: rel L2 error {err:.2e}, worst row {row_err:.2e} vs float64 reference "
               f"(limits {TOLERANCE[dtype]:.0e}, {workload.ROW_TOLERANCE[dtype]:.0e}) "
               f"{'PASS' if passed else 'FAIL'}")

    sets = workload.input_sets(shape, dtype, rng, first=(q, k, v))
    outs = [cupy.empty_like(s[0]) for s in sets]

    def call(i: int):
        qs, ks, vs = sets[i % len(sets)]
        return api.attention(qs, ks, vs, out=outs[i % len(sets)], **options)

    # Warm-up calls cover every set once: the Hopper launch encodes a set's tensor maps on its
    # first call (~25 us of host time) and reuses them after, as the benchmark's check does.
    t = time_latency(call, iters, warmup=max(10, len(sets)))
    tflops = shape.flops / (t.p50 * 1e-6) / 1e12
    click.echo(f"latency ({iters} calls, CUDA events around each, {len(sets)} input sets): "
               f"p50 {t.p50:.1f} us  p90 {t.p90:.1f} us  p99 {t.p99:.1f} us  {tflops:.1f} TFLOP/s")

    if shape.is_variant:
        click.echo("naive CuPy: skipped (it runs the plain function only)")
    elif workload.naive_fits(shape):
        tn = time_latency(lambda i: naive.attention(*sets[i % len(sets)], causal=shape.causal),
                          max(5, min(iters, 30)), warmup=3)
        click.echo(f"naive CuPy (matmul, softmax, matmul): p50 {tn.p50:.1f} us -> "
                   f"flashcore is {tn.p50 / t.p50:.1f}x faster")
    else:
        click.echo("naive CuPy: skipped (its score matrix would exceed 4 GB)")
    sys.exit(0 if passed else 1)


@main.command()
def info() -> None:
    """GPU, arch, CuPy / CUDA / NVRTC versions and the kernel cache."""
    click.echo(f"flashcore_cupy kernels: {loader.KERNEL_DIR} (source hash {loader.source_hash()})")
    try:
        import cupy
        click.echo(f"CuPy: {cupy.__version__}")
    except ImportError:
        click.echo("CuPy: not installed (pip install 'flashcore-cupy[cuda12]')")
        return
    try:
        click.echo(f"NVRTC: {loader.nvrtc_version()}")
    except Exception as e:
        click.echo(f"NVRTC: not found ({e})")
    click.echo(f"kernel cache: {os.environ.get('CUPY_CACHE_DIR', os.path.expanduser('~/.cupy/kernel_cache'))}")
    n = gpu_count()
    if n == 0:
        click.echo("GPU: none found (`flashcore-cupy check` compiles without one)")
        return
    rt = cupy.cuda.runtime
    click.echo(f"CUDA runtime: {rt.runtimeGetVersion()}  driver: {rt.driverGetVersion()}")
    for dev in range(n):
        props = rt.getDeviceProperties(dev)
        cc = (props["major"], props["minor"])
        click.echo(f"GPU {dev}: {props['name'].decode()}  compute capability {cc[0]}.{cc[1]}  "
                   f"arch {loader.arch_for_capability(*cc)}  SMs {props['multiProcessorCount']}")


def _parse_archs(ctx, param, value: str) -> list[str]:
    archs = [a.strip() for a in value.split(",") if a.strip()]
    bad = [a for a in archs if a not in configs.SUPPORTED_ARCHS]
    if bad or not archs:
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(configs.SUPPORTED_ARCHS)}; "
                                 f"got {value!r}")
    return archs


@main.command()
@click.option("--arch", "archs", default=",".join(configs.SUPPORTED_ARCHS), show_default=True,
              callback=_parse_archs, help="Comma-separated target archs.")
@click.option("--variants", is_flag=True, help="Also the variant instantiations (window, softcap, ALiBi, bias) "
                                             "and the varlen and KV-cache ones.")
def check(archs: list[str], variants: bool) -> None:
    """Compile every kernel dispatch can choose, with no GPU; fail on errors, spills or
    ptxas performance-loss warnings (serialised wgmma)."""
    from .tuning import dispatchable_configs, sequence_configs, variant_configs

    jobs = [(arch, cfg) for arch in archs for cfg in dispatchable_configs(arch)]
    if variants:
        jobs += [(arch, cfg) for arch in archs for cfg in variant_configs(arch) + sequence_configs(arch)]

    def compile_one(job):
        arch, cfg = job
        try:
            return loader.compile_only(cfg, arch)
        except loader.KernelCompileError as e:
            return e

    results = loader.in_parallel(compile_one, jobs)

    failures = 0
    click.echo(f"{'arch':<7} {'kernel':<20} {'config':<32} {'regs':>4} {'smem B':>7} "
               f"{'spill B':>7} {'secs':>5}  status")
    for (arch, cfg), r in zip(jobs, results):
        if isinstance(r, loader.KernelCompileError):
            failures += 1
            click.echo(f"{arch:<7} {cfg.kernel_file:<20} {str(cfg):<32} compile error:\n{r}")
            continue
        smem = r.static_smem_bytes + cfg.smem_bytes
        problems = [p for p, bad in (("spills", r.spill_bytes > 0),
                                     (f"smem > {configs.SMEM_LIMIT[arch]}", smem > configs.SMEM_LIMIT[arch]),
                                     ("ptxas: performance loss", bool(r.perf_warnings)))
                    if bad]
        failures += bool(problems)
        click.echo(f"{arch:<7} {cfg.kernel_file:<20} {str(cfg):<32} {r.registers:>4} {smem:>7} "
                   f"{r.spill_bytes:>7} {r.seconds:>5.2f}  {'; '.join(problems) or 'ok'}")
    click.echo(f"{len(jobs) - failures} of {len(jobs)} kernel instantiations ok")
    sys.exit(1 if failures else 0)


@main.command()
@click.option("--shape", "shape_names", multiple=True, help="Shape name(s) from the list; default all.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(list(TOLERANCE)),
              help="Default: fp16 and bf16.")
@click.option("--impl", "impls", multiple=True, help="Implementation(s); default all available.")
@click.option("--iters", type=click.IntRange(5), default=50, show_default=True,
              help="Latency samples per implementation (throughput takes 3/5 as many); "
                   "implementations over 10 ms a call take 10.")
@click.option("--held-out", "held_out", type=click.Choice(["include", "exclude", "only"]),
              default="include", show_default=True,
              help="The list's held-out shapes (never tuned on): with the others, without them, or alone.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write the JSON here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw TFLOP/s per shape and implementation to this PNG (needs matplotlib).")
@click.option("--direction", type=click.Choice(["forward", "backward", "fwd_bwd"]), default="forward", show_default=True,
              help="backward: dq, dk, dv from a saved forward (FLOPs 2.5x the forward's), the rows with Sq > 1, "
                   "against SDPA's backward of its own forward; fwd_bwd: the forward and the backward together "
                   "(FLOPs 3.5x).")
def bench(shape_names, dtypes, impls, iters, held_out, out_path, plot_path, direction) -> None:
    """Benchmark the shape list against naive CuPy and PyTorch SDPA, validated first; exits 1
    if any flashcore case fails (an error, or a result over the bounds)."""
    from . import bench as bench_mod
    from .shapes import bench_shapes

    known = {s.name for s in bench_shapes()}
    if set(shape_names) - known:
        raise click.BadParameter(f"unknown shape(s) {sorted(set(shape_names) - known)}; "
                                 f"known: {sorted(known)}", param_hint="--shape")
    keep = {"include": lambda s: True, "exclude": lambda s: not s.held_out, "only": lambda s: s.held_out}[held_out]
    shape_names = [s.name for s in bench_shapes()
                   if (not shape_names or s.name in shape_names) and keep(s)]
    if not shape_names:
        raise click.BadParameter(f"no shape of the list is left with --held-out {held_out}",
                                 param_hint="--shape")
    known_impls = bench_mod.IMPLS if direction == "forward" else bench_mod.BACKWARD_IMPLS
    if set(impls) - set(known_impls):
        raise click.BadParameter(f"expected some of {known_impls} (direction {direction})", param_hint="--impl")
    if gpu_count() == 0:
        click.echo("no CUDA GPU found: `flashcore-cupy bench` needs one.")
        sys.exit(2)
    result = bench_mod.main(list(shape_names), list(dtypes or TOLERANCE), list(impls or known_impls),
                            iters, out_path, plot_path, direction)
    sys.exit(report_failures(result))


def report_failures(result: dict) -> int:
    """Print the benchmark's flashcore failures (or that there were none); the exit status."""
    for f in result["failures"]:
        click.echo(f"FAILED: {f['shape']} {f['dtype']} {f['impl']}: {f['reason']}")
    for u in result["unavailable"]:
        click.echo(f"unavailable: {u['shape']} {u['dtype']} {u['impl']}: {u['reason']}")
    if result["failures"]:
        click.echo(f"correctness: {len(result['failures'])} flashcore failure(s)")
        return 1
    click.echo("correctness: every flashcore case passed its checks on every input set")
    return 0


def _need_gpu(command: str) -> None:
    if gpu_count() == 0:
        click.echo(f"no CUDA GPU found: `flashcore-cupy {command}` needs one.")
        sys.exit(2)


def _shapes_option(f):
    return click.option("--shape", "shape_names", multiple=True,
                        help="Shape name(s) from the benchmark list, or B,H,S,D; default: the list.")(f)


def _pick_shapes(shape_names, default) -> list:
    try:
        return [parse_shape(n) for n in shape_names] if shape_names else default()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shape") from None


@main.command()
@_shapes_option
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(list(TOLERANCE)),
              help="Default: fp16 and bf16.")
@click.option("--budget", type=click.FloatRange(1), default=300, show_default=True,
              help="Seconds of search in all.")
def tune(shape_names, dtypes, budget) -> None:
    """Search tile configs on this GPU; write the winners to the tune cache dispatch reads.
    By default on the benchmark list less its held-out shapes."""
    from .shapes import tuning_shapes

    shapes = _pick_shapes(shape_names, tuning_shapes)
    _need_gpu("tune")
    import cupy

    from . import api, tuner, tuning

    dev_id = cupy.cuda.Device().id
    dev = api.device_info(dev_id)
    groups = tuner.groups_for(shapes, list(dtypes or TOLERANCE), dev)
    rng = np.random.default_rng()
    entries, start = {}, time.monotonic()
    click.echo(f"tuning {len(groups)} problem classes on {dev.name} ({dev.arch}) for {budget:.0f} s")
    with click.progressbar(length=int(budget), label="tune", show_eta=False,
                           item_show_func=lambda s: s) as bar:
        done = 0

        def tick(key, best, score, tried):
            nonlocal done
            now = int(time.monotonic() - start)
            bar.update(max(0, min(now, int(budget)) - done), f"{key}: {tried} tried, best {best} "
                       f"({score:.3f}x default), {max(0, budget - now):.0f} s left")
            done = max(done, min(now, int(budget)))

        # Budget in proportion to each group's shapes: every candidate runs all of them.
        shapes_left = sum(len(g.shapes) for g in groups)
        for group in groups:
            share = (budget - (time.monotonic() - start)) * len(group.shapes) / shapes_left
            shapes_left -= len(group.shapes)
            entries[group.key] = tuner.tune_group(group, dev.arch, share, rng, tick)
    path = tuning.cache_path()
    tuning.save_entries(path, tuning.device_key(dev.name, dev.capability, cupy.__version__,
                                                loader.nvrtc_version()), entries)
    api.tuned_table.cache_clear()
    for key, e in sorted(entries.items()):
        click.echo(f"{str(key):<22} {e['tile']} score {e['score']:.3f} (noise {e['noise']:.3f}, "
                   f"{e['tried']} tried, best seen {e['best_seen']})")
    click.echo(f"wrote {path}")


@main.command()
@_shapes_option
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(list(TOLERANCE)),
              help="Default: fp16 and bf16.")
def warmup(shape_names, dtypes) -> None:
    """Compile (or load from CuPy's disk cache) the kernels dispatch will choose for these shapes."""
    from .shapes import bench_shapes

    shapes = _pick_shapes(shape_names, bench_shapes)
    _need_gpu("warmup")
    import cupy

    from . import api

    dev_id = cupy.cuda.Device().id
    dev = api.device_info(dev_id)
    wanted = {configs.choose_kernel(dev.arch, dt, s.head_dim, s.batch * s.heads_q, s.seqlen_q,
                                    dev.num_sms, api.tuned_table(dev_id))
              for s in shapes for dt in (dtypes or TOLERANCE)}
    start = time.perf_counter()
    with click.progressbar(sorted(wanted, key=str), label="warmup", item_show_func=lambda c: c and str(c)) as bar:
        for config in bar:
            loader.get_function(config, dev_id, dev.arch)
    click.echo(f"{len(wanted)} kernel(s) ready in {time.perf_counter() - start:.1f} s")
