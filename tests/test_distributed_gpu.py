"""Ring attention on the GPU (flashcore_cupy.distributed.ring): world size 1 in this process
against attention and attention_backward, and the example script under the launcher on every
GPU of the machine (one rank per GPU: 1 here, the ring proper where there are more)."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashcore_cupy import reference, workload

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent


def _nccl_or_skip():
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("CuPy finds no NCCL library (pip install the nvidia-nccl wheel: the `distributed` extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def group():
    _nccl_or_skip()
    import cupyx.distributed

    return cupyx.distributed.init_process_group(1, 0, host="127.0.0.1", port=_free_port())


CASES = [(False, None, "bshd"), (True, None, "bshd"), (True, (100, 0), "bhsd"), (False, (64, 64), "bshd")]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("causal, window, layout", CASES, ids=[f"{c}-{w}-{lay}" for c, w, lay in CASES])
def test_world_size_one_equals_attention(rng, group, dtype, causal, window, layout):
    """One rank holds the whole sequence (zigzag when causal: its two chunks, the diagonal
    blocks masked and the merge of the second chunk's two partials): the forward and the
    backward within the bounds of float64, and of attention's and attention_backward's own."""
    import cupy

    import flashcore_cupy as fc
    from flashcore_cupy.distributed import ring_attention, ring_attention_backward

    b, s, hq, hkv, d = 2, 512, 4, 2, 64
    dims = (lambda h: (b, s, h, d)) if layout == "bshd" else (lambda h: (b, h, s, d))
    draw = lambda h: cupy.asarray(rng.standard_normal(dims(h)).astype(workload.np_dtype(dtype)))  # noqa: E731
    q, k, v, dout = draw(hq), draw(hkv), draw(hkv), draw(hq)
    opts = dict(causal=causal, window=window, layout=layout)
    out, lse = ring_attention(q, k, v, group=group, return_lse=True, **opts)
    ref, ref_lse = reference.attention(q, k, v, return_lse=True, **opts)
    err = reference.rel_error(out, ref)
    assert err <= workload.TOLERANCE[dtype], f"out rel err {err:.2e}"
    np.testing.assert_allclose(lse.get(), ref_lse, rtol=1e-4, atol=1e-4)
    mine = fc.attention(q, k, v, **opts)
    assert reference.rel_error(out, mine) <= workload.TOLERANCE[dtype]

    grads = ring_attention_backward(dout, q, k, v, out, lse, group=group, **opts)
    want = reference.attention_backward(dout, q, k, v, ref, ref_lse, **opts)
    for name, got, w in zip(("dq", "dk", "dv"), grads, want):
        assert got.dtype == q.dtype and got.shape == w.shape, name
        e = reference.rel_error(got, w)
        assert e <= workload.GRAD_TOLERANCE[dtype], f"{name} rel err {e:.2e}"


def test_the_ring_refuses_what_it_cannot_shard(group):
    import cupy

    from flashcore_cupy.distributed import ring_attention

    x = cupy.zeros((1, 7, 2, 64), cupy.float16)
    with pytest.raises(ValueError, match="multiple of 2"):   # zigzag: two chunks a rank
        ring_attention(x, x, x, group=group, causal=True)
    with pytest.raises(ValueError, match="shards of one sequence"):
        ring_attention(cupy.zeros((1, 8, 2, 64), cupy.float16), x, x, group=group)
    with pytest.raises(TypeError, match="group must be"):
        ring_attention(x, x, x, group=None)


@pytest.mark.parametrize("flags", [["--causal"], ["--window", "300,0", "--causal"], []], ids=str)
def test_the_example_under_the_launcher_on_every_gpu(flags):
    """`python -m flashcore_cupy.distributed.launch --nproc <GPUs> examples/ring_attention.py`:
    every rank's shards of the output, LSE and gradients against one GPU's whole-sequence call."""
    import cupy

    _nccl_or_skip()
    n = cupy.cuda.runtime.getDeviceCount()
    run = subprocess.run([sys.executable, "-m", "flashcore_cupy.distributed.launch", "--nproc", str(n),
                          str(ROOT / "examples" / "ring_attention.py"), "--seqlen", str(1024 * n), *flags],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASS") == n, run.stdout
