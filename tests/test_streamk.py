"""Stream-K's schedule (flashcore_cupy/streamk.py, the mirror of the kernel's) without a GPU:
every key tile of every tile runs once, a tile's parts are the CTAs that hold its key tiles, in
order, and the busiest CTA holds less than under the shipped deal where that leaves a ragged
last round."""

import itertools

import pytest

from flashcore_cupy import configs, streamk

GEOMETRIES = [   # (consumers, block_n, heads, batch, Sq, Sk, SMs)
    (3, 128, 16, 4, 1024, 1024, 132),    # S1k D64: 320 whole tiles and 64 of one consumer
    (2, 192, 16, 2, 4096, 4096, 132),    # S4k D128: a last round of 100
    (3, 128, 20, 3, 1900, 1900, 132),    # held-out S1900 D64
    (2, 128, 40, 1, 3500, 3500, 132),    # held-out S3500 D128: a partial row block of 3500 % 128
    (2, 128, 1, 1, 300, 5000, 132),      # fewer tiles than SMs: all stream-K
    (2, 128, 3, 1, 128, 128, 132),       # one key tile a tile: shares of whole tiles
    (3, 128, 7, 5, 777, 2222, 114),      # ragged everything on an H100's SM count
    (2, 64, 16, 8, 2048, 300, 132),      # whole rounds only (1024 tiles... with Sk short)
]


def _covered(sk: streamk.StreamK):
    seen = {}
    for cta in range(sk.grid):
        for item in sk.items(cta):
            for k in range(item.first, item.first + item.n_blocks):
                assert (item.tile, k) not in seen, f"tile {item.tile} key tile {k} twice"
                seen[item.tile, k] = (cta, item)
    return seen


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_every_key_tile_of_every_tile_runs_once(geometry):
    sk = streamk.plan(*geometry)
    seen = _covered(sk)
    assert set(seen) == set(itertools.product(range(sk.tiles), range(sk.key_tiles)))
    assert sk.dp_items % sk.grid == 0 and sk.dp_items <= sk.whole_tiles
    assert 0 < sk.sk_ctas <= sk.grid or sk.tiles == sk.dp_items


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_a_tiles_parts_are_the_ctas_holding_its_key_tiles_in_order(geometry):
    sk = streamk.plan(*geometry)
    by_tile = {}
    for cta in range(sk.grid):
        for item in sk.parts_of(cta):
            by_tile.setdefault(item.tile, []).append((cta, item))
    for tile, held in by_tile.items():
        parts = {item.parts for _, item in held}
        assert parts == {len(held)}, f"tile {tile}: {len(held)} CTAs, parts {parts}"
        assert [item.part for _, item in held] == list(range(len(held)))
        assert [cta for cta, _ in held] == list(range(held[0][0], held[0][0] + len(held)))   # adjacent CTAs
        firsts = [item.first for _, item in held]
        assert firsts == sorted(firsts) and firsts[0] == 0   # part i's keys before part i + 1's
        assert len(held) <= sk.max_parts
        if len(held) > 1:   # no crumbs: a part of a tile of several holds MIN_SHARE key tiles at
            # least unless it ends the tile or starts it (a share's other key tiles are elsewhere)
            for _, item in held[1:-1]:
                assert item.n_blocks >= streamk.MIN_SHARE or sk.tile(tile)[3] < sk.consumers


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_tiles_follow_the_numbering_whole_ones_first(geometry):
    sk = streamk.plan(*geometry)
    rows = {}
    for t in range(sk.tiles):
        row0, head, batch, consumers = sk.tile(t)
        assert 0 <= head < sk.heads and 0 <= batch < sk.batch
        assert consumers == (sk.consumers if t < sk.whole_tiles else sk.partial_consumers)
        assert min(sk.seqlen_q - row0, sk.block_m) > 64 * (consumers - 1)
        rows.setdefault((batch, head), []).append((row0, consumers))
    for (batch, head), blocks in rows.items():   # each head's rows exactly once
        assert sum(min(64 * c, sk.seqlen_q - r) for r, c in blocks) == sk.seqlen_q


def test_the_busiest_cta_holds_less_than_under_the_shipped_deal():
    """The model's gain where the shipped deal leaves a ragged last round (the wave probe's
    shapes): S1k D64 3 -> 2.63 tiles (the shipped deal's average 2.59), S4k D128 8 -> 7.77."""
    import dataclasses

    for (b, h, s, d), shipped in (((4, 16, 1024, 64), 3.0), ((2, 16, 4096, 128), 8.0)):
        config = configs.sm90_config("fp16", d)
        if d == 128:
            config = dataclasses.replace(config, block_n=192)   # the tuned D128 tile
        busiest, average = streamk.shipped_busiest(config, b, h, s, 132)
        sk = streamk.plan(config.consumers, config.block_n, h, b, s, s, 132)
        assert busiest == shipped and sk.busiest() < shipped * 0.985, (b, h, s, d, sk.busiest())
        assert sk.busiest() < average * 1.02


@pytest.fixture
def stubbed(monkeypatch):
    from flashcore_cupy import launch

    monkeypatch.setattr(launch.loader, "get_function", lambda *a, **k: 7)
    monkeypatch.setattr(launch.tma, "encode_maps", lambda *a: None)
    return launch


def _problem(b, h, sq, sk, d, causal=False):
    import numpy as np

    from flashcore_cupy.validation import TensorSpec, check_problem

    def spec(name, s):
        shape = (b, h, s, d)
        return TensorSpec(name, shape, tuple(int(np.prod(shape[i + 1:])) for i in range(4)), np.dtype(np.float16), 0,
                          1 << 20)
    return check_problem(spec("q", sq), spec("k", sk), spec("v", sk), causal=causal, scale=None, layout="bhsd")


def test_a_stream_k_config_builds_its_launch(stubbed):
    """A "dense_sk" config on a plain non-causal call: a CTA an SM, tail_start the whole tiles run
    whole, n_items every tile, splits the most parts a tile has, compact partials (a part: every
    stream-K tile's rows) and a counter a consumer of each stream-K tile."""
    import dataclasses

    launch = stubbed
    config = dataclasses.replace(configs.sm90_config("fp16", 64), seq="dense_sk")
    p = _problem(4, 16, 1024, 1024, 64)
    run = launch.build_launch(p, config, "sm_90a", 132, (16 * 1024 * 64, 1024 * 64, 64), True)
    sk = streamk.plan(config.consumers, config.block_n, 16, 4, 1024, 1024, 132)
    assert isinstance(run, launch.StreamKLaunch) and run.config is config
    s = run.inner.scalars
    sk_tiles = sk.tiles - sk.dp_items
    assert (s["tail_start"], s["n_items"], s["sk_ctas"], s["splits"]) == (264, 384, 132, sk.max_parts)
    assert (s["o_split"], s["lse_split"], s["causal"]) == (sk_tiles * 192 * 64, sk_tiles * 192, 0)
    assert run.inner.grid == (132, 1, 1) and run.lse_shape == (4, 16, 1024)
    assert (run.workspace.splits, run.workspace.counters) == (sk.max_parts, sk_tiles * 3)
    assert config.smem_bytes == dataclasses.replace(config, seq="dense").smem_bytes + 4 * 3   # the consumers' flags
    with pytest.raises(ValueError, match="stream-K runs plain non-causal dense calls"):
        launch.build_launch(_problem(4, 16, 1024, 1024, 64, causal=True), config, "sm_90a", 132,
                            (16 * 1024 * 64, 1024 * 64, 64), False)
    with pytest.raises(ValueError, match="stream-K config has whole tiles and no variant"):
        dataclasses.replace(config, variant=configs.KernelVariant(window=True))


def test_random_geometries_cover_every_key_tile_once():
    """200 drawn geometries (consumers 1-3, key tiles of 64-192, SMs 16-132, ragged lengths):
    every key tile of every tile once, each tile's parts adjacent CTAs in order."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        c = rng.randint(1, 3)
        geometry = (c, rng.choice((64, 128, 192)), rng.randint(1, 24), rng.randint(1, 4), rng.randint(1, 3000),
                    rng.randint(1, 3000), rng.choice((16, 66, 114, 132)))
        sk = streamk.plan(*geometry)
        seen = _covered(sk)
        assert len(seen) == sk.tiles * sk.key_tiles, geometry
        for cta in range(sk.grid):
            for item in sk.parts_of(cta):
                assert 0 <= item.part < item.parts <= sk.max_parts, geometry


@pytest.mark.parametrize("head_dim", configs.SM90_HEAD_DIMS)
def test_stream_k_builds_compile_without_spills(head_dim):
    """The "dense_sk" kernel of each built width's large tile (the tuned D128 192-key one too)
    compiles for sm_90a (NVRTC, no GPU) with no spills and no static shared memory (its flags
    sit after the barriers, in the bytes smem_bytes counts)."""
    import dataclasses

    from flashcore_cupy import loader

    base = configs.sm90_config("bf16", head_dim)
    for config in {base, dataclasses.replace(base, block_n=192)} if head_dim == 128 else {base}:
        report = loader.compile_only(dataclasses.replace(config, seq="dense_sk"), "sm_90a")
        assert (report.spill_bytes, report.static_smem_bytes, report.perf_warnings) == (0, 0, ()), str(config)


_HARNESS = r"""
#include <algorithm>
#include <cstdio>
using std::min;
#define __device__
#define __forceinline__ inline
struct Sm90Params { int seqlen_q, seqlen_k, heads, batch, tail_start, sk_ctas; };
%s
int main() {
    int consumers, block_n, heads, batch, sq, sk, grid, dp, ctas;
    while (std::scanf("%%d %%d %%d %%d %%d %%d %%d %%d %%d", &consumers, &block_n, &heads, &batch, &sq, &sk, &grid,
                      &dp, &ctas) == 9) {
        const Sm90Params p{sq, sk, heads, batch, dp, ctas};
        const StreamK s(p, consumers, block_n);
        for (int c = 0; c < grid; ++c)
            for (int i = s.next(c, grid, -1, s.tiles); i < s.tiles; i = s.next(c, grid, i, s.tiles)) {
                int first = 0, end = s.key_tiles, part = 0, parts = 1;
                if (i >= s.dp) s.share(c, i - s.dp, first, end, part, parts);
                std::printf("%%d %%d %%d %%d %%d %%d\n", c, i, first, end - first, part, parts);
            }
        std::printf("end\n");
    }
}
"""


def test_the_kernels_stream_k_arithmetic_is_the_mirrors(tmp_path):
    """kernels/sm90_scheduler.cuh's StreamK (its text, compiled for the host with g++) deals
    every CTA the items streamk.py's mirror does, share by share, on the geometries above and 100
    drawn ones: the kernel's own arithmetic, checked without a GPU."""
    import random
    import re
    import shutil
    import subprocess
    from pathlib import Path

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to build the kernel's StreamK for the host")
    text = (Path(__file__).resolve().parent.parent / "kernels" / "sm90_scheduler.cuh").read_text()
    struct = re.search(r"^struct StreamK \{.*?^\};", text, re.S | re.M).group(0)
    source = tmp_path / "streamk.cpp"
    source.write_text(_HARNESS % struct)
    binary = tmp_path / "streamk"
    subprocess.run([compiler, "-std=c++17", "-O1", "-o", str(binary), str(source)], check=True)
    rng = random.Random(11)
    geometries = list(GEOMETRIES) + [
        (rng.randint(1, 3), rng.choice((64, 80, 128, 192)), rng.randint(1, 24), rng.randint(1, 4), rng.randint(1, 3000),
         rng.randint(1, 3000), rng.choice((16, 66, 114, 132))) for _ in range(100)]
    plans = [streamk.plan(*g) for g in geometries]
    stdin = "".join(f"{sk.consumers} {sk.block_n} {sk.heads} {sk.batch} {sk.seqlen_q} {sk.seqlen_k} {sk.grid} "
                    f"{sk.dp_items} {sk.sk_ctas}\n" for sk in plans)
    out = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True, check=True).stdout
    runs = out.split("end\n")
    for geometry, sk, run in zip(geometries, plans, runs):
        kernel = [tuple(map(int, line.split())) for line in run.splitlines()]
        mirror = [(cta, item.tile, item.first, item.n_blocks, item.part, item.parts)
                  for cta in range(sk.grid) for item in sk.items(cta)]
        assert kernel == mirror, geometry
