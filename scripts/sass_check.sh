#!/usr/bin/env bash
# SASS facts of every kernel in CuPy's kernel cache ($CUPY_CACHE_DIR): per kernel,
# the count of tensor-core instructions (HGMMA = wgmma, HMMA = mma.sync) and of
# local-memory accesses (LDL/STL = spills). Run after the kernels were compiled.
# A cache file is a 32-byte hash followed by the cubin.
set -uo pipefail
dir=${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}
tmp=$(mktemp --suffix .cubin)
for f in "$dir"/*.cubin; do
  tail -c +33 "$f" > "$tmp"
  cuobjdump --dump-sass "$tmp" | awk '
    /Function :/ { if (name) print name, hgmma, hmma, local; name=$3; hgmma=hmma=local=0 }
    /HGMMA/ { hgmma++ } /HMMA/ { hmma++ } /LDL|STL/ { local++ }
    END { if (name) print name, hgmma, hmma, local }'
done | sort -u | awk 'BEGIN { print "kernel HGMMA HMMA LDL+STL" } { print }'
