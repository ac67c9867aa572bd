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

join_steps() {   # join_steps N GLOB MERGED : wait for the steps run in the background, each logging
  # to a file matching $OUT/GLOB; a background step's own status is lost, so a FAILED line in its
  # log (it may follow pytest's progress dots on the same line) marks the run failed; then each
  # log's last N lines, and the logs joined into $OUT/MERGED, each under its name (a call
  # returns at most 8 files from $OUT)
  local lines=$1 glob=$2 merged=$3 log
  wait
  grep -h "FAILED: " "$OUT"/$glob > /dev/null && status=1
  tail -n "$lines" "$OUT"/$glob
  for log in "$OUT"/$glob; do
    { echo "==> $(basename "$log") <=="; cat "$log"; } >> "$OUT/$merged" && rm "$log"
  done
}
