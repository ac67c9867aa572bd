# Sourced by the device-run scripts: $OUT, PYTHONPATH, and `step`, which runs a
# command, appends its output to $OUT/LOGFILE and remembers a failure in $status.
OUT=${OUT:-/tmp/flashcore-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
status=0

step() {   # step LOGFILE CMD...
  local log=$1; shift
  echo "\$ $*" | tee -a "$OUT/$log"
  "$@" 2>&1 | tee -a "$OUT/$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; echo "FAILED: $*" | tee -a "$OUT/$log"; }
}
