"""Which pipe the softmax's instructions share, on the device: the rate of `ex2.approx`
(MUFU.EX2), of the packing conversions `cvt.rn.{f16,bf16}x2.f32` (F2FP) and of FFMA, alone
and interleaved. If two instructions run on one pipe, their interleaved time is the sum
of their times alone; on separate pipes, the larger of the two.

Each thread runs 8 independent chains of OPS steps (enough warps and chains to cover
latency), so the time measures throughput. Usage: python3 scripts/dev/pipe_probe.py
"""

import cupy

from flashcore_cupy import loader
from flashcore_cupy.timing import time_throughput

OPS, THREADS, BLOCKS_PER_SM = 4096, 512, 4

# One step of each chain per instruction kind; `x` floats, `u` packed words, chain c.
_STEPS = {
    "ex2": "asm volatile(\"ex2.approx.ftz.f32 %0, %0;\" : \"+f\"(x[c]));",
    "f16x2": "asm volatile(\"cvt.rn.f16x2.f32 %0, %1, %0;\" : \"+r\"(u[c]) : \"f\"(x[c]));",
    "bf16x2": "asm volatile(\"cvt.rn.bf16x2.f32 %0, %1, %0;\" : \"+r\"(u[c]) : \"f\"(x[c]));",
    "ffma": "asm volatile(\"fma.rn.f32 %0, %0, %1, %2;\" : \"+f\"(x[c]) : \"f\"(0.999f), \"f\"(1e-3f));",
}
# Interleavings: each kind's chains take every other step, so per kind OPS / 2 steps.
_MIXES = {"ex2+f16x2": ("ex2", "f16x2"), "ex2+bf16x2": ("ex2", "bf16x2"), "ex2+ffma": ("ex2", "ffma")}


def _source(name: str, body: str) -> str:
    return f"""
extern "C" __global__ void {name}(float* out) {{
    float x[8];
    unsigned u[8];
    for (int c = 0; c < 8; ++c) {{ x[c] = 0.5f + 1e-3f * (threadIdx.x + c); u[c] = 0x3c003c00u + c; }}
    for (int i = 0; i < {OPS}; ++i) {{
        #pragma unroll
        for (int c = 0; c < 8; ++c) {{ {body} }}
    }}
    float acc = 0.f;
    for (int c = 0; c < 8; ++c) acc += x[c] + __uint_as_float(u[c]);
    if (acc == 12345.f) out[0] = acc;   // keeps every chain live
}}
"""


def _mix_body(a: str, b: str) -> str:
    # chains 0-3 take kind a and 4-7 kind b: half the steps each
    return f"if (c < 4) {{ {_STEPS[a]} }} else {{ {_STEPS[b]} }}"


def main() -> None:
    dev = cupy.cuda.runtime.getDeviceProperties(0)
    sms = dev["multiProcessorCount"]
    out = cupy.zeros(1, cupy.float32)
    grid = sms * BLOCKS_PER_SM
    bodies = {**_STEPS, **{k: _mix_body(*v) for k, v in _MIXES.items()}}
    print(f"{dev['name'].decode()}: {sms} SMs; {grid} blocks x {THREADS} threads, 8 chains x {OPS} steps")
    print(f"{'kernel':12s} {'us':>9s} {'instr/clk/SM':>13s}  (clock from cudaDevAttrClockRate)")
    clock_khz = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrClockRate, 0)
    for name, body in bodies.items():
        fn = loader.probe_function(_source("probe", body), "probe", ("-std=c++17",))
        t = time_throughput(lambda i: fn((grid,), (THREADS,), (out,)), iters=10, calls=1, warmup=2).p50
        instr = grid * THREADS * 8 * OPS / 32   # warp instructions, all kinds
        rate = instr * 32 / (t * 1e-6) / sms / (clock_khz * 1e3)
        print(f"{name:12s} {t:9.1f} {rate:13.2f}")


if __name__ == "__main__":
    main()
