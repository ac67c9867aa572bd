#!/usr/bin/env bash
# The device steps for the work landed in v42 on GPU tests alone, not yet timed (varlen's dynamic
# deal and variants on Hopper, the Hopper backward at D96 / D256, the Hopper KV cache's
# speculative rows and gathered pages, ALiBi's 192-key tiles), and for gpu-pending's (the tensor
# maps re-aimed at new addresses, tma.encode_maps; the ALiBi candidate -DFLASHCORE_ALIBI_LINEAR;
# the narrow edge tiles -DFLASHCORE_NARROW_EDGES; stream-K's "dense_sk" configs, streamk.py, which
# wave_probe times against the shipped deal): their GPU tests, the rows each change is meant to
# move side by side with the peers, probes (the candidates, short causal tiles, stream-K against
# the shipped deal, host latency, gathered pages), and compute-sanitizer on sanitize_case.py (its
# sections run the new paths).
# Logs go to $OUT.
# Usage on the device machine, from the repository root:  bash scripts/dev/pending_run.sh
# PYTEST=0 / BENCH=0 / PROBES=0 / PROBES2=0 / SANITIZE=0 skip those steps; PYTEST_FILES replaces
# the test files. Each step alone fits a 10-minute call on a bare machine, not two: run one a call
# (ONLY=pytest, sanitize, bench, probes or probes2 runs that step alone), in that order of need:
# sanitize (last session's gather fix), pytest, probes (stream-K and the ALiBi candidate decide). v42 call1 (tests and sanitizers
# in one call) ran out of time in the tests (330 s) and in racecheck (90 s): hence the longer
# timeouts, and racecheck on the new paths' sections only.
set -uo pipefail
source "$(dirname "$0")/../steps.sh"
if [ -n "${ONLY:-}" ]; then
  PYTEST=0 BENCH=0 PROBES=0 PROBES2=0 SANITIZE=0
  case "$ONLY" in pytest) PYTEST=1 ;; bench) BENCH=1 ;; probes) PROBES=1 ;; probes2) PROBES2=1 ;;
    sanitize) SANITIZE=1 ;; *) echo "ONLY: pytest, sanitize, bench, probes or probes2" >&2; exit 2 ;; esac
fi
export FLASHCORE_REQUIRE_GPU=1
step device.txt nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
if [ "${PYTEST:-1}" = 1 ]; then
  step pytest.txt timeout 200 python3 -m pytest tests/test_attention_gpu.py tests/test_variants_gpu.py \
    tests/test_varlen_gpu.py -k "reaimed or plan_is or linear_alibi or stream_k or narrow" -q -rs -p no:cacheprovider
  step pytest.txt timeout 400 python3 -m pytest ${PYTEST_FILES:-tests/test_varlen_gpu.py tests/test_backward_gpu.py \
    tests/test_kvcache_gpu.py tests/test_sm90_protocol.py tests/test_distributed_gpu.py} -q -rs -p no:cacheprovider
fi
if [ "${BENCH:-1}" = 1 ]; then
  # stream-K (opt-in) beside flashcore and cuDNN on the plain non-causal rows, balanced order
  step bench.txt timeout 170 python3 scripts/bench.py --shape b4-h16-s1k-d64 --shape b2-h16-s4k-d64 \
    --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d256 --shape held-b3-h20kv4-s1900-d64 --held-out include \
    --impl flashcore --impl flashcore_streamk --impl sdpa_cudnn --out "$OUT/bench_streamk.json"
  step bench.txt timeout 150 python3 scripts/bench.py --shape varlen-16seq-32k-h16-d128-causal \
    --shape varlen-64seq-h32kv8-d128-causal --shape b2-h16-s4k-d128-causal \
    --shape specdec-b8-h32kv8-sq4-s8k-d128-causal --impl flashcore --impl flashcore_varlen \
    --impl flashcore_kvcache --impl torch_nested --impl sdpa_cudnn --out "$OUT/bench_inference.json"
  step bench.txt timeout 120 python3 scripts/bench.py --direction backward --shape b2-h16-s4k-d256 \
    --shape b2-h16-s4k-d96 --impl flashcore --impl sdpa_cudnn --out "$OUT/bench_backward.json"
  step bench.txt timeout 90 python3 scripts/bench.py --shape alibi-b2-h16-s4k-d128-causal --impl flashcore \
    --impl flashcore_plain --impl sdpa_cudnn --out "$OUT/bench_alibi.json"
  for f in bench_streamk bench_inference bench_backward bench_alibi; do
    [ -f "$OUT/$f.json" ] && step bench.txt python3 scripts/report.py "$OUT/$f.json"
  done
fi
if [ "${PROBES:-1}" = 1 ]; then   # the decisions first: stream-K, the ALiBi candidate
  step probes.txt timeout 150 python3 scripts/dev/wave_probe.py   # the static deal's makespan beside stream-K
  for dt in fp16 bf16; do   # the ALiBi candidate (-DFLASHCORE_ALIBI_LINEAR) beside the shipped kernel
    step probes.txt timeout 90 python3 scripts/dev/ablate_sm90.py --shape alibi-b2-h16-s4k-d128-causal \
      --dtype $dt --variant "ALiBi key-linear"
  done
  # the narrow edge tiles (-DFLASHCORE_NARROW_EDGES) beside the shipped kernel, where it narrows:
  # the causal diagonal (short and long tiles), window1k's edges, top-left, Sq < Sk
  step probes.txt timeout 150 python3 scripts/dev/ablate_sm90.py --shape window1k-b2-h16-s8k-d128 \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape b2-h16-s4k-d128-causal \
    --shape held-b2-h24-s2560-d128-causal --shape held-b2-h16kv2-sq777-sk3001-d128-causal --variant narrow
  step probes.txt timeout 150 python3 scripts/tile_sweep.py --family sm90 \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape held-b16-h12-s1k-d64-causal   # short causal tiles
fi
if [ "${PROBES2:-1}" = 1 ]; then
  # window1k's cost a work tile: the shipped kernel over windows of 2..16 key tiles (a fit of key
  # tiles and work tiles; no copy's label matches "none", so the shipped kernel alone)
  step probes.txt timeout 120 python3 scripts/dev/ablate_sm90.py --shape window1k-b2-h16-s8k-d128 --window 127 \
    --window 255 --window 511 --window 2047 --variant none
  step probes.txt timeout 150 python3 scripts/latency_probe.py   # arrays at new addresses; graph replay floor
  step probes.txt timeout 120 python3 scripts/dev/gather_probe.py --pages 1,3,8,16,64   # gathered pages against boxes
  step probes.txt timeout 90 python3 scripts/bench.py --shape paged1-decode-b8-h32kv8-s8k-d128 \
    --shape paged16-decode-b8-h32kv8-s8k-d128 --out "$OUT/bench_paged.json"
  [ -f "$OUT/bench_paged.json" ] && step probes.txt python3 scripts/report.py "$OUT/bench_paged.json"
fi
if [ "${SANITIZE:-1}" = 1 ]; then
  for tool in memcheck synccheck; do
    step sanitizer.txt timeout 120 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py
  done
  step sanitizer.txt timeout 150 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitize_case.py \
    backward varlen paged streamk
fi
echo "pending_run exit status: $status"
exit $status
