#!/usr/bin/env bash
# The device calls still to run, one call each, in order of need (each under 9 minutes of
# timeouts). Earlier calls and what they found: docs/results/ (v44-v53) and git history.
# The first call of a session: CALL=3 (test_kvcache_gpu, which v52 did not finish, and the D128
# rows in the benchmark with the H100's tuned table), then CALL=2 on an H200. Session 41 (v52) ran
# the GPU tests in six processes (2044 of 2276 passed, none failed, before the timeouts); session
# 42 (v53) the rest of them but test_kvcache_gpu's (235 passed), the sanitizers (clean) and the
# old CALL=4 (D128's tiles: 128x192 ahead, shipped for the H100 since).
#   CALL=1 backward issue 23's rows in one benchmark run: the backward mode on every dense D64 and
#                   D128 row with Sk >= 1024 (S1k D64, S4k D64, S4k D128, S4k D128 causal, S16k
#                   D128, S16k D128 causal, GQA S4k causal), fp16 and bf16, default /
#                   deterministic / cuDNN (v50 call 1 ran the four D128 rows but S16k: 0.85-0.98x
#                   cuDNN, deterministic 0.89-0.94x the default).
#   CALL=2 h200     (an H200: `kind` nvidia-h200) issue 22's variant rows and top-left against the
#                   SDPA peers and flashcore_plain in one benchmark run, fp16 and bf16 (its bars
#                   were measured on the H200; top-left 1.00-1.01x cuDNN on H100s since v48).
#   CALL=3 tests    test_kvcache_gpu in six pytest processes (gpu_suite.sh's SHARDS), then issue
#                   25's D128 rows and the variant rows derived from D128's tile in one benchmark
#                   run against SDPA cuDNN (the H100 takes 128x192 there since v53; the benchmark
#                   has not timed it on an H100), and top-left (unmeasured on the H200 since v48).
#   CALL=5 checks   gpu_suite.sh's checks: `run` on the mission and S4k causal, the three
#                   sanitizers over every section of sanitize_case.py at once, the SASS rules.
#   CALL=6 schedule window1k, ALiBi and top-left through schedule_probe.py: its dynamic deal beside
#                   the shipped schedule. (window1k, a window bounded on both sides, already runs on
#                   the persistent static deal: launch.py's `uneven`, so its "persistent" row is the
#                   shipped one; ALiBi causal and top-left run a CTA a tile.)
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 1|2|3|5|6) ;;
  *) echo "CALL: 1 (backward), 2 (h200), 3 (tests), 5 (checks), 6 (schedule)" >&2
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
  PYTEST_FILES=tests/test_kvcache_gpu.py PYTEST_ARGS="-m gpu" SHARDS=6 PYTEST_TIMEOUT=150 COMPILE_CHECK=0 CHECKS=0 \
    BENCH=0 HOST=0 NOTEBOOK=0 LONGSK=0 bash scripts/gpu_suite.sh > /dev/null || status=1
  step bench.txt timeout 330 python3 scripts/bench.py --out "$OUT/bench_d128.json" --iters 20 \
    --shape b2-h16-s4k-d128 --shape b1-h16-s16k-d128 --shape b2-h16-s4k-d128-causal --shape b1-h16-s16k-d128-causal \
    --shape gqa-b2-h32kv8-s4k-d128-causal --shape window1k-b2-h16-s8k-d128 --shape alibi-b2-h16-s4k-d128-causal \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal \
    --impl flashcore --impl flashcore_plain --impl sdpa_cudnn
  step bench.txt python3 scripts/report.py "$OUT/bench_d128.json"
  ;;
5)
  PYTEST=0 BENCH=0 HOST=0 NOTEBOOK=0 LONGSK=0 bash scripts/gpu_suite.sh > /dev/null || status=1
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
