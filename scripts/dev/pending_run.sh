#!/usr/bin/env bash
# The device calls still to run, one call each, in order of need (each under 9 minutes of
# timeouts). Earlier calls and what they found: docs/results/ (v44-v51) and git history.
# The first call of a session: CALL=3 (the GPU test files v52's sharded suite did not reach), then
# CALL=5 (the sanitizers), then CALL=2 on an H200. Session 40 (v51) ran the old CALL=7 (streamed
# tiles: shipped for dense batches since), CALL=0 (adapter: 3 passed), CALL=4 (one-warp gathers:
# no gain) and CALL=5 (64-key variant tiles: no gain); session 41 (v52) the GPU tests in six
# processes (2044 of 2276 passed, none failed, before the timeouts).
#   CALL=1 backward issue 23's rows in one benchmark run: the backward mode on every dense D64 and
#                   D128 row with Sk >= 1024 (S1k D64, S4k D64, S4k D128, S4k D128 causal, S16k
#                   D128, S16k D128 causal, GQA S4k causal), fp16 and bf16, default /
#                   deterministic / cuDNN (v50 call 1 ran the four D128 rows but S16k: 0.85-0.98x
#                   cuDNN, deterministic 0.89-0.94x the default).
#   CALL=2 h200     (an H200: `kind` nvidia-h200) issue 22's variant rows and top-left against the
#                   SDPA peers and flashcore_plain in one benchmark run, fp16 and bf16 (its bars
#                   were measured on the H200; top-left 1.00-1.01x cuDNN on H100s since v48).
#   CALL=3 tests    the GPU test files v52 did not reach (test_variants_gpu but 8, test_varlen_gpu,
#                   test_merge_gpu, and test_validation's and test_timing's GPU tests), six pytest
#                   processes at once (gpu_suite.sh's SHARDS), then stream_probe's edge cases.
#   CALL=5 checks   gpu_suite.sh's checks: `run` on the mission and S4k causal, the three
#                   sanitizers over every section of sanitize_case.py at once, the SASS rules.
#   CALL=4 d128     issue 25's last plain gap (S4k D128 1.01/1.02x cuDNN in v51): D128's tiles
#                   through tile_ab.py, the shipped 128-key tile (streamed: two Q slots) beside
#                   192-key and 3-slot 128-key ones (no room for a second Q slot: unstreamed; the
#                   H200's tune v3 took 128x192 for bf16 large grids), fp16 and bf16.
#   CALL=6 schedule window1k, ALiBi and top-left through schedule_probe.py: its dynamic deal beside
#                   the shipped schedule. (window1k, a window bounded on both sides, already runs on
#                   the persistent static deal: launch.py's `uneven`, so its "persistent" row is the
#                   shipped one; ALiBi causal and top-left run a CTA a tile.)
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 1|2|3|4|5|6) ;;
  *) echo "CALL: 1 (backward), 2 (h200), 3 (tests), 4 (d128), 5 (checks), 6 (schedule)" >&2
     exit 2 ;; esac
source "$(dirname "$0")/../steps.sh"
export FLASHCORE_REQUIRE_GPU=1
step device.txt nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
bench() {   # bench NAME SHAPE... : one benchmark run of these rows (both dtypes), its JSON and report
  local name=$1; shift
  step bench.txt timeout 500 python3 scripts/bench.py --out "$OUT/bench_$name.json" $(printf -- '--shape %s ' "$@") \
    --iters 20
  step bench.txt python3 scripts/report.py "$OUT/bench_$name.json"
}
case "${CALL:-}" in
1)
  step bench.txt timeout 540 python3 scripts/bench.py --direction backward --out "$OUT/bench_backward.json" \
    --shape b4-h16-s1k-d64 --shape b2-h16-s4k-d64 --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d128-causal \
    --shape b1-h16-s16k-d128 --shape b1-h16-s16k-d128-causal --shape gqa-b2-h32kv8-s4k-d128-causal \
    --impl flashcore --impl flashcore_deterministic --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_backward.json"
  ;;
2)
  bench variants window1k-b2-h16-s8k-d128 window4k-b1-h32kv8-s16k-d128 softcap50-b2-h16kv8-s4k-d256-causal \
    alibi-b2-h16-s4k-d128-causal bias-b2-h16-s4k-d128 topleft-b4-h16-sq1k-sk4k-d128-causal
  ;;
3)
  PYTEST_FILES="tests/test_variants_gpu.py tests/test_varlen_gpu.py tests/test_merge_gpu.py tests/test_validation.py
    tests/test_timing.py" PYTEST_ARGS="-m gpu" SHARDS=6 PYTEST_TIMEOUT=420 COMPILE_CHECK=0 CHECKS=0 BENCH=0 HOST=0 \
    NOTEBOOK=0 LONGSK=0 bash scripts/gpu_suite.sh > /dev/null || status=1
  step stream.txt timeout 100 python3 scripts/dev/stream_probe.py --dtype fp16
  ;;
5)
  PYTEST=0 BENCH=0 HOST=0 NOTEBOOK=0 LONGSK=0 bash scripts/gpu_suite.sh > /dev/null || status=1
  ;;
4)
  for dtype in fp16 bf16; do
    step tiles.txt timeout 250 python3 scripts/dev/tile_ab.py --dtype $dtype --samples 15 b2-h16-s4k-d128 \
      b1-h16-s16k-d128 --tile 128,2,2,1 --tile 192,2,2,1 --tile 128,3,2,1
  done
  ;;
6)
  for dtype in fp16 bf16; do
    step schedule.txt timeout 200 python3 scripts/dev/schedule_probe.py --dtype $dtype --samples 11 \
      window1k-b2-h16-s8k-d128 alibi-b2-h16-s4k-d128-causal topleft-b4-h16-sq1k-sk4k-d128-causal
  done
  ;;
esac
echo "pending_run exit status: $status"
exit $status
