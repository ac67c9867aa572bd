#!/usr/bin/env bash
# The device calls for what is not yet run on a GPU, one call each, in order of need (each under
# 9 minutes of timeouts). Calls 1-3 ran in session 31 (docs/results/2026-12-05-h100-v45-pending/),
# call 5 (with call 4's item trace) in session 32 (docs/results/2026-12-06-h100-v46-bwd256/call1/),
# calls 6, 7 and 9 in session 33 (docs/results/2026-12-06-h100-v47-bwd-groups/); call 4's gather
# A/B is still to run:
#   CALL=1 tests    the Hopper kernel's ALiBi on its key-linear path by default (v44; its first
#                   run stopped at its 240 s timeout, 73 passed, kernels compiling on a fresh
#                   machine): the variant tests with room, racecheck of the variant and varlen
#                   sections (stopped at 60 s).
#   CALL=2 decode   issue 24's decode and paged rows in one benchmark run (since v42 paged 1 and
#                   speculative decode run on the Hopper kernel and the portable kernel merges its
#                   splits in the kernel: not timed together since); item_trace.py on varlen-64
#                   (0.72x dense, bar 0.8x; v44's first try on a varlen row stopped on an illegal
#                   address, its second at a 45 s timeout while compiling: launches blocking, to
#                   name the launch) and on top-left, shipped (a CTA a tile) beside the persistent
#                   dynamic deal.
#   CALL=3 paged    the KV cache's tests, synccheck and racecheck of the paged section, with the
#                   boxes' pages looked up a group of key tiles ahead and the gathered pages copied
#                   by the producer's four warps (session 31); gather_probe.py against one warp a role
#                   (FLASHCORE_GATHER_ONE_WARP); the paged rows in one benchmark run.
#   CALL=4 probes   gather_probe.py against one warp a role (call 3's stopped on a format error);
#                   item_trace.py on varlen-64 (0.72x dense, bar 0.8x; its earlier tries failed on
#                   the probe's own freed arrays, fixed in session 31).
#   CALL=5 bwd256   the head-dim-256 backward (0.49x cuDNN, v44), now S^T and dP^T a half query
#                   tile a consumer (P^T and dS^T exchanged through shared memory) and dQ's blocks
#                   added four floats a reduction (red.global.add.v4): its GPU tests; backward_probe.py
#                   without dQ's GEMM (NO_DQ) or its adds (NO_DQ_ADD), one ring slot (these rows timed
#                   the default: the probe's plan cache, fixed since); ncu of the main kernel; then
#                   call 4's item trace.
#   CALL=6 groups   the backward's head groups (grid.cuh's grouped_item, session 33): the GPU tests
#                   of every grouping and the deterministic mode; backward_probe on the causal rows
#                   with head_group 1, 2, 4, 8 and the grid's own order (0) beside dispatch's.
#   CALL=9 dqlag    the Hopper backward's dQ a tile late (no named barrier a tile: the consumers
#                   drift apart): its GPU tests, backward_probe against the kernel before it
#                   (kernels/flash_bwd_sm90_v47base.cu: `git show 41dee32:kernels/flash_bwd_sm90.cu`,
#                   untracked, travels with the tree) on D64, D96, D128,
#                   D128 causal (PROBE_ARGS: more files); racecheck and synccheck of the
#                   backward section; BENCH=1: call 7's benchmark rows after it.
#   CALL=10 turns   the Hopper backward's probe builds of session 34: consumer turns on top of the
#                   dQ lag (FLASHCORE_BWD_TURNS=1: S^T and dP^T issued in turns; =2: dV, dK and
#                   dQ too), the slot's LSE and delta read before the GEMMs' waits
#                   (FLASHCORE_BWD_ROWS_EARLY), the lag with turns at D96 (FLASHCORE_BWD_LAG_ALL)
#                   beside the default kernel and cuDNN in one process.
#   CALL=11 early   call 10's winners again, both dtypes and S1k D64: the LSE read early
#                   (ROWS_EARLY=1), LSE and delta (=3), turns for S^T and dP^T (TURNS=1), and
#                   turns with either.
#   CALL=12 bwdship the backward with turns at D64 and D128 and rows read early at D64 and D96
#                   (Sm90BwdTile::kTurns, kRowsEarly; SASS the same as call 11's probe builds):
#                   test_backward_gpu, racecheck and synccheck of the backward section, the
#                   benchmark's backward mode on issue 23's and 25's rows against cuDNN.
#   CALL=13 bwd128  call 12's kernel beside probe copies (untracked kernels/flash_bwd_sm90_x*.cu,
#                   session 34): x2 dQ of the tile before issued ahead of dV and dK (its store
#                   under them), x3 the slot released once dV and dK are done (before dQ's wait),
#                   x4 delta read early at every head dim; a ring of 3 slots at D128.
#   CALL=14 tail    what the forward's epilogue stores cost (FLASHCORE_ABLATE_NO_STORE, the bound
#                   of an epilogue staged through shared memory) on the rows whose work tiles are
#                   short (top-left, window1k, S1k D64) and the long ones; the backward's issue-23
#                   rows not yet run with the turns (S16k D128, causal, GQA) with the
#                   deterministic mode, against cuDNN.
#   CALL=15 stores  call 14's ablation again, O still computed (its stores predicated off at run
#                   time: call 14's build lost the P V GEMMs as dead code, 32 -> 18 HGMMA).
#   CALL=16 store16 the forward's O stored 16 bytes a lane (store_o_row16: a quad's blocks transposed
#                   by shuffles): beside the 4-byte stores (FLASHCORE_O_STORE32, also checking that
#                   path's output) and the stores' bound (NO_STORE); the forward GPU tests (Hopper),
#                   varlen's and the KV cache's; the forward benchmark's short-tile rows vs cuDNN.
#   CALL=17 detdesc (branch gpu-pending) the deterministic backward under a plain causal mask with its
#                   key tiles launched last first and its adds descending (CPU model in
#                   test_sm90_protocol: no hang; a timed model predicted ~1.07x the default's
#                   time where ascending took ~1.8x; measured v48: 1.56x): test_backward_gpu's
#                   deterministic tests, racecheck and synccheck of the backward section, the
#                   benchmark's backward mode on the causal rows (default, deterministic, cuDNN).
#   CALL=18 dkv16   (branch gpu-pending) the Hopper backward's dK and dV stored 16 bytes a lane
#                   (store_row16): test_backward_gpu; backward_probe against main's kernel (copy
#                   it first, untracked: git show main:kernels/flash_bwd_sm90.cu >
#                   kernels/flash_bwd_sm90_main.cu) on S1k D64 (its CTAs' epilogue weighs most),
#                   S4k D64, S4k D128.
#   CALL=7 bwdbench issue 25's backward bar: the benchmark's backward mode on the D96 and D256 rows
#                   (fp16, bf16) against SDPA cuDNN and flash, with S4k D64 and D128 (issue 23's);
#                   racecheck of the backward section.
# Logs go to $OUT. Usage on the device machine, from the repository root:
#   CALL=1 bash scripts/dev/pending_run.sh
set -uo pipefail
case "${CALL:-}" in 1|2|3|4|5|6|7|9|10|11|12|13|14|15|16|17|18) ;;
  *) echo "CALL: 1 (tests), 2 (decode), 3 (paged), 4 (probes), 5 (bwd256), 6 (groups), 7 (bwdbench), 9 (dqlag), 10 (turns), 11 (early), 12 (bwdship), 13 (bwd128), 14 (tail), 15 (stores), 16 (store16), 17 (detdesc), 18 (dkv16)" >&2
     exit 2 ;; esac
source "$(dirname "$0")/../steps.sh"
export FLASHCORE_REQUIRE_GPU=1
step device.txt nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
case "${CALL:-}" in
1)
  step pytest.txt timeout 300 python3 -m pytest tests/test_variants_gpu.py -q -rs -k "not sm80" -p no:cacheprovider
  step sanitizer.txt timeout 150 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitize_case.py \
    variants varlen
  ;;
2)
  step bench.txt timeout 330 python3 scripts/bench.py --out "$OUT/bench_decode.json" --shape decode-b8-h32kv8-s8k-d128 \
    --shape decode-b1-h32kv8-s128k-d128 --shape decode-b64-h32kv8-s2k-d128 --shape specdec-b8-h32kv8-sq4-s8k-d128-causal \
    --shape paged1-decode-b8-h32kv8-s8k-d128 --shape paged16-decode-b8-h32kv8-s8k-d128 \
    --shape paged256-decode-b8-h32kv8-s8k-d128 --iters 30
  step probes.txt env CUDA_LAUNCH_BLOCKING=1 timeout 120 python3 scripts/dev/item_trace.py \
    --shape varlen-64seq-h32kv8-d128-causal
  # top-left a CTA a tile (shipped) beside the persistent dynamic deal: where v40's 0.88x (against
  # 0.90x) came from, though its items' Q waits (15 %) and gaps (6-9 %) would load under the last tile's
  step probes.txt timeout 120 python3 scripts/dev/item_trace.py --shape topleft-b4-h16-sq1k-sk4k-d128-causal \
    --define FLASHCORE_DYNAMIC
  ;;
3)
  step pytest.txt timeout 180 python3 -m pytest tests/test_kvcache_gpu.py -q -rs -p no:cacheprovider
  step probes.txt timeout 60 python3 scripts/dev/gather_probe.py --pages 1,3,16,64 --define FLASHCORE_GATHER_ONE_WARP
  step sanitizer.txt timeout 60 compute-sanitizer --tool synccheck --error-exitcode 3 python3 scripts/sanitize_case.py paged
  step bench.txt timeout 150 python3 scripts/bench.py --out "$OUT/bench_paged.json" --shape paged1-decode-b8-h32kv8-s8k-d128 \
    --shape paged16-decode-b8-h32kv8-s8k-d128 --shape paged256-decode-b8-h32kv8-s8k-d128 --iters 30
  step bench.txt python3 scripts/report.py "$OUT/bench_paged.json"
  step sanitizer.txt timeout 60 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitize_case.py paged
  ;;
4)
  step probes.txt timeout 70 python3 scripts/dev/gather_probe.py --pages 1,3,16 --define FLASHCORE_GATHER_ONE_WARP
  step probes.txt timeout 150 python3 scripts/dev/item_trace.py --shape varlen-64seq-h32kv8-d128-causal
  ;;
5)
  step pytest.txt timeout 200 python3 -m pytest tests/test_backward_gpu.py -q -rs -k 256 -p no:cacheprovider
  step probe.txt timeout 150 python3 scripts/dev/backward_probe.py --dtype fp16 --shapes b2-h16-s4k-d256 \
    --ablate NO_DQ --ablate NO_DQ_ADD --config stages=1
  step ncu_d256.txt timeout 150 ncu --clock-control none --set full -k regex:flash_bwd_sm90 \
    --launch-skip 2 --launch-count 1 python3 scripts/profile_case.py b2-h16-s4k-d256 fp16 backward
  step probes.txt timeout 120 python3 scripts/dev/item_trace.py --shape varlen-64seq-h32kv8-d128-causal
  ;;
6)
  step pytest.txt timeout 200 python3 -m pytest tests/test_backward_gpu.py -q -rs -p no:cacheprovider \
    -k "grouping or deterministic"
  step probe.txt timeout 330 python3 scripts/dev/backward_probe.py --dtype fp16 \
    --shapes b2-h16-s4k-d128-causal,b1-h16-s16k-d128-causal,b1-h16-s16k-d256-causal \
    --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash \
    --config head_group=1 --config head_group=2 --config head_group=4 --config head_group=8 --config head_group=0
  ;;
7)
  step bench.txt timeout 300 python3 scripts/bench.py --direction backward --out "$OUT/bench_bwd.json" \
    --shape b2-h16-s4k-d96 --shape b2-h16-s4k-d256 --shape b1-h16-s16k-d256-causal --shape b2-h16-s4k-d64 \
    --shape b2-h16-s4k-d128 \
    --impl flashcore --impl sdpa_cudnn --impl sdpa_flash --iters 20
  step bench.txt python3 scripts/report.py "$OUT/bench_bwd.json"
  step sanitizer.txt timeout 200 compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitize_case.py backward
  ;;
9)
  step pytest.txt timeout 240 python3 -m pytest tests/test_backward_gpu.py -q -rs -x -p no:cacheprovider
  step probe.txt timeout 170 python3 scripts/dev/backward_probe.py --dtype fp16 \
    --shapes b2-h16-s4k-d128,b2-h16-s4k-d64,b2-h16-s4k-d96,b2-h16-s4k-d128-causal \
    --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash --kernel-file flash_bwd_sm90_v47base.cu \
    ${PROBE_ARGS:-}
  for tool in racecheck synccheck; do
    step sanitizer.txt timeout 100 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py backward
  done
  if [ "${BENCH:-0}" = 1 ]; then
    step bench.txt timeout 200 python3 scripts/bench.py --direction backward --out "$OUT/bench_bwd.json" \
      --shape b2-h16-s4k-d96 --shape b2-h16-s4k-d256 --shape b2-h16-s4k-d64 --shape b2-h16-s4k-d128 \
      --impl flashcore --impl sdpa_cudnn --iters 10
    step bench.txt python3 scripts/report.py "$OUT/bench_bwd.json"
  fi
  ;;
10)
  step probe.txt timeout 400 python3 scripts/dev/backward_probe.py --dtype fp16 \
    --shapes b2-h16-s4k-d128,b2-h16-s4k-d64,b2-h16-s4k-d128-causal,b2-h16-s4k-d96 \
    --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash \
    --define FLASHCORE_BWD_TURNS=1 --define FLASHCORE_BWD_TURNS=2 --define FLASHCORE_BWD_ROWS_EARLY \
    --define FLASHCORE_BWD_TURNS=2+FLASHCORE_BWD_ROWS_EARLY --define FLASHCORE_BWD_LAG_ALL+FLASHCORE_BWD_TURNS=2 \
    ${PROBE_ARGS:-}
  ;;
11)
  E=FLASHCORE_BWD_ROWS_EARLY T=FLASHCORE_BWD_TURNS
  for spec in fp16:b2-h16-s4k-d128,b2-h16-s4k-d64,b2-h16-s4k-d96,b4-h16-s1k-d64,b2-h16-s4k-d128-causal \
              bf16:b2-h16-s4k-d128,b2-h16-s4k-d64; do
    step probe.txt timeout 280 python3 scripts/dev/backward_probe.py --dtype ${spec%%:*} --shapes ${spec#*:} \
      --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash \
      --define $E=1 --define $E=3 --define $T=1 --define $T=1+$E=1 --define $T=1+$E=3 ${PROBE_ARGS:-}
  done
  ;;
12)
  step pytest.txt timeout 240 python3 -m pytest tests/test_backward_gpu.py -q -rs -x -p no:cacheprovider
  for tool in racecheck synccheck; do
    step sanitizer.txt timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py backward
  done
  step bench.txt timeout 240 python3 scripts/bench.py --direction backward --out "$OUT/bench_bwd.json" \
    --shape b2-h16-s4k-d64 --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d96 --shape b2-h16-s4k-d256 \
    --shape b4-h16-s1k-d64 --shape b2-h16-s4k-d128-causal --impl flashcore --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_bwd.json"
  ;;
13)
  for spec in fp16:b2-h16-s4k-d128,b2-h16-s4k-d128-causal,b2-h16-s4k-d64,b1-h16-s16k-d128 bf16:b2-h16-s4k-d128; do
    step probe.txt timeout 200 python3 scripts/dev/backward_probe.py --dtype ${spec%%:*} --shapes ${spec#*:} \
      --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash --kernel-file flash_bwd_sm90_x2.cu \
      --kernel-file flash_bwd_sm90_x3.cu --kernel-file flash_bwd_sm90_x4.cu --config stages=3 ${PROBE_ARGS:-}
  done
  ;;
14)
  step ablate.txt timeout 150 python3 scripts/dev/ablate_sm90.py --variant "no O stores" \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape window1k-b2-h16-s8k-d128 --shape b4-h16-s1k-d64 \
    --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d128-causal --shape b2-h16-s4k-d64
  step bench.txt timeout 300 python3 scripts/bench.py --direction backward --out "$OUT/bench_bwd.json" \
    --shape b1-h16-s16k-d128 --shape b1-h16-s16k-d128-causal --shape gqa-b2-h32kv8-s4k-d128-causal \
    --dtype fp16 --impl flashcore --impl flashcore_deterministic --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_bwd.json"
  ;;
15)
  step ablate.txt timeout 150 python3 scripts/dev/ablate_sm90.py --variant "no O stores" \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape window1k-b2-h16-s8k-d128 --shape b4-h16-s1k-d64 \
    --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d128-causal --shape b2-h16-s4k-d64
  ;;
16)
  step ablate.txt timeout 100 python3 scripts/dev/ablate_sm90.py --variant "O stored" --variant "no O stores" \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape window1k-b2-h16-s8k-d128 --shape b4-h16-s1k-d64 \
    --shape b2-h16-s4k-d128 --shape b2-h16-s4k-d128-causal
  step pytest.txt timeout 200 python3 -m pytest tests/test_attention_gpu.py -q -rs -x -p no:cacheprovider -k "not sm80"
  step pytest.txt timeout 90 python3 -m pytest tests/test_varlen_gpu.py tests/test_kvcache_gpu.py -q -rs -x \
    -p no:cacheprovider -k "not sm80"
  step bench.txt timeout 100 python3 scripts/bench.py --out "$OUT/bench_fwd.json" \
    --shape topleft-b4-h16-sq1k-sk4k-d128-causal --shape b4-h16-s1k-d64 --shape b2-h16-s4k-d128 \
    --impl flashcore --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_fwd.json"
  ;;
17)
  step pytest.txt timeout 200 python3 -m pytest tests/test_backward_gpu.py -q -rs -x -p no:cacheprovider \
    -k "deterministic or grouping"
  for tool in racecheck synccheck; do
    step sanitizer.txt timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 python3 scripts/sanitize_case.py backward
  done
  step bench.txt timeout 240 python3 scripts/bench.py --direction backward --out "$OUT/bench_bwd.json" \
    --shape b1-h16-s16k-d128-causal --shape gqa-b2-h32kv8-s4k-d128-causal --shape b2-h16-s4k-d128-causal \
    --dtype fp16 --impl flashcore --impl flashcore_deterministic --impl sdpa_cudnn --iters 10
  step bench.txt python3 scripts/report.py "$OUT/bench_bwd.json"
  ;;
18)
  step pytest.txt timeout 240 python3 -m pytest tests/test_backward_gpu.py -q -rs -x -p no:cacheprovider
  step probe.txt timeout 240 python3 scripts/dev/backward_probe.py --dtype fp16 \
    --shapes b4-h16-s1k-d64,b2-h16-s4k-d64,b2-h16-s4k-d128 \
    --skip flashcore_det,flashcore_sm80,sdpa_efficient,sdpa_flash --kernel-file flash_bwd_sm90_main.cu
  ;;
esac
echo "pending_run exit status: $status"
exit $status
