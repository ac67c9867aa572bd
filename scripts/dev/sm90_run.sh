#!/usr/bin/env bash
# Device run while bringing up the Hopper kernel: the correctness probe, then (if it
# passes) the tile sweep beside cuDNN and the SASS facts. Every step has a time
# limit, so a hung kernel costs minutes, not the device call.
set -uo pipefail
source "$(dirname "$0")/../steps.sh"
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/flashcore-kcache}

step device.txt nvidia-smi --query-gpu=name,uuid,serial,vbios_version,driver_version,power.limit,clocks.sm,clocks.max.sm --format=csv
step probe.txt timeout 240 python3 scripts/dev/sm90_probe.py
if [ $status = 0 ]; then
  step sweep.txt timeout 300 python3 scripts/tile_sweep.py --family all --out "$OUT/sweep.json"
fi
step sass.txt python3 scripts/sass_check.py --arch sm_90a --keep /tmp/fc-cubins
tar -C /tmp -cf "$OUT/cubins.tar" fc-cubins
echo "sm90_run exit status: $status"
exit $status
