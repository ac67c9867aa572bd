import os

import numpy as np
import pytest

from flashcore_cupy.cli import gpu_count, gpu_missing_reason

HAS_GPU = gpu_count() > 0
# scripts/gpu_suite.sh sets this: a run meant for a GPU that finds none fails instead of
# skipping every GPU test and exiting 0.
REQUIRE_GPU = os.environ.get("FLASHCORE_REQUIRE_GPU") == "1"
SEED_ENV = "FLASHCORE_TEST_SEED"   # replays a failure's draw: the seed its report printed


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    if REQUIRE_GPU and not HAS_GPU:
        pytest.exit(f"FLASHCORE_REQUIRE_GPU=1 but no CUDA GPU is usable: {gpu_missing_reason()}",
                    returncode=3)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run the I-th of N parts of the collected tests (1 <= I <= N; conftest.shard_indices): "
                          "scripts/gpu_suite.sh's SHARDS runs N pytest processes on one GPU at once")


SHARD_BLOCK = 8   # consecutive tests (mostly one kernel's) that stay in one part


def shard_indices(shard: str, count: int) -> list[int]:
    """The indices of the collected tests that part I of N ("I/N") runs: blocks of SHARD_BLOCK
    consecutive tests dealt to the parts in turn, so every part gets its share of each file
    (the slow variant tests too) while a block's tests share their kernels' compiles."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard: expected I/N with integers, got {shard!r}") from None
    if not 1 <= i <= n:
        raise pytest.UsageError(f"--shard: expected 1 <= I <= N, got {shard!r}")
    return [k for k in range(count) if (k // SHARD_BLOCK) % n == i - 1]


@pytest.hookimpl(trylast=True)   # after `-m`'s deselection: the parts split what runs
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if shard is not None:
        keep = set(shard_indices(shard, len(items)))
        config.hook.pytest_deselected(items=[t for k, t in enumerate(items) if k not in keep])
        items[:] = [t for k, t in enumerate(items) if k in keep]
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU ({gpu_missing_reason()}); "
                                   f"run scripts/gpu_suite.sh on the device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """Fresh random inputs on every run (or $FLASHCORE_TEST_SEED's); the seed is printed
    with a failure ("Captured seed" section), so FLASHCORE_TEST_SEED=<seed> replays it."""
    seed = int(os.environ.get(SEED_ENV) or np.random.SeedSequence().entropy % (2**63))
    request.node.user_properties.append(("seed", seed))
    request.node.add_report_section("call", "seed", f"{SEED_ENV}={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def poisoned_allocations(request):
    """In GPU tests every allocation from CuPy's pool (the outputs and LSE `attention`
    allocates included) starts as 0xFF bytes: NaN in fp16, bf16 and fp32. An element a kernel
    does not write stays NaN, which no check passes."""
    if not HAS_GPU or "gpu" not in request.keywords:
        yield
        return
    import cupy

    pool = cupy.get_default_memory_pool()

    def malloc(size: int):
        mem = pool.malloc(size)
        if size:
            mem.memset_async(0xFF, size)
        return mem

    cupy.cuda.set_allocator(malloc)
    try:
        yield
    finally:
        cupy.cuda.set_allocator(pool.malloc)
