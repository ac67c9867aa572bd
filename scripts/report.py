"""Markdown tables for docs/PERFORMANCE.md from a benchmark JSON.

Usage: python3 scripts/report.py docs/results/<run>/bench.json
The floor per shape: FLOPs over the bf16 matmul rate and the fewest bytes
(q, k, v read once, out written once) over the copy bandwidth, both measured
on the device's H200 (ANCHORS: 792 TFLOP/s, 4.22 TB/s); the larger one wins.
"""

import json
import sys

from flashcore_cupy.shapes import bench_shapes

MATMUL_TFLOPS, COPY_TBPS = 792.0, 4.22


def floor_us(s) -> tuple[float, float, float]:
    byts = 2 * (2 * s.batch * s.heads_q * s.seqlen_q * s.head_dim
                + 2 * s.batch * s.heads_kv * s.seqlen_k * s.head_dim)
    flop_us = s.flops / (MATMUL_TFLOPS * 1e12) * 1e6
    byte_us = byts / (COPY_TBPS * 1e12) * 1e6
    return max(flop_us, byte_us), flop_us, byte_us


def main(path: str) -> None:
    data = json.load(open(path))
    rows = {(r["shape"], r["dtype"], r["impl"], r["mode"]): r for r in data["rows"]}
    print(f"{data['gpu']} ({data['arch']}), git {str(data['git_sha'])[:10]}, {data['timestamp']}, "
          f"CuPy {data['versions']['cupy']}, NVRTC {data['versions']['nvrtc']}, "
          f"torch {data['versions']['torch']}\n")
    for mode in ("throughput", "latency"):
        print(f"### {mode}: p50 µs (TFLOP/s); last columns: flashcore's speed relative to each peer\n")
        print("| shape | dtype | floor µs | flashcore | SDPA flash (FA2) | SDPA cuDNN | SDPA mem-eff | naive CuPy "
              "| vs FA2 | vs cuDNN | vs naive |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for s in bench_shapes():
            for dtype in ("float16", "bfloat16"):
                fc = rows.get((s.name, dtype, "flashcore", mode))
                if fc is None:
                    continue
                cells, ratios = [], []
                for impl in ("flashcore", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "naive_cupy"):
                    r = rows.get((s.name, dtype, impl, mode))
                    cells.append("—" if r is None else f"{r['us_p50']:.1f} ({r['tflops']:.0f})")
                for impl in ("sdpa_flash", "sdpa_cudnn", "naive_cupy"):
                    r = rows.get((s.name, dtype, impl, mode))
                    ratios.append("—" if r is None else f"{r['us_p50'] / fc['us_p50']:.2f}×")
                print(f"| {s.name} | {dtype} | {floor_us(s)[0]:.1f} | " + " | ".join(cells + ratios) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
