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
