#!/usr/bin/env bash
# One device call for a kernel change: the latency probe, the Hopper tile sweep of a base
# tree (.ab_base, a copy of the previous commit's flashcore_cupy/, kernels/ and scripts/,
# carried) and of this tree alternated A/B/A/B (ROUNDS=2) in separate processes, a bf16
# sweep (BF16=0 skips it; SWEEP_ARGS adds tile_sweep.py options, e.g. --shape), the
# Hopper kernel's GPU tests (PYTEST=0 skips them), with MISSION=N the mission shape's
# benchmark beside cuDNN for both trees alternated N times (latency as users see it) and,
# with NCU=1, Nsight Compute's full sections for the two main long-shape kernels.
set -uo pipefail
source "$(dirname "$0")/steps.sh"
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/flashcore-kcache}

step device.txt nvidia-smi --query-gpu=name,uuid,serial,vbios_version,driver_version,power.limit,clocks.sm,clocks.max.sm --format=csv
step latency.txt timeout 150 python3 scripts/latency_probe.py
if [ "${PYTEST:-1}" = 1 ]; then
  step pytest_sm90.txt timeout 240 python3 -m pytest tests/test_attention_gpu.py -q -x -p no:cacheprovider \
    -k "${PYTEST_K:-sub_tiles or dispatchable or (reference and sm90)}"
fi
for round in $(seq "${ROUNDS:-2}"); do
  if [ -d .ab_base ]; then
    step sweep.txt bash -c 'cd .ab_base && echo "== base tree" && PYTHONPATH=$PWD timeout 200 python3 scripts/tile_sweep.py --family sm90 '"${SWEEP_ARGS:-}"
  fi
  step sweep.txt bash -c 'echo "== this tree" && timeout 200 python3 scripts/tile_sweep.py --family sm90 '"${SWEEP_ARGS:-}"
done
for round in $(seq "${MISSION:-0}"); do
  mission='timeout 100 python3 scripts/bench.py --shape mission --dtype fp16 --impl flashcore --impl sdpa_cudnn --iters 200'
  if [ -d .ab_base ]; then
    step mission.txt bash -c 'cd .ab_base && echo "== base tree" && PYTHONPATH=$PWD '"$mission"
  fi
  step mission.txt bash -c 'echo "== this tree" && '"$mission"
done
if [ "${BF16:-1}" = 1 ]; then
  step sweep_bf16.txt timeout 200 python3 scripts/tile_sweep.py --family sm90 --dtype bf16 ${SWEEP_ARGS:-}
fi
for shape in $([ "${NCU:-0}" = 1 ] && echo b2-h16-s4k-d64 b2-h16-s4k-d128); do
  step "ncu_$shape.txt" timeout 150 ncu --clock-control none --set full -k regex:flash_fwd_sm90 \
    --launch-skip 2 --launch-count 1 python3 scripts/profile_case.py "$shape"
done
echo "ab_run exit status: $status"
exit $status
