"""The Hopper path's host side: configs, dispatch, tensor-map geometry, generated header (CPU)."""

import ctypes
import dataclasses
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashcore_cupy import configs, launch, params, tma, tuning
from flashcore_cupy.validation import TensorSpec, check_problem

ROOT = Path(__file__).resolve().parent.parent


def problem(q_shape, kv_shape, layout="bhsd", strides=None, causal=False):
    def spec(name, shape):
        st = strides or tuple(int(np.prod(shape[i + 1:])) for i in range(4))
        return TensorSpec(name, shape, st, np.dtype(np.float16), 0, 1 << 20)
    return check_problem(spec("q", q_shape), spec("k", kv_shape), spec("v", kv_shape),
                         causal=causal, scale=None, layout=layout)


def test_geometry_and_name():
    cfg = configs.Sm90FwdConfig("bf16", 128, 128, 2, 2, True)
    assert cfg.name_expression == "fc::flash_fwd_sm90<fc::bf16, 128, 128, 128, 2, 2, true, false, 1, 16>"
    assert (cfg.threads, cfg.block_m) == (384, 128)
    # streamed tiles: Q's two slots, the K and V rings, the barriers and the second slot's
    assert cfg.q_slots == 2
    assert cfg.smem_bytes == 1024 + 2 * 128 * (2 * 128 + 2 * 2 * 128) + 8 * 10 + 16
    assert cfg.smem_bytes <= configs.SMEM_LIMIT["sm_90a"]
    assert cfg.work_tiles(batch=3, heads_q=5, seqlen_q=129) == 2 * 5 * 3
    assert cfg.schedule(batch=3, heads_q=5, seqlen_q=129, num_sms=132, causal=False)[:3] == ((30, 1, 1), 30, 30)
    # 300 tiles: 2 rounds of 132 and 36 left over, which run as 72 sub-tiles of 64 rows
    assert cfg.schedule(batch=3, heads_q=50, seqlen_q=129, num_sms=132, causal=False)[:3] == ((132, 1, 1), 264, 336)
    assert cfg.schedule(batch=3, heads_q=50, seqlen_q=129, num_sms=132, causal=True)[:3] == ((300, 1, 1), 300, 300)


def test_bias_variants_stage_their_tiles_beside_the_ring():
    """A bias variant's shared memory: Q, the ring and barriers, then at the next 128 bytes each
    warp's bias tiles (rows x keys, in the bias's element size), two slots where they fit."""
    base = configs.Sm90FwdConfig("fp16", 128, 128, 2, 2, True)
    half = dataclasses.replace(base, variant=configs.KernelVariant(window=True, bias="16bit"))
    ring_end = 2 * 128 * (128 + 2 * 2 * 128) + 8 * 10
    bias_at = -(-ring_end // 128) * 128
    assert half.bias_slots == 2
    assert half.smem_bytes == 1024 + bias_at + 2 * (8 * 16 * 128 * 2) <= configs.SMEM_LIMIT["sm_90a"]
    # float32 at 128 keys: two slots would pass the limit, one fits (dispatch takes 64 keys there)
    wide = dataclasses.replace(half, variant=configs.KernelVariant(window=True, bias="fp32"))
    assert wide.bias_slots == 1 and wide.smem_bytes == 1024 + bias_at + 8 * 16 * 128 * 4
    assert configs.variant_config(base, wide.variant).block_n == 64
    assert dataclasses.replace(half, variant=configs.KernelVariant(window=True)).smem_bytes == base.smem_bytes


def test_split_keys_config():
    cfg = configs.Sm90FwdConfig("fp16", 64, 128, 4, 2, False, True)
    assert cfg.name_expression == "fc::flash_fwd_sm90<fc::fp16, 64, 64, 128, 4, 2, false, true, 1, 16>"
    assert (cfg.threads, cfg.block_m) == (384, 64)
    assert cfg.smem_bytes == 1024 + 2 * 64 * (64 + 2 * 4 * 128) + 8 * 18
    # its combine reuses the K/V ring, so every work tile is its own CTA, never split further
    assert cfg.schedule(batch=2, heads_q=67, seqlen_q=300, num_sms=132, causal=False)[:3] == \
        ((2 * 67 * 5, 1, 1), 2 * 67 * 5, 2 * 67 * 5)


def test_schedule_splits_a_partial_last_round_into_sub_tiles():
    d64 = configs.Sm90FwdConfig("fp16", 64, 128, 2, 3, True)
    # B2 H16 S4k: 22 x 32 = 704 tiles = 5 rounds of 132 + 44, which fit as 132 sub-tiles
    assert d64.schedule(batch=2, heads_q=16, seqlen_q=4096, num_sms=132, causal=False)[:3] == \
        ((132, 1, 1), 660, 660 + 3 * 44)
    # 45 left over would need 135 sub-tiles: not split; causal problems never are
    assert d64.schedule(batch=1, heads_q=1, seqlen_q=192 * 177, num_sms=132, causal=False).items == 177
    assert d64.schedule(batch=2, heads_q=16, seqlen_q=4096, num_sms=132, causal=True).items == 704
    single = configs.Sm90FwdConfig("fp16", 64, 128, 2, 1, False)
    assert single.schedule(batch=1, heads_q=133, seqlen_q=64, num_sms=132, causal=False).items == 133


@pytest.mark.parametrize("head_dim, bucket", [(8, 64), (64, 64), (72, 96), (96, 96), (128, 128),
                                              (136, 192), (192, 192), (200, 256), (256, 256)])
def test_head_dims_round_up_to_a_built_width(head_dim, bucket):
    assert configs.sm90_config("fp16", head_dim).head_dim == bucket


def test_dispatch_table():
    kw = dict(arch="sm_90a", dtype="fp16", num_sms=132)
    hopper = configs.choose_kernel(head_dim=128, batch_heads=32, seqlen_q=4096, **kw)
    assert isinstance(hopper, configs.Sm90FwdConfig) and hopper.block_m == 128
    assert configs.choose_kernel(head_dim=64, batch_heads=32, seqlen_q=4096, **kw).block_m == 192
    # grids that leave SMs idle take 64-row split tiles (decode always), or 32-row ones of
    # 8-row warps where those fit in one wave (the mission shape: 128 CTAs)
    for hd, bh, sq, block_m in ((64, 8, 512, 32), (128, 8, 512, 32), (64, 16, 512, 64),
                                (128, 256, 1, 64), (64, 8, 64, 64), (64, 4, 1056, 32)):
        small = configs.choose_kernel(head_dim=hd, batch_heads=bh, seqlen_q=sq, **kw)
        assert isinstance(small, configs.Sm90FwdConfig) and small.split, (hd, bh, sq)
        assert small.block_m == block_m and small.warp_rows == block_m // 4, (hd, bh, sq)
    # every head dim the library takes (up to 256) runs on it, at the next built width
    for hd, width in ((80, 96), (96, 96), (160, 192), (192, 192), (256, 256)):
        wide = configs.choose_kernel(head_dim=hd, batch_heads=32, seqlen_q=4096, **kw)
        assert isinstance(wide, configs.Sm90FwdConfig) and wide.head_dim == width and wide.block_m == 128
        assert wide.smem_bytes <= configs.SMEM_LIMIT["sm_90a"]
    assert isinstance(configs.choose_kernel(head_dim=128, batch_heads=32, seqlen_q=4096, sm90="off", **kw),
                      configs.Sm80FwdConfig)
    # other archs never get it from auto
    assert isinstance(configs.choose_kernel("sm_80", "fp16", 128, 32, 4096, 108), configs.Sm80FwdConfig)
    assert {c for c in configs.all_configs("sm_90a") if isinstance(c, configs.Sm90FwdConfig)} == \
        {configs.sm90_config(dt, hd, g) for dt in configs.DTYPES for hd in configs.SM90_HEAD_DIMS
         for g in configs.SM90_GRIDS} | \
        {configs.with_value_dim(configs.sm90_config(dt, 192, g), 192, 128) for dt in configs.DTYPES
         for g in configs.SM90_GRIDS}
    assert not any(isinstance(c, configs.Sm90FwdConfig) for c in configs.all_configs("sm_80"))


def test_encode_maps_passes_each_spec_to_the_driver(monkeypatch):
    """encode_maps: one cuTensorMapEncodeTiled a map, 128 bytes apart, at the given addresses,
    with the spec's dims, strides and box (arrays built once per spec), unit element strides,
    128B swizzle, zero fill; a failing CUresult raises naming the spec."""
    calls = []

    def driver(dest, dtype, rank, ptr, dims, strides, box, steps, *modes):
        calls.append((dest, dtype, rank, ptr, tuple(dims), tuple(strides), tuple(box), tuple(steps), modes))
        return 0 if ptr else 1

    monkeypatch.setattr(tma, "_encode", lambda: driver)
    monkeypatch.setattr(tma, "_replace", lambda: None)   # a driver without it: every map encoded
    q, k, _ = launch.sm90_map_specs(problem((2, 8, 100, 128), (2, 2, 80, 128)), configs.sm90_config("bf16", 128))
    block = launch.ParamBlock(params.FWD_SM90.size)
    for _ in range(2):
        tma.encode_maps(block.data, "bf16", (q, k), (1 << 20, 2 << 20))
    at = block.data.ctypes.data
    assert calls[0] == (at, 9, 4, 1 << 20, q.dims, q.strides, q.box, (1, 1, 1, 1), (0, 3, 3, 0))
    assert calls[1] == (at + tma.MAP_BYTES, 9, 4, 2 << 20, k.dims, k.strides, k.box, (1, 1, 1, 1), (0, 3, 3, 0))
    assert calls[2:] == calls[:2] and tma._geometry(q) is tma._geometry(q)
    with pytest.raises(RuntimeError, match="cuTensorMapEncodeTiled.*failed with CUresult 1"):
        tma.encode_maps(block.data, "bf16", (q,), (0,))


def test_encode_maps_reaims_a_specs_first_map(monkeypatch):
    """A spec's first map is the driver's encode; a later one (any block) is that map copied and
    re-aimed by cuTensorMapReplaceAddress, byte for byte what an encode at the new address gives;
    where the re-aim fails the encode runs (and raises on an address it refuses too); past the
    limit the oldest spec's map is dropped. The fake driver writes a map as its fields."""
    encodes, replaces = [], []
    layout = struct.Struct("<QQ4Q3Q4I")   # ptr, dtype, dims, strides, box

    def encode(dest, dtype, rank, ptr, dims, strides, box, steps, *modes):
        encodes.append((dest, ptr))
        ctypes.memmove(dest, layout.pack(ptr, dtype, *dims, *strides, *box), layout.size)
        return 0 if ptr % 16 == 0 else 1

    def replace(dest, ptr):
        replaces.append((dest, ptr))
        if ptr % 16:
            return 1
        ctypes.memmove(dest, struct.pack("<Q", ptr), 8)
        return 0

    monkeypatch.setattr(tma, "_encode", lambda: encode)
    monkeypatch.setattr(tma, "_replace", lambda: replace)
    monkeypatch.setattr(tma, "_templates", {})
    q, k, _ = launch.sm90_map_specs(problem((2, 8, 100, 128), (2, 2, 80, 128)), configs.sm90_config("bf16", 128))
    first, second = (launch.ParamBlock(params.FWD_SM90.size) for _ in range(2))
    tma.encode_maps(first.data, "bf16", (q, k), (1 << 20, 2 << 20))
    assert [p for _, p in encodes] == [1 << 20, 2 << 20] and not replaces
    tma.encode_maps(second.data, "bf16", (q, k), (3 << 20, 4 << 20))
    at = second.data.ctypes.data
    assert len(encodes) == 2 and replaces == [(at, 3 << 20), (at + tma.MAP_BYTES, 4 << 20)]
    reaimed = second.data[:2 * tma.MAP_BYTES].copy()
    monkeypatch.setattr(tma, "_replace", lambda: None)   # the same maps encoded directly
    tma.encode_maps(second.data, "bf16", (q, k), (3 << 20, 4 << 20))
    assert (second.data[:2 * tma.MAP_BYTES] == reaimed).all()
    assert layout.unpack_from(reaimed.tobytes())[:2] == (3 << 20, 9)

    monkeypatch.setattr(tma, "_replace", lambda: replace)
    with pytest.raises(RuntimeError, match=r"cuTensorMapEncodeTiled\(MapSpec.*failed with CUresult 1"):
        tma.encode_maps(second.data, "bf16", (q,), ((5 << 20) + 8,))
    assert replaces[-1] == (at, (5 << 20) + 8) and encodes[-1] == (at, (5 << 20) + 8)
    monkeypatch.setattr(tma, "_TEMPLATE_LIMIT", 2)
    other = launch.sm90_map_specs(problem((2, 8, 64, 128), (2, 2, 80, 128)), configs.sm90_config("bf16", 128))[0]
    tma.encode_maps(first.data, "bf16", (other,), (1 << 20,))
    assert list(tma._templates) == [("bf16", k), ("bf16", other)]


def test_map_specs_follow_both_layouts():
    bhsd = problem((2, 8, 100, 128), (2, 2, 80, 128))
    q, k, v = launch.sm90_map_specs(bhsd, configs.sm90_config("fp16", 128))
    assert q == tma.MapSpec((128, 100, 8, 2), (256, 100 * 256, 8 * 100 * 256), (64, 128, 1, 1))
    assert k == v == tma.MapSpec((128, 80, 2, 2), (256, 80 * 256, 2 * 80 * 256), (64, 128, 1, 1))
    bshd = problem((2, 100, 8, 64), (2, 80, 2, 64), layout="bshd")
    q, k, _ = launch.sm90_map_specs(bshd, configs.sm90_config("fp16", 64))
    assert q.dims == (64, 100, 8, 2) and q.strides == (8 * 128, 128, 100 * 8 * 128)
    assert k.strides == (2 * 128, 128, 80 * 2 * 128)


def test_decode_packs_each_gqa_group_into_one_tile(monkeypatch):
    """Sq = 1 with 2..64 query heads per kv head: tiles are (batch, kv head)s whose rows are
    the group's query heads (a Q box of block_m heads at the one position); the kernel sees
    Hkv heads, no head division for K/V, and no causal mask (one query sees every key)."""
    monkeypatch.setattr(launch.loader, "get_function", lambda config, device, arch, defines=(): 1)
    cfg = configs.sm90_config("fp16", 128, "small")
    decode = problem((8, 32, 1, 128), (8, 8, 8192, 128), causal=True)
    assert launch.gqa_pack(decode, cfg) == 4
    # 8-row warps never pack (their Q boxes are rows of one head)
    assert launch.gqa_pack(decode, configs.sm90_config("fp16", 128, "tiny")) == 1
    q, k, _ = launch.sm90_map_specs(decode, cfg)
    assert q.box == (64, 1, cfg.block_m, 1) and k.box == (64, cfg.block_n, 1, 1)
    run = launch.Sm90FwdLaunch.build(decode, cfg, "sm_90a", 132, (32 * 128, 128, 128), False)
    s = run.scalars
    assert (s["causal"], s["heads"], s["batch"], s["m_blocks"], s["n_items"], s["pack"]) == (0, 8, 8, 1, 64, 4)
    assert run.grid == (64, 1, 1)
    assert s["by_heads_per_kv"] == launch.fast_divisor(1) and run.out_shape == (8, 32, 1, 128)
    # not packed: more than one query, MHA, or a group over one consumer's 64 rows
    for q_shape, kv_shape in (((8, 32, 2, 128), (8, 8, 64, 128)), ((8, 8, 1, 128), (8, 8, 64, 128)),
                              ((1, 65, 1, 128), (1, 1, 64, 128))):
        p = problem(q_shape, kv_shape)
        assert launch.gqa_pack(p, cfg) == 1 and launch.sm90_map_specs(p, cfg)[0].box == (64, 64, 1, 1)
        assert launch.Sm90FwdLaunch.build(p, cfg, "sm_90a", 132, (1, 1, 1), False).scalars["pack"] == 1


def test_eight_row_warps_load_q_per_warp_slice():
    """32-row split tiles: Q comes as one 8-row box per warp slice, into the first 8 of
    its 16 rows in a 64-row Q region (shared memory as for 64 rows), and the combine
    trades one row half."""
    tiny, small = configs.sm90_config("fp16", 64, "tiny"), configs.sm90_config("fp16", 64, "small")
    assert (tiny.block_m, tiny.q_box_rows, small.q_box_rows) == (32, 8, 64)
    assert tiny.smem_bytes == small.smem_bytes and tiny.combine_bytes * 2 == small.combine_bytes
    assert tiny.name_expression.endswith(", true, 1, 8>") and str(tiny).endswith("split w8")
    p = problem((1, 8, 100, 64), (1, 8, 512, 64))
    assert launch.sm90_map_specs(p, tiny)[0].box == (64, 8, 1, 1)
    assert tiny.schedule(1, 8, 100, 132, False).grid == (8 * 4, 1, 1)
    assert tuning.static_reason(configs.Sm90FwdConfig("fp16", 64, 128, 2, 2, True, warp_rows=8),
                                "sm_90a") == "8-row warps need split tiles"


def test_size_one_dims_get_a_legal_stride():
    spec = tma.map_spec((1, 1, 50, 64), (0, 0, 64), 2, 128)
    assert spec.strides == (128, 128 * 50, 128 * 50) and tma.unsupported_reason(spec) is None


def test_a_value_head_dim_of_its_own_takes_both_widths():
    """D != Dv: the Hopper config holds Q/K's and V's built widths (the MLA pair on its own tile,
    128 keys), the portable one spans both (unchanged); V's map and the shared memory follow Dv."""
    wide = configs.sm90_config("bf16", 192)
    mla = configs.with_value_dim(wide, 192, 128)
    assert (mla.head_dim, mla.dv, mla.block_n) == (192, 128, 128) and mla.smem_bytes <= configs.SMEM_LIMIT["sm_90a"]
    assert "fc::bf16, 192, 128, 128," in mla.name_expression and str(mla).startswith("sm90 bf16 D192/128 ")
    assert configs.with_value_dim(wide, 192, 192) == wide
    narrow_q = configs.with_value_dim(configs.sm90_config("fp16", 128), 40, 72)
    assert (narrow_q.head_dim, narrow_q.dv) == (64, 96)
    portable = configs.choose_sm80_config("sm_80", "fp16", 192)
    assert configs.with_value_dim(portable, 192, 128) == portable
    with pytest.raises(ValueError, match="head_dim_v"):
        dataclasses.replace(wide, head_dim_v=192)
    p = problem((2, 8, 100, 192), (2, 2, 80, 192))
    p = dataclasses.replace(p, head_dim_v=128)
    assert p.out_shape == (2, 8, 100, 128)
    q_spec, k_spec, v_spec = launch.sm90_map_specs(p, mla)
    assert k_spec.dims[0] == 192 and v_spec.dims[0] == 128 and q_spec.dims[0] == 192


def test_blockers_name_the_reason():
    ok = problem((2, 8, 100, 128), (2, 2, 80, 128))
    assert launch.sm90_blocker(ok, "sm_90a") is None
    assert "sm_90" in launch.sm90_blocker(ok, "sm_80")
    assert launch.sm90_blocker(problem((1, 2, 64, 256), (1, 2, 64, 256)), "sm_90a") is None
    # a broadcast (stride 0) key/value head axis cannot be a TMA stride
    bcast = problem((1, 4, 64, 64), (1, 4, 64, 64), strides=(4 * 64 * 64, 0, 64, 1))
    assert "stride" in launch.sm90_blocker(bcast, "sm_90a")


def test_the_work_record_build_compiles():
    """The debug build the GPU tests read the kernel's schedule from (FLASHCORE_RECORD_WORK)
    compiles for sm_90a, split and persistent tiles alike (NVRTC, no GPU)."""
    from flashcore_cupy import loader

    for cfg in (configs.sm90_config("fp16", 64, "tiny"), configs.sm90_config("bf16", 128)):
        assert loader.compile_only(cfg, "sm_90a", ("FLASHCORE_RECORD_WORK=4096",)).spill_bytes == 0


def test_generated_wgmma_header_is_current():
    out = subprocess.run([sys.executable, "-c",
                          "import runpy; print(runpy.run_path('scripts/gen_wgmma.py', run_name='x')['render']())"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.rstrip("\n") == (ROOT / "kernels" / "wgmma_sm90.cuh").read_text().rstrip("\n")


def _script(name: str) -> dict:
    import runpy
    return runpy.run_path(str(ROOT / "scripts" / "dev" / name), run_name="x")


def test_ablation_builds_compile():
    """scripts/dev/ablate_sm90.py's copies are builds with kernels/diagnostics.cuh's
    FLASHCORE_ABLATE_* switches (and FLASHCORE_O_STORE32): each compiles for sm_90a (NVRTC, no
    GPU) for the large, split and ping-pong tiles."""
    from flashcore_cupy import loader

    variants = _script("ablate_sm90.py")["VARIANTS"]
    assert variants[0][1] == () and len(variants) == 9
    alibi = configs.variant_config(configs.sm90_config("fp16", 128), configs.KernelVariant(window=True, alibi=True))
    for _, defines in variants[1:]:
        for cfg in (configs.sm90_config("fp16", 64), configs.sm90_config("fp16", 128),
                    configs.sm90_config("fp16", 64, "small"), alibi):
            loader.compile_only(cfg, "sm_90a", defines)


def test_schedule_probe_build_compiles():
    """scripts/dev/schedule_probe.py's dynamic deal is the -DFLASHCORE_DYNAMIC build of the Hopper
    kernel (the varlen kernel's deal on dense tiles): it compiles (NVRTC, no GPU) for a plain and a
    variant tile with no static shared memory (its slots follow the barriers, in the bytes the
    probe adds, as a varlen config counts them: a static array would cost 1024, past 227 KB at
    128x192)."""
    from flashcore_cupy import loader

    probe = _script("schedule_probe.py")
    window = configs.variant_config(configs.sm90_config("fp16", 128), configs.KernelVariant(window=True))
    for cfg in (configs.sm90_config("fp16", 128), window):
        report = loader.compile_only(cfg, "sm_90a", probe["DYNAMIC"])
        assert report.spill_bytes == 0 and report.static_smem_bytes == 0, (str(cfg), report)
    assert probe["_ITEM_SLOTS_BYTES"] == configs.SM90_ITEM_SLOT_BYTES == 8 * 4 + 4 * 2
    for hd in (64, 128):   # the probe's dense tiles (unstreamed, the deal's slots) as a varlen config counts them
        varlen = configs.sm90_varlen_config("fp16", hd)
        counted = varlen.smem_bytes
        with probe["probe_build"](persistent=True, dynamic=True):
            assert dataclasses.replace(varlen, seq="dense").smem_bytes == counted
        assert dataclasses.replace(varlen, seq="dense").q_slots == 2   # restored on leaving


def test_every_trace_point_is_stamped_once_and_the_trace_build_compiles():
    """scripts/dev/trace_sm90.py reads FC_TRACE points: each of its points is stamped exactly
    once in the Hopper kernel's sources, and the FLASHCORE_TRACE build compiles (NVRTC, no GPU)."""
    import re

    from flashcore_cupy import loader

    trace = _script("trace_sm90.py")
    src = "".join(f.read_text() for f in sorted((ROOT / "kernels").glob("*sm90*")))
    stamped = [int(n) for n in re.findall(r"FC_TRACE\((\d+)\)", src)]
    assert sorted(stamped) == sorted(point for point, _ in trace["POINTS"])
    assert sorted(int(n) for n in re.findall(r"FC_TRACE_NS\((\d+)\)", src)) == [trace["ENTRY_NS"], trace["EXIT_NS"]]
    loader.compile_only(configs.Sm90FwdConfig("fp16", 64, 128, 4, 2, False, True), "sm_90a", trace["TRACE"])


def test_every_item_point_is_stamped_and_the_item_trace_build_compiles():
    """scripts/dev/item_trace.py reads FC_ITEM points: the consumers' in flash_fwd_sm90.cu (the
    end twice: an item's rows, or none), the producer's in sm90_producer.cuh, the values of
    FC_ITEM_SET and FC_ITEM_WHERE at the script's indices; the FLASHCORE_TRACE_ITEMS build of a
    plain, a window and a varlen tile compiles without spills (NVRTC, no GPU)."""
    import re

    from flashcore_cupy import loader

    items = _script("item_trace.py")
    fwd = (ROOT / "kernels" / "flash_fwd_sm90.cu").read_text()
    producer = (ROOT / "kernels" / "sm90_producer.cuh").read_text()
    diagnostics = (ROOT / "kernels" / "diagnostics.cuh").read_text()
    assert sorted(int(n) for n in re.findall(r"FC_ITEM\(i, (\d+)\)", fwd)) == sorted(
        [items[n] for n in ("START", "Q_LANDED", "FIRST_READY", "LAST_PV", "END")] + [items["END"]])
    assert re.findall(r"FC_ITEM_SET\(i, (\d+), my_blocks\)", fwd) == [str(items["BLOCKS"])]
    assert "FC_ITEM_WHERE(i)" in fwd and f"FC_ITEM_SET(i, {items['WHERE']}, " in diagnostics
    assert sorted(int(n) for n in re.findall(r"FC_ITEM\(i, (\d+)\)", producer)) == sorted(
        items[n] for n in ("P_START", "P_Q_ISSUED", "P_KV_ISSUED"))
    assert f"#define FC_ITEM_POINTS {items['POINTS']}" in diagnostics
    window = configs.variant_config(configs.sm90_config("fp16", 128), configs.KernelVariant(window=True), sides=(1023, 0))
    for cfg in (configs.sm90_config("fp16", 128), window, configs.sm90_varlen_config("fp16", 128)):
        report = loader.compile_only(cfg, "sm_90a", items["TRACE"])
        assert report.spill_bytes == 0, (str(cfg), report)


def _rows_of_item(cfg, p, i):
    """((batch, head), range of rows) of work item i, by Sm90FwdConfig.work_tile (the kernel's
    work_tile in Python: the GPU tests compare the two on a debug build's record)."""
    w = cfg.work_tile(i, seqlen_q=p["seqlen_q"], seqlen_k=p["seqlen_q"], causal=False, heads=p["heads"],
                      m_blocks=p["m_blocks"], group=p["group"], tail_start=p["tail_start"])
    rows = max(0, min(64 if i >= p["tail_start"] else cfg.block_m, p["seqlen_q"] - w.row0))
    return (w.batch, w.head), range(w.row0, w.row0 + rows)


@pytest.mark.parametrize("cfg", [configs.Sm90FwdConfig("fp16", 64, 128, 2, 3, True),
                                 configs.Sm90FwdConfig("fp16", 128, 192, 2, 2, True),
                                 configs.Sm90FwdConfig("fp16", 64, 128, 4, 2, False, True)], ids=str)
def test_work_items_cover_every_row_once(cfg):
    rng = np.random.default_rng(0)
    for _ in range(200):
        batch, heads, seqlen_q = int(rng.integers(1, 4)), int(rng.integers(1, 80)), int(rng.integers(1, 1500))
        sms, causal = int(rng.choice([8, 114, 132])), bool(rng.integers(2))
        plan = cfg.schedule(batch, heads, seqlen_q, sms, causal, int(rng.choice([0, 1 << 20, 1 << 30])))
        assert plan.group == 1 or (causal and not cfg.split and (batch * heads) % plan.group == 0)
        p = dict(tail_start=plan.tail_start, m_blocks=-(-seqlen_q // cfg.block_m), seqlen_q=seqlen_q,
                 heads=heads, group=plan.group)
        seen = np.zeros((batch, heads, seqlen_q), int)
        for i in range(plan.items):
            (b, h), rows = _rows_of_item(cfg, p, i)
            seen[b, h, rows.start:rows.stop] += 1
        assert (seen == 1).all(), (batch, heads, seqlen_q, sms, causal)
        assert plan.grid[0] == (plan.items if causal or cfg.split else min(plan.items, sms))


@pytest.mark.parametrize("hd", [64, 128, 256])
def test_varlen_items_cover_every_row_once_longest_first(hd):
    """The Hopper varlen launch's items (Sm90FwdConfig.varlen_work_tiles, the kernel's
    varlen_item in Python): within the grid varlen.py sizes (ceil(total_q / block_m) + B row
    blocks a head) every (sequence, head, row) once, each sequence's causal tiles longest first,
    the rest past the sequences' (batch -1); over 32 sequences (the kernel's scan steps) and with empty ones."""
    cfg = configs.sm90_varlen_config("fp16", hd)
    assert cfg.seq == "varlen" and not cfg.split and "fc::Varlen" in cfg.name_expression
    rng = np.random.default_rng(hd)
    for _ in range(100):
        batch, heads = int(rng.integers(1, 80)), int(rng.integers(1, 6))
        lengths_q = rng.integers(0, 700, batch) * (rng.random(batch) > 0.2)
        lengths_k = rng.integers(0, 900, batch)
        causal = bool(rng.integers(2))
        items = (-(-int(lengths_q.sum()) // cfg.block_m) + batch) * heads
        tiles = cfg.varlen_work_tiles(list(lengths_q), list(lengths_k), heads, causal, items)
        seen = [np.zeros((heads, n), int) for n in lengths_q]
        last = {}
        for w in tiles:
            if w.consumers == 0:
                assert w == configs.WorkTile(0, 0, -1, 0, 0)   # past the sequences' items
                continue
            rows = min(cfg.block_m, lengths_q[w.batch] - w.row0)
            assert 0 < rows and -(-rows // 64) == w.consumers
            seen[w.batch][w.head, w.row0:w.row0 + rows] += 1
            if causal:   # within a sequence, key tiles never grow from one item to the next
                assert w.n_blocks <= last.get(w.batch, w.n_blocks)
                last[w.batch] = w.n_blocks
            sk, sq = lengths_k[w.batch], lengths_q[w.batch]
            kv_end = min(sk, w.row0 + rows + sk - sq) if causal else sk
            assert w.n_blocks == max(0, -(-kv_end // cfg.block_n))
        assert all((s == 1).all() for s in seen), (batch, heads, causal)


def test_causal_tiles_come_longest_first_over_groups_of_heads():
    """B2 H16 S4k D128 causal: groups of 8 heads (16 MB of K/V), each group's tiles longest
    first, so the grid ends on each group's shortest tiles; non-causal keeps group 1."""
    cfg = configs.Sm90FwdConfig("fp16", 128, 192, 2, 2, True)
    kv = 2 * 4096 * 128 * 2
    assert configs.causal_group(32, kv) == 8 and configs.causal_group(16, 4 * kv) == 2
    assert configs.causal_group(6, 1) == 6 and configs.causal_group(7, 1) == 7   # divisors only
    assert cfg.schedule(2, 16, 4096, 132, False, kv).group == 1
    plan = cfg.schedule(2, 16, 4096, 132, True, kv)
    m_blocks = 4096 // cfg.block_m
    p = dict(tail_start=plan.tail_start, m_blocks=m_blocks, seqlen_q=4096, heads=16, group=plan.group)
    items = [_rows_of_item(cfg, p, i) for i in range(plan.items)]
    for g in range(32 // plan.group):
        group = items[g * plan.group * m_blocks:(g + 1) * plan.group * m_blocks]
        assert len({bh for bh, _ in group}) == plan.group
        lengths = [rows.stop for _, rows in group]   # causal keys seen grow with the last row
        assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("config", [configs.sm90_config("fp16", 128), configs.sm90_config("fp16", 64, "small")],
                         ids=str)
@pytest.mark.parametrize("diag, left, right", [(0, -1, 0), (3000, 1023, 0), (-200, 100, 50), (0, 40, -1),
                                               (222, -1, -1), (0, 5000, 5000), (-900, 10, 0)])
def test_window_work_tiles_hold_every_visible_key_and_no_empty_tile(config, diag, left, right):
    """A variant's work tile (its window's key tiles, first .. first + n_blocks - 1, the Python
    mirror of variant.cuh's window_tiles) covers every key its rows see (reference.visible),
    and its first and last tiles hold a visible key: the kernel loads nothing it masks whole."""
    from flashcore_cupy import reference

    seqlen_q, seqlen_k = 700, 3700 if diag == 3000 else 1000
    m_blocks = -(-seqlen_q // config.block_m)
    causal = None if right != 0 else ("top_left" if diag == 0 else "bottom_right")
    off = seqlen_k - seqlen_q if causal == "bottom_right" else diag
    # the reference's mask where its options express (off, left, right)
    keep_all = (reference.visible(np.arange(seqlen_q), seqlen_q, seqlen_k, False, (left, right))
                if off == seqlen_k - seqlen_q else
                reference.visible(np.arange(seqlen_q), seqlen_q, seqlen_k, "top_left", (left, -1))
                if off == 0 and right == 0 else None)
    for i in range(m_blocks):
        w = config.work_tile(i, seqlen_q=seqlen_q, seqlen_k=seqlen_k, causal=False, heads=1, m_blocks=m_blocks,
                             group=1, tail_start=m_blocks, window=(off, left, right))
        rows = np.arange(w.row0, min(seqlen_q, w.row0 + config.block_m))
        j = np.arange(seqlen_k)[None, :]
        d = rows[:, None] + off
        keep = np.ones((len(rows), seqlen_k), bool)
        if left >= 0:
            keep &= j >= d - left
        if right >= 0:
            keep &= j <= d + right
        if keep_all is not None:
            assert (keep == keep_all[rows]).all()   # the brute force is the reference's mask
        keys = np.nonzero(keep.any(axis=0))[0]
        if len(keys) == 0:
            assert w.n_blocks == 0
            continue
        tiles = keys // config.block_n
        assert w.first == tiles.min() and w.first + w.n_blocks - 1 == tiles.max(), (i, w)


def test_narrow_windows_take_128_key_tiles():
    """configs.window_config: a Hopper window variant whose tiles' rows see at most
    NARROW_WINDOW_KEYS keys takes 128-key tiles; wider or one-sided windows, plain problems and
    the portable kernel keep theirs."""
    wide = configs.Sm90FwdConfig("fp16", 128, 192, 2, 2, True, variant=configs.KernelVariant(window=True))
    assert configs.window_config(wide, 1023 + 1 + 128).block_n == 128
    assert configs.window_config(wide, 4095 + 1 + 128) == wide
    assert configs.window_config(wide, None) == wide
    plain = dataclasses.replace(wide, variant=configs.PLAIN)
    assert configs.window_config(plain, 100) == plain
    portable = configs.Sm80FwdConfig("fp16", 128, 4, 1, 64, 2, variant=configs.KernelVariant(window=True))
    assert configs.window_config(portable, 100) == portable
    # the narrowed tile is one dispatch compiles for `check --variants` (and the GPU tests ran)
    assert configs.window_config(wide, 1152) in tuning.variant_configs("sm_90a")


def test_item_trace_splits_a_consumers_time_into_its_parts():
    """scripts/dev/item_trace.py's consumer_parts on a made-up record: two items of one persistent
    CTA and a CTA alone on another SM, and an item whose consumer had no rows there: each part's
    cycles as the points give them, the gap measured on the same SM only."""
    items = _script("item_trace.py")
    t = np.zeros((8, 4, items["POINTS"]), np.int64)

    def item(i, sm, cta, start, q, first, last_pv, end, blocks):
        t[i, 1, [items["START"], items["Q_LANDED"], items["FIRST_READY"], items["LAST_PV"], items["END"],
                 items["BLOCKS"]]] = (start, q, first, last_pv, end, blocks)
        t[i, 1, items["WHERE"]] = cta << 32 | sm

    item(0, 0, 0, 1000, 1100, 1300, 2300, 2500, 5)
    item(3, 0, 0, 2600, 2700, 2900, 3900, 4100, 5)   # the next item of CTA 0: a gap of 100
    item(1, 7, 1, 5000, 5400, 5600, 5800, 5850, 3)   # alone on SM 7
    item(2, 7, 2, 6000, 6050, 0, 0, 6090, 0)         # no key tiles: its tail from Q landed
    per, steps = items["consumer_parts"](t, 1)
    assert per["gap"] == [100, 150]
    assert sorted(per["Q wait"]) == [50, 100, 100, 400]
    assert sorted(per["ramp"]) == [200, 200, 200] and sorted(per["steps"]) == [200, 1000, 1000]
    assert sorted(per["tail"]) == [40, 50, 200, 200]
    assert sorted(steps) == [100, 250, 250]


def test_item_trace_takes_the_persistent_dynamic_grid_for_flashcore_dynamic():
    """item_trace.py's --define FLASHCORE_DYNAMIC on a dense row: inside its _schedule the Hopper
    config takes schedule_probe.py's persistent grid (causal tiles: a CTA an SM) and the item
    slots' shared memory, both restored after; without the switch nothing changes."""
    items = _script("item_trace.py")
    cfg = configs.sm90_config("fp16", 128)
    shipped_grid = cfg.schedule(4, 16, 1024, 132, True).grid
    shipped_smem = cfg.smem_bytes
    with items["_schedule"](True):
        assert cfg.schedule(4, 16, 1024, 132, True).grid == (132, 1, 1) != shipped_grid
        # unstreamed (one Q slot of 128 rows x 128 columns, and its barrier, fewer) and the item slots
        assert cfg.smem_bytes == shipped_smem - (2 * 128 * 128 + 16) + configs.SM90_ITEM_SLOT_BYTES
    with items["_schedule"](False):
        assert cfg.schedule(4, 16, 1024, 132, True).grid == shipped_grid
    assert cfg.smem_bytes == shipped_smem and cfg.schedule(4, 16, 1024, 132, True).grid == shipped_grid
