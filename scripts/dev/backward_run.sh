#!/usr/bin/env bash
# One device call for the backward: its GPU tests (with the torch adapter's), the probe against
# SDPA, compute-sanitizer memcheck, racecheck and synccheck, and optionally the benchmark's backward mode.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   bash scripts/dev/backward_run.sh
# PROBE_SHAPES (comma-separated) replaces the probe's rows; PROBE_ARGS adds backward_probe.py options
# (--config stages=1, --ablate NO_DQ, --dtype fp16, ...);
# BENCH_SHAPES (space-separated) runs `bench --direction ${DIRECTION:-backward}` on those rows, with
# BENCH_ARGS (e.g. "--impl flashcore --impl sdpa_cudnn --iters 10": the full list of
# implementations on every row does not fit one 10-minute call);
# NCU_SHAPES (space-separated) profiles the Hopper backward's main kernel on those rows (ncu --set full);
# PYTEST_FILES replaces the test files; PYTEST=0 / SANITIZE=0 skip those steps.
set -uo pipefail
source "$(dirname "$0")/../steps.sh"
export FLASHCORE_REQUIRE_GPU=1
step device.txt nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
if [ "${PYTEST:-1}" = 1 ]; then
  step pytest.txt timeout 300 python3 -m pytest ${PYTEST_FILES:-tests/test_backward_gpu.py tests/test_torch_adapter_gpu.py} \
    -q -rs -x -p no:cacheprovider
fi
step probe.txt timeout 150 python3 scripts/dev/backward_probe.py --dtype fp16,bf16 \
  --shapes ${PROBE_SHAPES:-b2-h16-s4k-d128-causal,b1-h16-s16k-d128-causal,b4-h16-s1k-d64,b2-h16-s4k-d64} ${PROBE_ARGS:-}
if [ "${SANITIZE:-1}" = 1 ]; then
  for tool in memcheck racecheck synccheck; do
    step sanitizer.txt timeout 90 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py
  done
fi
for shape in ${NCU_SHAPES:-}; do
  step "ncu_$shape.txt" timeout 150 ncu --clock-control none --set full -k regex:flash_bwd_sm90 \
    --launch-skip 2 --launch-count 1 python3 scripts/profile_case.py "$shape" fp16 backward
done
if [ -n "${BENCH_SHAPES:-}" ]; then
  args=(); for s in $BENCH_SHAPES; do args+=(--shape "$s"); done
  step bench.txt python3 -m flashcore_cupy bench --direction "${DIRECTION:-backward}" "${args[@]}" ${BENCH_ARGS:-} \
    --out "$OUT/bench_backward.json"
  step bench.txt python3 scripts/report.py "$OUT/bench_backward.json"
fi
echo "backward_run exit status: $status"
exit $status
