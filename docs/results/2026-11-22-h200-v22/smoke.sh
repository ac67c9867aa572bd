#!/usr/bin/env bash
# v22 device checks of the scripts after api.new_launch and loader.probe_function, the
# tests around the launch API, and mission-only benchmark runs. Usage (device, repo root):
#   bash docs/results/2026-11-22-h200-v22/smoke.sh
source scripts/steps.sh
step smoke.txt timeout 150 python3 -m pytest tests/test_attention_gpu.py -q -rs -p no:cacheprovider \
  -k "new_launch or outputs_allocated or auto_dispatch or with_config"
step smoke.txt timeout 90 python3 scripts/tile_ab.py b2-h16-s4k-d128 --samples 2
step smoke.txt timeout 90 python3 scripts/tile_sweep.py --family sm90 --shape mission
step smoke.txt timeout 60 python3 scripts/clock_probe.py mission fp16 1 2
step smoke.txt timeout 60 python3 scripts/layout_probe.py mission fp16 1
step smoke.txt timeout 60 python3 scripts/pipe_probe.py
step latency.txt timeout 120 python3 scripts/latency_probe.py
for i in 1 2 3; do
  step mission.txt timeout 60 python3 scripts/bench.py --shape mission --dtype fp16 --impl flashcore --impl sdpa_cudnn
done
echo "smoke exit status: $status"
