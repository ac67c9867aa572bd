"""The test gates themselves (CPU): a GPU run that finds no GPU fails, a failure prints the seed
that replays it, and the error bounds catch what they are for."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashcore_cupy import reference, workload

ROOT = Path(__file__).resolve().parent.parent
_SELFTEST = "FLASHCORE_SELFTEST_FAIL"


def _pytest(args: list[str], **env) -> subprocess.CompletedProcess:
    """pytest in a fresh interpreter, with this environment less the gates' switches (the
    device suite exports FLASHCORE_REQUIRE_GPU=1), plus `env`."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("FLASHCORE_REQUIRE_GPU", "FLASHCORE_TEST_SEED", _SELFTEST)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, env={**base, **env})


def test_a_gpu_run_with_the_gpu_hidden_fails():
    """scripts/gpu_suite.sh sets FLASHCORE_REQUIRE_GPU=1: with no usable GPU (hidden here by
    CUDA_VISIBLE_DEVICES, on this machine or the device's) the run exits non-zero, saying
    why, instead of skipping every GPU test and exiting 0."""
    r = _pytest(["tests/test_reference.py", "-q"], FLASHCORE_REQUIRE_GPU="1", CUDA_VISIBLE_DEVICES="")
    assert r.returncode != 0, r.stdout[-2000:]
    assert "no CUDA GPU is usable" in r.stdout + r.stderr
    # without the switch the same hidden-GPU run passes, GPU tests skipping with their reason
    r = _pytest(["tests/test_reference.py", "-q"], CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stdout[-2000:]


def _collected(args: list[str]) -> list[str]:
    r = _pytest(["--collect-only", "-q", *args], CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_the_suites_parts_run_every_test_once():
    """gpu_suite.sh's SHARDS: `--shard I/N` over the tests `-m gpu` selects gives N parts that
    together hold each of those tests exactly once, in blocks of consecutive tests, their sizes
    within a block of each other; a malformed part is a usage error."""
    files = ["tests/test_merge_gpu.py", "tests/test_varlen_gpu.py", "tests/test_reference.py"]
    whole = _collected([*files, "-m", "gpu"])
    assert len(whole) > 8 * 3 and not any("test_reference.py" in t for t in whole)
    parts = [_collected([*files, "-m", "gpu", "--shard", f"{i}/3"]) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    assert max(map(len, parts)) - min(map(len, parts)) <= 8
    assert parts[0][:8] == whole[:8] and parts[1][:8] == whole[8:16]
    for bad in ("0/3", "4/3", "1/x", "2"):
        r = _pytest([*files, "--collect-only", "-q", "--shard", bad], CUDA_VISIBLE_DEVICES="")
        assert r.returncode != 0 and "--shard: expected" in r.stdout + r.stderr, (bad, r.stderr[-500:])


@pytest.mark.skipif(os.environ.get(_SELFTEST) != "1",
                    reason="fails on purpose, only inside test_a_failure_prints_the_seed_that_replays_it")
def test_fails_on_purpose(rng):
    print(f"draw {rng.integers(1 << 62)}")
    assert False


def test_a_failure_prints_the_seed_that_replays_it():
    name = "tests/test_gates.py::test_fails_on_purpose"
    first = _pytest([name], **{_SELFTEST: "1"})
    assert first.returncode == 1
    seed = re.search(r"FLASHCORE_TEST_SEED=(\d+)", first.stdout)
    draw = re.search(r"draw (\d+)", first.stdout)
    assert seed and draw, first.stdout[-3000:]
    again = _pytest([name], **{_SELFTEST: "1", "FLASHCORE_TEST_SEED": seed.group(1)})
    assert f"draw {draw.group(1)}" in again.stdout


def test_one_wrong_row_fails_the_row_bound_where_the_global_one_passes():
    """bf16, 100,000 rows of 64: one row replaced by another row's values moves the global
    relative error by ~4.5e-3 (under 1e-2), its own row's by ~1.4."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 5, 10_000, 64))
    out = ref * (1 + 2e-3 * rng.standard_normal(ref.shape))   # bf16-sized rounding
    assert workload.within_tolerance("bf16", reference.rel_error(out, ref), reference.row_rel_error(out, ref))
    out[1, 3, 4321] = ref[0, 0, 0]
    err, row = reference.rel_error(out, ref), reference.row_rel_error(out, ref)
    assert err <= workload.TOLERANCE["bf16"] and row > 1.0
    assert not workload.within_tolerance("bf16", err, row)


def test_row_bound_counts_rows_that_see_no_key_absolutely():
    ref = np.zeros((1, 1, 3, 8))
    ref[0, 0, 1] = 1.0
    out = ref.copy()
    assert reference.row_rel_error(out, ref) == 0.0
    out[0, 0, 0, 5] = 0.5   # a row that must be zero is not
    assert reference.row_rel_error(out, ref) == 0.5
    out[0, 0, 2, 0] = np.nan
    assert reference.row_rel_error(out, ref) == np.inf and reference.rel_error(out, ref) == np.inf
    assert not workload.within_tolerance("fp16", float("nan"), 0.0)


def test_gradient_row_bound_takes_small_rows_against_the_typical_row():
    """A gradient row a hundred times smaller than the others, 10 % off (a causal mask's last
    keys: SDPA errs that much there) passes the gradient bound; a typical row replaced by
    another's fails it, as does NaN; row_rel_error would fail the first."""
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((1, 2, 500, 64))
    ref[0, 1, 499] *= 0.01
    out = ref * (1 + 1e-3 * rng.standard_normal(ref.shape))
    out[0, 1, 499] *= 1.1
    assert reference.row_rel_error(out, ref) > workload.GRAD_ROW_TOLERANCE["fp16"]
    assert workload.within_grad_tolerance("fp16", reference.rel_error(out, ref), reference.grad_row_error(out, ref))
    out[0, 0, 7] = ref[0, 0, 8]
    assert reference.grad_row_error(out, ref) > 1.0
    out[0, 0, 3, 1] = np.nan
    assert reference.grad_row_error(out, ref) == np.inf
