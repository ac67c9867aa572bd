"""scripts/sass_check.py's SASS rules on hand-written SASS (the device suite runs them on
every dispatchable kernel's real SASS)."""

import importlib.util
import os
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sass_check", Path(__file__).resolve().parent.parent / "scripts" / "sass_check.py")
sass_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_check)


def _sass(*instructions):
    return "\n".join(f"        /*{16 * i:04x}*/                   {x} ;" for i, x in enumerate(instructions))


STEP = ("WARPGROUP.ARRIVE",
        "HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0",                  # S: both operands in shared
        "HGMMA.64x128x16.F32 R88, R152, gdesc[UR12].tnspB, R88",          # P V: P in R152..R155
        "HGMMA.64x128x16.F32 R88, R156, gdesc[UR12].tnspB, R88, gsb0",    # and R156..R159
        "WARPGROUP.DEPBAR.LE gsb0, 0x1")


def test_writes_to_p_in_flight():
    # the softmax writes its own registers (and reads P), then waits for P V, then repacks P
    clean = _sass(*STEP, "MUFU.EX2 R30, R30", "FADD R31, R152, R30", "SHFL.BFLY PT, R40, R41, 0x1, 0x1f",
                  "WARPGROUP.DEPBAR.LE gsb0, 0x0", "F2FP.F16.F32.PACK_AB R152, R31, R30")
    assert sass_check.writes_to_p_in_flight(clean) == 0
    # the v16 bug: temporaries in P's registers while P V may still read them
    racy = _sass(*STEP, "MUFU.EX2 R155, R30", "@!P0 FFMA R158, R30, R13, R12",
                 "SHFL.BFLY PT, R153, R41, 0x1, 0x1f", "WARPGROUP.DEPBAR.LE gsb0, 0x0")
    assert sass_check.writes_to_p_in_flight(racy) == 3


def test_setmaxnreg_counts():
    sass = _sass("USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0x70", "HGMMA.64x64x16.F32 R24, gdesc[UR8], R24, gsb0",
                 "USETMAXREG.DEALLOC.CTAPOOL 0x18")
    assert sass_check.setmaxnreg(sass) == (112, 24)
    assert sass_check.setmaxnreg(_sass("HMMA.16816.F32 R0, R4, R8, R0")) == (None, None)


def test_exps_under_pv():
    sass = _sass(*STEP, "MUFU.EX2 R30, R30", "MUFU.EX2 R31, R31", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
                 "MUFU.EX2 R32, R32")
    assert sass_check.exps_under_pv(sass) == 2
    assert sass_check.exps_under_pv(_sass("MUFU.EX2 R30, R30")) is None


def test_every_dispatchable_kernel_passes_the_sass_rules(tmp_path):
    """The device suite's SASS check on this machine's NVRTC (CuPy's, e.g. 12.9 in CI):
    every Hopper and portable kernel dispatch can choose on sm_90a (the Hopper KV-cache and
    varlen tiles among them) compiles without
    spills, with HGMMA (HMMA), no exponential under P V, and no write to an
    in-flight P; the same NVRTC the users of that CuPy wheel compile with."""
    import shutil

    import pytest

    if not (shutil.which("nvdisasm") or shutil.which("cuobjdump") or sass_check.pip_nvdisasm()):
        if os.environ.get("CI") == "true":   # CI installs it: a missing disassembler is a failure there
            pytest.fail("CI=true but no nvdisasm: .ci/run installs nvidia-cuda-nvdisasm")
        pytest.skip("no nvdisasm: pip install nvidia-cuda-nvdisasm (CI does) to run the SASS rules")
    sass_check.compile_cubins("sm_90a", tmp_path)
    assert len(list(tmp_path.glob("*.cubin"))) == len(sass_check.dispatchable("sm_90a"))
    assert sass_check.report(tmp_path, "sm_90a") == 0
