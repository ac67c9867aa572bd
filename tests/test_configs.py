"""Tile choice and the launch geometry it yields (CPU)."""

import pytest

from flashcore_cupy import configs


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
@pytest.mark.parametrize("head_dim", range(8, 257, 8))
def test_choice_covers_every_head_dim(arch, head_dim):
    cfg = configs.choose_config(arch, "fp16", head_dim)
    assert cfg.head_dim >= head_dim and cfg.head_dim % 32 == 0
    assert cfg.smem_bytes <= configs.SMEM_LIMIT[arch]
    assert cfg in configs.all_configs(arch)


def test_geometry():
    cfg = configs.FwdConfig("bf16", 128, 8, 1, 64)
    assert cfg.name_expression == "fc::flash_fwd<fc::bf16, 128, 8, 1, 64>"
    assert (cfg.threads, cfg.block_m) == (256, 128)
    assert cfg.smem_bytes == 2 * 136 * (128 + 128)
    assert cfg.grid(batch=3, heads_q=5, seqlen_q=129) == (2, 5, 3)
