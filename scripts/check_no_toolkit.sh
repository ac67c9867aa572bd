#!/usr/bin/env bash
# A user's machine may have a driver but no CUDA toolkit. Install the package
# (non-editable) into a fresh venv and run `check` and the CPU tests with every
# /usr/local/cuda* folder hidden under an empty bind mount (needs root for unshare -m).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$repo[cuda12,test]"
cp -r "$repo/tests" "$work/tests"
mkdir "$work/empty"
unshare -m bash -euo pipefail -c "
  for d in /usr/local/cuda*; do [ -d \"\$d\" ] && [ ! -L \"\$d\" ] && mount --bind '$work/empty' \"\$d\"; done
  echo \"toolkit folders now: \$(ls -d /usr/local/cuda*/* 2>/dev/null | wc -l) entries; nvcc: \$(command -v nvcc >/dev/null && nvcc --version >/dev/null 2>&1 && echo works || echo unavailable)\"
  cd '$work'
  '$work/venv/bin/flashcore-cupy' info
  '$work/venv/bin/flashcore-cupy' check --arch sm_80,sm_86,sm_89,sm_90a
  '$work/venv/bin/python' -m pytest -q -p no:cacheprovider '$work/tests'
"
