"""split.py's rules (how many key ranges a call's tiles run in) and the dense split launch's
packing, on the CPU (the compile stubbed); the kernels' results: tests/test_attention_gpu.py
and test_variants_gpu.py."""

from types import SimpleNamespace

import numpy as np
import pytest

from flashcore_cupy import configs, launch, params, split
from flashcore_cupy.validation import TensorSpec, check_problem


def _problem(sq, sk, heads=(1, 1, 1), d=64, **options):
    b, hq, hkv = heads
    spec = lambda name, shape: TensorSpec(name, shape, tuple(int(np.prod(shape[i + 1:])) for i in range(4)),  # noqa: E731
                                          np.dtype(np.float16), 0, 1 << 20)
    return check_problem(spec("q", (b, hq, sq, d)), spec("k", (b, hkv, sk, d)), spec("v", (b, hkv, sk, d)),
                         causal=options.pop("causal", False), scale=None, layout="bhsd", **options)


def test_chain_keys_is_sk_or_a_two_sided_window():
    assert split.chain_keys(1 << 20, (-1, -1), 128) == 1 << 20
    assert split.chain_keys(1 << 20, (4095, -1), 128) == 1 << 20      # unbounded on the right
    assert split.chain_keys(1 << 20, (4095, 0), 128) == 4095 + 128    # causal sliding window
    assert split.chain_keys(1000, (4095, 0), 128) == 1000


def test_dense_splits_bound_each_chain_and_fill_small_grids():
    cap = split.MAX_CHAIN_KEYS
    assert split.dense_splits(cap, 128, 1, 132, 4096) == 1                 # at the bound: no split
    assert split.dense_splits(16384, 128, 1, 132, 4096) == 1               # the benchmark's longest dense Sk
    one_m = split.dense_splits(1 << 20, 128, 1, 132, 4096)
    assert one_m == split.choose_splits(1, (1 << 20) // 128, 132) >= 16   # the fill of 132 SMs wins
    sixteen_m = split.dense_splits(1 << 24, 128, 1, 132, 4096)
    assert sixteen_m == (1 << 24) // cap and -(-(1 << 24) // sixteen_m) <= cap
    # a big grid: just the bound's; partials past WORKSPACE_BYTES split less
    assert split.dense_splits(1 << 18, 128, 10_000, 132, 1 << 20) == 4
    assert split.dense_splits(1 << 18, 128, 10_000, 132, split.WORKSPACE_BYTES // 2) == 2
    assert split.dense_splits(1 << 18, 128, 10_000, 132, split.WORKSPACE_BYTES + 1) == 1
    assert split.dense_splits(1 << 40, 128, 1, 132, 4) == split.MAX_DENSE_SPLITS


@pytest.fixture
def stubbed(monkeypatch):
    launched = []
    monkeypatch.setattr(launch.loader, "get_function", lambda *a, **k: 7)
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    monkeypatch.setattr(launch.tma, "encode_maps", lambda *a: None)
    return launched


@pytest.mark.parametrize("hopper", [False, True])
def test_a_long_sk_call_builds_a_split_launch(stubbed, hopper):
    """Sq 8 x Sk 1M on either kernel: a "dense_split" config, a CTA per (tile, split), partials
    at the output's strides (one split spans the output), a counter per tile (the Hopper
    kernel's: per consumer), the call's addresses in the block."""
    p = _problem(8, 1 << 20)
    if hopper:
        config = configs.sm90_config("fp16", 64, "small")
    else:
        config = configs.choose_sm80_config("sm_90a", "fp16", 64, 1, 8, 132)
    o_strides = (8 * 64, 8 * 64, 64)
    run = launch.build_launch(p, config, "sm_90a", 132, o_strides, True)
    assert isinstance(run, launch.SplitFwdLaunch) and run.config.seq == "dense_split"
    splits = run.splits
    assert splits == split.dense_splits(1 << 20, config.block_n, 1, 132 if hopper else
                                        132 * split.resident_ctas(run.config, "sm_90a"), 4 * (8 * 64 + 8))
    assert (run.workspace.o_elements, run.workspace.lse_elements) == (8 * 64, 8)
    assert run.workspace.counters == (config.consumers if hopper else 1)
    s = run.inner.scalars
    assert (s["splits"], s["o_split"], s["lse_split"]) == (splits, 8 * 64, 8)
    assert run.inner.grid == (splits, 1, 1)
    if hopper:
        assert (s["n_items"], s["tail_start"], s["group"]) == (splits, 1, 1)
    assert run.out_shape == (1, 1, 8, 64) and run.lse_shape == (1, 1, 8)
    spaces = {}
    run.workspace._spaces[0x77] = spaces[0x77] = tuple(SimpleNamespace(data=SimpleNamespace(ptr=a))
                                                        for a in (0x1000, 0x2000, 0x3000))
    out, lse = SimpleNamespace(data=SimpleNamespace(ptr=0x400)), SimpleNamespace(data=SimpleNamespace(ptr=0x500))
    run.start((0x100, 0x200, 0x300), out, lse, 0x77)
    assert len(stubbed) == 1 and stubbed[0][1:4] == run.inner.grid
    if hopper:
        block = run.inner._blocks[(0x100, 0x200, 0x300)].data
        schema = params.FWD_SM90
    else:
        block = run.inner._block.data
        schema = params.FWD_SM80
    for name, value in (("o", 0x400), ("lse", 0x500), ("o_accum", 0x1000), ("lse_accum", 0x2000),
                        ("split_count", 0x3000)):
        at = schema.offsets[name]
        assert int.from_bytes(block[at:at + 8].tobytes(), "little") == value, name


def test_partials_span_a_bshd_output(stubbed):
    """The partials take the output's strides: one split's span is the whole (B, Sq, Hq, D)
    output of a bshd call (its strides are (batch, head, seq) ones)."""
    b, hq, sq = 2, 4, 77
    p = _problem(sq, 1 << 20, heads=(b, hq, 2))
    config = configs.choose_sm80_config("sm_90a", "fp16", 64, b * hq, sq, 132)
    run = launch.build_launch(p, config, "sm_90a", 132, (sq * hq * 64, 64, hq * 64), False)
    assert run.workspace.o_elements == b * sq * hq * 64


def test_calls_within_the_bound_keep_their_launch(stubbed):
    p = _problem(4096, 16384, heads=(1, 16, 16), d=128)
    config = configs.sm90_config("fp16", 128, "large")
    assert isinstance(launch.build_launch(p, config, "sm_90a", 132, (16 * 4096 * 128, 4096 * 128, 128), False),
                      launch.Sm90FwdLaunch)



def test_chain_splits_bound_each_range_and_the_workspace():
    assert split.chain_splits(1 << 20, 4096, split.MAX_SPLITS) == (1 << 20) // split.MAX_CHAIN_KEYS
    assert split.chain_splits(split.MAX_CHAIN_KEYS, 4, split.MAX_SPLITS) == 1
    assert split.chain_splits(1 << 40, 4, split.MAX_SPLITS) == split.MAX_SPLITS
    assert split.chain_splits(1 << 20, split.WORKSPACE_BYTES // 2, split.MAX_SPLITS) == 2
