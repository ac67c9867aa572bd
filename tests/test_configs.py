"""Tile choice and the launch geometry it yields (CPU)."""

import pytest

from flashcore_cupy import configs


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
@pytest.mark.parametrize("head_dim", range(8, 257, 8))
def test_choice_covers_every_head_dim(arch, head_dim):
    cfg = configs.choose_sm80_config(arch, "fp16", head_dim)
    assert cfg.head_dim >= head_dim and cfg.head_dim % 32 == 0
    assert cfg.smem_bytes <= configs.SMEM_LIMIT[arch]
    assert cfg in configs.all_configs(arch)


def test_small_grids_take_64_row_tiles():
    big = configs.choose_sm80_config("sm_90a", "fp16", 64, batch_heads=32, seqlen_q=4096, num_sms=132)
    small = configs.choose_sm80_config("sm_90a", "fp16", 64, batch_heads=8, seqlen_q=512, num_sms=132)
    assert big.block_m == 128 and small.block_m == 64
    assert small in configs.all_configs("sm_90a")


def test_geometry():
    cfg = configs.Sm80FwdConfig("bf16", 128, 8, 1, 64, 3)
    assert cfg.name_expression == "fc::flash_fwd<fc::bf16, 128, 8, 1, 64, 3>"
    assert (cfg.threads, cfg.block_m) == (256, 128)
    assert cfg.smem_bytes == 2 * 136 * (128 + 2 * 3 * 64)
    assert cfg.grid(batch=3, heads_q=5, seqlen_q=129) == (2, 5, 3)


def _fold_decode(fast: int, fast_dim: int, slow: int, heads: int) -> tuple[int, int]:
    """kernels/grid.cuh's fold_head_batch, in 32-bit unsigned arithmetic."""
    item = (fast + fast_dim * slow) % 2 ** 32
    return item % heads, item // heads


@pytest.mark.parametrize("heads,batch", [(1, 1), (16, 8), (1, 70000), (70000, 1), (3, 65535), (65535, 2),
                                         (7, 40000), (70001, 3)])
def test_folded_grids_cover_every_head_and_batch_once(heads, batch):
    """Every (head, batch) is one block's of configs.fold_heads_batch's grid as the kernels
    decode it; the blocks past them decode to a batch past the end (they return); y and z stay
    within CUDA's 65535; an unfolded grid is (x, heads, batch) as before."""
    x, y, z = configs.fold_heads_batch(1, heads, batch)
    assert y <= configs.GRID_YZ_MAX and z <= configs.GRID_YZ_MAX
    if heads <= configs.GRID_YZ_MAX and batch <= configs.GRID_YZ_MAX:
        assert (y, z) == (heads, batch)
    import numpy as np
    fast, slow = np.meshgrid(np.arange(y, dtype=np.int64), np.arange(z, dtype=np.int64), indexing="ij")
    head, b = _fold_decode(fast.ravel(), y, slow.ravel(), heads)
    inside = b < batch
    assert sorted((head[inside] + heads * b[inside]).tolist()) == list(range(heads * batch))
    # the Hopper backward folds over x and z: (heads x batch, key tiles, 1) past 65535 batches
    gx, gy, gz = configs.Sm90BwdConfig("fp16", 64).grid(batch, heads, 256)
    assert gy == 2 and gz <= configs.GRID_YZ_MAX
    fast, slow = np.meshgrid(np.arange(gx, dtype=np.int64), np.arange(gz, dtype=np.int64), indexing="ij")
    head, b = _fold_decode(fast.ravel(), gx, slow.ravel(), heads)
    assert sorted((head + heads * b).tolist()) == list(range(heads * batch))
