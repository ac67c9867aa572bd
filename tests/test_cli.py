"""The CLI through click's runner (CPU; `run` on a GPU is covered by the GPU suite)."""

import pytest
from click.testing import CliRunner

from flashcore_cupy import api, cli, configs, tuning
from flashcore_cupy.shapes import bench_shapes, parse_shape, tuning_shapes


def test_run_without_gpu_says_so_and_exits_2(monkeypatch):
    monkeypatch.setattr(cli, "gpu_count", lambda: 0)
    result = CliRunner().invoke(cli.main, ["run", "--shape", "mission"])
    assert result.exit_code == 2
    assert "no CUDA GPU found" in result.output and "check" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_run_rejects_unknown_shapes():
    result = CliRunner().invoke(cli.main, ["run", "--shape", "huge"])
    assert result.exit_code == 2 and "B,H,S,D" in result.output


def test_run_sends_paged_and_varlen_rows_to_bench():
    for name in ("paged16-decode-b8-h32kv8-s8k-d128", "varlen-16seq-32k-h16-d128-causal"):
        result = CliRunner().invoke(cli.main, ["run", "--shape", name])
        assert result.exit_code == 2 and "`bench --shape" in result.output, result.output


def test_check_compiles_and_prints_a_table():
    result = CliRunner().invoke(cli.main, ["check", "--arch", "sm_86"])
    assert result.exit_code == 0, result.output
    assert "fp16 D128" in result.output and "regs" in result.output
    n = len(tuning.dispatchable_configs("sm_86"))
    assert f"{n} of {n} kernel instantiations ok" in result.output


def test_check_variants_adds_the_variant_and_sequence_instantiations(monkeypatch):
    from flashcore_cupy import configs, tuning

    one = configs.variant_config(configs.Sm80FwdConfig("fp16", 64, 4, 1, 64, 3),
                                 configs.KernelVariant(window=True, alibi=True, bias="fp32"))
    monkeypatch.setattr(tuning, "dispatchable_configs", lambda arch: [])
    paged = configs.seq_config(configs.Sm80FwdConfig("fp16", 64, 4, 1, 64, 3), "paged")
    monkeypatch.setattr(tuning, "variant_configs", lambda arch: [one])
    monkeypatch.setattr(tuning, "sequence_configs", lambda arch: [paged])
    assert "0 of 0" in CliRunner().invoke(cli.main, ["check", "--arch", "sm_80"]).output
    result = CliRunner().invoke(cli.main, ["check", "--arch", "sm_80", "--variants"])
    assert result.exit_code == 0, result.output
    assert "alibi+bias-fp32" in result.output and "2 of 2 kernel instantiations ok" in result.output
    assert "paged" in result.output


def test_check_rejects_unknown_arch():
    result = CliRunner().invoke(cli.main, ["check", "--arch", "sm_75"])
    assert result.exit_code == 2 and "sm_80" in result.output


def test_info_runs_without_gpu():
    result = CliRunner().invoke(cli.main, ["info"])
    assert result.exit_code == 0, result.output
    assert "kernels:" in result.output and "CuPy" in result.output


def test_shape_parsing():
    names = [s.name for s in bench_shapes()]
    assert "mission" in names and len(names) >= 9
    held = [s for s in bench_shapes() if s.held_out]
    assert len(held) >= 4 and not set(held) & set(tuning_shapes())
    m = parse_shape("mission")
    assert (m.batch, m.heads_q, m.seqlen_q, m.head_dim, m.causal) == (1, 8, 512, 64, False)
    s = parse_shape("2,4,100,128", causal=True)
    assert (s.batch, s.heads_q, s.heads_kv, s.seqlen_k, s.causal) == (2, 4, 4, 100, True)
    assert s.flops == 2 * (2 * 4) * (100 * 101 // 2) * (128 + 128)   # visible pairs: the diagonal's too
    with pytest.raises(ValueError):
        parse_shape("2,4,100")


def test_python_dash_m_is_the_same_cli():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "flashcore_cupy", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "check" in r.stdout and "run" in r.stdout


@pytest.mark.gpu
def test_run_on_gpu_passes_and_times():
    result = CliRunner().invoke(cli.main, ["run", "--shape", "2,3,300,64", "--causal", "--iters", "10"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "p50" in result.output and "TFLOP/s" in result.output


@pytest.mark.gpu
def test_bench_writes_json(tmp_path):
    import json
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli.main, ["bench", "--shape", "mission", "--dtype", "bf16",
                                           "--impl", "flashcore", "--impl", "naive_cupy",
                                           "--iters", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema"] == 2 and data["gpu"] and data["arch"] and data["failures"] == []
    assert {(r["impl"], r["mode"], r["dtype"]) for r in data["rows"]} == {
        (i, m, "bf16") for i in ("flashcore", "naive_cupy") for m in ("latency", "throughput")}
    assert all(r["rel_err"] <= 1e-2 and r["row_err"] <= 5e-2 for r in data["rows"])
    (case,) = data["cases"]
    assert case["sets"] > 8 and sorted(case["latency"][0]["orders"][0]) == ["flashcore", "naive_cupy"]


@pytest.mark.gpu
def test_tune_and_warmup_on_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHCORE_CUPY_TUNE_CACHE", str(tmp_path / "tune.json"))
    result = CliRunner().invoke(cli.main, ["tune", "--shape", "2,4,300,64", "--dtype", "fp16",
                                           "--budget", "5"])
    assert result.exit_code == 0, result.output
    dev = api.device_info(0)
    key, _ = configs.dispatch_class(dev.arch, "fp16", 64, 2 * 4, 300, dev.num_sms)
    assert str(key) in result.output and (tmp_path / "tune.json").is_file()
    result = CliRunner().invoke(cli.main, ["warmup", "--shape", "mission", "--shape", "2,4,300,128"])
    assert result.exit_code == 0, result.output
    assert "kernel(s) ready" in result.output


def test_tune_and_warmup_without_gpu(monkeypatch):
    monkeypatch.setattr(cli, "gpu_count", lambda: 0)
    for cmd in (["tune"], ["warmup"]):
        result = CliRunner().invoke(cli.main, cmd)
        assert result.exit_code == 2 and "no CUDA GPU found" in result.output
