"""Tile search: the config space per kernel family, its legality filter, and the tuned
tables dispatch reads.

A tuned table maps a dispatch key (configs.DispatchKey; written "fp16/d128/large" for the
portable kernel, "sm90/fp16/d128/large" for the Hopper one in the files) to a tile. Tables are
looked up in the per-user cache file first (keyed by GPU, compute capability,
CuPy and NVRTC versions and the kernels' source hash, so any of those changing
makes an entry stale), then in the defaults shipped with the package (measured
on the device's H200 and H100, keyed by GPU name and capability). A stale or corrupt
file is ignored with a warning.
"""

from __future__ import annotations

import dataclasses

import itertools
import json
import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import configs, loader
from .configs import Sm80FwdConfig, Sm90FwdConfig

Config = Sm80FwdConfig | Sm90FwdConfig
SCHEMA = 1


@dataclass(frozen=True)
class Family:
    """One kernel's tunable fields, in the order a tuned entry's "tile" lists them."""

    name: str
    config_cls: type
    space: dict[str, tuple]     # field -> values; every combination is a candidate


FAMILIES = {
    "sm80": Family("sm80", Sm80FwdConfig, {"warps": (4, 8), "m_tiles": (1, 2), "block_n": (32, 64, 128),
                               "stages": (2, 3, 4)}),
    "sm90": Family("sm90", Sm90FwdConfig, {"block_n": (64, 80, 96, 112, 128, 176, 192), "stages": (2, 3, 4, 8),
                                "consumers": (1, 2, 3, 4), "pingpong": (False, True),
                                "split": (False, True), "producers": (1, 2),
                                "warp_rows": (8, 16)}),
}
_MAX_ACCUMULATOR_REGS = 192   # sm80: of 255, the rest holds fragments, addresses and the softmax
_SM90_SPARE_REGS = 24         # sm90: a consumer's registers beyond S, P and O (addresses, softmax)
ENV_CACHE = "FLASHCORE_CUPY_TUNE_CACHE"
ENV_DISABLE = "FLASHCORE_CUPY_NO_TUNE"   # "1": dispatch ignores tuned tables (before/after runs)


@dataclass(frozen=True)
class Rejected:
    config: Config
    reason: str


def family_of(config: Config) -> Family:
    return next(f for f in FAMILIES.values() if isinstance(config, f.config_cls))


def space(dtype: str, head_dim: int, family: str = "sm80") -> list[Config]:
    fam = FAMILIES[family]
    names = list(fam.space)
    return [fam.config_cls(dtype, head_dim, **dict(zip(names, values)))
            for values in itertools.product(*(fam.space[n] for n in names))]


def _sm90_static_reason(config: Sm90FwdConfig, arch: str) -> str | None:
    if arch != configs.SM90_ARCH:
        return f"the Hopper kernel needs {configs.SM90_ARCH}, not {arch}"
    if config.head_dim not in configs.SM90_HEAD_DIMS:
        return f"head dim {config.head_dim} not in {configs.SM90_HEAD_DIMS}"
    if config.pingpong and config.consumers < 2:
        return "ping-pong needs two or more consumer warpgroups"
    if config.consumers == 4 and not (config.split and config.block_n == 64):
        return "four consumers compile at 96 registers: split 64-key tiles only"
    if config.warp_rows == 8 and not config.split:
        return "8-row warps need split tiles"
    if config.split:
        if config.consumers < 2 or config.pingpong or config.stages % config.consumers:
            return "split keys need 2+ consumers, no ping-pong and stages a multiple of them"
        if config.combine_bytes > 4 * config.stages * config.block_n * config.d_pad:
            return f"the split combine's {config.combine_bytes} B do not fit in the K/V ring"
    regs = config.block_n // 2 + config.block_n // 4 + config.head_dim // 2   # S, P, O per thread
    budget = configs.sm90_consumer_registers(config.consumers, configs.sm90_producer_registers(config)) - _SM90_SPARE_REGS
    if regs > budget:
        return f"S, P and O need {regs} registers per consumer thread (> {budget})"
    return None


def static_reason(config: Config, arch: str) -> str | None:
    """Why `config` cannot work on `arch` without compiling it, or None."""
    if isinstance(config, Sm90FwdConfig):
        reason = _sm90_static_reason(config, arch)
        limit = configs.SMEM_LIMIT.get(arch, 0)
        if reason is None and config.smem_bytes > limit:
            reason = f"{config.smem_bytes} B of shared memory (> {limit} on {arch})"
        return reason
    acc = config.m_tiles * (config.head_dim + config.block_n) // 2
    if acc > _MAX_ACCUMULATOR_REGS:
        return f"O and S accumulators need {acc} registers per thread (> {_MAX_ACCUMULATOR_REGS})"
    limit = configs.SMEM_LIMIT[arch]
    if config.smem_bytes > limit:
        return f"{config.smem_bytes} B of shared memory (> {limit} on {arch})"
    return None


_compile_verdicts: dict[tuple[str, str], str | None] = {}


def compile_reason(config: Config, arch: str) -> str | None:
    """Why `config` fails when compiled for `arch` (error, spills, or ptxas reporting a
    performance loss such as serialised wgmma), or None. Cached."""
    key = (config.name_expression, arch)
    if key not in _compile_verdicts:
        try:
            report = loader.compile_only(config, arch)
            _compile_verdicts[key] = (
                f"spills {report.spill_bytes} B ({report.registers} registers)" if report.spill_bytes
                else f"ptxas: {report.perf_warnings[0][:120]}" if report.perf_warnings
                else _register_pool_reason(config, report.registers))
        except loader.KernelCompileError as e:
            _compile_verdicts[key] = f"compile error: {e.log.strip().splitlines()[0][:120]}"
    return _compile_verdicts[key]


def _register_pool_reason(config: Config, registers: int) -> str | None:
    """setmaxnreg moves registers only inside the CTA's launch allocation (`registers` per
    thread): consumers asking for more than the producer frees would wait forever."""
    if not isinstance(config, Sm90FwdConfig):
        return None
    producer = configs.sm90_producer_registers(config)
    need = producer + config.consumers * configs.sm90_consumer_registers(config.consumers, producer)
    have = registers * (config.consumers + 1)
    return (f"setmaxnreg needs {need} registers per thread of the warpgroups, the CTA holds {have}"
            if need > have else None)


def legal_configs(arch: str, dtype: str, head_dim: int, family: str = "sm80",
                  compile_check: bool = True) -> tuple[list[Config], list[Rejected]]:
    """Split one family's space for (arch, dtype, head dim) into legal configs and rejections."""
    def reason(config: Config) -> str | None:
        return static_reason(config, arch) or (compile_reason(config, arch) if compile_check else None)

    cands = space(dtype, head_dim, family)
    reasons = loader.in_parallel(reason, cands)
    return ([c for c, r in zip(cands, reasons) if r is None],
            [Rejected(c, r) for c, r in zip(cands, reasons) if r is not None])


# --- tuned tables -------------------------------------------------------------


def cache_path() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashcore_cupy" / "tune.json"


def device_key(gpu: str, capability: tuple[int, int], cupy_version: str, nvrtc: str) -> str:
    return f"{gpu}|sm{capability[0]}{capability[1]}|cupy {cupy_version}|nvrtc {nvrtc}|kernels {loader.source_hash()}"


def _entry_config(key: configs.DispatchKey, entry: dict) -> Config:
    family = FAMILIES[key.family]
    tile = entry["tile"]
    if not (isinstance(tile, list) and len(tile) == len(family.space) and
            all(type(x) in (int, bool) and x in values for x, values in zip(tile, family.space.values()))):
        raise ValueError(f"bad tile {tile!r} (expected values of {family.space})")
    return family.config_cls(key.dtype, key.head_dim, **dict(zip(family.space, tile)))


def entry_tile(config: Config) -> list:
    """The "tile" of a tuned entry for `config` (its family's fields, in order)."""
    return [getattr(config, name) for name in family_of(config).space]


def _read_tables(path: Path, what: str) -> dict:
    """{table key: {dispatch key: entry}} from a tune file; {} (with a warning) if unusable."""
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA or not isinstance(data.get("tables"), dict):
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
        return data["tables"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as e:
        warnings.warn(f"flashcore_cupy: ignoring {what} {path}: {e}", stacklevel=3)
        return {}


def _to_configs(entries: dict, arch: str, source: str) -> dict[configs.DispatchKey, Config]:
    out = {}
    for key, entry in entries.items():
        try:
            parsed = configs.DispatchKey.parse(key)
            config = _entry_config(parsed, entry)
            if static_reason(config, arch) is not None:
                raise ValueError(static_reason(config, arch))
            out[parsed] = config
        except (ValueError, KeyError, TypeError) as e:
            warnings.warn(f"flashcore_cupy: ignoring tuned entry {key!r} from {source}: {e}",
                          stacklevel=3)
    return out


def load_table(gpu: str, capability: tuple[int, int], cupy_version: str, nvrtc: str,
               arch: str) -> dict[configs.DispatchKey, Config]:
    """The tuned table for this device: the user's cache over the shipped defaults."""
    if os.environ.get(ENV_DISABLE) == "1":
        return {}
    shipped = _read_tables(Path(str(resources.files(__package__).joinpath("tuned_defaults.json"))),
                           "shipped tune defaults")
    table = _to_configs(shipped.get(f"{gpu}|sm{capability[0]}{capability[1]}", {}), arch, "defaults")
    user = _read_tables(cache_path(), "tune cache")
    key = device_key(gpu, capability, cupy_version, nvrtc)
    table.update(_to_configs(user.get(key, {}), arch, str(cache_path())))
    return table


def shipped_configs(arch: str) -> set[Config]:
    """Tiles the shipped defaults can make dispatch choose on `arch` (for `check` and tests)."""
    path = Path(str(resources.files(__package__).joinpath("tuned_defaults.json")))
    found = set()
    for table_key, entries in _read_tables(path, "shipped tune defaults").items():
        cap = table_key.rsplit("|sm", 1)[-1]
        if loader.arch_for_capability(int(cap[:-1]), int(cap[-1])) == arch:
            found |= set(_to_configs(entries, arch, "defaults").values())
    return found


def dispatchable_configs(arch: str) -> list[Config]:
    """Every config dispatch can choose on `arch`: the tile table's and the shipped tuned ones."""
    return sorted(set(configs.all_configs(arch)) | shipped_configs(arch),
                  key=lambda c: (c.dtype, c.head_dim, c.block_m, c.block_n, c.stages))


# The variants whose tiles bound the rest: the window alone (its tile unchanged) and every score
# option on, with either bias type (the most registers); any other combination takes the tile
# of one of these (configs.variant_config).
_BOUNDING_VARIANTS = (configs.KernelVariant(window=True),
                      configs.KernelVariant(window=True, softcap=True, alibi=True, bias="16bit"),
                      configs.KernelVariant(window=True, softcap=True, alibi=True, bias="fp32"))


def backward_configs(arch: str) -> list[configs.Sm80BwdConfig | configs.Sm90BwdConfig | configs.BwdStepConfig]:
    """The backward's instantiations on `arch`: its steps', the portable kernel's (every head dim
    bucket and dtype, plain and for the bounding variants) and on sm_90a the Hopper kernel's
    (plain and the bounding variants)."""
    steps = [configs.BwdStepConfig(k, dt) for k in ("bwd_prep", "bwd_convert") for dt in configs.DTYPES]
    portable = [configs.bwd_config(dt, hd, v) for dt in configs.DTYPES for hd in configs.HEAD_DIM_BUCKETS
                for v in (configs.PLAIN, *_BOUNDING_VARIANTS)]
    hopper = [configs.Sm90BwdConfig(dt, hd, variant=v) for dt in configs.DTYPES for hd in configs.SM90_BWD_HEAD_DIMS
              for v in (configs.PLAIN, *_BOUNDING_VARIANTS)]
    return steps + portable + (hopper if arch == configs.SM90_ARCH else [])


# ALiBi alone keeps the Hopper kernel's wider key tiles (configs.variant_config): bounded by none
# of the above there.
_HOPPER_ALIBI = configs.KernelVariant(window=True, alibi=True)


def variant_configs(arch: str) -> list[Config]:
    """The variant instantiations of every config dispatch can choose on `arch` (the Hopper
    ones included), for the bounding variants (and on the Hopper kernel ALiBi alone)."""
    return sorted({configs.variant_config(c, v) for c in dispatchable_configs(arch)
                   for v in _BOUNDING_VARIANTS + ((_HOPPER_ALIBI,) if isinstance(c, configs.Sm90FwdConfig) else ())},
                  key=str)


# The variants the inference ops' kernels bound: a window alone, and every score option they take
# (no bias: varlen and KV-cache calls have none).
_SEQUENCE_VARIANTS = (configs.PLAIN, configs.KernelVariant(window=True),
                      configs.KernelVariant(window=True, softcap=True, alibi=True))


def sm90_sequence_tiles(dtypes: tuple[str, ...] = configs.DTYPES,
                        variants: tuple[configs.KernelVariant, ...] = (configs.PLAIN,)) -> list[configs.Sm90FwdConfig]:
    """The Hopper kernel's KV-cache tiles (contiguous, box-paged, gathered; plain) and its varlen
    tiles for `variants`, at every built head dim."""
    dims = configs.SM90_HEAD_DIMS
    return ([configs.sm90_cache_config(dt, hd, paged, gather) for dt in dtypes for hd in dims
             for paged, gather in ((False, False), (True, False), (True, True))] +
            [configs.sm90_varlen_config(dt, hd, v) for dt in dtypes for hd in dims for v in variants])


def sequence_configs(arch: str, dtypes: tuple[str, ...] = configs.DTYPES) -> list[configs.Sm80FwdConfig | configs.Sm90FwdConfig]:
    """The split-KV dense, varlen and KV-cache instantiations (configs.seq_config, decode tiles
    included) of every portable config the tables give on `arch`, for the variants that bound the
    rest; on sm_90a the Hopper kernel's KV-cache and varlen tiles (configs.sm90_cache_config,
    sm90_varlen_config) and its dispatchable tiles' split-KV dense ones too."""
    base = {c for c in configs.all_configs(arch) if isinstance(c, configs.Sm80FwdConfig) and c.dtype in dtypes}
    found = {configs.seq_config(c, seq, v, rows, arch) for c in base for seq in configs.SEQ_KINDS[1:]
             for v in _SEQUENCE_VARIANTS for rows in (None, configs.DECODE_ROWS)}
    if arch == configs.SM90_ARCH:
        found |= set(sm90_sequence_tiles(dtypes, _SEQUENCE_VARIANTS))
        found |= {dataclasses.replace(configs.variant_config(c, v), seq="dense_split")
                  for c in dispatchable_configs(arch) if isinstance(c, configs.Sm90FwdConfig) and c.dtype in dtypes
                  for v in _SEQUENCE_VARIANTS}
    return sorted(found, key=str)


def save_entries(path: Path, table_key: str, entries: dict) -> None:
    """Merge `entries` (dispatch key -> entry) into the table `table_key` of the tune file at
    `path` (atomic write); keys as their text form."""
    tables = _read_tables(path, "tune cache")
    tables.setdefault(table_key, {}).update({str(k): v for k, v in entries.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "tables": tables}, indent=1, sort_keys=True))
    tmp.replace(path)
