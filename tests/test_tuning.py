"""The tile-search space, its legality filter and the tune cache (CPU)."""

import json
import re
import warnings
from importlib import resources

import pytest

from flashcore_cupy import configs, loader, tuner, tuning
from flashcore_cupy.configs import DispatchKey, Sm80FwdConfig, Sm90FwdConfig

GPU, CAP, CUPY, NVRTC = "NVIDIA Test GPU", (9, 0), "14.2.0", "12.9"


# Every reason legal_configs can give, by kind: a rejection outside these is a bug.
_REASON_KINDS = re.compile(
    r"^(O and S accumulators need \d+ registers|\d+ B of shared memory|spills \d+ B|ptxas: |"
    r"compile error: |setmaxnreg needs|the Hopper kernel needs|head dim \d+ not in|ping-pong needs|"
    r"four consumers|8-row warps|split keys need|the split combine|S, P and O need)")


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90a"])
def test_legal_configs_include_the_tables_tiles_and_reject_for_known_reasons(arch):
    for dtype, dims in (("fp16", configs.HEAD_DIM_BUCKETS), ("bf16", (64, 128))):
        for d in dims:
            legal, rejected = tuning.legal_configs(arch, dtype, d)
            assert legal, (arch, dtype, d)
            for r in rejected:
                assert _REASON_KINDS.match(r.reason), (str(r.config), r.reason)
            # the hand-written table's tiles are in the space and legal
            for small in (False, True):
                _, default = configs.sm80_problem_class(arch, dtype, d, 1 if small else 10**6, 1 << 20, 2)
                if default in tuning.space(dtype, d):
                    assert default in legal, (arch, str(default))


def test_legal_means_a_fresh_compile_shows_no_spill():
    """Every legal sm_80 D128 tile recompiled with NVRTC, outside the verdict cache: none
    spills; and the space holds tiles that do (the reason the filter exists: at D64, 128-key
    tiles of 32 rows per warp need more than 255 registers on sm_80), which it rejects."""
    legal, _ = tuning.legal_configs("sm_80", "fp16", 128)
    for c in legal:
        assert loader.compile_only(c, "sm_80").spill_bytes == 0, str(c)
    legal, rejected = tuning.legal_configs("sm_80", "fp16", 64)
    spilling = Sm80FwdConfig("fp16", 64, 4, 2, 128, 2)
    assert loader.compile_only(spilling, "sm_80").spill_bytes > 0
    assert spilling not in legal and any(r.config == spilling and r.reason.startswith("spills") for r in rejected)


@pytest.mark.parametrize("dtype, d", [("fp16", 64), ("fp16", 128), ("bf16", 128)])
def test_every_hopper_config_is_legal_or_rejected_with_a_reason(dtype, d):
    legal, rejected = tuning.legal_configs("sm_90a", dtype, d, "sm90")
    assert legal
    for r in rejected:
        assert _REASON_KINDS.match(r.reason), (str(r.config), r.reason)
    for grid in configs.SM90_GRIDS:   # dispatch's Hopper tiles are in the space and legal
        assert configs.sm90_config(dtype, d, grid) in legal
    # the Hopper family never applies to other archs
    assert all("sm_90a" in tuning.static_reason(c, "sm_80") for c in tuning.space(dtype, d, "sm90"))


def test_dispatch_keys_have_named_fields_and_the_files_text_form():
    key = DispatchKey("sm90", "bf16", 128, "tiny")
    assert str(key) == "sm90/bf16/d128/tiny" and DispatchKey.parse(str(key)) == key
    assert str(DispatchKey("sm80", "fp16", 64, "large")) == "fp16/d64/large"
    assert DispatchKey.parse("fp16/d64/large").family == "sm80"
    for bad in ("sm90/fp16/d128", "fp32/d64/large", "sm70/fp16/d64/large", "fp16/64/large", "fp16/d64/wide"):
        with pytest.raises(ValueError, match="dispatch key"):
            DispatchKey.parse(bad)
    key, config = configs.dispatch_class("sm_90a", "fp16", 100, 8, 512, 132)
    assert key == DispatchKey("sm90", "fp16", 128, "tiny") and config.head_dim == 128


def test_register_pool_rule():
    """setmaxnreg only moves registers inside the CTA's launch allocation: four consumers
    compiled at 96 registers may claim 112 each (24 + 4 * 112 <= 5 * 96), not 120."""
    c4 = Sm90FwdConfig("fp16", 64, 64, 8, 4, False, True)
    assert configs.sm90_consumer_registers(4) == 112
    assert tuning._register_pool_reason(c4, 96) is None
    assert "setmaxnreg" in tuning._register_pool_reason(c4, 88)
    assert [configs.sm90_consumer_registers(c) for c in (1, 2, 3)] == [256, 240, 160]


def test_static_rules_explain_themselves():
    big = Sm80FwdConfig("fp16", 256, 4, 2, 128, 4)
    assert "registers" in tuning.static_reason(big, "sm_90a")
    wide = Sm80FwdConfig("fp16", 128, 8, 1, 128, 4)
    assert "shared memory" in tuning.static_reason(wide, "sm_86")
    assert "registers" in tuning.static_reason(Sm90FwdConfig("fp16", 128, 192, 2, 3, True), "sm_90a")
    assert "ping-pong" in tuning.static_reason(Sm90FwdConfig("fp16", 64, 128, 2, 1, True), "sm_90a")
    assert "shared memory" in tuning.static_reason(Sm90FwdConfig("fp16", 128, 192, 3, 2, True), "sm_90a")
    assert "split" in tuning.static_reason(Sm90FwdConfig("fp16", 64, 128, 3, 2, False, True), "sm_90a")
    assert "split" in tuning.static_reason(Sm90FwdConfig("fp16", 64, 128, 2, 2, True, True), "sm_90a")
    assert tuning.static_reason(Sm90FwdConfig("fp16", 64, 128, 4, 2, False, True), "sm_90a") is None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(tuning.ENV_CACHE, str(path))
    monkeypatch.delenv(tuning.ENV_DISABLE, raising=False)
    return path


def test_cache_round_trips_and_feeds_dispatch(cache):
    key = tuning.device_key(GPU, CAP, CUPY, NVRTC)
    tuning.save_entries(cache, key, {"fp16/d64/large": {"tile": [8, 1, 64, 2], "score": 0.9}})
    tuning.save_entries(cache, key, {"bf16/d128/small": {"tile": [4, 1, 32, 3], "score": 0.95}})
    table = tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a")
    assert table == {DispatchKey("sm80", "fp16", 64, "large"): Sm80FwdConfig("fp16", 64, 8, 1, 64, 2),
                     DispatchKey("sm80", "bf16", 128, "small"): Sm80FwdConfig("bf16", 128, 4, 1, 32, 3)}
    tuned = tuple(sorted(table.items()))
    got = configs.choose_sm80_config("sm_90a", "fp16", 64, 64, 4096, 132, tuned)
    assert got == Sm80FwdConfig("fp16", 64, 8, 1, 64, 2)
    assert configs.choose_sm80_config("sm_90a", "fp16", 128, 64, 4096, 132, tuned) == \
        configs.choose_sm80_config("sm_90a", "fp16", 128, 64, 4096, 132)


def test_hopper_entries_round_trip_and_feed_dispatch(cache):
    key = tuning.device_key(GPU, CAP, CUPY, NVRTC)
    tile = Sm90FwdConfig("fp16", 128, 176, 2, 2, True)
    tuning.save_entries(cache, key, {"sm90/fp16/d128/large": {"tile": tuning.entry_tile(tile)}})
    table = tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a")
    assert table == {DispatchKey("sm90", "fp16", 128, "large"): tile}
    tuned = tuple(sorted(table.items()))
    assert configs.choose_kernel("sm_90a", "fp16", 128, 32, 4096, 132, tuned) == tile
    assert configs.choose_kernel("sm_90a", "fp16", 128, 32, 4096, 132, tuned, sm90="force") == tile
    # other classes keep the table's tiles
    assert configs.choose_kernel("sm_90a", "bf16", 128, 32, 4096, 132, tuned) == \
        configs.sm90_config("bf16", 128)


def test_stale_entries_do_not_apply(cache):
    # another NVRTC (or kernels hash, CuPy version, GPU) is another table
    tuning.save_entries(cache, tuning.device_key(GPU, CAP, CUPY, "13.0"),
                        {"fp16/d64/large": {"tile": [8, 1, 64, 2]}})
    assert tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a") == {}


@pytest.mark.parametrize("text", ["{not json", json.dumps({"schema": 99, "tables": {}}), "[]"])
def test_corrupt_cache_is_ignored_with_a_warning(cache, text):
    cache.write_text(text)
    with pytest.warns(UserWarning, match="ignoring tune cache"):
        assert tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a") == {}


def test_bad_entries_are_ignored_with_a_warning(cache):
    key = tuning.device_key(GPU, CAP, CUPY, NVRTC)
    tuning.save_entries(cache, key, {"fp16/d64/large": {"tile": "big"},
                                     "fp16/d128/large": {"tile": [8, 2, 128, 4]},   # too many registers
                                     "sm90/fp16/d64/large": {"tile": [100, 2, 2, True, False]},   # not in the space
                                     "sm90/bf16/d64/large": {"tile": [128, 2, 2, True]},   # a field short
                                     "bf16/d64/small": {"tile": [4, 1, 64, 3]},
                                     "sm90/bf16/d64/huge": {"tile": [128, 2, 2, True, False, 1, 16]}})   # no such grid
    with pytest.warns(UserWarning, match="ignoring tuned entry"):
        table = tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a")
    assert table == {DispatchKey.parse("bf16/d64/small"): Sm80FwdConfig("bf16", 64, 4, 1, 64, 3)}


def test_disable_switch(cache, monkeypatch):
    tuning.save_entries(cache, tuning.device_key(GPU, CAP, CUPY, NVRTC),
                        {"fp16/d64/large": {"tile": [8, 1, 64, 2]}})
    monkeypatch.setenv(tuning.ENV_DISABLE, "1")
    assert tuning.load_table(GPU, CAP, CUPY, NVRTC, "sm_90a") == {}


def test_every_shipped_entry_is_what_dispatch_chooses_for_its_class():
    """Each entry of tuned_defaults.json loads (none dropped with a warning) and is the tile
    dispatch returns for a problem of its key's class on that GPU: no shipped tile is dead."""
    path = resources.files("flashcore_cupy").joinpath("tuned_defaults.json")
    tables = json.loads(path.read_text())["tables"]
    assert tables
    representative = {"large": (10**4, 8192), "small": (1, 1), "tiny": (8, 512)}   # (B*H, Sq), 132 SMs
    for table_key, entries in tables.items():
        gpu, cap = table_key.rsplit("|sm", 1)
        capability = (int(cap[:-1]), int(cap[-1]))
        arch = loader.arch_for_capability(*capability)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = tuning.load_table(gpu, capability, CUPY, NVRTC, arch)
        assert {str(k) for k in table} == set(entries)
        tuned = tuple(sorted(table.items()))
        for key, config in table.items():
            bh, sq = representative[key.grid]
            got = configs.choose_kernel(arch, key.dtype, key.head_dim, bh, sq, 132, tuned,
                                        sm90="auto" if key.family == "sm90" else "off")
            assert got == config, (table_key, key, str(got))


def test_neighbours_step_one_parameter():
    c = Sm80FwdConfig("fp16", 64, 4, 2, 64, 3)
    every = set(tuning.space("fp16", 64))
    n = tuner.neighbours(c, every)
    assert Sm80FwdConfig("fp16", 64, 4, 2, 32, 3) in n and Sm80FwdConfig("fp16", 64, 4, 2, 64, 4) in n
    assert all(sum(getattr(a, f) != getattr(c, f) for f in tuning.FAMILIES["sm80"].space) == 1 for a in n)
    h = Sm90FwdConfig("fp16", 128, 128, 2, 2, True)
    n = tuner.neighbours(h, set(tuning.space("fp16", 128, "sm90")))
    assert Sm90FwdConfig("fp16", 128, 176, 2, 2, True) in n and Sm90FwdConfig("fp16", 128, 128, 2, 3, True) in n
    assert Sm90FwdConfig("fp16", 128, 128, 2, 2, False) in n and len(n) == 9
    assert Sm90FwdConfig("fp16", 128, 128, 2, 2, True, True) in n
    assert Sm90FwdConfig("fp16", 128, 128, 2, 2, True, False, 2) in n
