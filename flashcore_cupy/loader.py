"""Run-time compilation of the kernels in kernels/: the only user of cupy.RawModule.

Owns the NVRTC options, the arch, name expressions, the dynamic-shared-memory
opt-in, the in-process cache and compile errors. `compile_only` and `compile_cubin`
compile with NVRTC directly, with no GPU and no driver, for CI, `check` and the SASS
check. Diagnostic builds (a work record, timestamps, ablations: kernels/diagnostics.cuh) are
the kernels compiled with `defines`; `probe_function` loads probe scripts' own small kernels.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, TypeVar


def _find_kernel_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):   # installed wheel, source tree
        if (candidate / "mma_sm80.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"flashcore_cupy: no kernels/ folder next to {here}")


KERNEL_DIR = _find_kernel_dir()


class KernelConfig(Protocol):
    kernel_file: str
    name_expression: str
    smem_bytes: int


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel; carries everything needed to reproduce it."""

    def __init__(self, kernel_file: str, name_expression: str, options: tuple[str, ...], log: str):
        self.kernel_file, self.name_expression, self.options, self.log = (
            kernel_file, name_expression, options, log)
        super().__init__(
            f"NVRTC failed to compile {KERNEL_DIR / kernel_file}\n"
            f"  name expression: {name_expression}\n"
            f"  options: {' '.join(options)}\n"
            f"  log:\n{log}")


@dataclass(frozen=True)
class CompileReport:
    arch: str
    registers: int
    static_smem_bytes: int
    spill_bytes: int          # spill stores + spill loads
    stack_frame_bytes: int
    seconds: float
    perf_warnings: tuple[str, ...] = ()   # ptxas "Potential Performance Loss" lines (e.g. wgmma serialised)


def source_hash() -> str:
    """Hash of every file in kernels/: CuPy's disk cache does not see #included headers."""
    h = hashlib.sha256()
    for path in sorted(KERNEL_DIR.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


_SOURCE_HASH = source_hash()


def arch_for_capability(major: int, minor: int) -> str:
    """NVRTC target for a device: sm_90a on Hopper (wgmma/setmaxnreg need the 'a')."""
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def nvrtc_options(arch: str, defines: tuple[str, ...] = ()) -> tuple[str, ...]:
    """defines: extra macros ("NAME" or "NAME=VALUE") for diagnostic builds the kernels
    understand (FLASHCORE_RECORD_WORK, ...); the product build has none."""
    return ("-std=c++17", f"-arch={arch}", f"-I{KERNEL_DIR}",
            f"-DFLASHCORE_KERNELS_HASH=0x{_SOURCE_HASH}", *(f"-D{d}" for d in defines))


def _read_source(kernel_file: str) -> str:
    return (KERNEL_DIR / kernel_file).read_text()


# --- GPU path -----------------------------------------------------------------

_cache: dict[tuple, int] = {}   # (device, file, name expression, defines) -> CUfunction handle
_cache_lock = threading.Lock()
_modules: dict[tuple, tuple] = {}   # (RawModule, RawKernel) behind _cache's handles, kept alive


def _load(source: str, config: KernelConfig, arch: str, defines: tuple[str, ...] = ()):
    """(RawModule, RawKernel) of `config`'s name expression in `source`, on the current
    device, with the dynamic-shared-memory opt-in."""
    import cupy
    from cupy.cuda.compiler import CompileException

    options = nvrtc_options(arch, defines)
    try:
        module = cupy.RawModule(code=source, options=options, name_expressions=[config.name_expression])
        fn = module.get_function(config.name_expression)
    except CompileException as e:
        raise KernelCompileError(config.kernel_file, config.name_expression, options,
                                 e.get_message()) from None
    if config.smem_bytes > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = config.smem_bytes
    return module, fn


def get_function(config: KernelConfig, device_id: int, arch: str, defines: tuple[str, ...] = ()) -> int:
    """The compiled, launch-ready kernel for `config` on `device_id` (built with `defines`,
    see nvrtc_options), as its CUfunction handle (cached in process, which keeps its module
    loaded)."""
    key = (device_id, config.kernel_file, config.name_expression, defines)
    fn = _cache.get(key)
    if fn is not None:
        return fn
    import cupy

    with _cache_lock, cupy.cuda.Device(device_id):
        fn = _cache.get(key)
        if fn is None:
            module, kernel = _load(_read_source(config.kernel_file), config, arch, defines)
            _modules[key] = module, kernel
            fn = _cache[key] = kernel.kernel.ptr
    return fn


def get_global(config: KernelConfig, device_id: int, arch: str, name: str, defines: tuple[str, ...] = ()):
    """The `__device__` variable `name` of `config`'s module on `device_id` (built with
    `defines`; a diagnostic build's record, say), as a cupy MemoryPointer."""
    get_function(config, device_id, arch, defines)
    return _modules[device_id, config.kernel_file, config.name_expression, defines][0].get_global(name)


def probe_function(source: str, name: str, options: tuple[str, ...] = ()):
    """The `extern "C"` kernel `name` of a diagnostic source (probe scripts: empty kernels,
    clock spins, pipe rates) on the current device, as a RawKernel; not cached."""
    import cupy
    from cupy.cuda.compiler import CompileException

    try:
        return cupy.RawModule(code=source, options=options).get_function(name)
    except CompileException as e:
        raise KernelCompileError("<probe source>", name, options, e.get_message()) from None


# --- compile-only path (no GPU, no driver) ---------------------------------------

_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> tuple[int, int, int, int]:
    """(registers, static smem, spill bytes, stack frame) from an -Xptxas=-v log."""
    used, spill = _PTXAS_USED.search(log), _PTXAS_SPILL.search(log)
    if used is None or spill is None:
        raise ValueError(f"no ptxas resource report in the NVRTC log:\n{log}")
    return (int(used.group(1)), int(used.group(2) or 0),
            int(spill.group(2)) + int(spill.group(3)), int(spill.group(1)))


def _nvrtc_compile(config: KernelConfig, options: tuple[str, ...]) -> tuple[str, bytes]:
    """(NVRTC log, cubin) of `config` compiled with NVRTC directly."""
    return _nvrtc_program(config.kernel_file, _read_source(config.kernel_file), config.name_expression, options)


def _nvrtc_program(kernel_file: str, source: str, name_expression: str | None,
                   options: tuple[str, ...]) -> tuple[str, bytes]:
    """(NVRTC log, cubin) of `source` (kernel_file's text, or more), instantiating
    `name_expression` where one is given."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(source, kernel_file, [], [])
    try:
        if name_expression is not None:
            nvrtc.addNameExpression(prog, name_expression)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError:
            raise KernelCompileError(kernel_file, name_expression or "(none)", options,
                                     nvrtc.getProgramLog(prog)) from None
        # CuPy's getCUBIN drops the image's last byte (it treats it like PTX's
        # terminating NUL); put a zero back so ELF readers accept the file.
        return nvrtc.getProgramLog(prog), nvrtc.getCUBIN(prog) + b"\0"
    finally:
        nvrtc.destroyProgram(prog)


def compile_only(config: KernelConfig, arch: str, defines: tuple[str, ...] = ()) -> CompileReport:
    """Compile `config` to cubin for `arch` with NVRTC and report its resources."""
    start = time.perf_counter()
    log, _ = _nvrtc_compile(config, nvrtc_options(arch, defines) + ("-Xptxas=-v",))
    seconds = time.perf_counter() - start
    regs, smem, spills, stack = parse_ptxas_log(log)
    warnings = tuple(line.strip() for line in log.splitlines() if "Performance Loss" in line)
    return CompileReport(arch, regs, smem, spills, stack, seconds, warnings)


_In, _Out = TypeVar("_In"), TypeVar("_Out")


def in_parallel(fn: Callable[[_In], _Out], items: Iterable[_In]) -> list[_Out]:
    """[fn(x) for x in items] on a thread per CPU core, in order; where calls raise, the
    exception of the earliest such item (in the items' order) propagates. NVRTC drops the
    GIL, so compiles overlap (CI's 2 cores: 1.9x the rate)."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, items))


def compile_reports(configs: Iterable[KernelConfig], arch: str,
                    defines: tuple[str, ...] = ()) -> list[CompileReport]:
    """compile_only of each config, compiled in parallel (in_parallel), in order."""
    return in_parallel(lambda config: compile_only(config, arch, defines), configs)


def smem_expression(config: KernelConfig) -> str:
    """The kernel's own count of the dynamic shared memory a launch of `config` gives: the
    constexpr function `<kernel>_smem<its template arguments>()` beside each kernel that takes
    some (configs' smem_bytes mirror it)."""
    kernel, args = config.name_expression.split("<", 1)
    return f"{kernel}_smem<{args}()"


def check_smem_bytes(configs: Iterable[KernelConfig], arch: str, defines: tuple[str, ...] = ()) -> None:
    """Hold each config's smem_bytes (the host's mirror, what its launches give) to the kernel's
    own count (smem_expression) in a build with `defines`: one NVRTC compile a kernel file, of
    static_asserts, which fail (KernelCompileError, the configs named in its log) where the two
    differ."""
    by_file: dict[str, list[KernelConfig]] = {}
    for config in configs:
        by_file.setdefault(config.kernel_file, []).append(config)

    def check(item: tuple[str, list[KernelConfig]]) -> None:
        kernel_file, group = item
        asserts = "".join(f'    static_assert({smem_expression(c)} == {c.smem_bytes}u, '
                          f'"smem_bytes {c.smem_bytes} of {c} is not the kernel\'s");\n' for c in group)
        source = f"{_read_source(kernel_file)}\n__device__ void flashcore_smem_bytes() {{\n{asserts}}}\n"
        _nvrtc_program(kernel_file, source, None, nvrtc_options(arch, defines))

    in_parallel(check, sorted(by_file.items()))


def compile_cubin(config: KernelConfig, arch: str) -> bytes:
    """`config`'s cubin for `arch`, compiled with NVRTC directly (no GPU), for disassembly."""
    return _nvrtc_compile(config, nvrtc_options(arch))[1]


def nvrtc_version() -> str:
    from cupy_backends.cuda.libs import nvrtc
    return "%d.%d" % nvrtc.getVersion()
