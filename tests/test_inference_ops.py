"""attention_varlen and attention_kvcache on the CPU: validation before any launch (naming the
argument), the problems and cache layouts it describes, the kernels' configs, the split choice,
the host checks of device metadata, and the launches' packing."""

import numpy as np
import pytest

from flashcore_cupy import configs, launch, metadata, params, split
from flashcore_cupy.split import choose_splits, resident_ctas
from flashcore_cupy.validation import TensorSpec, check_kvcache, check_varlen

F16, I32, F32 = np.dtype(np.float16), np.dtype(np.int32), np.dtype(np.float32)


def spec(name, shape, dtype=F16, device=0, strides=None, ptr=1 << 20):
    if strides is None:
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return TensorSpec(name, tuple(shape), tuple(strides), np.dtype(dtype), device, ptr)


def varlen(total_q=300, total_k=500, hq=8, hkv=2, d=128, batch=3, **changes):
    args = dict(q=spec("q", (total_q, hq, d)), k=spec("k", (total_k, hkv, d)), v=spec("v", (total_k, hkv, d)),
                cu_seqlens_q=spec("cu_seqlens_q", (batch + 1,), I32), cu_seqlens_k=spec("cu_seqlens_k", (batch + 1,), I32))
    opts = dict(causal=True, scale=None, window=None, softcap=0.0, alibi_slopes=None)
    for name, value in changes.items():
        (args if name in args else opts)[name] = value
    return check_varlen(*args.values(), **opts)


def test_the_hopper_kernel_takes_varlen_calls_with_keys():
    """sm90_varlen_blocker: on sm_90a every call (plain or with a softcap, ALiBi or a window) with
    keys and maps the driver takes (validation's 16-byte rows are TMA's), on the variant's tile
    with the varlen policy; no keys or another arch are refused with the reason (backend='sm90'
    raises it; 'auto' runs the portable kernel)."""
    from flashcore_cupy.varlen import sm90_varlen_blocker

    for d in (64, 96, 128, 256):
        assert sm90_varlen_blocker(varlen(d=d)[0], "sm_90a") is None
        assert sm90_varlen_blocker(varlen(d=d, causal=False)[0], "sm_90a") is None
    assert "sm_90" in sm90_varlen_blocker(varlen()[0], "sm_80")
    for opts in (dict(softcap=3.0), dict(window=(64, 0)), dict(alibi_slopes=spec("alibi_slopes", (8,), F32))):
        p = varlen(**opts)[0]
        assert sm90_varlen_blocker(p, "sm_90a") is None, opts
        cfg = configs.sm90_varlen_config("fp16", 128, p.kernel_variant)
        assert cfg.seq == "varlen" and cfg.variant == p.kernel_variant and cfg.consumers == 2, opts
    assert "no rows" in sm90_varlen_blocker(varlen(total_k=0)[0], "sm_90a")
    with pytest.raises(ValueError, match="no bias"):
        configs.sm90_varlen_config("fp16", 128, configs.KernelVariant(window=True, bias="16bit"))


def test_the_varlen_kernel_choice_asks_the_device_once_per_problem(monkeypatch):
    """attention_varlen's choice of kernel (_hopper_config) asks the device once per problem and
    backend, not per call; backend="sm90" where the Hopper kernel cannot run raises naming why."""
    from flashcore_cupy import api, varlen as vl

    asked = []

    def device_info(device):
        asked.append(device)
        return api.DeviceInfo("H200", (9, 0), "sm_90a", 132)

    monkeypatch.setattr(api, "device_info", device_info)
    vl._hopper_config.cache_clear()
    try:
        p = varlen()[0]
        for _ in range(3):
            assert vl._hopper_config(p, "auto") == configs.sm90_varlen_config("fp16", 128)
        assert vl._hopper_config(p, "sm80") is None and len(asked) == 2
        with pytest.raises(ValueError, match="backend='sm90' cannot run this call: k has no rows"):
            vl._hopper_config(varlen(total_k=0)[0], "sm90")
        assert vl._hopper_config(varlen(total_k=0)[0], "auto") is None
    finally:
        vl._hopper_config.cache_clear()


def test_varlen_problem_is_the_packed_arrays_with_b_sequences():
    p, batch = varlen()
    assert batch == 3 and (p.batch, p.heads_q, p.heads_kv, p.seqlen_q, p.seqlen_k, p.head_dim) == (3, 8, 2, 300, 500, 128)
    assert p.q_strides == (0, 128, 8 * 128) and p.k_strides == (0, 128, 2 * 128) and p.causal
    assert p.kernel_variant == configs.PLAIN   # bottom-right causal: the plain kernel's flag
    p, _ = varlen(window=(64, 0), alibi_slopes=spec("alibi_slopes", (3, 8), F32))
    assert p.variant.alibi == (8, 1) and p.kernel_variant.window and p.kernel_variant.alibi
    p, _ = varlen(total_k=0)   # no keys at all: validated as one row; the kernels read none
    assert p.seqlen_k == 0


@pytest.mark.parametrize("change, error, match", [
    (dict(cu_seqlens_q=spec("cu_seqlens_q", (4,), np.int64)), TypeError, "cu_seqlens_q has dtype int64; expected int32"),
    (dict(cu_seqlens_k=spec("cu_seqlens_k", (3,), I32)), ValueError, r"cu_seqlens_k has shape \(3,\); expected \(4,\)"),
    (dict(cu_seqlens_q=spec("cu_seqlens_q", (4,), I32, device=None)), ValueError, "cu_seqlens_q is in host memory"),
    (dict(cu_seqlens_k=spec("cu_seqlens_k", (4,), I32, device=1)), ValueError, "cu_seqlens_k is on device 1"),
    (dict(cu_seqlens_q=spec("cu_seqlens_q", (1,), I32)), ValueError, r"expected \(B \+ 1,\) with B >= 1"),
    (dict(q=spec("q", (2, 300, 8, 128))), ValueError, "q must be 3-D"),
    (dict(k=spec("k", (500, 3, 128)), v=spec("v", (500, 3, 128))), ValueError, "multiple of k/v's heads"),
    (dict(causal="top_left"), TypeError, "causal must be a bool"),
    (dict(alibi_slopes=spec("alibi_slopes", (2, 8), F32)), ValueError, r"alibi_slopes has shape \(2, 8\)"),
    (dict(q=spec("q", (300, 8, 128), strides=(1024, 128, 2))), ValueError, "q must have a contiguous last dimension"),
    (dict(v=spec("v", (500, 2, 64))), ValueError, "v has head_dim 64 but q has head_dim 128; attention_varlen takes"),
])
def test_varlen_refuses_bad_input_naming_it(change, error, match):
    with pytest.raises(error, match=match):
        varlen(**change)


def kvcache(b=4, sq=1, hq=32, hkv=8, d=128, room=2048, paged=None, n_new=0, **changes):
    """paged: (num_pages, page_size, pages per sequence)."""
    q = spec("q", (b, sq, hq, d))
    if paged:
        pages, size, per_seq = paged
        k = spec("k_cache", (pages, size, hkv, d))
        table = spec("block_table", (b, per_seq), I32)
    else:
        k, table = spec("k_cache", (b, room, hkv, d)), None
    args = dict(q=q, k_cache=k, v_cache=spec("v_cache", k.shape), cache_seqlens=spec("cache_seqlens", (b,), I32),
                block_table=table, k_new=spec("k_new", (b, n_new, hkv, d)) if n_new else None,
                v_new=spec("v_new", (b, n_new, hkv, d)) if n_new else None)
    opts = dict(causal=False, scale=None, window=None, softcap=0.0, alibi_slopes=None)
    for name, value in changes.items():
        (args if name in args else opts)[name] = value
    return check_kvcache(*args.values(), **opts)


def test_kvcache_layouts_and_problem():
    p, layout, n_new = kvcache(n_new=2)
    assert not layout.paged and layout.capacity == 2048 and n_new == 2
    assert (p.batch, p.heads_q, p.heads_kv, p.seqlen_q, p.seqlen_k) == (4, 32, 8, 1, 2048)
    assert p.k_strides == (2048 * 8 * 128, 128, 8 * 128)   # (batch, head, position)
    p, layout, _ = kvcache(paged=(300, 16, 40), sq=4, causal=True)
    assert layout.paged and (layout.page_size, layout.num_pages, layout.capacity, layout.table_stride) == (16, 300, 640, 40)
    sliced = kvcache(paged=(300, 16, 40), block_table=spec("block_table", (4, 40), I32, strides=(64, 1)))[1]
    assert sliced.table_stride == 64   # a view of a wider table: its rows' stride, not its width
    assert p.seqlen_k == 640 and p.k_strides == (16 * 8 * 128, 128, 8 * 128) and p.causal   # (page, head, slot)
    assert kvcache(n_new=0, k_new=spec("k_new", (4, 0, 8, 128)), v_new=spec("v_new", (4, 0, 8, 128)))[2] == 0


@pytest.mark.parametrize("change, error, match", [
    (dict(cache_seqlens=spec("cache_seqlens", (4,), np.int64)), TypeError, "cache_seqlens has dtype int64"),
    (dict(cache_seqlens=spec("cache_seqlens", (3,), I32)), ValueError, r"cache_seqlens has shape \(3,\)"),
    (dict(cache_seqlens=spec("cache_seqlens", (4,), I32, device=None)), ValueError, "cache_seqlens is in host memory"),
    (dict(block_table=spec("block_table", (4, 10), np.int64), k_cache=spec("k_cache", (100, 16, 8, 128)),
          v_cache=spec("v_cache", (100, 16, 8, 128))), TypeError, "block_table has dtype int64"),
    (dict(block_table=spec("block_table", (3, 10), I32), k_cache=spec("k_cache", (100, 16, 8, 128)),
          v_cache=spec("v_cache", (100, 16, 8, 128))), ValueError, r"block_table has shape \(3, 10\)"),
    (dict(k_cache=spec("k_cache", (5, 2048, 8, 128)), v_cache=spec("v_cache", (5, 2048, 8, 128))), ValueError,
     "k_cache has batch 5 but q has batch 4"),
    (dict(v_cache=spec("v_cache", (4, 1024, 8, 128))), ValueError, "same shape"),
    (dict(block_table=spec("block_table", (4, 10), I32), k_cache=spec("k_cache", (100, 16, 8, 128)),
          v_cache=spec("v_cache", (100, 16, 8, 128), strides=(17 * 8 * 128, 8 * 128, 128, 1))), ValueError,
     "v_cache must hold its pages' slots back to back"),
    (dict(k_cache=spec("k_cache", (4, 2048, 8, 64)), v_cache=spec("v_cache", (4, 2048, 8, 64))), ValueError,
     "k_cache has head_dim 64"),
    (dict(k_cache=spec("k_cache", (4, 2048, 5, 128)), v_cache=spec("v_cache", (4, 2048, 5, 128))), ValueError,
     r"multiple of the caches' heads \(5\)"),
    (dict(k_new=spec("k_new", (4, 1, 8, 128))), ValueError, "k_new and v_new must be given together"),
    (dict(k_new=spec("k_new", (4, 1, 4, 128)), v_new=spec("v_new", (4, 1, 4, 128))), ValueError, r"\(B, Sn, Hkv, D\)"),
    (dict(k_new=spec("k_new", (4, 1, 8, 128), np.float32), v_new=spec("v_new", (4, 1, 8, 128), np.float32)),
     TypeError, "k_new has dtype float32"),
    (dict(causal="bottom_right"), TypeError, "causal must be a bool"),
    (dict(q=spec("q", (4, 1, 32, 128), np.float32)), TypeError, "q has dtype float32"),
])
def test_kvcache_refuses_bad_input_naming_it(change, error, match):
    with pytest.raises(error, match=match):
        kvcache(**change)


def test_configs_of_the_inference_kernels():
    base = configs.Sm80FwdConfig("fp16", 128, 4, 2, 64, 2)
    cache = configs.seq_config(base, "paged")
    assert cache.m_tiles == 1 and cache.seq == "paged" and cache.block_n == 64
    assert cache.name_expression == "fc::flash_fwd<fc::fp16, 128, 4, 1, 64, 2, fc::Plain, fc::KvCache<fc::kCachePageRows>>"
    assert configs.seq_config(base, "varlen").m_tiles == 2   # prefill keeps the large tile
    decode = configs.seq_config(base, "cache", rows=4)       # a decode step's rows fill one warp
    assert (decode.warps, decode.m_tiles, decode.block_m, decode.stages, decode.seq) == (1, 1, 16, 3, "cache")
    assert configs.seq_config(base, "cache", rows=4, arch="sm_86").stages == 2   # 99 KB a block there
    assert configs.seq_config(base, "cache", rows=17).warps == 4
    assert configs.seq_config(configs.Sm80FwdConfig("fp16", 256, 4, 1, 32, 2), "paged", rows=1).warps == 4
    windowed = configs.seq_config(base, "varlen", configs.KernelVariant(window=True))
    assert windowed.m_tiles == 1 and windowed.name_expression.endswith("fc::Variant<false, false, 0>, fc::Varlen>")
    with pytest.raises(ValueError, match="seq must be one of"):
        configs.Sm80FwdConfig("fp16", 128, 4, 2, 64, 2, seq="ragged")
    assert configs.AppendConfig(True).name_expression == "fc::kvcache_append<true>"
    assert configs.AppendConfig(False).grid(10, 132) == (1, 1, 1)
    assert configs.AppendConfig(False).grid(10 ** 7, 132) == (8 * 132, 1, 1)


def test_split_choice_fills_whole_waves_and_keeps_ranges_of_two_tiles():
    assert choose_splits(ctas=264, key_tiles=1000, slots=264) == 1      # a full wave already
    assert choose_splits(ctas=64, key_tiles=128, slots=264) == 4        # 256 of 264 slots, not 2.2 waves
    assert choose_splits(ctas=8, key_tiles=2048, slots=264) == 32       # 256 of 264: the fewest within 95 %
    assert choose_splits(ctas=8, key_tiles=1024, slots=132) == 16       # 128 of 132 (15: 120, 91 %)
    assert choose_splits(ctas=1, key_tiles=4096, slots=264) == 122      # within 95 % of the cap's 128
    assert choose_splits(ctas=8, key_tiles=6, slots=264) == 3           # at least two key tiles each
    assert choose_splits(ctas=8, key_tiles=1, slots=264) == 1
    assert (split.sm90_splits(64, 64, 132), split.sm90_splits(8, 1024, 132), split.sm90_splits(8, 6, 132)) == (1, 8, 3)
    assert split.sm90_splits(1, 4096, 132) == 66 and split.sm90_splits(512, 16, 132) == 1
    decode = configs.seq_config(configs.Sm80FwdConfig("fp16", 128, 4, 2, 64, 2), "cache", rows=4)
    assert resident_ctas(decode, "sm_90a") == 2      # 109 KB of shared memory each
    assert resident_ctas(configs.Sm80FwdConfig("fp16", 64, 4, 1, 64, 2, seq="cache"), "sm_90a") == 2   # registers


class Host:
    """A device array's stand-in for metadata's checks: .get() gives its values."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def get(self):
        return self.values


def test_metadata_checks_name_the_bad_value(monkeypatch):
    monkeypatch.delenv(metadata.ENV, raising=False)
    assert not metadata.checking()
    monkeypatch.setenv(metadata.ENV, "1")
    assert metadata.checking()
    metadata.check_offsets(Host([0, 3, 3, 10]), "cu_seqlens_q", 10, 7)
    assert metadata.longest(Host([0, 3, 3, 10])) == 7 and metadata.longest(Host([0, 5, 2])) == 5
    for cu, total, hint, match in (([1, 3], 10, None, r"cu_seqlens_q\[0\] is 1"), ([0, 5, 4], 10, None, "decreases at index 2"),
                                   ([0, 11], 10, None, "past the 10 packed rows"), ([0, 8], 10, 7, "over the hint 7")):
        with pytest.raises(ValueError, match=match):
            metadata.check_offsets(Host(cu), "cu_seqlens_q", total, hint)
    table = Host([[0, 1, 2], [3, 4, 99]])
    metadata.check_cache(Host([40, 30]), table, 10, 16, 48, 2)   # page 99 not reached (32 keys: 2 pages)
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] is 99"):
        metadata.check_cache(Host([40, 31]), table, 10, 16, 48, 2)
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\] \+ 2 new keys = 50, past the 48"):
        metadata.check_cache(Host([48, 0]), None, 0, 48, 48, 2)
    with pytest.raises(ValueError, match="negative"):
        metadata.check_cache(Host([-1, 0]), None, 0, 48, 48, 0)


def test_sequence_launch_packs_scalars_and_each_calls_addresses(monkeypatch):
    launched = []
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    scalars = {n: 0 for n in params.FWD_SM80.names if n not in launch.Sm80SeqLaunch.POINTERS}
    scalars.update(seqlen_q=7, pack=4, splits=3, page_size=16)
    cfg = configs.seq_config(configs.Sm80FwdConfig("bf16", 64, 4, 1, 64, 3), "paged")
    run = launch.Sm80SeqLaunch(cfg, 5, (6, 8, 2), scalars)
    run.start(dict(q=0x100, block_table=0x900, o_accum=0xA00), stream=3)
    values = dict(zip(params.FWD_SM80.names, params.FWD_SM80.struct.unpack_from(run._block.data, 0)))
    assert values["q"] == 0x100 and values["block_table"] == 0x900 and values["o_accum"] == 0xA00 and values["o"] == 0
    assert (values["seqlen_q"], values["pack"], values["splits"], values["page_size"]) == (7, 4, 3, 16)
    assert launched[-1][:4] == (5, 6, 8, 2) and launched[-1][4] == cfg.threads and launched[-1][7] == cfg.smem_bytes
    with pytest.raises(KeyError, match="Sm80SeqLaunch: no value for"):
        launch.Sm80SeqLaunch(cfg, 5, (1, 1, 1), {"seqlen_q": 1})



@pytest.mark.parametrize("paged, sq, window, hopper", [
    (None, 1, None, "cache"), ((600, 16, 128), 1, None, "paged_tiles"), ((40, 256, 8), 1, None, "paged_tiles"),
    ((600, 3, 683), 1, None, "paged"),    # pages of 3 keys: no TMA box tiles a key tile, gathered
    ((600, 24, 86), 1, None, "paged"),    # 24 neither divides 128 nor is a multiple of it
    (None, 4, None, "cache"),             # speculative rows: (query, head)s packed, 16 of a tile's 64
    (None, 32, None, None),               # 32 x 4 rows: over a tile (the portable kernel)
    (None, 1, (64, 0), None),             # a variant
])
def test_kvcache_plan_takes_the_hopper_kernel_where_it_can(monkeypatch, paged, sq, window, hopper):
    """On sm_90 a plain decode step (or speculative rows that fit a tile) runs on the Hopper kernel (its GQA group packed in a tile,
    split-KV to fill the SMs, the cache's maps over each sequence's room or the page pool); the
    rest on the portable kernel. The compile is stubbed: the launches' packing runs as on a GPU."""
    from flashcore_cupy import api, kvcache as kv

    monkeypatch.setattr(launch.loader, "get_function", lambda *a, **k: 1)
    monkeypatch.setattr(api, "device_info", lambda device: api.DeviceInfo("H200", (9, 0), "sm_90a", 132))
    p, layout, n_new = kvcache(sq=sq, paged=paged, window=window)
    plan = kv._Plan(p, layout, n_new, 0, ())
    if hopper is None:
        assert isinstance(plan.attention, launch.Sm80SeqLaunch) and plan.config.seq != "dense"
        assert (plan.workspace is not None) == (plan.splits > 1)   # a tile's last split merges them
        if plan.splits > 1:
            assert plan.workspace.counters == plan.attention.grid[0] // plan.splits * plan.attention.grid[1] * \
                plan.attention.grid[2]
        return
    assert isinstance(plan.attention, launch.Sm90SeqLaunch) and plan.config.seq == hopper and plan.config.split
    s = plan.attention.scalars
    assert (s["heads"], s["pack"], s["m_blocks"], s["causal"]) == (8, 4, 1, 0)   # B4 x Hkv 8 tiles of 4 heads
    if sq > 1:   # causal speculative rows keep the mask (by query, row / pack)
        causal = kv._Plan(kvcache(sq=sq, paged=paged, window=window, causal=True)[0], layout, n_new, 0, ())
        assert causal.attention.scalars["causal"] == 1
    tiles = 4 * 8
    if paged and paged[1] < 128:   # pages smaller than a tile: CTAs for every SM
        assert plan.splits == split.choose_splits(tiles, -(-layout.capacity // 128), 132) == 4
    else:                          # 64 CTAs: half the SMs
        assert plan.splits == split.sm90_splits(tiles, -(-layout.capacity // 128), 132) == 2
    assert plan.attention.grid == (tiles * plan.splits, 1, 1) and s["n_items"] == tiles * plan.splits
    assert s["splits"] == plan.splits and s["o_split"] == 4 * sq * 32 * 128 and s["lse_split"] == 4 * sq * 32
    assert plan.workspace.counters == tiles * plan.config.consumers   # a counter for each consumer's rows
    q_spec, k_spec, _ = plan.attention.specs
    if sq == 1:
        assert q_spec.box[1:3] == (1, 64)   # one position of 64 heads: the packed group and the rows past it
    else:   # heads as the map's rows, queries as its heads: a box of the group's 4 heads x 16 queries
        assert q_spec.dims == (128, 32, sq, 4) and q_spec.box[1:3] == (4, 16)
        assert q_spec.strides == (128 * 2, 32 * 128 * 2, sq * 32 * 128 * 2)   # (head, query, batch) bytes
    if paged:
        num_pages, page_size, _ = paged
        assert k_spec.dims == (128, page_size, 8, num_pages) and k_spec.box[1] == min(page_size, 128)
        assert s["page_size"] == page_size and s["by_page_size"] == launch.fast_divisor(page_size)
    else:
        assert k_spec.dims == (128, 2048, 8, 4) and k_spec.box[1] == 128
    launched = []   # a call packs its addresses (the maps' encoding stubbed: it needs the driver)
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    monkeypatch.setattr(launch.tma, "encode_maps", lambda *a: None)
    plan.attention.start(dict(q=0x100, k=0x200, v=0x300, o=0x400, seqused_k=0x500, split_count=0x600), stream=7)
    block = plan.attention._blocks[(0x100, 0x200, 0x300)]
    fields = params.FWD_SM90.offsets
    gathered = plan.config.seq == "paged"   # the pools' own addresses and strides (no map)
    rows = dict(k_rows=0x200, v_rows=0x300) if gathered else {}
    if gathered:
        plan.attention._blocks.clear()
        plan.attention.start(dict(q=0x100, k=0x200, v=0x300, o=0x400, seqused_k=0x500, split_count=0x600, **rows),
                             stream=7)
        block = plan.attention._blocks[(0x100, 0x200, 0x300)]
        assert tuple(s[f"k_s{d}"] for d in "bhs") == p.k_strides and tuple(s[f"v_s{d}"] for d in "bhs") == p.v_strides
    else:
        assert s["k_sb"] == s["v_ss"] == 0
    for name, value in (("o", 0x400), ("seqused_k", 0x500), ("split_count", 0x600), ("lse", 0), ("o_accum", 0),
                        ("k_rows", rows.get("k_rows", 0)), ("v_rows", rows.get("v_rows", 0))):
        assert int.from_bytes(block.data[fields[name]:fields[name] + 8].tobytes(), "little") == value, name
    at = fields["splits"]
    assert int.from_bytes(block.data[at:at + 4].tobytes(), "little") == plan.splits
    assert launched[-1][:4] == (1, tiles * plan.splits, 1, 1) and launched[-1][-3] == 7
    forced = kv._Plan(p, layout, n_new, 1, ())
    assert forced.splits == 1 and forced.workspace is None and forced.attention.scalars["o_accum"] == 0


def test_gathered_pages_need_a_pool_row_index(monkeypatch):
    """The Hopper kernel gathers pages that no TMA box tiles by one int32 row index of the pool
    (page * page_size + slot): a pool of 2^31 rows or more goes to the portable kernel; a
    whole-tile page keeps its TMA boxes at any pool size."""
    from flashcore_cupy import kvcache as kv

    def plan(paged, **changes):
        p, layout, _ = kvcache(paged=paged, **changes)
        return kv.sm90_cache_plan(p, layout, "sm_90a")

    monkeypatch.setattr(kv.tma, "unsupported_reason", lambda spec: None)
    assert plan((600, 3, 683))[0].seq == "paged" and plan((600, 1, 2048))[0].seq == "paged"
    assert plan((600, 16, 128))[0].seq == "paged_tiles"
    assert plan(((1 << 31) // 3, 3, 683))[0].seq == "paged"
    assert plan(((1 << 31) // 3 + 1, 3, 683)) is None
    assert plan(((1 << 31) // 16 + 1, 16, 128))[0].seq == "paged_tiles"


@pytest.mark.parametrize("hopper", [True, False])
def test_a_kv_cache_longer_than_the_chain_bound_splits_to_it(monkeypatch, hopper):
    """A full-wave decode (B64 x 8 kv heads) over a 1M-key room: split anyway, so that each range
    holds at most split.MAX_CHAIN_KEYS keys (the accumulators' precision); a given num_splits is
    kept."""
    from flashcore_cupy import api, kvcache as kv

    monkeypatch.setattr(launch.loader, "get_function", lambda *a, **k: 1)
    monkeypatch.setattr(api, "device_info", lambda device: api.DeviceInfo("H200", (9, 0), "sm_90a", 132))
    p, layout, n_new = kvcache(b=64, room=1 << 20, softcap=0.0 if hopper else 20.0)
    plan = kv._Plan(p, layout, n_new, 0, ())
    assert isinstance(plan.attention, launch.Sm90SeqLaunch if hopper else launch.Sm80SeqLaunch)
    assert plan.splits == (1 << 20) // split.MAX_CHAIN_KEYS
    assert kv._Plan(p, layout, n_new, 3, ()).splits == 3
