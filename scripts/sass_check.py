"""SASS facts of every kernel dispatch can choose on an arch: per kernel, the count of
tensor-core instructions (HGMMA = wgmma, HMMA = mma.sync), of local-memory accesses
(LDL/STL: spills) and, for Hopper kernels, of exponentials (MUFU.EX2) scheduled while the
step loop's P V is in flight: between its wait for S (wgmma wait 1) and its wait for P V
(wait 0), and of writes to the registers a P V wgmma reads its A operand (P) from while it
may still be reading them, and the register counts its setmaxnreg moves to. Exits 1 on
any spill, a Hopper kernel without HGMMA, one with an exponential under P V (the lazy
softmax writes the next P where P V reads this one, so it must follow P V's wait; ptxas
moves waits across independent code: v15), one that writes an in-flight P (ptxas reuses
those registers once the source stops reading them: v16's second P buffer did), or one
whose setmaxnreg counts are not those of
configs.sm90_consumer_registers (a claim beyond the CTA's pool hangs: v17's first
four-consumer kernel did).

  python3 scripts/sass_check.py --arch sm_90a [--keep DIR]   compile with the library's
      NVRTC options (cubins kept in DIR), then disassemble;
  python3 scripts/sass_check.py --cubins DIR                 disassemble kept cubins.

The disassembler is nvdisasm (or cuobjdump) on PATH, else the one of the pip package
nvidia-cuda-nvdisasm; its 13.5 reads NVRTC 12.9's cubins as well as 13's, so the rules
also run on a CPU machine (tests/test_sass_check.py) and kept device cubins can be read
on another machine.
"""

import argparse
import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def dispatchable(arch: str) -> dict:
    """Every config dispatch can choose on `arch`, by its cubin's name: the dense tables' and on
    sm_90a the Hopper kernel's KV-cache tiles (contiguous, box-paged, gathered) and its plain
    varlen tiles (the variants' are the dense variants' code: test_compile holds them to no spills)."""
    from flashcore_cupy import configs, tuning

    found = list(tuning.dispatchable_configs(arch))
    if arch == configs.SM90_ARCH:
        found += tuning.sm90_sequence_tiles()
    return {str(config).replace(" ", "_").replace("/", "v"): config for config in found}


def compile_cubins(arch: str, folder: Path) -> None:
    from flashcore_cupy import loader

    found = dispatchable(arch)
    cubins = loader.in_parallel(lambda config: loader.compile_cubin(config, arch), found.values())
    for name, cubin in zip(found, cubins):
        (folder / f"{name}.cubin").write_bytes(cubin)


@functools.cache
def pip_nvdisasm() -> str | None:
    """nvdisasm from the nvidia-cuda-nvdisasm wheel, if installed."""
    try:
        import nvidia
    except ImportError:
        return None
    found = sorted(p for root in nvidia.__path__ for p in Path(root).glob("cu*/bin/nvdisasm"))
    return str(found[-1]) if found else None


def disassemble(path: Path) -> str | None:
    tools = [["nvdisasm", "-c"], ["cuobjdump", "--dump-sass"]]
    if pip_nvdisasm():
        tools.append([pip_nvdisasm(), "-c"])
    for tool in tools:
        try:
            r = subprocess.run(tool + [str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if r.returncode == 0 and ("HMMA" in r.stdout or "HGMMA" in r.stdout):
            return r.stdout
    return None


def exps_under_pv(sass: str) -> int | None:
    """MUFU.EX2 between the first `wgmma wait 1` and the next `wait 0` (None: no wait 1)."""
    parts = re.split(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x1", sass, maxsplit=1)
    if len(parts) < 2:
        return None
    return re.split(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x0", parts[1], maxsplit=1)[0].count("MUFU.EX2")


def writes_to_p_in_flight(sass: str) -> int:
    """Instructions that write a register of an issued register-A wgmma (HGMMA with an R
    operand: P V) before the next `wgmma wait 0`, in program order (a loop's next step is
    further down, so this is conservative there)."""
    ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", sass)
    count, i = 0, 0
    while i < len(ins):
        a = re.match(r"HGMMA\.\S+ R\d+, R(\d+),", ins[i])
        if a is None:
            i += 1
            continue
        in_flight = set()
        while i < len(ins) and not re.match(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x0", ins[i]):
            a = re.match(r"HGMMA\.\S+ R\d+, R(\d+),", ins[i])
            if a:
                in_flight |= set(range(int(a.group(1)), int(a.group(1)) + 4))
            else:   # the destination: the first register operand, after any predicate output
                d = re.match(r"(?:@!?U?P\w+ )?[A-Z][\w.]* (?:U?P[T\d]+, )?R(\d+)\b", ins[i])
                count += d is not None and int(d.group(1)) in in_flight
            i += 1
    return count


def setmaxnreg(sass: str) -> tuple[int | None, int | None]:
    """The consumers' and the producer's register counts after setmaxnreg (None: absent)."""
    alloc = re.search(r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \S+, (0x[0-9a-f]+)", sass)
    dealloc = re.search(r"USETMAXREG\.DEALLOC\.CTAPOOL (0x[0-9a-f]+)", sass)
    return tuple(int(m.group(1), 16) if m else None for m in (alloc, dealloc))


def report(folder: Path, arch: str) -> int:
    from flashcore_cupy import loader
    from flashcore_cupy.configs import sm90_consumer_registers, sm90_producer_registers

    configs = dispatchable(arch)
    paths = sorted(folder.glob("*.cubin"))
    sasses = loader.in_parallel(disassemble, paths)   # a disassembler process per core
    bad = 0
    print(f"{'kernel':<40} {'HGMMA':>6} {'HMMA':>6} {'LDL/STL':>8} {'EX2 under PV':>13} {'P writes':>9}"
          f" {'maxnreg':>8}")
    for path, sass in zip(paths, sasses):
        if sass is None:   # unchecked is not passed
            print(f"{path.stem:<40} no nvdisasm/cuobjdump here reads this cubin  <-- FAIL")
            bad += 1
            continue
        hgmma = len(re.findall(r"\bHGMMA\.", sass))
        hmma = len(re.findall(r"\bHMMA\.", sass))
        local = len(re.findall(r"\b(?:LDL|STL)\b", sass))
        hopper = path.stem.startswith("sm90")
        under = exps_under_pv(sass) if hopper else None
        p_writes = writes_to_p_in_flight(sass)
        ok = local == 0 and p_writes == 0 and (hgmma > 0 if hopper else hmma > 0)
        ok = ok and (not hopper or under == 0)
        # the kernel's register split is the one configs.py (and so the tuner's pool check) assumes
        regs = setmaxnreg(sass) if hopper else None
        producer = sm90_producer_registers(configs[path.stem]) if hopper else None
        ok = ok and (not hopper or regs == (sm90_consumer_registers(configs[path.stem].consumers, producer), producer))
        bad += not ok
        print(f"{path.stem:<40} {hgmma:>6} {hmma:>6} {local:>8} {'' if under is None else under:>13}"
              f" {p_writes:>9} {'' if regs is None else '%s/%s' % regs:>8}{'' if ok else '  <-- FAIL'}")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--keep", type=Path, help="compile into this folder and keep the cubins")
    parser.add_argument("--cubins", type=Path, help="only disassemble the cubins in this folder")
    args = parser.parse_args()
    if args.cubins:
        return 1 if report(args.cubins, args.arch) else 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        compile_cubins(args.arch, folder)
        return 1 if report(folder, args.arch) else 0


if __name__ == "__main__":
    sys.exit(main())
