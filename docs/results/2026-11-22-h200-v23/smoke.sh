#!/usr/bin/env bash
# v23 device checks of the scripts not run since their launch calls changed (tuned_ab.py,
# trace_sm90.py's anchors, ablate_sm90.py). Usage (device, repo root):
#   bash docs/results/2026-11-22-h200-v23/smoke.sh
source scripts/steps.sh
step smoke.txt timeout 120 python3 scripts/trace_sm90.py --shape mission
step smoke.txt timeout 150 python3 scripts/ablate_sm90.py --shape mission --variant softmax
step smoke.txt timeout 200 python3 scripts/tuned_ab.py
echo "smoke exit status: $status"
