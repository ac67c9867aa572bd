"""The kernels' parameter structs, declared once in flashcore_cupy/params.py (CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest

from flashcore_cupy import configs, loader, params

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(params.HEADERS))
def test_generated_headers_are_current(name):
    assert (ROOT / "kernels" / name).read_text() == params.render(name), \
        f"kernels/{name} is stale: run python scripts/gen_params.py"


def test_layout_follows_c_rules():
    s = params.Schema("T", [params.Field("a", "int"), params.Field("p", "float*"), params.Field("d", "FastDiv"),
                            params.Field("b", "int")], "test")
    assert s.offsets == {"a": 0, "p": 8, "d": 16, "b": 24} and s.size == 32   # padded to the 8-byte pointer
    assert s.struct.format == "<ixxxxQIIixxxx" and s.struct.size == s.size
    at, part = s.run("p", "d")
    assert at == 8 and part.format == "<QII"
    assert s.values({"a": 1, "p": 2, "d": (3, 4), "b": 5}) == [1, 2, 3, 4, 5]
    with pytest.raises(KeyError, match="b"):
        s.values({"a": 1, "p": 2, "d": (3, 4)})
    assert params.FWD_SM90.size == 832 and params.FWD_SM90.offsets["o"] == 384   # after three 128-byte maps; 64-byte multiple
    assert params.FWD_SM80.size == 376 and params.FWD_SM80.offsets["alibi"] == 216   # 4 bytes of padding before it


def test_the_compiler_checks_every_offset():
    """A struct that drifts from params.py fails to compile: the kernel with one field moved
    in its header (as a stale hand edit would) is rejected by NVRTC's static_asserts."""
    cfg = configs.sm90_config("fp16", 64)
    src = (ROOT / "kernels" / "flash_fwd_sm90.cu").read_text()
    header = params.render("params_sm90.cuh")
    drifted = header.replace("    int causal;\n    int heads;", "    int heads;\n    int causal;")
    assert drifted != header
    copy = src.replace('#include "params_sm90.cuh"', drifted)
    assert copy != src
    code = ("from cupy_backends.cuda.libs import nvrtc\n"
            "from flashcore_cupy import loader\n"
            "import sys\n"
            f"src = {copy!r}\n"
            "prog = nvrtc.createProgram(src, 'copy.cu', [], [])\n"
            f"nvrtc.addNameExpression(prog, {cfg.name_expression!r})\n"
            "try:\n"
            "    nvrtc.compileProgram(prog, list(loader.nvrtc_options('sm_90a')))\n"
            "except nvrtc.NVRTCError:\n"
            "    print(nvrtc.getProgramLog(prog)); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and "Sm90Params::causal" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert loader.compile_only(cfg, "sm_90a").spill_bytes == 0   # the current header compiles
