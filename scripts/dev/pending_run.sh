#!/usr/bin/env bash
# The device calls still to run, one call each, in order of need (each under 9 minutes of
# timeouts). Earlier calls and what they found: docs/results/ (v44-v50) and git history.
# The first call of a session (sessions 37, 38 and 39 got no device): CALL=7, then CALL=0 in the same
# command (under 7 + 2 minutes): `export OUT; CALL=7 bash ...; CALL=0 bash ...`.
#   CALL=0 adapter  the torch adapter's GPU tests on api.external_stream (74a610e: not yet run on a
#                   GPU; sessions 37-39 got no device), DeprecationWarnings as errors; first, with
#                   another call's rows after it.
#   CALL=1 backward issue 23's rows in one benchmark run: the backward mode on every dense D64 and
#                   D128 row with Sk >= 1024 (S1k D64, S4k D64, S4k D128, S4k D128 causal, S16k
#                   D128, S16k D128 causal, GQA S4k causal), fp16 and bf16, default /
#                   deterministic / cuDNN (v50 call 1 ran the four D128 rows but S16k: 0.85-0.98x
#                   cuDNN, deterministic 0.89-0.94x the default).
#   CALL=2 h200     (an H200: `kind` nvidia-h200) issue 22's variant rows and top-left against the
#                   SDPA peers and flashcore_plain in one benchmark run, fp16 and bf16 (its bars
#                   were measured on the H200; top-left 1.00-1.01x cuDNN on H100s since v48).
#   CALL=3 matrix   test_attention_gpu's reference matrix on the Hopper kernel (the part of the
#                   GPU suite not run on v48's 16-byte O stores: ~81 % of it ran, none failed).
#   CALL=4 gather   the gathered pages' four warps a role against one (FLASHCORE_GATHER_ONE_WARP):
#                   gather_probe.py on pages of 1, 3 and 16 keys.
#   CALL=5 tiles    varlen's three-consumer 64-key tile (1.02-1.09x the 128x128 one on varlen, v50
#                   call 3) on the variant rows of short work tiles: window1k (9 key tiles an item;
#                   0.69x plain, bar 0.85x), top-left (4 an item) and ALiBi, variant_probe with
#                   --tile 64,2,3 and 64,4,3 beside the dispatched tile, fp16 and bf16.
#   CALL=6 schedule window1k, ALiBi and top-left through schedule_probe.py: its dynamic deal beside
#                   the shipped schedule. (window1k, a window bounded on both sides, already runs on
#                   the persistent static deal: launch.py's `uneven`, so its "persistent" row is the
#                   shipped one; ALiBi causal and top-left run a CTA a tile.)
#   CALL=7 stream   streamed work tiles (-DFLASHCORE_STREAM_ITEMS: a tile's last P V issued with the
#                   next tile's first S, Q' in a second slot; not yet run on a GPU): stream_probe's
#                   edge cases against the reference (dense and packed sequences), then the rows it
#                   applies to (window1k, S1k D64, D96, a held-out D64 row, both varlen rows)
#                   beside the shipped kernel.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 0|1|2|3|4|5|6|7) ;;
  *) echo "CALL: 0 (adapter), 1 (backward), 2 (h200), 3 (matrix), 4 (gather), 5 (tiles), 6 (schedule), 7 (stream)" >&2
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
  step pytest.txt timeout 150 python3 -m pytest tests/test_torch_adapter_gpu.py -q -rs -p no:cacheprovider \
    -W error::DeprecationWarning
  ;;
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
  step pytest.txt timeout 520 python3 -m pytest tests/test_attention_gpu.py -q -rs -p no:cacheprovider \
    -k "test_matches_reference and not sm80"
  ;;
4)
  step probes.txt timeout 120 python3 scripts/dev/gather_probe.py --pages 1,3,16 --define FLASHCORE_GATHER_ONE_WARP
  ;;
5)
  step probe.txt timeout 400 python3 scripts/dev/variant_probe.py --samples 15 --tile 64,2,3 --tile 64,4,3 \
    --shapes window1k-b2-h16-s8k-d128,topleft-b4-h16-sq1k-sk4k-d128-causal,alibi-b2-h16-s4k-d128-causal
  ;;
6)
  for dtype in fp16 bf16; do
    step schedule.txt timeout 200 python3 scripts/dev/schedule_probe.py --dtype $dtype --samples 11 \
      window1k-b2-h16-s8k-d128 alibi-b2-h16-s4k-d128-causal topleft-b4-h16-sq1k-sk4k-d128-causal
  done
  ;;
7)
  step stream.txt timeout 430 python3 scripts/dev/stream_probe.py --samples 9 window1k-b2-h16-s8k-d128 \
    b4-h16-s1k-d64 b2-h16-s4k-d96 held-b3-h20kv4-s1900-d64 varlen-64seq-h32kv8-d128-causal \
    varlen-16seq-32k-h16-d128-causal
  ;;
esac
echo "pending_run exit status: $status"
exit $status
