"""merge_states' host side on the CPU: validation before any launch, its kernel's instantiations
(compiled with NVRTC) and its launch's packing."""

import ml_dtypes
import numpy as np
import pytest

from flashcore_cupy import configs, loader, params
from flashcore_cupy.merge import check_merge
from flashcore_cupy.validation import TensorSpec

F32, F16, BF16 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)


def spec(name, shape, dtype=F32, strides=None, device=0):
    if strides is None:
        strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return TensorSpec(name, shape, strides, np.dtype(dtype), device, 0x10000)


def _pair(shape=(2, 3, 5, 64), dtype=F16, **changes):
    parts = {"out_a": spec("out_a", shape, dtype), "lse_a": spec("lse_a", shape[:-1]),
             "out_b": spec("out_b", shape, dtype), "lse_b": spec("lse_b", shape[:-1])}
    parts.update(changes)
    return list(parts.values())


def test_both_forms_give_splits_rows_and_columns():
    assert check_merge(_pair(), None, None) == (2, (2, 3, 5), 64)
    stacked = [spec("outs", (7, 4, 9, 128), BF16), spec("lses", (7, 4, 9))]
    assert check_merge(stacked, spec("out", (4, 9, 128)), spec("lse_out", (4, 9))) == (7, (4, 9), 128)
    assert check_merge([spec("outs", (3, 16)), spec("lses", (3,))], None, None) == (3, (), 16)


@pytest.mark.parametrize("parts, out, lse_out, error, match", [
    (_pair(lse_a=spec("lse_a", (2, 3, 4))), None, None, ValueError, "lse_a has shape"),
    (_pair(lse_b=spec("lse_b", (2, 3, 5), F16)), None, None, TypeError, "lse_b has dtype float16"),
    (_pair(out_b=spec("out_b", (2, 3, 5, 64), F32)), None, None, ValueError, "share one dtype and shape"),
    (_pair(out_a=spec("out_a", (2, 3, 5, 64), np.int32)), None, None, TypeError, "out_a has dtype int32"),
    (_pair(out_b=spec("out_b", (2, 3, 5, 64), F16, device=1)), None, None, ValueError, "out_b is on device 1"),
    (_pair(out_a=spec("out_a", (2, 3, 5, 64), F16, device=None)), None, None, ValueError, "host memory"),
    (_pair(out_a=spec("out_a", (2, 3, 5, 64), F16, strides=(1920, 640, 128, 1))), None, None, ValueError,
     "out_a must be C-contiguous"),
    (_pair(shape=(2, 3, 5, 520)), None, None, ValueError, "520 columns"),
    ([spec("outs", (0, 4, 64)), spec("lses", (0, 4))], None, None, ValueError, "no split"),
    ([spec("outs", (64,)), spec("lses", ())], None, None, ValueError, "after a leading split axis"),
    (_pair(), spec("out", (2, 3, 5, 32)), None, ValueError, "out has shape"),
    (_pair(), spec("out", (2, 3, 5, 64), np.float64), None, TypeError, "out has dtype float64"),
    (_pair(), None, spec("lse_out", (2, 3, 5), F16), TypeError, "lse_out has dtype float16"),
    (_pair(), None, spec("lse_out", (2, 3)), ValueError, "lse_out has shape"),
])
def test_bad_input_is_refused_with_the_argument_named(parts, out, lse_out, error, match):
    with pytest.raises(error, match=match):
        check_merge(parts, out, lse_out)


def test_config_names_its_instantiation_and_grid():
    cfg = configs.MergeConfig("bf16", "f32")
    assert cfg.name_expression == "fc::merge_states<fc::bf16, fc::f32>"
    assert cfg.grid(17) == (3, 1, 1) and cfg.grid(0) == (1, 1, 1)


@pytest.mark.parametrize("arch", configs.SUPPORTED_ARCHS)
def test_merge_kernels_compile_without_spills(arch):
    for dtype_in in configs.MERGE_DTYPES:
        for dtype_out in configs.MERGE_DTYPES:
            report = loader.compile_only(configs.MergeConfig(dtype_in, dtype_out), arch)
            assert report.spill_bytes == 0 and report.stack_frame_bytes == 0, (arch, dtype_in, dtype_out, report)


def test_launch_packs_every_field_per_call(monkeypatch):
    """MergeLaunch: the call's fields into params.MERGE (absent pair pointers 0, the LSE's rows
    as they are), a block per 8 rows."""
    from flashcore_cupy import launch

    launched = []
    monkeypatch.setattr(launch, "_cu_launch", lambda *a: launched.append(a))
    run = launch.MergeLaunch(configs.MergeConfig("fp16", "fp16"), 42)
    fields = dict(outs=0x100, lses=0x200, out=0x300, lse_out=0x400, split_stride=640, splits=3, rows=20, dv=32)
    run.start(fields, stream=9)
    values = dict(zip(params.MERGE.names, params.MERGE.struct.unpack_from(run.block.data, 0)))
    assert values == {**fields, "outs_b": 0, "lses_b": 0, "lse_seq": 0, "lse_heads": 0}
    assert launched[-1][0] == 42 and launched[-1][1:4] == (3, 1, 1) and launched[-1][4] == 256
    assert launched[-1][8] == 9
