"""api._run's outputs allocated ahead, without a GPU: allocation, the stream and the
launch are replaced by recorders. Every call must get buffers no other call got."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from flashcore_cupy import api


QKV = (1 << 20, 2 << 20, 3 << 20)   # the inputs' addresses, passed through to the launch


class FakeLaunch:
    def __init__(self, elements, lse=False):
        self.out_elements = elements
        self.out_shape = (elements,)
        self.lse_shape = (1,) if lse else None
        self.device = 0
        self.calls = []

    def start(self, qkv, out, lse, stream):
        self.calls.append((qkv, out, lse, stream))


@pytest.fixture
def fake_gpu(monkeypatch):
    serial = itertools.count()
    stream = SimpleNamespace(ptr=1)
    monkeypatch.setattr(api, "_allocate", lambda launch, dtype: (
        f"out{next(serial)}", None if launch.lse_shape is None else f"lse{next(serial)}"))
    monkeypatch.setattr(api, "_current_stream", lambda device: stream)
    monkeypatch.setattr(api, "_spares", {})
    return stream


def test_each_call_gets_its_own_output_and_spares_stay_bounded(fake_gpu):
    launches = [FakeLaunch(1000, lse=i % 2 == 1) for i in range(2 * api._MAX_SPARES + 3)]
    handed = []
    for launch in launches * 3:
        got = api._run(launch, QKV, np.float16, None)
        out, lse = got if launch.lse_shape else (got, None)
        # what the kernel wrote is what the caller gets, launched on the current stream
        assert launch.calls[-1] == (QKV, out, lse, fake_gpu.ptr)
        handed += [out] + ([lse] if lse else [])
        assert len(api._spares) <= api._MAX_SPARES
    assert len(handed) == len(set(handed))
    fake_gpu.ptr = 2   # another stream never takes the first one's spares
    out = api._run(launches[-1], QKV, np.float16, None)
    assert out not in handed and (launches[-1], 2) in api._spares


def test_given_outputs_and_large_ones_are_not_allocated_ahead(fake_gpu):
    big = FakeLaunch(api._SPARE_MAX_ELEMENTS + 1)
    api._run(big, QKV, np.float16, None)
    api._run(FakeLaunch(10), QKV, np.float16, "mine")
    assert api._spares == {}
