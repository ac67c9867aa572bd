"""Where one mission-shape call's latency goes, on the device: kernel time alone (CUDA
graph replay, no host in the loop), the host time of each layer of a call, and the
event-measured latency (GPU idle, events around one call) of launch paths from an
empty kernel up to `attention(q, k, v)`, on arrays seen before and at new addresses (the
tensor maps' encode, driver's against re-aimed); the SM clock after the latency samples and after
the replays (a spin timed by the global timer); the kernel alone for mission-like sizes
(fewer keys, one CTA, more heads), which separates its fixed cost from the key loop.

Host times are per call over batches of 100 calls (synchronised between batches, so the
GPU queue never fills and pushes back on the host). Usage: python3 scripts/latency_probe.py
"""

import functools
import time

import cupy
import numpy as np
from cupy_backends.cuda.api import driver

import flashcore_cupy as fc
from flashcore_cupy import api, loader, tma, workload
from flashcore_cupy.launch import _MAPS_PER_LAUNCH, ParamBlock
from flashcore_cupy.shapes import parse_shape
from flashcore_cupy.timing import time_graph_replay, time_latency, time_throughput
from flashcore_cupy.workload import random_inputs

BATCH, BATCHES = 100, 30


def host_us(fn) -> float:
    stream = cupy.cuda.get_current_stream()
    for _ in range(BATCH):
        fn()
    stream.synchronize()
    best = float("inf")
    for _ in range(BATCHES):
        t = time.perf_counter()
        for _ in range(BATCH):
            fn()
        best = min(best, (time.perf_counter() - t) / BATCH * 1e6)
        stream.synchronize()
    return best


def graph_us(fn, calls: int = 20) -> float:
    """Kernel time alone: `calls` launches captured in a graph, replayed, per call."""
    return time_graph_replay(fn, calls=calls).p50


def graph_each_us(fn) -> tuple[float, float]:
    """(GPU us, host us) per replay of a graph holding one launch of fn, the graph replayed
    back to back (the benchmark's graph mode): the floor a replayed call cannot go under, and
    what the host takes to issue one replay."""
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        fn()
        stream.synchronize()
        stream.begin_capture()
        fn()
        graph = stream.end_capture()
        gpu = time_throughput(lambda i: graph.launch(stream), 50, calls=20).p50
        host = host_us(lambda: graph.launch(stream))
    return gpu, host


_CLOCK_SRC = r"""
extern "C" __global__ void clock_rate(unsigned long long cycles, double* mhz) {
    unsigned long long t0, t1;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    const long long c0 = clock64();
    while (clock64() - c0 < (long long)cycles) {}
    const long long c1 = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
    *mhz = 1e3 * (double)(c1 - c0) / (double)(t1 - t0);
}
"""


@functools.lru_cache(maxsize=None)
def _clock_kernel():
    return loader.probe_function(_CLOCK_SRC, "clock_rate")


def sm_clock_mhz() -> float:
    """The SM clock now: a 20k-cycle spin timed by the global nanosecond timer."""
    kernel = _clock_kernel()
    mhz = cupy.zeros(1, cupy.float64)
    kernel((1,), (1,), (np.uint64(20000), mhz))
    return float(mhz.get()[0])


def kernel_by_size():
    """Kernel time (graph replay) of auto's launch for mission-like shapes: how much of
    the mission kernel is fixed cost (one key tile, one CTA) and how much the key loop."""
    rng = np.random.default_rng()
    print("\nkernel alone by size (graph replay; fp16 D64, auto's config):")
    for b, h, sq, sk in ((1, 8, 512, 512), (1, 8, 512, 256), (1, 8, 512, 128), (1, 8, 512, 64),
                         (1, 1, 64, 512), (1, 1, 64, 64), (1, 16, 512, 512), (1, 8, 1024, 512)):
        q = cupy.asarray(rng.standard_normal((b, h, sq, 64)).astype(np.float16))
        k, v = (cupy.asarray(rng.standard_normal((b, h, sk, 64)).astype(np.float16)) for _ in "kv")
        out = cupy.empty_like(q)
        fc.attention(q, k, v, out=out)
        launch = api.plan(q, k, v, out=out).launch
        print(f"  B{b} H{h} Sq{sq:<5} Sk{sk:<5} {str(launch.config):<34} grid {launch.grid[0]:4d} "
              f"{graph_us(lambda: launch(q, k, v, out, None)):7.2f} us")


def fresh_views(x, count: int) -> list:
    """`count` arrays of x's shape at distinct addresses (16 bytes apart in one buffer): each
    call on the next is a call on arrays the launch has not seen (a training loop's activations)."""
    buf = cupy.empty(x.size + 8 * count, x.dtype)
    return [buf[8 * j:8 * j + x.size].reshape(x.shape) for j in range(count)]


def encode_us(launch, sets) -> tuple[float, float]:
    """Host us to encode a launch's three maps: the driver's encode each time, and a spec's
    first map re-aimed (tma.encode_maps)."""
    block, turn = ParamBlock(3 * tma.MAP_BYTES), [0]

    def encode():
        turn[0] += 1
        q, k, v = sets[turn[0] % len(sets)]
        tma.encode_maps(block.data, launch.config.dtype, launch.specs, (q.data.ptr, k.data.ptr, v.data.ptr))
    replace, tma._replace = tma._replace, lambda: None
    try:
        direct = host_us(encode)
    finally:
        tma._replace = replace
    return direct, host_us(encode)


def main():
    shape = parse_shape("mission")
    rng = np.random.default_rng()
    q, k, v = random_inputs(shape, "fp16", rng)
    out = cupy.empty_like(q)
    fc.attention(q, k, v)
    launch = api.plan(q, k, v).launch
    print(f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; auto: {launch.config}; "
          f"grid {launch.grid}")

    empty = loader.probe_function('extern "C" __global__ void empty_kernel() {}', "empty_kernel")
    empty_ptr = empty.kernel.ptr
    no_params = np.zeros(1, np.uintp)
    no_params_ptr = no_params.ctypes.data

    def empty_driver():
        driver.launchKernel(empty_ptr, 1, 1, 1, 32, 1, 1, 0, cupy.cuda.get_current_stream().ptr,
                            no_params_ptr, 0)

    # What the launch itself costs before the kernel does anything: an empty kernel taking a
    # by-value parameter as large as the Hopper kernel's, alone and in the mission launch's
    # grid, block and dynamic shared memory.
    wide = loader.probe_function('struct __align__(64) P { unsigned char b[512]; };'
                                 'extern "C" __global__ void wide_kernel(const __grid_constant__ P p) {}',
                                 "wide_kernel", ("-std=c++17",))
    wide.max_dynamic_shared_size_bytes = launch.config.smem_bytes
    wide_params = ParamBlock(512)

    def wide_driver(grid=(1, 1, 1), threads=32, smem=0):
        driver.launchKernel(wide.kernel.ptr, *grid, threads, 1, 1, smem,
                            cupy.cuda.get_current_stream().ptr, wide_params.argv, 0)

    pieces = {
        "empty kernel, RawKernel call": lambda: empty((1,), (32,), ()),
        "empty kernel, driver.launchKernel": empty_driver,
        "  with a 512-byte parameter": wide_driver,
        "  and the mission launch's geometry": lambda: wide_driver(launch.grid, launch.config.threads,
                                                                  launch.config.smem_bytes),
        "prepared launch (out given)": lambda: launch(q, k, v, out, None),
        "attention(q, k, v, out=out)": lambda: fc.attention(q, k, v, out=out),
        "attention(q, k, v)": lambda: fc.attention(q, k, v),
        "signature + lookup": lambda: api._launches.get(
            api._signature(q, k, v, None, False, None, "bhsd", False, "auto")),
        "cupy.empty(out)": lambda: cupy.empty(launch.out_shape, dtype=q.dtype),
        "get_current_stream().ptr": lambda: cupy.cuda.get_current_stream().ptr,
    }
    try:   # the peer, for the ratio the benchmark reports
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
        sdpa_kernel(SDPBackend.CUDNN_ATTENTION).__enter__()   # for the rest of the process
        pieces["sdpa cuDNN (torch)"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
    except ImportError:
        pass
    # The benchmark's way: input sets in turn (workload.input_sets), called through its lambdas.
    sets = workload.input_sets(shape, "fp16", rng, first=(q, k, v))
    for s in sets:
        fc.attention(*s)
    bench_fn = lambda q_, k_, v_: fc.attention(q_, k_, v_, causal=False)   # noqa: E731
    # Arrays at new addresses every call: more of them than a launch keeps maps for.
    fresh = list(zip(*(fresh_views(x, 2 * _MAPS_PER_LAUNCH) for x in (q, k, v))))
    rotating = {
        f"attention, {len(sets)} input sets in turn": lambda i: fc.attention(*sets[i % len(sets)]),
        "  the same through bench.py's lambdas": lambda i: bench_fn(*sets[i % len(sets)]),
        "attention, arrays at new addresses": lambda i: fc.attention(*fresh[i % len(fresh)]),
    }
    print(f"\n{'path':<40} {'host us/call':>12} {'latency p50':>12} {'p90':>8}")
    for name, fn in pieces.items():
        h = host_us(fn)
        lat = time_latency(lambda i: fn(), 200) if "empty(" not in name and "lookup" not in name \
            and "stream" not in name else None
        print(f"{name:<40} {h:12.2f} " + (f"{lat.p50:12.2f} {lat.p90:8.2f}" if lat else ""))

    for name, fn in rotating.items():
        count = [0]

        def step(fn=fn):
            count[0] += 1
            fn(count[0])
        lat = time_latency(fn, 200)
        print(f"{name:<40} {host_us(step):12.2f} {lat.p50:12.2f} {lat.p90:8.2f}")

    direct, reaimed = encode_us(launch, fresh)
    print(f"three maps at new addresses: driver's encode {direct:.2f} us, re-aimed {reaimed:.2f} us")
    print(f"SM clock after the latency samples: {sm_clock_mhz():.0f} MHz")
    print("\nkernel alone (graph replay, per launch):")
    print(f"  empty kernel             {graph_us(lambda: empty((1,), (32,), ())):7.2f} us")
    print(f"  {str(launch.config):<24} {graph_us(lambda: launch(q, k, v, out, None)):7.2f} us")
    turn = [0]

    def rotate():
        turn[0] += 1
        launch(*sets[turn[0] % len(sets)], out, None)
    print(f"  {'  inputs in turn':<24} {graph_us(rotate, calls=2 * len(sets)):7.2f} us")
    print(f"  SM clock after the replays: {sm_clock_mhz():.0f} MHz")
    print("\none launch a graph, graphs replayed back to back (bench's graph mode; GPU / host us a replay):")
    for name, fn in (("empty kernel", lambda: empty((1,), (32,), ())),
                     (str(launch.config), lambda: launch(q, k, v, out, None))):
        gpu, host = graph_each_us(fn)
        print(f"  {name:<24} {gpu:7.2f} / {host:5.2f} us")
    kernel_by_size()
    for backend in ("sm80",):
        fc.attention(q, k, v, out=out, backend=backend)
        other = api.plan(q, k, v, out=out, backend=backend).launch
        print(f"  {str(other.config):<24} {graph_us(lambda: other(q, k, v, out, None)):7.2f} us")


if __name__ == "__main__":
    main()
