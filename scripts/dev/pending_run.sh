#!/usr/bin/env bash
# The device calls still to run, one call each, in order of need (each under 9 minutes of
# timeouts). Earlier calls and what they found: docs/results/ (v44-v54) and git history. v54
# (session 44) ran the old CALL=3 (test_kvcache_gpu's last tests: every GPU test of main has now
# passed on an H100; the D128 rows on the H100's 192-key tile), CALL=1 (the backward rows) and
# CALL=6 (the schedule probe). A call returns at most 8 files from $OUT (gpu_suite joins its
# parallel logs into one file each since then).
# The first call of a session: CALL=2 on an H200, else CALL=4 on an H100.
#   CALL=2 h200     (an H200: `kind` nvidia-h200) issue 22's variant rows and top-left against the
#                   SDPA peers and flashcore_plain in one benchmark run, fp16 and bf16 (its bars
#                   were measured on the H200; top-left not timed there since v40).
#   CALL=4 topleft  (an H100) top-left's tile: the 128x192 tile the H100's table gives D128 large
#                   grids since v53 beside the 128-key one, with S4k D128 causal as the control,
#                   through tile_ab.py (v54's benchmark: top-left 0.96/0.95x cuDNN on 128x192,
#                   v48's 1.01/1.00x on 128x128). If 128 wins on top-left only, its rows (each
#                   sees at most Sq keys) want a dispatch rule of their own.
#   CALL=5 checks   gpu_suite.sh's checks: `run` on the mission and S4k causal, the three
#                   sanitizers over every section of sanitize_case.py at once, the SASS rules.
#                   Needed only after a kernel change.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=2 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 2|4|5) ;;
  *) echo "CALL: 2 (h200), 4 (top-left's tile), 5 (checks)" >&2
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
2)
  bench variants window1k-b2-h16-s8k-d128 window4k-b1-h32kv8-s16k-d128 softcap50-b2-h16kv8-s4k-d256-causal \
    alibi-b2-h16-s4k-d128-causal bias-b2-h16-s4k-d128 topleft-b4-h16-sq1k-sk4k-d128-causal
  ;;
4)
  for dtype in fp16 bf16; do
    step tiles.txt timeout 200 python3 scripts/dev/tile_ab.py --dtype $dtype --samples 11 \
      topleft-b4-h16-sq1k-sk4k-d128-causal b2-h16-s4k-d128-causal --tile 192,2,2,1 --tile 128,2,2,1
  done
  ;;
5)
  PYTEST=0 BENCH=0 HOST=0 NOTEBOOK=0 LONGSK=0 bash scripts/gpu_suite.sh > /dev/null || status=1
  ;;
esac
echo "pending_run exit status: $status"
exit $status
