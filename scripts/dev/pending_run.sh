#!/usr/bin/env bash
# The device calls still to run, one call each, in order of need (each under 9 minutes of
# timeouts). Earlier calls and what they found: docs/results/ (v44-v49) and git history.
#   CALL=0 backward main's backward build (v49's deterministic order with v48's 4-byte dK/dV stores,
#                   never run on a GPU in v49): test_backward_gpu and the torch adapter's tests, then
#                   the benchmark's backward mode, fp16 and bf16, default / deterministic / cuDNN, on
#                   the causal rows (issue 23's deterministic bar, 0.75x the default) and S4k D128.
#   CALL=7 bwdsan   compute-sanitizer memcheck, racecheck and synccheck of sanitize_case's backward.
#   CALL=1 decode   issue 24's decode rows in one benchmark run, fp16 and bf16 (B8 Sk 8k, B1 Sk
#                   128k, B64 Sk 2k, speculative Sq 4): its bar is >= 1.0x the fastest SDPA peer
#                   on every row (v45: B1 128k 0.96-0.97x back to back, 1.00x as graph replays);
#                   then B1 128k's tiles by split count as graph replays (8 splits: 64 CTAs).
#   CALL=2 paged    issue 24's paged and varlen rows in one benchmark run, fp16 and bf16 (paged 1,
#                   16, 256; varlen 16 and 64 sequences, with dense S4k causal): bars 0.95x the
#                   contiguous cache at page 16 and over, 0.7x at page 1; varlen >= 2x SDPA
#                   nested and >= 0.8x dense flashcore (v49 probes: 0.78-0.82x, 1.96-2.03x).
#   CALL=3 varlen3  varlen's 64-key tiles with three consumers, 2 and 4 slots (192 query rows; 1.05x the shipped
#                   128x128 tile once, v49 call 5) beside the shipped tile, both dtypes, both
#                   varlen rows, 20 samples: the candidate for sm90_varlen_config at D128.
#   CALL=4 h200     (an H200: `kind` nvidia-h200) issue 22's variant rows and top-left against the
#                   SDPA peers and flashcore_plain in one benchmark run, fp16 and bf16 (its bars
#                   were measured on the H200; top-left 1.00-1.01x cuDNN on H100s since v48).
#   CALL=5 matrix   test_attention_gpu's reference matrix on the Hopper kernel (the part of the
#                   GPU suite not run on v48's 16-byte O stores: ~81 % of it ran, none failed).
#   CALL=6 gather   the gathered pages' four warps a role against one (FLASHCORE_GATHER_ONE_WARP):
#                   gather_probe.py on pages of 1, 3 and 16 keys.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 0|1|2|3|4|5|6|7) ;;
  *) echo "CALL: 0 (backward), 1 (decode), 2 (paged), 3 (varlen3), 4 (h200), 5 (matrix), 6 (gather), 7 (bwdsan)" >&2
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
0)
  step pytest.txt timeout 280 python3 -m pytest tests/test_backward_gpu.py tests/test_torch_adapter_gpu.py -q -rs \
    -p no:cacheprovider
  step bench.txt timeout 260 python3 scripts/bench.py --direction backward --out "$OUT/bench_backward.json" \
    --shape b2-h16-s4k-d128-causal --shape b1-h16-s16k-d128-causal --shape gqa-b2-h32kv8-s4k-d128-causal \
    --shape b2-h16-s4k-d128 --impl flashcore --impl flashcore_deterministic --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_backward.json"
  ;;
7)
  for tool in memcheck racecheck synccheck; do
    step sanitizer.txt timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py backward
  done
  ;;
1)
  bench decode decode-b8-h32kv8-s8k-d128 decode-b1-h32kv8-s128k-d128 decode-b64-h32kv8-s2k-d128 \
    specdec-b8-h32kv8-sq4-s8k-d128-causal
  step probe.txt timeout 150 python3 scripts/dev/kvcache_tile_probe.py --rows decode-b1-h32kv8-s128k-d128 \
    --splits 0,6,10,12,16
  ;;
2)
  bench paged paged1-decode-b8-h32kv8-s8k-d128 paged16-decode-b8-h32kv8-s8k-d128 \
    paged256-decode-b8-h32kv8-s8k-d128 varlen-16seq-32k-h16-d128-causal varlen-64seq-h32kv8-d128-causal \
    b2-h16-s4k-d128-causal
  ;;
3)
  step probe.txt timeout 400 python3 scripts/dev/inference_probe.py --dtype fp16,bf16 --samples 20 \
    --shapes varlen-64seq-h32kv8-d128-causal,varlen-16seq-32k-h16-d128-causal --varlen-tile 64:2:3 --varlen-tile 64:4:3
  ;;
4)
  bench variants window1k-b2-h16-s8k-d128 window4k-b1-h32kv8-s16k-d128 softcap50-b2-h16kv8-s4k-d256-causal \
    alibi-b2-h16-s4k-d128-causal bias-b2-h16-s4k-d128 topleft-b4-h16-sq1k-sk4k-d128-causal
  ;;
5)
  step pytest.txt timeout 520 python3 -m pytest tests/test_attention_gpu.py -q -rs -p no:cacheprovider \
    -k "test_matches_reference and not sm80"
  ;;
6)
  step probes.txt timeout 120 python3 scripts/dev/gather_probe.py --pages 1,3,16 --define FLASHCORE_GATHER_ONE_WARP
  ;;
esac
echo "pending_run exit status: $status"
exit $status
