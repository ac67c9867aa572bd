"""Markdown for docs/PERFORMANCE.md from benchmark JSONs: every number there comes from here.

Usage: python3 scripts/report.py docs/results/<run>/bench.json [more.json ...]
Each JSON is one run (one process on one GPU): its tables compare only within it. Prints the
run's header, how it was measured (sample counts, order, input sets: read from the JSON),
the correctness of every implementation (error ranges over all its cases), failures and
unavailable peers, throughput and latency tables (the list, then its held-out shapes apart),
and the latency/throughput comparison against cuDNN.
The floor per shape: FLOPs over the bf16 matmul rate and the fewest bytes (q, k, v read once,
out written once) over the copy bandwidth, both measured on the device's H200 (ANCHORS: 792
TFLOP/s, 4.22 TB/s); the larger one wins.
"""

import json
import sys

from flashcore_cupy.shapes import bench_shapes

MATMUL_TFLOPS, COPY_TBPS = 792.0, 4.22
PEERS = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "naive_cupy")
NAMES = {"flashcore": "flashcore", "flashcore_sm80": "flashcore sm80", "flashcore_plain": "flashcore plain",
         "flashcore_deterministic": "flashcore deterministic", "flashcore_kvcache": "flashcore kvcache",
         "flashcore_paged": "flashcore paged", "flashcore_contiguous": "flashcore contiguous",
         "flashcore_varlen": "flashcore varlen", "torch_nested": "SDPA nested",
         "sdpa_flash": "SDPA flash (FA2)",
         "sdpa_cudnn": "SDPA cuDNN", "sdpa_efficient": "SDPA mem-eff", "naive_cupy": "naive CuPy"}
DTYPES = ("fp16", "bf16")


def floor_us(s) -> float:
    byts = 2 * (2 * s.batch * s.heads_q * s.seqlen_q * s.head_dim
                + 2 * s.batch * s.heads_kv * s.seqlen_k * s.head_dim)
    return max(s.flops / (MATMUL_TFLOPS * 1e12), byts / (COPY_TBPS * 1e12)) * 1e6


def _rows(data) -> dict:
    return {(r["shape"], r["dtype"], r["impl"], r["mode"]): r for r in data["rows"]}


def header(data) -> list[str]:
    v = data["versions"]
    return [f"**{data['gpu']}** ({data['arch']}, L2 {data.get('l2_bytes', 0) / 2**20:.0f} MiB), git "
            f"`{str(data['git_sha'])[:10]}`, kernels `{v['kernels']}`, {data['timestamp']}; CuPy "
            f"{v['cupy']}, NVRTC {v['nvrtc']}, torch {v['torch']}.", ""]


def _groups(case: dict, mode: str) -> list[dict]:
    """A case's timed groups in one mode (schema 2 runs before the speed groups: one)."""
    g = case.get(mode, [])
    return g if isinstance(g, list) else [g]


def method(data) -> list[str]:
    m, cases = data["method"], data["cases"]
    sets = sorted({c["sets"] for c in cases if "sets" in c})
    rows = sorted({c["check_rows"] for c in cases if "check_rows" in c})
    rounds = sorted({g["rounds"] for c in cases for mode in ("latency", "throughput") for g in _groups(c, mode)})
    return [
        f"- Samples per implementation: {m['latency_samples']} latency (events around one call after the GPU "
        f"is idle), {m['throughput_samples']} throughput (events around {m['throughput_calls']} back-to-back "
        f"calls, per call); an implementation over {m['slow_us'] / 1000:.0f} ms a call takes "
        f"{m['slow_samples']} (and 2 calls per throughput sample). Cases whose every call takes "
        f"{m['clock_bound_us']} µs or more take turns sample by sample (rounds rounded up to the order's "
        f"cycle); shorter ones in blocks after 50 ms of warm-up. Median (p50) reported.",
        f"- Order: {m['order']} ({', '.join(map(str, rounds))} rounds); each case's orders and "
        f"predecessor counts are in the JSON's `cases`.",
        f"- L2: inputs rotate over {sets[0]}–{sets[-1]} input sets per case, holding at least "
        f"{m['rotate_bytes'] >> 20} MiB together, one set per call, the same for every implementation, so "
        f"no call finds its inputs in the L2 that earlier calls left.",
        f"- Correctness: every implementation checked on every input set against float64 "
        f"({rows[0]}–{rows[-1]} sampled query rows per set), before timing.", ""]


def errors(data) -> list[str]:
    """Error ranges per implementation and dtype, over every case of the run."""
    out = ["| implementation | dtype | rel err (min – max) | worst row (min – max) | cases |",
           "|---|---|---|---|---|"]
    for impl in NAMES:
        for dtype in DTYPES:
            rs = [r for r in data["rows"] if r["impl"] == impl and r["dtype"] == dtype and r["mode"] == "latency"]
            if rs:
                e = [r["rel_err"] for r in rs]
                w = [r["row_err"] for r in rs]
                out.append(f"| {NAMES[impl]} | {dtype} | {min(e):.1e} – {max(e):.1e} | "
                           f"{min(w):.1e} – {max(w):.1e} | {len(rs)} |")
    out.append("")
    for f in data["failures"]:
        out.append(f"- **FAILED** {f['shape']} {f['dtype']} {f['impl']}: {f['reason']}")
    for u in data["unavailable"]:
        out.append(f"- unavailable: {u['shape']} {u['dtype']} {NAMES.get(u['impl'], u['impl'])}: {u['reason']}")
    if data["failures"] or data["unavailable"]:
        out.append("")
    return out


def timing_cells(rows: dict, shape: str, dtype: str, impls, mode: str) -> list[str]:
    """Each implementation's "p50 µs (TFLOP/s)" on a row, "—" where it did not run."""
    cells = []
    for impl in impls:
        r = rows.get((shape, dtype, impl, mode))
        cells.append("—" if r is None else f"{r['us_p50']:.1f} ({r['tflops']:.0f})")
    return cells


def table(data, mode: str, shapes) -> list[str]:
    rows = _rows(data)
    out = ["| shape | dtype | floor µs | flashcore | flashcore sm80 | " + " | ".join(NAMES[p] for p in PEERS)
           + " | vs FA2 | vs cuDNN |", "|---" * (7 + len(PEERS)) + "|"]
    for s in shapes:
        for dtype in DTYPES:
            fc = rows.get((s.name, dtype, "flashcore", mode))
            if fc is None:
                continue
            cells = timing_cells(rows, s.name, dtype, ("flashcore", "flashcore_sm80") + PEERS, mode)
            for peer in ("sdpa_flash", "sdpa_cudnn"):
                r = rows.get((s.name, dtype, peer, mode))
                cells.append("—" if r is None else f"{r['us_p50'] / fc['us_p50']:.2f}×")
            out.append(f"| {s.name} | {dtype} | {floor_us(s):.1f} | " + " | ".join(cells) + " |")
    return out + [""]


# Issue 22's bars for a variant row: flashcore's TFLOP/s over flashcore_plain's, and the fastest
# SDPA peer's time over flashcore's (None: the issue sets none; top-left's plain row is another mask).
def _bars(s) -> tuple[float | None, float | None]:
    if s.window is not None:
        return 0.85, 5.0
    if s.bias:
        return 0.6, 1.5
    if s.alibi:
        return 0.85, 2.5
    if s.softcap:
        return 0.85, None
    return None, 1.0   # top-left causal


def variant_table(data, mode: str, shapes) -> list[str]:
    """Variant rows: flashcore against flashcore_plain (useful TFLOP/s: visible pairs) and
    against the fastest SDPA peer through a mask, beside the bars they are held to."""
    rows = _rows(data)
    out = ["| shape | dtype | flashcore µs (TFLOP/s) | plain µs (TFLOP/s) | TFLOP/s vs plain (bar) | "
           "fastest SDPA µs | vs it (bar) |", "|---" * 7 + "|"]
    for s in shapes:
        plain_bar, peer_bar = _bars(s)
        for dtype in DTYPES:
            fc = rows.get((s.name, dtype, "flashcore", mode))
            if fc is None:
                continue
            pl = rows.get((s.name, dtype, "flashcore_plain", mode))
            peers = [r for p in ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
                     if (r := rows.get((s.name, dtype, p, mode)))]
            best = min(peers, key=lambda r: r["us_p50"]) if peers else None
            plain_cell = "—" if pl is None else f"{pl['us_p50']:.1f} ({pl['tflops']:.0f})"
            bar = "no bar" if plain_bar is None else f"{plain_bar}×"
            ratio = "—" if pl is None else f"{fc['tflops'] / pl['tflops']:.2f}× ({bar})"
            peer_cell = "—" if best is None else f"{best['us_p50']:.1f} ({NAMES[best['impl']]})"
            peer_ratio = "—" if best is None else f"{best['us_p50'] / fc['us_p50']:.2f}× ({peer_bar}×)"
            out.append(f"| {s.name} | {dtype} | {fc['us_p50']:.1f} ({fc['tflops']:.0f}) | {plain_cell} | "
                       f"{ratio} | {peer_cell} | {peer_ratio} |")
    return out + [""]


def latency_vs_throughput(data, shapes) -> list[str]:
    """flashcore against cuDNN in both modes: a latency ratio over the throughput one means
    the host path or the order of turns, not the kernel, made the difference."""
    rows = _rows(data)
    out = ["| shape | dtype | vs cuDNN, throughput | vs cuDNN, latency | latency − throughput |",
           "|---|---|---|---|---|"]
    for s in shapes:
        for dtype in DTYPES:
            pair = {}
            for mode in ("throughput", "latency"):
                fc, cu = rows.get((s.name, dtype, "flashcore", mode)), rows.get((s.name, dtype, "sdpa_cudnn", mode))
                if fc and cu:
                    pair[mode] = cu["us_p50"] / fc["us_p50"]
            if len(pair) == 2:
                out.append(f"| {s.name} | {dtype} | {pair['throughput']:.2f}× | {pair['latency']:.2f}× | "
                           f"{pair['latency'] - pair['throughput']:+.2f} |")
    return out + [""]


def backward_table(data, mode: str, shapes) -> list[str]:
    """A backward or fwd_bwd run: every implementation, flashcore against cuDNN's and the
    deterministic mode against the default (issue 23's bars, backward: >= 1.0x and >= 0.75x)."""
    rows = _rows(data)
    impls = ("flashcore", "flashcore_deterministic", "flashcore_sm80", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
    peaks = {(c["shape"], c["dtype"]): c.get("peak_bytes", {}) for c in data.get("cases", [])}
    out = ["| shape | dtype | " + " | ".join(NAMES.get(i, i) for i in impls) + " | vs cuDNN (1.0×) | "
           "deterministic / default (0.75×) | peak MiB a call, flashcore / cuDNN |", "|---" * (5 + len(impls)) + "|"]
    for s in shapes:
        for dtype in DTYPES:
            fc = rows.get((s.name, dtype, "flashcore", mode))
            if fc is None:
                continue
            cells = timing_cells(rows, s.name, dtype, impls, mode)
            cu, det = rows.get((s.name, dtype, "sdpa_cudnn", mode)), rows.get((s.name, dtype, "flashcore_deterministic", mode))
            cells.append("—" if cu is None else f"{cu['us_p50'] / fc['us_p50']:.2f}×")
            cells.append("—" if det is None else f"{fc['us_p50'] / det['us_p50']:.2f}×")
            peak = peaks.get((s.name, dtype), {})
            cells.append(" / ".join("—" if peak.get(i) is None else f"{peak[i] / 2**20:.0f}"
                                    for i in ("flashcore", "sdpa_cudnn")))
            out.append(f"| {s.name} | {dtype} | " + " | ".join(cells) + " |")
    return out + [""]


def kvcache_table(data, mode: str, shapes) -> list[str]:
    """Decode and paged rows in GB/s (issue 24's bars: decode >= 1.0x the faster SDPA on the same
    contiguous cache and >= 0.85x copy_gbps; paged >= 0.95x flashcore_contiguous at pages >= 16,
    >= 0.7x at page 1)."""
    rows = _rows(data)
    copy = {(c["shape"], c["dtype"]): c.get("copy_gbps") for c in data.get("cases", [])}
    impls = ("flashcore_kvcache", "flashcore_paged", "flashcore_contiguous", "flashcore", "sdpa_cudnn", "sdpa_flash")
    out = ["| shape | dtype | copy GB/s | " + " | ".join(NAMES.get(i, i) for i in impls) +
           " | ours / best SDPA | ours / copy | paged / contiguous |", "|---" * (6 + len(impls)) + "|"]
    for s in shapes:
        for dtype in DTYPES:
            got = {i: rows.get((s.name, dtype, i, mode)) for i in impls}
            ours = got["flashcore_paged"] if s.kind == "paged" else got["flashcore_kvcache"]
            if ours is None or ours.get("gbps") is None:
                continue
            cp = copy.get((s.name, dtype))
            peers = [got[i]["gbps"] for i in ("sdpa_cudnn", "sdpa_flash") if got[i] is not None]
            cont = got["flashcore_contiguous"]
            cells = ["—" if cp is None else f"{cp:.0f}"]
            cells += ["—" if got[i] is None else f"{got[i]['gbps']:.0f}" for i in impls]
            cells.append(f"{ours['gbps'] / max(peers):.2f}×" if peers else "—")
            cells.append("—" if cp is None else f"{ours['gbps'] / cp:.2f}×")
            cells.append("—" if s.kind != "paged" or cont is None else f"{ours['gbps'] / cont['gbps']:.2f}×")
            out.append(f"| {s.name} | {dtype} | " + " | ".join(cells) + " |")
    return out + [""]


VARLEN_ANCHOR = "b2-h16-s4k-d128-causal"   # issue 24: varlen rows >= 0.8x flashcore's TFLOP/s here


def varlen_table(data, mode: str, shapes) -> list[str]:
    """Varlen rows in TFLOP/s (issue 24's bars: >= 2x torch_nested, >= 0.8x dense flashcore's on
    VARLEN_ANCHOR in the same run, where the run has it)."""
    rows = _rows(data)
    out = ["| shape | dtype | flashcore varlen | SDPA nested | vs nested (2×) | vs dense flashcore "
           f"{VARLEN_ANCHOR} (0.8×) |", "|---" * 6 + "|"]
    for s in shapes:
        for dtype in DTYPES:
            fc = rows.get((s.name, dtype, "flashcore_varlen", mode))
            if fc is None:
                continue
            nested = rows.get((s.name, dtype, "torch_nested", mode))
            dense = rows.get((VARLEN_ANCHOR, dtype, "flashcore", mode))
            out.append(f"| {s.name} | {dtype} | {fc['tflops']:.0f} | "
                       + ("—" if nested is None else f"{nested['tflops']:.0f}") + " | "
                       + ("—" if nested is None else f"{fc['tflops'] / nested['tflops']:.2f}×") + " | "
                       + ("—" if dense is None else f"{fc['tflops'] / dense['tflops']:.2f}×") + " |")
    return out + [""]


def main(paths: list[str]) -> None:
    shapes = bench_shapes()
    for path in paths:
        data = json.load(open(path))
        if data.get("schema") != 2:
            raise SystemExit(f"{path}: schema {data.get('schema')}, this report reads 2")
        ran = {r["shape"] for r in data["rows"]}
        listed = [s for s in shapes if s.name in ran and not s.held_out and not s.is_variant and s.kind != "varlen"]
        held = [s for s in shapes if s.name in ran and s.held_out]
        variants = [s for s in shapes if s.name in ran and s.is_variant]
        print(f"## Run `{path}`\n")
        print("\n".join(header(data) + method(data)))
        print("### Correctness\n")
        print("\n".join(errors(data)))
        direction = data.get("direction", "forward")
        if direction != "forward":
            factor = {"backward": 2.5, "fwd_bwd": 3.5}[direction]
            for mode in ("throughput", "latency"):
                print(f"### {direction}, {mode}: p50 µs (TFLOP/s at {factor}x the forward's FLOPs)\n")
                print("\n".join(backward_table(data, mode, [s for s in shapes if s.name in ran])))
            continue
        for title, group in (("the list", listed), ("held-out shapes (never tuned on)", held)):
            if not group:
                continue
            graphed = {r["shape"] for r in data["rows"] if r["mode"] == "graph"}
            for mode in ("throughput", "latency") + (("graph",) if graphed else ()):
                rows = group if mode != "graph" else [s for s in group if s.name in graphed]
                if not rows:
                    continue
                what = " (each call captured in a CUDA graph and replayed)" if mode == "graph" else ""
                print(f"### {mode}, {title}{what}: p50 µs (TFLOP/s); vs X = X's time / flashcore's\n")
                print("\n".join(table(data, mode, rows)))
        for mode in ("throughput", "latency") if variants else ():
            print(f"### {mode}, variant rows: flashcore against flashcore_plain and SDPA through a mask\n")
            print("\n".join(variant_table(data, mode, variants)))
        packed = [s for s in shapes if s.name in ran and s.kind == "varlen"]
        for mode in ("throughput",) if packed else ():
            print(f"### {mode}, varlen rows: TFLOP/s\n")
            print("\n".join(varlen_table(data, mode, packed)))
        caches = [s for s in shapes if s.name in ran and s.kind in ("decode", "paged")]
        for mode in ("throughput",) if caches else ():
            print(f"### {mode}, decode and paged rows: GB/s (Q, K, V read, O written)\n")
            print("\n".join(kvcache_table(data, mode, caches)))
        print("### flashcore against cuDNN, throughput and latency\n")
        print("\n".join(latency_vs_throughput(data, listed + held)))


if __name__ == "__main__":
    main(sys.argv[1:])
