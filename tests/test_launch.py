"""The prepared launches without a GPU: what reaches cuLaunchKernel (the driver call and
tensor-map encoding are replaced by recorders) for both kernel families."""

import ctypes
import struct
import warnings
from types import SimpleNamespace

import pytest

from flashcore_cupy import api, launch, params, tma
from flashcore_cupy.configs import KernelVariant, Sm80FwdConfig, Sm90FwdConfig


def array(ptr):
    return SimpleNamespace(data=SimpleNamespace(ptr=ptr))


@pytest.fixture
def driver(monkeypatch):
    """Records each launch: its arguments and the parameter block the driver would copy."""
    calls = []

    def fake_launch(function, gx, gy, gz, bx, by, bz, smem, stream, argv, extra):
        block = ctypes.cast(argv, ctypes.POINTER(ctypes.c_void_p))[0]
        calls.append(dict(function=function, grid=(gx, gy, gz), block=(bx, by, bz), smem=smem,
                          stream=stream, extra=extra, params=ctypes.string_at(block, driver.size)))

    monkeypatch.setattr(launch, "_cu_launch", fake_launch)
    monkeypatch.setattr(launch, "_current_stream", lambda: SimpleNamespace(ptr=0xABC))
    driver = SimpleNamespace(calls=calls, size=0)
    return driver


# The parameter layouts as they were written by hand before params.py (the kernels'
# static_asserts check params.py's against the C++ compiler; these against the history).
# (since the grid's heads and the batch after causal, and head_dim_v after head_dim)
_FWD_BY_HAND = struct.Struct("<5Q15q5ifi2i")
_SM90_TAIL_BY_HAND = struct.Struct("<2Q3q4ifi7i8I")


# The variant fields after them (kernels/variant.cuh), by hand: diag, window sides, the softcap
# pair, the slopes' pointer and strides, the bias's pointer and strides.
_FWD_VARIANT_BY_HAND = struct.Struct("<3i2fQ2qQ3q")   # 8-aligned after head_dim_v: no padding before the slopes
_VARIANT_NAMES = ("diag", "win_left", "win_right", "cap_scale", "cap_log2", "alibi_sb", "alibi_sh",
                  "bias_sb", "bias_sh", "bias_ss")
# The sequence fields after those (kernels/sequence.cuh): the offsets', cache lengths' and block
# table's pointers, the table's stride, new keys, page size, pages, splits, the partials'
# pointers and split strides.
_FWD_SEQUENCE_BY_HAND = struct.Struct("<4Qq5i4x2Q2qQ")
_DENSE_SEQUENCE = (0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0)


def test_fwd_launch_sends_its_scalars_and_each_calls_pointers(driver):
    cfg = Sm80FwdConfig("fp16", 64, 4, 2, 64, 3)
    names = [f.name for f in params.FWD_SM80.fields][5:5 + 24]
    values = tuple(range(15)) + (300, 400, 64, 64, 2, 0.18, 1, 4, 2)
    variant = (100, -1, 0, 0.5, 2.0, 3, 4, 5, 6, 7)
    run = launch.Sm80FwdLaunch(cfg, 77, 0, (3, 4, 2), (2, 4, 300, 64), None,
                               dict(zip(names + list(_VARIANT_NAMES), values + variant), **launch.sequence_scalars()))
    driver.size = params.FWD_SM80.size
    run(array(0x1000), array(0x2000), array(0x3000), array(0x4000), None)
    run(array(0x1100), array(0x2100), array(0x3100), array(0x4100), array(0x5100))
    first, second = driver.calls
    plain = _FWD_BY_HAND.size
    assert first["params"][:plain] == _FWD_BY_HAND.pack(0x1000, 0x2000, 0x3000, 0x4000, 0, *values)
    assert second["params"][:plain] == _FWD_BY_HAND.pack(0x1100, 0x2100, 0x3100, 0x4100, 0x5100, *values)
    tail = plain + _FWD_VARIANT_BY_HAND.size
    assert first["params"][plain:tail] == _FWD_VARIANT_BY_HAND.pack(*variant[:5], 0, *variant[5:7], 0, *variant[7:])
    assert first["params"][tail:] == _FWD_SEQUENCE_BY_HAND.pack(*_DENSE_SEQUENCE)
    assert first["function"] == 77 and first["grid"] == (3, 4, 2) and first["stream"] == 0xABC
    assert first["block"] == (cfg.threads, 1, 1) and first["smem"] == cfg.smem_bytes
    assert run.out_elements == 2 * 4 * 300 * 64


def test_variant_launch_sends_the_slopes_and_bias_addresses_per_call(driver):
    cfg = Sm80FwdConfig("fp16", 64, 4, 1, 64, 3, KernelVariant(window=True, alibi=True, bias="fp32"))
    names = [f.name for f in params.FWD_SM80.fields][5:5 + 24]
    values = tuple(range(15)) + (300, 400, 64, 64, 2, 0.18, 0, 4, 2)
    variant = (100, 8, 0, 0.0, 0.0, 0, 1, 0, 500, 400)
    run = launch.Sm80VariantLaunch(cfg, 77, 0, (5, 4, 2), (2, 4, 300, 64), None,
                                   dict(zip(names + list(_VARIANT_NAMES), values + variant), **launch.sequence_scalars()))
    driver.size = params.FWD_SM80.size
    run.start((0x1000, 0x2000, 0x3000, 0x6000, 0x7000), array(0x4000), None, 0xABC)
    run.start((0x1100, 0x2100, 0x3100, 0x6100, 0), array(0x4100), None, 0xABC)
    plain = _FWD_BY_HAND.size
    for call, (a, b) in zip(driver.calls, ((0x6000, 0x7000), (0x6100, 0))):
        assert call["params"][plain:plain + _FWD_VARIANT_BY_HAND.size] == _FWD_VARIANT_BY_HAND.pack(
            *variant[:5], a, *variant[5:7], b, *variant[7:])
    assert driver.calls[1]["params"][:plain] == _FWD_BY_HAND.pack(0x1100, 0x2100, 0x3100, 0x4100, 0, *values)


def test_sm90_launch_encodes_maps_once_per_address_set(driver, monkeypatch):
    encoded = []

    def fake_encode(dest, dtype, specs, ptrs):
        encoded.append(ptrs)
        for i, ptr in enumerate(ptrs):   # a recognisable stand-in for each map
            dest[i * tma.MAP_BYTES:(i + 1) * tma.MAP_BYTES] = ptr % 251

    monkeypatch.setattr(tma, "encode_maps", fake_encode)
    cfg = Sm90FwdConfig("bf16", 128, 128, 2, 2, True)
    values = (1, 2, 3, 300, 400, 128, 128, 0.09, 0, 16, 2, 3, 1, 6, 6, 1)
    divisors = (launch.fast_divisor(3), launch.fast_divisor(1), launch.fast_divisor(16), launch.fast_divisor(1))
    names = [f.name for f in params.FWD_SM90.fields][5:5 + 20]
    variant = (0, -1, -1, 0.0, 0.0, 0, 0, 0, 0, 0)   # a plain launch's (read by no plain kernel)
    run = launch.Sm90FwdLaunch(cfg, 88, 0, (6, 1, 1), (2, 16, 300, 128), (2, 16, 300),
                               dict(zip(names + list(_VARIANT_NAMES), values + divisors + variant),
                                    **launch.sm90_sequence_scalars()), ())
    driver.size = params.FWD_SM90.size
    qkv = (array(0x10), array(0x20), array(0x30))
    run(*qkv, array(0x40), array(0x50))
    run(*qkv, array(0x41), None)
    run(array(0x11), *qkv[1:], array(0x42), None)
    assert encoded == [(0x10, 0x20, 0x30), (0x11, 0x20, 0x30)]
    tails = [c["params"][3 * tma.MAP_BYTES:] for c in driver.calls]
    flat = [x for d in divisors for x in d]
    plain = _SM90_TAIL_BY_HAND.size   # the variant fields follow
    assert [t[:plain] for t in tails] == [_SM90_TAIL_BY_HAND.pack(o, lse, *values, *flat)[:plain]
                                          for o, lse in ((0x40, 0x50), (0x41, 0), (0x42, 0))]
    variant_tail = _FWD_VARIANT_BY_HAND.pack(*variant[:5], 0, 0, 0, 0, 0, 0, 0)
    assert all(t[plain:plain + len(variant_tail)] == variant_tail for t in tails)
    # a dense call's KV-cache fields: no cache, one split (the rest zero)
    at = {n: params.FWD_SM90.offsets[n] - 3 * tma.MAP_BYTES for n in ("page_size", "splits", "seqused_k")}
    for t in tails:
        assert int.from_bytes(t[at["page_size"]:at["page_size"] + 4], "little") == 1
        assert int.from_bytes(t[at["splits"]:at["splits"] + 4], "little") == 1
        assert int.from_bytes(t[at["seqused_k"]:at["seqused_k"] + 8], "little") == 0
    assert driver.calls[0]["params"][:tma.MAP_BYTES] == bytes([0x10 % 251]) * tma.MAP_BYTES
    assert driver.calls[2]["params"][:tma.MAP_BYTES] == bytes([0x11 % 251]) * tma.MAP_BYTES
    assert all(c["smem"] == cfg.smem_bytes and c["block"] == (cfg.threads, 1, 1) for c in driver.calls)


def test_fast_divisor_divides_like_the_kernel():
    """The kernel's FastDiv computes n / d as umulhi(n, mul) >> shr (n itself when mul = 0)
    for any 0 <= n < 2**31: check the host's (mul, shr) on edge and random cases."""
    import random

    rng = random.Random(0)
    divisors = (list(range(1, 2000)) + [(1 << k) + e for k in range(1, 31) for e in (-1, 0, 1)]
                + [rng.randrange(1, 1 << 31) for _ in range(500)])
    for d in divisors:
        mul, shr = launch.fast_divisor(d)
        assert 0 <= mul < 1 << 32 and 0 <= shr < 32
        for n in [0, 1, d - 1, d, d + 1, (1 << 31) - 1] + [rng.randrange(1 << 31) for _ in range(50)]:
            if 0 <= n < 1 << 31:
                assert (n if mul == 0 else (n * mul >> 32) >> shr) == n // d, (d, n)
    with pytest.raises(ValueError, match="divisor"):
        launch.fast_divisor(0)


def test_external_stream_wraps_the_handle_given():
    """api.external_stream (the torch adapter's way onto torch's current stream): a CuPy stream
    whose handle is the one given, made without CuPy 14's deprecated ExternalStream (no GPU
    needed to make one)."""
    pytest.importorskip("cupy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        stream = api.external_stream(0x1234)
    assert stream.ptr == 0x1234
