"""Every kernel dispatch can choose compiles for every target arch, with no GPU (CPU)."""

import dataclasses

import pytest

from flashcore_cupy import configs, loader, tuning

_REGISTER_FILE = 65536   # 32-bit registers per SM on sm_80..sm_90: one CTA must fit


def _assert_fit(arch: str, cfgs: list, defines: tuple[str, ...] = ()) -> None:
    """Each config compiled for `arch` (in parallel, with `defines`): no spills or stack frame, no ptxas
    performance warning (e.g. serialised wgmma), no more registers than one CTA of it can get on
    an SM (Hopper: setmaxnreg moves registers within the CTA's pool), and its shared memory
    within what the arch gives a block."""
    for cfg, report in zip(cfgs, loader.compile_reports(cfgs, arch, defines)):
        assert report.spill_bytes == 0 and report.stack_frame_bytes == 0, (arch, str(cfg), report)
        assert not report.perf_warnings, (arch, str(cfg), report.perf_warnings)
        assert report.registers * cfg.threads <= _REGISTER_FILE, (arch, str(cfg), report.registers)
        if isinstance(cfg, configs.Sm90FwdConfig):
            assert tuning._register_pool_reason(cfg, report.registers) is None, (str(cfg), report.registers)
        assert report.static_smem_bytes + cfg.smem_bytes <= configs.SMEM_LIMIT[arch], (arch, str(cfg))


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_every_dispatchable_kernel_compiles_without_spills(arch):
    """What dispatch can choose on `arch` (the tile tables' configs and the shipped tuned
    tiles: tuning.dispatchable_configs), compiled by NVRTC with no GPU. A compile error fails
    (KernelCompileError), as do spills, a ptxas performance warning (serialised wgmma), more
    registers than one CTA of the config can get on an SM, and more shared memory than the
    arch gives a block."""
    dispatchable = list(tuning.dispatchable_configs(arch))
    assert set(configs.all_configs(arch)) <= set(dispatchable)
    assert tuning.shipped_configs(arch) <= set(dispatchable)
    _assert_fit(arch, dispatchable)


def test_the_shipped_tuned_tiles_are_among_what_is_compiled():
    """The tiles the H200's tuned table makes dispatch choose (every D128 large-grid Hopper
    shape; the D64 portable tiles): missed by a loop over the tile tables alone."""
    shipped = tuning.shipped_configs("sm_90a")
    assert configs.Sm90FwdConfig("fp16", 128, 192, 2, 2, True) in shipped
    assert shipped - set(configs.all_configs("sm_90a"))   # tiles only the tuned table adds
    assert shipped <= set(tuning.dispatchable_configs("sm_90a"))


def test_compile_error_names_file_expression_options_and_log():
    bad = configs.Sm80FwdConfig("fp16", 48, 4, 1, 64, 2)   # HEAD_DIM 48 violates a static_assert
    with pytest.raises(loader.KernelCompileError) as info:
        loader.compile_only(bad, "sm_80")
    msg = str(info.value)
    assert "flash_fwd_sm80.cu" in msg and bad.name_expression in msg
    assert "-arch=sm_80" in msg and "HEAD_DIM: multiple of 32" in msg


def test_ptxas_report_parsing():
    log = ("ptxas info    : Function properties for k\n"
           "ptxas         .     16 bytes stack frame, 24 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 96 registers, used 1 barriers, 2048 bytes smem, 400 bytes cmem[0]\n")
    assert loader.parse_ptxas_log(log) == (96, 2048, 32, 16)
    with pytest.raises(ValueError):
        loader.parse_ptxas_log("nothing here")


def test_options_carry_arch_and_a_hash_of_kernels(tmp_path, monkeypatch):
    opts = loader.nvrtc_options("sm_90a")
    assert "-std=c++17" in opts and "-arch=sm_90a" in opts
    assert any(o.startswith("-DFLASHCORE_KERNELS_HASH=0x" + loader.source_hash()) for o in opts)
    # a header edit changes the hash, so CuPy's disk cache recompiles
    for f in loader.KERNEL_DIR.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(loader, "KERNEL_DIR", tmp_path)
    before = loader.source_hash()
    (tmp_path / "mma_sm80.cuh").write_text((tmp_path / "mma_sm80.cuh").read_text() + "\n// edit\n")
    assert loader.source_hash() != before


def test_arch_for_capability():
    assert loader.arch_for_capability(9, 0) == "sm_90a"
    assert loader.arch_for_capability(8, 6) == "sm_86"
    assert loader.arch_for_capability(8, 0) == "sm_80"


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_variant_kernels_compile_without_spills(arch):
    """tuning.variant_configs (every dispatchable tile's variant instantiations, for the variants
    that bound the rest), as `check --variants` compiles them: no spills, no serialised wgmma,
    registers and shared memory within the arch's."""
    variants = list(tuning.variant_configs(arch))
    _assert_fit(arch, variants)


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_varlen_and_kvcache_kernels_compile_without_spills(arch):
    """tuning.sequence_configs (the split-KV dense, varlen, contiguous-cache and paged-cache
    instantiations of every portable tile, plain and for the variants that bound the rest; the
    Hopper kernel's KV-cache, varlen and split-KV dense tiles), fp16 (`check
    --variants` compiles bf16 too): no spills, registers and shared memory within the arch's."""
    sequences = list(tuning.sequence_configs(arch, ("fp16",)))
    _assert_fit(arch, sequences)


def test_streamed_packed_sequences_compile_without_spills():
    """Packed sequences' tiles streamed (-DFLASHCORE_STREAM_ITEMS=2, scripts/dev/stream_probe.py's
    A/B; dense tiles stream in the shipped build, which the tests above compile): the dynamic
    deal's tiles, plain and with a window. A held-back P V issued under a condition ptxas cannot
    prove uniform would serialise every wgmma (C7518)."""
    cfgs = [configs.sm90_varlen_config("fp16", 128), configs.sm90_varlen_config("bf16", 64),
            configs.sm90_varlen_config("fp16", 128, configs.KernelVariant(window=True))]
    _assert_fit("sm_90a", cfgs, ("FLASHCORE_STREAM_ITEMS=2",))


def test_dense_whole_tiles_stream_where_a_second_q_slot_fits():
    """Which Hopper tiles stream (Sm90FwdConfig.q_slots, held to the kernel's by the shared-memory
    check below): the dispatched D64 and D128 tiles of dense batches, plain or with a window;
    not split tiles, packed sequences, a KV cache, a bias, nor D256 (no room for a second Q)."""
    base = configs.Sm90FwdConfig("fp16", 128, 128, 2, 2, True)
    assert base.q_slots == 2
    assert dataclasses.replace(base, variant=configs.KernelVariant(window=True, alibi=True)).q_slots == 2
    assert dataclasses.replace(base, variant=configs.KernelVariant(window=True, bias="16bit")).q_slots == 1
    assert dataclasses.replace(base, seq="varlen").q_slots == 1
    assert configs.Sm90FwdConfig("fp16", 64, 128, 2, 3, True).q_slots == 2
    assert configs.Sm90FwdConfig("fp16", 64, 128, 4, 2, False, split=True).q_slots == 1
    assert configs.Sm90FwdConfig("fp16", 256, 80, 2, 2, True).q_slots == 1
    assert all(configs.sm90_config(dt, d).q_slots == 2 for dt in ("fp16", "bf16") for d in (64, 96, 128))
    # Q's two slots, the K and V rings, the barriers and a second Q's: what v51's streamed build ran on
    d64 = configs.Sm90FwdConfig("fp16", 64, 128, 2, 3, True)
    assert d64.smem_bytes == 1024 + 2 * (64 * (2 * 192 + 2 * 128) + 64 * 2 * 128) + 8 * (2 + 4 * 2) + 16 == 115808


def _launched_configs(arch: str) -> list:
    """Every instantiation the checks above compile whose launches give dynamic shared memory
    (the backward's steps take none)."""
    found = {*tuning.dispatchable_configs(arch), *tuning.variant_configs(arch), *tuning.sequence_configs(arch),
             *tuning.backward_configs(arch)}
    return sorted((c for c in found if c.smem_bytes > 0), key=str)


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_each_launch_gives_the_shared_memory_its_kernel_lays_out(arch):
    """A config's smem_bytes (what its launches give; the host mirrors each kernel's layout by
    hand) equals the kernel's own count beside it (`<kernel>_smem<...>()`), for every
    instantiation compiled above, both dtypes: a launch that gave less would let the kernel
    read and write past its block's shared memory (the Hopper forward traps only for a bias or
    a second Q slot)."""
    launched = _launched_configs(arch)
    assert {type(c) for c in launched} >= ({configs.Sm80FwdConfig, configs.Sm80BwdConfig} |
                                           ({configs.Sm90FwdConfig, configs.Sm90BwdConfig} if arch == configs.SM90_ARCH else set()))
    loader.check_smem_bytes(launched, arch)


def test_a_host_mirror_off_by_a_barrier_fails_the_check():
    """The check above can fail: a config whose smem_bytes is 8 bytes short of its kernel's."""

    @dataclasses.dataclass(frozen=True)
    class Short(configs.Sm90BwdConfig):
        @property
        def smem_bytes(self) -> int:
            return super().smem_bytes - 8

    with pytest.raises(loader.KernelCompileError) as info:
        loader.check_smem_bytes([configs.Sm90BwdConfig("fp16", 128), Short("fp16", 64)], "sm_90a")
    assert "static assertion failed" in info.value.log and str(Short("fp16", 64)) in info.value.log
    assert str(configs.Sm90BwdConfig("fp16", 128)) + " is" not in info.value.log


def test_in_parallel_keeps_order_and_raises_the_first_error():
    assert loader.in_parallel(lambda x: x * x, range(7)) == [0, 1, 4, 9, 16, 25, 36]
    assert loader.in_parallel(str, []) == []

    def fail_on_three(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        loader.in_parallel(fail_on_three, range(6))
