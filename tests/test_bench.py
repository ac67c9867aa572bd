"""The benchmark's gates on the CPU: NumPy implementations stand in for the GPU ones and a fake
clock for CUDA events, so that what is checked is the benchmark's own logic: a flashcore failure
fails the run (exit 1), a peer's is recorded with its reason, every input set is checked, and
each implementation gets its sample counts."""

import contextlib

import numpy as np
import pytest
from click.testing import CliRunner

from flashcore_cupy import bench, cli, reference, timing, workload
from flashcore_cupy.shapes import Shape

SHAPE = Shape("tiny", 1, 2, 1, 40, 50, 16, True)


def _exact(q, k, v):
    return reference.attention(q, k, v, causal=True).astype(np.float16)


def _impl(fn):
    return bench.Impl(fn, lambda q, k, v: (q, k, v), contextlib.nullcontext)


def _sets(rng, n=3):
    def draw(h, s):
        return rng.standard_normal((1, h, s, 16)).astype(np.float16)
    return [(draw(2, 40), draw(1, 50), draw(1, 50)) for _ in range(n)]


@pytest.fixture
def fake_clock(monkeypatch):
    """time_latency and time_side_by_side without a GPU: every sample takes 10 us; the calls
    made are recorded (name -> call indices)."""
    calls = {}

    def side_by_side(fns, samples, calls_per, warmup_s, rounds):
        for name, indices in (turn for r in timing.turns(list(fns), samples, rounds) for turn in r):
            for i in indices:
                for c in range(calls_per[name]):
                    fns[name][0](i * calls_per[name] + c)
                    calls.setdefault(name, []).append(i)
        return {name: timing.Timing(np.full(samples[name], 10.0)) for name in fns}

    monkeypatch.setattr(bench, "time_side_by_side", side_by_side)
    monkeypatch.setattr(bench, "time_latency", lambda fn, iters, warmup=0: timing.Timing(np.full(iters, 10.0)))
    monkeypatch.setattr(bench, "_capture_cupy", _fake_capture)
    monkeypatch.setattr(bench, "_capture_torch", _fake_capture)
    return calls


def _fake_capture(fn, inputs):
    """A CUDA graph's stand-in: each set's output array, rewritten in place by a replay."""
    outs = [np.array(fn(*x)) for x in inputs]

    def replay(i):
        outs[i % len(outs)][...] = fn(*inputs[i % len(inputs)])
    return replay, outs


def _case(rng, impls, n_sets=3, iters=50):
    sets = _sets(rng, n_sets)
    refs = [workload.sampled_reference(SHAPE, *s, rng, SHAPE.seqlen_q) for s in sets]   # every row
    return bench.run_case(SHAPE, "fp16", impls, sets, refs, iters)


def test_every_set_is_checked_and_each_impl_gets_its_samples(fake_clock):
    rng = np.random.default_rng(1)
    seen = []

    def exact(q, k, v):
        seen.append(id(q))
        return _exact(q, k, v)

    case = _case(rng, {"flashcore": _impl(exact), "sdpa_cudnn": _impl(_exact)})
    assert not case.failures and not case.unavailable
    assert len(set(seen[:3])) == 3   # checked on each of the three sets before any timing
    by = {(r.impl, r.mode): r for r in case.rows}
    assert by["flashcore", "latency"].samples == 50 and by["flashcore", "throughput"].samples == 30
    assert by["flashcore", "throughput"].calls == 20 and by["sdpa_cudnn", "latency"].rel_err < 1e-3
    (group,) = case.plan["latency"]
    assert group["orders"][:2] == [["flashcore", "sdpa_cudnn"], ["sdpa_cudnn", "flashcore"]]
    assert group["predecessors"] == {"flashcore>sdpa_cudnn": 1, "load>flashcore": 1, "load>sdpa_cudnn": 1,
                                     "sdpa_cudnn>flashcore": 1}   # 10 us calls: one cycle of blocks
    assert case.plan["sets"] == 3


def test_short_dense_rows_are_also_timed_replayed_from_cuda_graphs(fake_clock, monkeypatch):
    """graph mode on the mission-like rows only, for ours (with out=) and the SDPA peers; each
    set's replayed output is poisoned, then checked: a replay that leaves a row unwritten is a
    failure of ours (a peer's: unavailable in graph mode)."""
    rng = np.random.default_rng(4)
    assert bench.graph_row(SHAPE) and not bench.graph_row(Shape("long", 1, 2, 1, 2048, 2048, 16, True))
    replays = []

    def exact(q, k, v, out=None):
        replays.append(out)
        return _exact(q, k, v)

    case = _case(rng, {"flashcore": _impl(exact), "sdpa_cudnn": _impl(_exact), "naive_cupy": _impl(_exact)})
    assert not case.failures and not case.unavailable
    graph = {r.impl for r in case.rows if r.mode == "graph"}
    assert graph == {"flashcore", "sdpa_cudnn"} and len(case.plan["graph"]) == 1

    state = {"captured": False}

    def stale_row(q, k, v, out=None):   # right when checked and captured, one row stale on replay
        got = _exact(q, k, v)
        if state["captured"]:
            got[0, 1, 3] = np.nan
        return got

    def capture(fn, inputs):
        replay, outs = _fake_capture(fn, inputs)
        state["captured"] = True
        return replay, outs

    monkeypatch.setattr(bench, "_capture_cupy", capture)
    case = _case(rng, {"flashcore": _impl(stale_row), "sdpa_cudnn": _impl(_exact)})
    assert [f["impl"] for f in case.failures] == ["flashcore"] and "graph mode" in case.failures[0]["reason"]
    assert {r.impl for r in case.rows if r.mode == "graph"} == {"sdpa_cudnn"}
    assert {r.impl for r in case.rows if r.mode == "throughput"} == {"flashcore", "sdpa_cudnn"}


def test_a_wrong_result_on_any_set_is_a_failure_not_a_row(fake_clock):
    rng = np.random.default_rng(2)
    count = []

    def wrong_on_the_last_set(q, k, v):
        count.append(1)
        out = _exact(q, k, v)
        if len(count) == 3:
            out[0, 1, 7] = 0.0   # one row of one set
        return out

    case = _case(rng, {"flashcore": _impl(wrong_on_the_last_set), "sdpa_cudnn": _impl(_exact)})
    assert [f["impl"] for f in case.failures] == ["flashcore"] and "worst row" in case.failures[0]["reason"]
    assert {r.impl for r in case.rows} == {"sdpa_cudnn"}


def test_a_raising_flashcore_is_a_failure_and_a_raising_peer_is_unavailable(fake_clock):
    def compile_error(q, k, v):
        raise RuntimeError("NVRTC failed to compile flash_fwd_sm90.cu")

    def refuses(q, k, v):
        raise RuntimeError("No available kernel. Aborting execution.")

    case = _case(np.random.default_rng(3), {"flashcore": _impl(compile_error), "sdpa_flash": _impl(refuses),
                                            "sdpa_cudnn": _impl(_exact)})
    assert case.failures == [dict(shape="tiny", dtype="fp16", impl="flashcore",
                                  reason="RuntimeError: NVRTC failed to compile flash_fwd_sm90.cu")]
    assert [u["impl"] for u in case.unavailable] == ["sdpa_flash"] and "No available kernel" in \
        case.unavailable[0]["reason"]


def test_the_benchmark_exits_non_zero_on_a_failing_flashcore(fake_clock, monkeypatch):
    """`flashcore-cupy bench` end to end on fakes: the failing case is reported and the run
    exits 1, the JSON recording it; with a correct implementation it exits 0."""
    rng = np.random.default_rng(4)
    monkeypatch.setattr(cli, "gpu_count", lambda: 1)
    monkeypatch.setattr(bench, "environment", lambda torch: {"gpu": "fake", "arch": "sm_00",
                                                             "versions": {"cupy": "-", "nvrtc": "-", "torch": None}})
    monkeypatch.setattr(bench, "_case_inputs", lambda shape, dtype, r, arrays: (
        (sets := _sets(rng)), [workload.sampled_reference(SHAPE, *s, rng, 16) for s in sets], None))
    monkeypatch.setattr(bench, "_free", lambda: None)
    monkeypatch.setattr(bench, "bench_shapes", lambda: [SHAPE])
    monkeypatch.setattr("flashcore_cupy.shapes.bench_shapes", lambda: [SHAPE])

    def broken(q, k, v):
        return _exact(q, k, v) * 1.01

    for fn, code in ((broken, 1), (_exact, 0)):
        monkeypatch.setattr(bench, "_impls", lambda shape, torch, arrays, dtype, fn=fn: {"flashcore": _impl(fn),
                                                                          "sdpa_cudnn": _impl(_exact)})
        result = CliRunner().invoke(cli.main, ["bench", "--dtype", "fp16"])
        assert result.exit_code == code, result.output
        assert ("FAILED: tiny fp16 flashcore" in result.output) == (code == 1)


def test_check_rows_cover_every_set_within_a_budget():
    assert bench.check_rows_per_set(1) == workload.CHECK_ROWS
    assert bench.check_rows_per_set(171) == 32   # the mission shape's sets
    assert workload.set_count(Shape("mission", 1, 8, 8, 512, 512, 64, False), "fp16") == 171


def test_a_variant_row_runs_its_options_beside_its_plain_twin():
    """On a variant row flashcore and flashcore_sm80 get the row's options, flashcore_plain
    the plain twin's (checked against the twin's reference, counted with its FLOPs), and
    naive CuPy (plain only) sits out; SDPA's mask gives it the row's function (tests with
    torch on the device)."""
    from flashcore_cupy.shapes import bench_shapes

    rows = {s.name: s for s in bench_shapes()}
    w = rows["window1k-b2-h16-s8k-d128"]
    assert bench.attention_options(w, {}) == dict(causal=True, window=(1023, 0))
    assert bench.attention_options(rows["softcap50-b2-h16kv8-s4k-d256-causal"], {})["softcap"] == 50.0
    assert bench.attention_options(rows["topleft-b4-h16-sq1k-sk4k-d128-causal"], {}) == dict(causal="top_left")
    impls = bench._impls(w, None, {}, "fp16")
    assert set(impls) == {"flashcore", "flashcore_sm80", "flashcore_plain"}
    assert impls["flashcore_plain"].plain and not impls["flashcore"].plain
    assert "flashcore_plain" not in bench._impls(rows["b2-h16-s4k-d128"], None, {}, "fp16")


def test_the_backward_direction_checks_each_gradient_and_counts_its_flops(fake_clock):
    """The backward's checker on NumPy stand-ins: exact gradients pass and are timed with 2.5x
    the forward's FLOPs; a dk off by 1 % on any set is a failure, not a row."""
    rng = np.random.default_rng(5)
    sets, refs = [], []
    for q, k, v in _sets(rng):
        dout = rng.standard_normal(q.shape).astype(np.float16)
        out, lse = reference.attention(q, k, v, causal=True, return_lse=True)
        rows, keys = np.array([0, 7, 39]), np.array([1, 49])
        refs.append((rows, keys, reference.attention_backward_sampled(dout, q, k, v, out, lse, rows, keys,
                                                                      causal=True)))
        sets.append((q, k, v, dout, out, lse))

    def grads(q, k, v, dout, out, lse, dk_factor=1.0):
        dq, dk, dv = reference.attention_backward(dout, q, k, v, out, lse, causal=True)
        return dq.astype(np.float16), (dk * dk_factor).astype(np.float16), dv.astype(np.float16)

    def impl(fn):
        return bench.Impl(fn, lambda *x: x, contextlib.nullcontext)

    case = bench.run_case(SHAPE, "fp16", {"flashcore": impl(grads),
                                          "flashcore_deterministic": impl(lambda *x: grads(*x, dk_factor=1.01))},
                          sets, refs, 10, checker=bench.BACKWARD)
    assert [f["impl"] for f in case.failures] == ["flashcore_deterministic"]
    assert case.plan["peak_bytes"] == {"flashcore": 0}   # a NumPy stand-in allocates nothing on a device
    timed = {r.impl for r in case.rows}
    assert timed == {"flashcore"}
    row = next(r for r in case.rows if r.mode == "throughput")
    assert row.tflops == pytest.approx(2.5 * SHAPE.flops / (10e-6) / 1e12)
    assert row.rel_err < 1e-3


def test_fwd_bwd_direction_runs_the_forward_then_the_backward():
    """fwd_bwd: flashcore's implementations take q, k, v, dout from a backward input set (the
    set's out and LSE unused), their FLOPs count 3.5x the forward's, and the CLI offers it."""
    build, inputs, checker = bench.direction_parts("fwd_bwd")
    assert inputs is bench.direction_parts("backward")[1] and checker.flops == 3.5
    assert checker.errors is bench.BACKWARD.errors
    fns = build(SHAPE, None)
    assert set(fns) == {"flashcore", "flashcore_deterministic", "flashcore_sm80"}
    assert fns["flashcore"].prepare(1, 2, 3, 4, 5, 6) == (1, 2, 3, 4)
    from flashcore_cupy.cli import bench as bench_cmd
    direction = next(p for p in bench_cmd.params if p.name == "direction")
    assert list(direction.type.choices) == list(bench.DIRECTIONS)


def test_peak_bytes_follow_the_pool_as_cupy_reports_it():
    """_peak_bytes's hook takes CuPy's keyword callbacks: the most held at once, frees counted."""
    from cupy.cuda import memory_hook

    def fn():
        for h in memory_hook.get_memory_hooks().values():
            h.malloc_postprocess(device_id=0, size=100, mem_size=512, mem_ptr=1, pmem_id=1)
            h.malloc_postprocess(device_id=0, size=900, mem_size=1024, mem_ptr=2, pmem_id=2)
            h.free_postprocess(device_id=0, mem_size=512, mem_ptr=1, pmem_id=1)
            h.malloc_postprocess(device_id=0, size=10, mem_size=512, mem_ptr=3, pmem_id=3)

    assert bench._peak_bytes("flashcore", fn, ()) == 1536
    assert not memory_hook.get_memory_hooks()   # the hook is gone after the call


def test_decode_and_paged_rows_time_the_kvcache_op_and_report_bandwidth():
    """Decode rows add flashcore_kvcache (the contiguous cache), paged rows flashcore_paged and
    flashcore_contiguous, beside the dense call and SDPA; their bytes are Q, K, V read and O
    written once; varlen rows are still skipped with their reason."""
    from flashcore_cupy.shapes import bench_shapes

    rows = {s.name: s for s in bench_shapes()}
    decode, paged = rows["decode-b8-h32kv8-s8k-d128"], rows["paged16-decode-b8-h32kv8-s8k-d128"]
    assert set(bench._impls(decode, None, {}, "fp16")) == {"flashcore", "flashcore_sm80", "flashcore_kvcache", "naive_cupy"}
    assert {"flashcore_paged", "flashcore_contiguous"} <= set(bench._impls(paged, None, {}, "fp16"))
    assert set(bench.KVCACHE_IMPLS) <= set(bench.OURS) and set(bench.KVCACHE_IMPLS) <= set(bench.IMPLS)
    assert decode.bytes_moved == 2 * (2 * 8 * 32 * 128 + 2 * 8 * 8 * 8192 * 128)
    assert paged.unsupported() is None and decode.unsupported() is None
    assert "flashcore_kvcache" not in bench._impls(rows["b2-h16-s4k-d128"], None, {}, "fp16")


def test_the_report_reads_decode_rows_against_sdpa_and_the_copy():
    import importlib.util
    from pathlib import Path

    from flashcore_cupy.shapes import bench_shapes

    spec = importlib.util.spec_from_file_location("report", Path(__file__).parent.parent / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows = {s.name: s for s in bench_shapes()}

    def row(shape, impl, gbps):
        return dict(shape=shape, dtype="fp16", impl=impl, mode="throughput", us_p50=10.0, us_p90=11.0, us_p99=12.0,
                    tflops=1.0, gbps=gbps)
    data = dict(rows=[row("paged16-decode-b8-h32kv8-s8k-d128", "flashcore_paged", 3000.0),
                      row("paged16-decode-b8-h32kv8-s8k-d128", "flashcore_contiguous", 3750.0),
                      row("paged16-decode-b8-h32kv8-s8k-d128", "sdpa_cudnn", 3600.0),
                      row("paged16-decode-b8-h32kv8-s8k-d128", "sdpa_flash", 4000.0)],
                cases=[dict(shape="paged16-decode-b8-h32kv8-s8k-d128", dtype="fp16", copy_gbps=4000.0)])
    line = report.kvcache_table(data, "throughput", [rows["paged16-decode-b8-h32kv8-s8k-d128"]])[2]
    assert line.endswith("| 0.75× | 0.75× | 0.80× |")   # against flash's 4000, the copy, contiguous


def test_varlen_rows_run_packed_against_nested_sdpa_and_count_each_sequence():
    """A varlen row's FLOPs sum its sequences' visible pairs; its implementations are
    attention_varlen (ours: a failure fails the run) and SDPA on nested tensors (with torch);
    its check compares sampled packed rows."""
    from flashcore_cupy.shapes import bench_shapes

    row = {s.name: s for s in bench_shapes()}["varlen-16seq-32k-h16-d128-causal"]
    assert row.unsupported() is None and row.kind == "varlen"
    pairs = sum(n * (n + 1) // 2 for n in row.seqlens)
    assert row.flops == 2.0 * 16 * pairs * 256
    assert set(bench.varlen_impls(row, None)) == {"flashcore_varlen"} and "flashcore_varlen" in bench.OURS
    picked, want = np.array([0, 3]), np.ones((2, 2, 4))
    out = np.ones((5, 2, 4))
    assert bench._varlen_errors(out, (picked, want)) == (0.0, 0.0)
    out[3, 1, 2] = 2.0
    assert bench._varlen_errors(out, (picked, want))[1] > 0.3
