#!/usr/bin/env bash
# The device run: GPU tests, the mission shape, compute-sanitizer. Logs go to $OUT.
# Usage on the device machine, from the repository root:  bash scripts/gpu_suite.sh
set -uo pipefail
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
status=0
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -m flashcore_cupy info
} 2>&1 | tee "$OUT/device.txt"

python3 -m pytest tests -q -rs -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest_gpu.txt" || status=1

{
  for args in "--shape mission" "--shape mission --dtype bf16" "--shape b2-h16-s4k-d128-causal"; do
    echo "\$ flashcore-cupy run $args"
    python3 -m flashcore_cupy run $args || status=1
  done
} 2>&1 | tee "$OUT/run.txt"

{
  for tool in memcheck racecheck synccheck; do
    echo "\$ compute-sanitizer --tool $tool python3 scripts/sanitize_case.py"
    compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py || status=1
  done
} 2>&1 | tee "$OUT/sanitizer.txt"
echo "gpu_suite exit status: $status"
exit $status
