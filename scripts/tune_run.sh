#!/usr/bin/env bash
# The tile-search device run: GPU tests, the benchmark with the hand-written table
# (before), `flashcore-cupy tune` over the benchmark list, the benchmark with the
# tuned table (after), and first-call times of `run --shape mission` in fresh
# processes with a cold and a warm CuPy kernel cache; then the tuned tiles against
# the defaults, kernel only (scripts/tuned_ab.py). Logs go to $OUT.
# SKIP_TESTS=1 leaves the GPU tests out; TUNE_BUDGET sets the search seconds.
set -uo pipefail
source "$(dirname "$0")/steps.sh"
export FLASHCORE_CUPY_TUNE_CACHE="$OUT/tune.json"

[ "${SKIP_TESTS:-0}" = 1 ] || step pytest.txt python3 -m pytest tests -q -x -p no:cacheprovider
step bench_before.txt env FLASHCORE_CUPY_NO_TUNE=1 python3 scripts/bench.py --impl flashcore \
  --iters 20 --out "$OUT/bench_before.json"
step tune.txt python3 -m flashcore_cupy tune --budget "${TUNE_BUDGET:-150}"
step bench_after.txt python3 scripts/bench.py --impl flashcore --iters 20 --out "$OUT/bench_after.json"
step tune.txt python3 scripts/tuned_ab.py
cache=$(mktemp -d)
step firstcall.txt env CUPY_CACHE_DIR="$cache" python3 -m flashcore_cupy run --shape mission --iters 5
step firstcall.txt env CUPY_CACHE_DIR="$cache" python3 -m flashcore_cupy run --shape mission --iters 5
echo "tune_run exit status: $status"
exit $status
