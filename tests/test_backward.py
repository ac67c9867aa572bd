"""The backward's host side on the CPU: its tiles, their compilation, and the validation that
runs before any launch."""

import numpy as np
import pytest

import flashcore_cupy as fc
from flashcore_cupy import configs, loader, tuning
from flashcore_cupy.validation import TensorSpec, check_lse, check_out, check_problem

F16 = np.dtype(np.float16)


def spec(name, shape, dtype=F16, strides=None, device=0, ptr=0x10000):
    if strides is None:
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return TensorSpec(name, shape, strides, np.dtype(dtype), device, ptr)


def test_tiles_fit_every_arch_and_name_their_kernel():
    for hd in configs.HEAD_DIM_BUCKETS:
        cfg = configs.bwd_config("bf16", hd)
        assert cfg.block_m == 16 * cfg.warps and cfg.block_n * cfg.d_split == cfg.block_m
        assert (hd // cfg.d_split) % 16 == 0   # a warp's dK / dV part: whole k16 steps
        assert all(cfg.smem_bytes <= limit for limit in configs.SMEM_LIMIT.values()), (hd, cfg.smem_bytes)
    cfg = configs.bwd_config("fp16", 128, configs.KernelVariant(window=True, softcap=True))
    assert cfg.name_expression == "fc::flash_bwd<fc::fp16, 128, 4, 2, fc::Variant<true, false, 0>>"
    # K, V (32 rows), Q, dO (64 rows) of 136 elements, P and dS (64 x 40), LSE and delta
    assert cfg.smem_bytes == 2 * (2 * 32 * 136 + 2 * 64 * 136 + 2 * 64 * 40) + 8 * 64
    assert cfg.grid(batch=3, heads_q=5, seqlen_k=65) == (3, 5, 3)


def test_hopper_tiles_give_each_consumer_one_dq_block():
    for hd, block_m in ((64, 128), (128, 64)):
        cfg = configs.Sm90BwdConfig("fp16", hd)
        assert cfg.block_m == block_m and (block_m // 64) * (hd // 64) == 2
        assert cfg.name_expression == f"fc::flash_bwd_sm90<fc::fp16, {hd}, {block_m}, 2>"
        # K, V; two slots of Q, dO, LSE, delta; two dS^T buffers; two dQ blocks; 13 barriers; the
        # base's alignment
        assert cfg.smem_bytes == 1024 + 2 * 128 * hd * 2 + 2 * 2 * block_m * hd * 2 + 2 * 128 * block_m * 2 \
            + 2 * 2 * block_m * 4 + 2 * 64 * 64 * 4 + 8 * 13
        assert cfg.smem_bytes <= configs.SMEM_LIMIT["sm_90a"]
        assert cfg.rows_pad(1) == block_m and cfg.rows_pad(block_m + 1) == 2 * block_m
    assert configs.Sm90BwdConfig("bf16", 128).grid(batch=3, heads_q=5, seqlen_k=129) == (5, 2, 3)


def test_hopper_tiles_at_head_dim_96_pad_their_rows():
    """Head dim 96: its GEMMs stop at 96 (S^T and dP^T over 96 columns, dK and dV 96 wide), its
    rows in shared memory and in dQ's accumulator two whole 64-column blocks (a dQ block a
    consumer, as at 128): the shared memory of D128's tile."""
    cfg = configs.Sm90BwdConfig("fp16", 96)
    assert cfg.d_pad == 128 and (cfg.block_n, cfg.block_m) == (128, 64) and not cfg.split_d
    assert cfg.name_expression == "fc::flash_bwd_sm90<fc::fp16, 96, 64, 2>"
    assert cfg.smem_bytes == configs.Sm90BwdConfig("fp16", 128).smem_bytes


def test_hopper_tiles_at_head_dim_256_split_its_columns():
    """Head dim 256: 64 keys a CTA that both consumers share (dK's and dV's columns split, S^T and
    dP^T a half of the query tile each, P^T and dS^T exchanged through two buffers each), 64-row
    query tiles (dQ's four 64 x 64 blocks, two a consumer, added from registers: no dQ blocks in
    shared memory), within sm_90's shared memory with two ring slots."""
    cfg = configs.Sm90BwdConfig("fp16", 256)
    assert cfg.split_d and (cfg.block_n, cfg.block_m) == (64, 64) and not configs.Sm90BwdConfig("fp16", 128).split_d
    assert cfg.name_expression == "fc::flash_bwd_sm90<fc::fp16, 256, 64, 2>"
    assert cfg.smem_bytes == 1024 + 2 * 64 * 256 * 2 + 2 * 2 * 64 * 256 * 2 + 4 * 64 * 64 * 2 + 2 * 2 * 64 * 4 + 8 * 13
    assert cfg.smem_bytes <= configs.SMEM_LIMIT["sm_90a"]
    assert cfg.grid(batch=3, heads_q=5, seqlen_k=129) == (5, 3, 3)
    assert [configs.sm90_bwd_width(d) for d in (32, 64, 80, 96, 128, 160, 256)] == [64, 64, 96, 96, 128, 256, 256]


def _dispatch(arch, backend="auto", head_dim=64, deterministic=False, **opts):
    from flashcore_cupy import backward
    q = spec("q", (2, 4, 100, head_dim))
    k, v = spec("k", (2, 2, 80, head_dim)), spec("v", (2, 2, 80, head_dim))
    p = check_problem(q, k, v, causal=opts.pop("causal", True), scale=None, layout="bhsd", **opts)
    return backward._choose(p, arch, q.strides[:3], deterministic, backend)


def test_hopper_grids_run_a_heads_key_tiles_together():
    """head_group (grid.cuh's grouped_item): with no mask a head's key tiles one after the other
    (the CTAs running at once share one or two heads' rows in L2); under a mask (causal, a
    window, top-left) groups that divide the heads, whose Q, dO and dQ rows fit the L2 budget
    the forward's causal groups keep their K/V within, or single heads."""
    assert _dispatch("sm_90a", causal=False).head_group == 1
    assert _dispatch("sm_90a", causal=False, head_dim=256, softcap=5.0).head_group == 1
    for opts in (dict(), dict(causal=False, window=(16, -1)), dict(causal=False, window=(-1, 0)),
                 dict(causal="top_left")):
        assert _dispatch("sm_90a", **opts).head_group == 4, opts   # all four heads of 100 rows
    for seqlen_q, d_pad, heads, group in ((4096, 128, 16, 4), (4096, 64, 16, 8), (4096, 128, 12, 4),
                                          (4096, 128, 10, 2), (16384, 128, 16, 1), (8192, 256, 16, 1)):
        got = configs.bwd_head_group(True, heads, seqlen_q, d_pad)
        assert got == group and heads % got == 0, (seqlen_q, d_pad, heads, got)
        assert got == 1 or got * seqlen_q * d_pad * 8 <= configs._CAUSAL_GROUP_KV_BYTES
        assert configs.bwd_head_group(False, heads, seqlen_q, d_pad) == 1


def test_dispatch_takes_the_hopper_kernel_where_it_applies():
    assert isinstance(_dispatch("sm_90a"), configs.Sm90BwdConfig)
    assert _dispatch("sm_90a", head_dim=96).head_dim == 96 and _dispatch("sm_90a", head_dim=112).head_dim == 128
    assert isinstance(_dispatch("sm_90a", backend="sm80"), configs.Sm80BwdConfig)
    assert _dispatch("sm_90a", window=(16, 0)).variant == configs.KernelVariant(window=True)
    assert _dispatch("sm_90a", head_dim=128, window=(16, 0), softcap=5.0).variant.softcap
    assert isinstance(_dispatch("sm_90a", window=(16, 0), softcap=5.0), configs.Sm80BwdConfig)   # D64 spills
    assert isinstance(_dispatch("sm_90a", window=(16, 0), softcap=5.0, backend="sm90"), configs.Sm90BwdConfig)
    assert isinstance(_dispatch("sm_90a", deterministic=True), configs.Sm90BwdConfig)
    assert isinstance(_dispatch("sm_90a", deterministic=True, window=(-1, 0)), configs.Sm90BwdConfig)
    assert _dispatch("sm_90a", head_dim=160).head_dim == 256 and _dispatch("sm_90a", head_dim=256).split_d
    assert _dispatch("sm_90a", head_dim=256, window=(16, 0), softcap=5.0).variant.softcap
    for arch, kw in (("sm_80", {}), ("sm_90a", dict(head_dim=256, deterministic=True)),
                     ("sm_90a", dict(deterministic=True, window=(16, 0)))):
        assert isinstance(_dispatch(arch, **kw), configs.Sm80BwdConfig), (arch, kw)
    with pytest.raises(ValueError, match="deterministic=True at head_dim 256"):
        _dispatch("sm_90a", backend="sm90", head_dim=256, deterministic=True)
    with pytest.raises(ValueError, match="backend='sm90' cannot run this backward: deterministic=True with a "
                                         "window's left bound"):
        _dispatch("sm_90a", backend="sm90", deterministic=True, window=(16, 0))
    with pytest.raises(ValueError, match="needs an sm_90 GPU"):
        _dispatch("sm_89", backend="sm90")


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_backward_kernels_compile_without_spills(arch):
    """Every head dim bucket and dtype, plain and for the bounding variants: no spills, within
    the arch's registers and shared memory. The Hopper kernel's variants with a score option
    (softcap, ALiBi, bias) spill: about 1 KB at most and wgmma not serialised where dispatch takes them
    (head dims 96, 128 and 256); at head dim 64 dispatch leaves softcap and bias to the portable kernel.
    Its window alone spills a word at head dim 64 under NVRTC 13.5 (none under 12.9): 16 bytes at most."""
    backward = list(tuning.backward_configs(arch))
    for cfg, report in zip(backward, loader.compile_reports(backward, arch)):
        v = cfg.variant
        if isinstance(cfg, configs.Sm90BwdConfig) and (v.softcap or v.alibi or v.bias != "none"):
            if cfg.head_dim in (96, 128, 256):
                assert report.spill_bytes < 2048 and not report.perf_warnings, (str(cfg), report)
        elif isinstance(cfg, configs.Sm90BwdConfig) and not v.plain:
            assert report.spill_bytes <= 16 and not report.perf_warnings, (str(cfg), report)
        else:
            assert report.spill_bytes == 0 and report.stack_frame_bytes == 0, (arch, str(cfg), report)
        assert report.static_smem_bytes + cfg.smem_bytes <= configs.SMEM_LIMIT[arch], (arch, str(cfg))


def _problem():
    q = spec("q", (2, 4, 100, 64))
    kv = spec("k", (2, 2, 80, 64))
    return check_problem(q, kv, spec("v", (2, 2, 80, 64)), causal=True, scale=None, layout="bhsd")


@pytest.mark.parametrize("lse, exc, words", [
    (spec("lse", (2, 4, 100), np.float16), TypeError, "lse has dtype float16; expected float32"),
    (spec("lse", (2, 4, 99), np.float32), ValueError, r"lse has shape \(2, 4, 99\); expected \(2, 4, 100\)"),
    (spec("lse", (2, 4, 100), np.float32, strides=(800, 200, 1)), ValueError, "lse must be contiguous"),
    (spec("lse", (2, 4, 100), np.float32, device=None), ValueError, "lse is in host memory"),
    (spec("lse", (2, 4, 100), np.float32, device=1), ValueError, "lse is on device 1"),
])
def test_bad_lse_is_named(lse, exc, words):
    with pytest.raises(exc, match=words):
        check_lse(lse, _problem())


def test_gradient_buffers_and_dout_are_held_to_their_arrays():
    p = _problem()
    check_lse(spec("lse", (2, 4, 100), np.float32), p)
    check_out(spec("dout", (2, 4, 100, 64)), p)
    check_out(spec("dk", (2, 2, 80, 64)), p, shape=(2, 2, 80, 64), like="k")
    with pytest.raises(ValueError, match=r"dk has shape \(2, 4, 80, 64\); expected \(2, 2, 80, 64\) \(k's shape"):
        check_out(spec("dk", (2, 4, 80, 64)), p, shape=(2, 2, 80, 64), like="k")
    with pytest.raises(TypeError, match="dout has dtype float32; expected float16"):
        check_out(spec("dout", (2, 4, 100, 64), np.float32), p)
    with pytest.raises(ValueError, match="dq must have a contiguous last dimension"):
        check_out(spec("dq", (2, 4, 100, 64), strides=(25600, 6400, 64, 2)), p)


@pytest.mark.parametrize("kwargs, word", [
    (dict(return_dbias=True), "return_dbias=True needs a bias"),
    (dict(causal="diagonal"), "causal"),
    (dict(layout="bsdh"), "layout"),
])
def test_options_not_built_or_unknown_raise_before_anything_runs(kwargs, word):
    x = np.zeros((1, 1, 8, 64), np.float16)
    with pytest.raises(ValueError, match=word):
        fc.attention_backward(x, x, x, x, x, np.zeros((1, 1, 8), np.float32), **kwargs)


def test_deterministic_must_be_a_bool():
    x = np.zeros((1, 1, 8, 64), np.float16)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        fc.attention_backward(x, x, x, x, x, np.zeros((1, 1, 8), np.float32), deterministic=1)


def test_host_arrays_are_refused_by_name():
    x = np.zeros((1, 1, 8, 64), np.float16)
    with pytest.raises(ValueError, match="q is a NumPy array in host memory"):
        fc.attention_backward(x, x, x, x, x, np.zeros((1, 1, 8), np.float32))


def test_importing_the_package_leaves_torch_alone():
    """torch is never a dependency: only flashcore_cupy.torch (the adapter) imports it."""
    import subprocess
    import sys

    code = "import sys, flashcore_cupy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_step_launches_pack_their_scalars_once_and_addresses_per_call(monkeypatch):
    """A StepLaunch's block holds its scalars from build; start writes the leading address fields
    (every pointer of the schema, none of the rest) and launches it."""
    from flashcore_cupy import launch

    monkeypatch.setattr(launch.loader, "get_function", lambda config, device, arch: 1234)
    launched = []
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    for kernel, (schema, (first, last)) in launch._STEP_SCHEMAS.items():
        n = schema.names.index(last) + 1
        assert schema.names[0] == first and all(f.ctype.endswith("*") for f in schema.fields[:n])
        assert not any(f.ctype.endswith("*") for f in schema.fields[n:])
        scalars = {name: i + 3 for i, name in enumerate(schema.names[n:])} | {"head_dim": 192}
        step = launch.StepLaunch.build(kernel, "fp16", 0, "sm_90a", 100, 5, 2, scalars)
        # bwd_prep: 32 rows a block; bwd_convert: 64 x 64 blocks (2 row blocks x 3 column blocks)
        grid = (4, 5, 2) if kernel == "bwd_prep" else (6, 5, 2)
        assert step.grid == grid
        for call in range(2):
            addresses = tuple(0x1000 * (call + 1) + 16 * i for i in range(n))
            step.start(addresses, stream=77)
            values = schema.struct.unpack_from(step.block.data, 0)
            assert values[:n] == addresses and values[n:] == tuple(scalars[name] for name in schema.names[n:])
            assert launched[-1][0] == 1234 and launched[-1][1:4] == grid and launched[-1][8] == 77


def test_hopper_launch_copies_its_scalars_into_each_block_and_packs_addresses_per_call(monkeypatch):
    """Sm90BwdLaunch: a block per maps' addresses with the scalars (packed once) copied in; each
    call writes the other addresses (POINTERS, in the schema's order) over the last call's."""
    from flashcore_cupy import launch, params

    schema = params.BWD_SM90
    first = schema.names.index("lse")
    assert schema.names[first:first + len(launch.Sm90BwdLaunch.POINTERS)] == launch.Sm90BwdLaunch.POINTERS
    encoded, launched = [], []
    monkeypatch.setattr(launch.tma, "encode_maps", lambda data, dtype, specs, maps: encoded.append(maps))
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    scalars = {name: 7 for name in schema.names[first + len(launch.Sm90BwdLaunch.POINTERS):]}
    run = launch.Sm90BwdLaunch(configs.Sm90BwdConfig("fp16", 64), 99, 0, (2, 3, 4), scalars, ())
    for call, lse in enumerate((0x100, 0x200)):
        run.start((1, 2, 3, 4), dict(lse=lse, dk=0x300 + call), stream=5)
        block = run._blocks[(1, 2, 3, 4)]
        values = dict(zip(schema.names[first:], schema.run("lse")[1].unpack_from(block.data, schema.offsets["lse"])))
        assert values["lse"] == lse and values["dk"] == 0x300 + call and values["delta"] == 0
        assert values["seqlen_q"] == 7 and values["scale"] == 7.0
    run.start((5, 6, 7, 8), dict(lse=0x400), stream=5)   # a second block: the same scalars
    block = run._blocks[(5, 6, 7, 8)]
    values = dict(zip(schema.names[first:], schema.run("lse")[1].unpack_from(block.data, schema.offsets["lse"])))
    assert values["lse"] == 0x400 and values["dk"] == 0 and values["seqlen_q"] == 7 and values["scale"] == 7.0
    assert encoded == [(1, 2, 3, 4), (5, 6, 7, 8)] and len(launched) == 3 and launched[-1][0] == 99


def test_portable_launch_packs_scalars_once_and_addresses_per_call(monkeypatch):
    """Sm80BwdLaunch: its block holds the scalars from the start; each call writes q .. dq_sem
    (the schema's leading fields) and the variant's slope and bias addresses."""
    from flashcore_cupy import launch, params

    schema = params.BWD_SM80
    assert schema.names[:len(launch.Sm80BwdLaunch.POINTERS)] == launch.Sm80BwdLaunch.POINTERS
    launched = []
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    scalars = {n: 5 for n in schema.names if n not in launch.Sm80BwdLaunch.POINTERS + ("alibi", "bias")}
    run = launch.Sm80BwdLaunch(configs.bwd_config("fp16", 64), 9, 0, (1, 2, 3), scalars)
    for call in range(2):
        run.start(dict(q=0x10 + call, dq_sem=0x20, bias=0x30 + call), stream=7)
        values = dict(zip(schema.names, schema.struct.unpack_from(run._block.data, 0)))
        assert values["q"] == 0x10 + call and values["dq_sem"] == 0x20 and values["k"] == 0
        assert values["bias"] == 0x30 + call and values["alibi"] == 0 and values["seqlen_q"] == 5
    assert len(launched) == 2 and launched[-1][0] == 9 and launched[-1][8] == 7


@pytest.mark.parametrize("arch, deterministic, heads_kv", [("sm_90a", False, 4), ("sm_90a", True, 2),
                                                          ("sm_80", False, 2), ("sm_80", True, 4)])
def test_plan_builds_its_launches(monkeypatch, arch, deterministic, heads_kv):
    """_Plan.build for each kernel family (the compile stubbed: the launches' packing runs as on
    a GPU): the prep step, the main kernel's launch and a convert per gradient that needs one."""
    from flashcore_cupy import backward, launch
    from flashcore_cupy.validation import Problem

    monkeypatch.setattr(launch.loader, "get_function", lambda *a, **k: 1)
    p = Problem(batch=2, heads_q=4, heads_kv=heads_kv, seqlen_q=300, seqlen_k=200, head_dim=128, dtype="bf16",
                causal=True, scale=0.1, layout="bhsd", device=0, q_strides=(4 * 300 * 128, 300 * 128, 128),
                k_strides=(heads_kv * 200 * 128, 200 * 128, 128), v_strides=(heads_kv * 200 * 128, 200 * 128, 128))
    config = backward._choose(p, arch, p.q_strides, deterministic, "auto")
    assert isinstance(config, configs.Sm90BwdConfig) == (arch == "sm_90a")
    kv = p.k_strides
    plan = backward._Plan.build(p, config, arch, p.q_strides, p.q_strides, p.q_strides, kv, kv, deterministic,
                                False, None, 200)
    main_kind = launch.Sm90BwdLaunch if arch == "sm_90a" else launch.Sm80BwdLaunch
    assert isinstance(plan.main, main_kind) and isinstance(plan.prep, launch.StepLaunch)
    assert len(plan.converts) == (3 if heads_kv < 4 else 1)
    assert plan.rows % config.block_m == 0 and plan.rows >= 300
