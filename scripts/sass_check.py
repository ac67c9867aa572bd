"""SASS facts of every kernel dispatch can choose on an arch: per kernel, the count of
tensor-core instructions (HGMMA = wgmma, HMMA = mma.sync) and of local-memory
accesses (LDL/STL: spills). Compiles with the library's NVRTC options, then
disassembles with cuobjdump (from the CUDA toolkit). Exits 1 on any spill or a
Hopper kernel without HGMMA.
Usage: python3 scripts/sass_check.py [--arch sm_90a]
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cupy_backends.cuda.libs import nvrtc

from flashcore_cupy import configs, loader, tuning


def cubin(config, arch: str) -> bytes:
    prog = nvrtc.createProgram(loader._read_source(config.kernel_file), config.kernel_file, [], [])
    try:
        nvrtc.addNameExpression(prog, config.name_expression)
        nvrtc.compileProgram(prog, list(loader.nvrtc_options(arch)))
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


parser = argparse.ArgumentParser()
parser.add_argument("--arch", default="sm_90a")
arch = parser.parse_args().arch
bad = 0
print(f"{'kernel':<40} {'HGMMA':>6} {'HMMA':>6} {'LDL/STL':>8}")
with tempfile.TemporaryDirectory() as tmp:
    for config in tuning.dispatchable_configs(arch):
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin(config, arch))
        sass = subprocess.run(["cuobjdump", "--dump-sass", str(path)], capture_output=True,
                              text=True, check=True).stdout
        hgmma = len(re.findall(r"\bHGMMA\.", sass))
        hmma = len(re.findall(r"\bHMMA\.", sass))
        local = len(re.findall(r"\b(?:LDL|STL)\b", sass))
        hopper = isinstance(config, configs.Sm90Config)
        ok = local == 0 and (hgmma > 0 if hopper else hmma > 0)
        bad += not ok
        print(f"{str(config):<40} {hgmma:>6} {hmma:>6} {local:>8}{'' if ok else '  <-- FAIL'}")
sys.exit(1 if bad else 0)
