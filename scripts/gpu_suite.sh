#!/usr/bin/env bash
# The device run: GPU tests, the mission shape, compute-sanitizer, the latency
# probe and the benchmark (JSON + plot). Logs go to $OUT.
# Usage on the device machine, from the repository root:  bash scripts/gpu_suite.sh
# Switches (1 by default; SWEEP and RING 0):
#   TESTS=0     skips the tests, sanitizers and SASS; PYTEST=0 the tests alone; CHECKS=0 the run,
#               sanitizers and SASS alone (pytest takes ~8 of a call's 10 minutes)
#   BENCH=0     skips the benchmark (BENCH_ARGS passes options to it, e.g. --held-out exclude/only)
#   NOTEBOOK=0  skips the quickstart's run
#   LONGSK=0    skips the error at Sk 1M..16M (scripts/long_sk_numerics.py, against SDPA flash)
#   HOST=0      skips the latency probe and tile sweep
#   SWEEP=1     adds the random sweep (scripts/random_sweep.py; SWEEP_ARGS="--seed S --first i"
#               continues one)
#   RING=1      adds the ring's benchmark on every GPU and memcheck on 2 ranks (multi-GPU kinds;
#               RING_ARGS passes --seqlen ...)
# Pytest: PYTEST_ARGS adds options, PYTEST_FILES replaces `tests`, PYTEST_TIMEOUT is its limit
# (540 s), COMPILE_CHECK=0 skips `check` before it; SHARDS=N runs the tests as N processes on the
# GPU at once (PYTEST_ARGS="-m gpu" SHARDS=6: the GPU tests; the CPU tests' compiles take CI's
# ~18 minutes). Pass FLASHCORE_GIT_SHA=<commit> for the benchmark JSON: the device's copy of the
# tree may carry a stale .git.
set -uo pipefail
source "$(dirname "$0")/steps.sh"
# A run meant for a GPU that finds none fails (pytest exits 3 with the reason) instead of
# skipping every GPU test.
export FLASHCORE_REQUIRE_GPU=1
python3 -c "from flashcore_cupy.cli import gpu_missing_reason as r; import sys; m = r(); print(m or 'GPU found'); sys.exit(1 if m else 0)" \
  || { echo "gpu_suite: no usable GPU"; exit 2; }

step device.txt date -u
step device.txt nvidia-smi --query-gpu=name,uuid,serial,vbios_version,driver_version,power.limit,clocks.sm,clocks.max.sm --format=csv
step device.txt python3 -m flashcore_cupy info
if [ "${TESTS:-1}" = 1 ] && [ "${PYTEST:-1}" = 1 ]; then
  [ "${COMPILE_CHECK:-1}" = 1 ] && step device.txt python3 -m flashcore_cupy check --arch sm_90a,sm_80
  if [ "${SHARDS:-1}" = 1 ]; then
    step pytest_gpu.txt timeout ${PYTEST_TIMEOUT:-540} python3 -m pytest ${PYTEST_FILES:-tests} -q -rs -p no:cacheprovider ${PYTEST_ARGS:-}
  else   # SHARDS pytest processes on the one GPU at once, blocks of tests dealt in turn (conftest's --shard)
    # each process's NumPy BLAS on its share of the cores (v52: six processes with every core's
    # BLAS threads ran the GPU tests no faster than one)
    threads=$(( $(nproc) / SHARDS > 0 ? $(nproc) / SHARDS : 1 ))
    for ((i = 1; i <= SHARDS; i++)); do
      OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads \
        step pytest_gpu_$i.txt timeout ${PYTEST_TIMEOUT:-540} python3 -m pytest ${PYTEST_FILES:-tests} -q -rs \
        -p no:cacheprovider --shard $i/$SHARDS ${PYTEST_ARGS:-} > /dev/null &
    done
    join_steps 2 'pytest_gpu_*.txt' pytest_gpu.txt
  fi
fi
if [ "${TESTS:-1}" = 1 ] && [ "${CHECKS:-1}" = 1 ]; then
  step run.txt python3 -m flashcore_cupy run --shape mission
  step run.txt python3 -m flashcore_cupy run --shape mission --dtype bf16
  step run.txt python3 -m flashcore_cupy run --shape b2-h16-s4k-d128-causal
  for tool in memcheck racecheck synccheck; do   # the three at once, a log each
    step sanitizer_$tool.txt timeout 420 compute-sanitizer --tool $tool --error-exitcode 3 \
      python3 scripts/sanitize_case.py > /dev/null &
  done
  join_steps 3 'sanitizer_*.txt' sanitizer.txt
  step sass.txt python3 scripts/sass_check.py --arch sm_90a
fi
if [ "${LONGSK:-1}" = 1 ]; then   # long-Sk numerics: flashcore within 1.5x SDPA flash's error
  step long_sk.txt timeout 300 python3 scripts/long_sk_numerics.py --sk 1M,4M,16M
fi
if [ "${SWEEP:-0}" = 1 ]; then   # the seeded random sweep (its own call: compiles dominate on a bare machine)
  step sweep.txt python3 scripts/random_sweep.py --cases "${SWEEP_CASES:-2000}" --max-seconds 480 --workers 8 ${SWEEP_ARGS:-}
fi
if [ "${RING:-0}" = 1 ]; then   # multi-GPU kinds: the ring on every GPU (benchmark), memcheck on 2 ranks
  gpus=$(python3 -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())")
  step ring.txt timeout 400 python3 -m flashcore_cupy.distributed.launch --nproc "$gpus" scripts/ring_bench.py \
    --out "$OUT/ring_bench.json" ${RING_ARGS:-}
  step ring.txt timeout 200 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 3 \
    python3 -m flashcore_cupy.distributed.launch --nproc 2 examples/ring_attention.py --seqlen 2048 --causal
fi
if [ "${NOTEBOOK:-1}" = 1 ]; then   # the quickstart end to end, its outputs and plots in $OUT
  step notebook.txt timeout 300 python3 scripts/run_notebook.py examples/quickstart.ipynb --out "$OUT/quickstart.ipynb"
fi
if [ "${HOST:-1}" = 1 ]; then
  step host.txt python3 scripts/latency_probe.py
  step host.txt python3 scripts/tile_sweep.py --family all
fi
if [ "${BENCH:-1}" = 1 ]; then
  step bench.txt python3 scripts/bench.py --out "$OUT/bench.json" --plot "$OUT/bench.png" ${BENCH_ARGS:-}
  step bench.txt python3 scripts/report.py "$OUT/bench.json"
fi
echo "gpu_suite exit status: $status"
exit $status
