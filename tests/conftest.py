import numpy as np
import pytest

from flashcore_cupy.cli import gpu_count

HAS_GPU = gpu_count() > 0


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found); run scripts/gpu_suite.sh on the device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng(request):
    """Fresh random inputs on every run; the seed is reported with a failure."""
    seed = int(np.random.SeedSequence().entropy % (2**63))
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)
