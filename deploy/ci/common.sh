# shellcheck shell=bash
# common.sh: sourced by the deploy/ci stage scripts. Finds the binaries
# ($DSINFER, $LOADGEN: the build tree's when run from a checkout, else PATH)
# and gives die/log helpers. Not executable on its own.
ci_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z ${DSINFER:-} ]]; then
  if [[ -x $ci_root/build/dsinfer ]]; then DSINFER=$ci_root/build/dsinfer; else DSINFER=$(command -v dsinfer || true); fi
fi
if [[ -z ${LOADGEN:-} ]]; then
  if [[ -x $ci_root/build/loadgen ]]; then LOADGEN=$ci_root/build/loadgen; else LOADGEN=$(command -v dsinfer-loadgen || true); fi
fi
log() { echo "[$(basename "$0")] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
usage_die() { log "usage: $*"; exit 2; }
[[ -n $DSINFER && -x $DSINFER ]] || { log "FAIL: no dsinfer binary (set DSINFER)"; exit 1; }
