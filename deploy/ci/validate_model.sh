#!/usr/bin/env bash
# validate_model.sh: CI stage 1, model validation. Checks every file of the
# model directory against its SHA256SUMS, and SHA256SUMS itself against the
# pinned SHA-256 (the release's manifest_sha256), with `dsinfer verify`. An
# encrypted directory needs no key: its SHA256SUMS lists the encrypted files.
#
#   deploy/ci/validate_model.sh MODEL_DIR [MANIFEST_SHA256]
#   (the pin may come from $MODEL_MANIFEST_SHA256 instead; it is required)
# Exit 0 valid, 1 invalid or unpinned, 2 usage.
set -euo pipefail
# shellcheck source=deploy/ci/common.sh
source "$(dirname "$0")/common.sh"
[[ $# -ge 1 && $# -le 2 ]] || usage_die "$0 MODEL_DIR [MANIFEST_SHA256]"
dir=$1
pin=${2:-${MODEL_MANIFEST_SHA256:-}}
[[ -n $pin ]] || die "no pinned manifest SHA-256 (argument 2 or MODEL_MANIFEST_SHA256): an unpinned model proves nothing"
[[ $pin =~ ^[0-9a-fA-F]{64}$ ]] || die "the pin is not 64 hex digits"
[[ -d $dir ]] || die "$dir: not a directory"
"$DSINFER" verify "$dir" --expect-manifest-sha256 "$pin" || die "$dir does not match its pinned manifest"
log "ok: $dir matches SHA256SUMS pinned at ${pin:0:16}..."
