#!/usr/bin/env bash
# The device calls for branch gpu-pending's work (none of it run on a GPU yet) and for what v42
# landed on GPU tests alone (not yet timed), one call each, in order of need: a session's 30
# minutes of device time hold calls 1-3 (each under 9 minutes of timeouts) beside a machine's
# start; 4 and 5 are for a session with time left.
#   CALL=1 tests    gpu-pending's GPU tests (tensor maps re-aimed at new addresses, the ALiBi and
#                   narrow-edge candidates, stream-K), the KV cache's (the gathered pages' barrier
#                   fix, ddb75b7), synccheck of the gathered pages and memcheck of stream-K. Passing,
#                   gpu-pending may land (its shipped path: the re-aimed maps; the rest opt-in).
#   CALL=2 decide   the candidates beside the shipped kernel: stream-K (wave_probe: the schedule
#                   model, then the deals), narrow edge tiles (window1k, top-left, the causal rows),
#                   ALiBi key-linear; item_trace.py: where short work tiles' time goes.
#   CALL=3 bench    the open bars' rows beside the peers: varlen (the dynamic deal), speculative
#                   decode, the backward at D96 / D256, ALiBi, stream-K on the plain rows.
#   CALL=4 rest     the other GPU test files, racecheck of the new paths' sections.
#   CALL=5 probes   window1k's cost by window (a fit of key tiles and work tiles), host latency and
#                   the graph-replay floor, gathered pages against boxes, the paged rows.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 1|2|3|4|5|tests|decide|bench|rest|probes) ;;
  *) echo "CALL: 1 (tests), 2 (decide), 3 (bench), 4 (rest) or 5 (probes)" >&2; exit 2 ;; esac
source "$(dirname "$0")/../steps.sh"
export FLASHCORE_REQUIRE_GPU=1
step device.txt nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
case "${CALL:-}" in
1|tests)
  step pytest.txt timeout 240 python3 -m pytest tests/test_attention_gpu.py tests/test_variants_gpu.py \
    tests/test_varlen_gpu.py -k "reaimed or plan_is or linear_alibi or stream_k or narrow" -q -rs -p no:cacheprovider
  step pytest.txt timeout 150 python3 -m pytest tests/test_kvcache_gpu.py -q -rs -p no:cacheprovider
  step sanitizer.txt timeout 70 compute-sanitizer --tool synccheck --error-exitcode 3 python3 scripts/sanitize_case.py paged
  step sanitizer.txt timeout 70 compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/sanitize_case.py streamk
  ;;
2|decide)
  step probes.txt timeout 120 python3 scripts/dev/wave_probe.py   # the static deal's makespan beside stream-K
  # where short tiles' time goes (gaps, Q waits, ramps, steps, tails), shipped and with the narrow
  # edge tiles (-DFLASHCORE_NARROW_EDGES), whose time it prints beside the shipped kernel's
  step probes.txt timeout 240 python3 scripts/dev/item_trace.py --shape window1k-b2-h16-s8k-d128 \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape varlen-64seq-h32kv8-d128-causal \
    --define FLASHCORE_NARROW_EDGES
  step probes.txt timeout 90 python3 scripts/dev/ablate_sm90.py --shape b2-h16-s4k-d128-causal \
    --shape held-b2-h24-s2560-d128-causal --variant narrow   # the narrow edge tiles on longer causal tiles
  # the ALiBi candidate (-DFLASHCORE_ALIBI_LINEAR) beside the shipped kernel
  step probes.txt timeout 90 python3 scripts/dev/ablate_sm90.py --shape alibi-b2-h16-s4k-d128-causal \
    --variant "ALiBi key-linear"
  ;;
3|bench)
  step bench.txt timeout 150 python3 scripts/bench.py --shape varlen-16seq-32k-h16-d128-causal \
    --shape varlen-64seq-h32kv8-d128-causal --shape b2-h16-s4k-d128-causal \
    --shape specdec-b8-h32kv8-sq4-s8k-d128-causal --impl flashcore --impl flashcore_varlen \
    --impl flashcore_kvcache --impl torch_nested --impl sdpa_cudnn --out "$OUT/bench_inference.json"
  step bench.txt timeout 120 python3 scripts/bench.py --direction backward --shape b2-h16-s4k-d256 \
    --shape b2-h16-s4k-d96 --impl flashcore --impl sdpa_cudnn --out "$OUT/bench_backward.json"
  step bench.txt timeout 80 python3 scripts/bench.py --shape alibi-b2-h16-s4k-d128-causal --impl flashcore \
    --impl flashcore_plain --impl sdpa_cudnn --out "$OUT/bench_alibi.json"
  # stream-K (opt-in) beside flashcore and cuDNN on the plain non-causal rows
  step bench.txt timeout 170 python3 scripts/bench.py --shape b4-h16-s1k-d64 --shape b2-h16-s4k-d64 \
    --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d256 --shape held-b3-h20kv4-s1900-d64 --held-out include \
    --impl flashcore --impl flashcore_streamk --impl sdpa_cudnn --out "$OUT/bench_streamk.json"
  for f in bench_inference bench_backward bench_alibi bench_streamk; do
    [ -f "$OUT/$f.json" ] && step bench.txt python3 scripts/report.py "$OUT/$f.json"
  done
  ;;
4|rest)
  step pytest.txt timeout 380 python3 -m pytest tests/test_varlen_gpu.py tests/test_backward_gpu.py \
    tests/test_sm90_protocol.py tests/test_distributed_gpu.py -q -rs -p no:cacheprovider
  step sanitizer.txt timeout 150 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitize_case.py \
    backward varlen paged streamk
  ;;
5|probes)
  # window1k's cost a work tile: the shipped kernel over windows of 2..16 key tiles (a fit of key
  # tiles and work tiles; no copy's label matches "none", so the shipped kernel alone)
  step probes.txt timeout 120 python3 scripts/dev/ablate_sm90.py --shape window1k-b2-h16-s8k-d128 --window 127 \
    --window 255 --window 511 --window 2047 --variant none
  step probes.txt timeout 150 python3 scripts/latency_probe.py   # arrays at new addresses; graph replay floor
  step probes.txt timeout 120 python3 scripts/dev/gather_probe.py --pages 1,3,8,16,64   # gathered pages against boxes
  step probes.txt timeout 90 python3 scripts/bench.py --shape paged1-decode-b8-h32kv8-s8k-d128 \
    --shape paged16-decode-b8-h32kv8-s8k-d128 --out "$OUT/bench_paged.json"
  [ -f "$OUT/bench_paged.json" ] && step probes.txt python3 scripts/report.py "$OUT/bench_paged.json"
  ;;
esac
echo "pending_run exit status: $status"
exit $status
