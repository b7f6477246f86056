#!/usr/bin/env bash
# README's first command: installs what dsinfer needs (Debian 12), builds it, and
# serves the bundled demo model on https://127.0.0.1:8443 with the CPU backend.
# First run only: creates .dsinfer/ (state dir: self-signed TLS certificate, keys
# file) and an admin API key for local use, saved in .dsinfer/dev.key (mode 0600).
# Extra arguments go to `dsinfer serve` (e.g. --listen 127.0.0.1:9443).
# DSI_DEMO_MODEL=models/demo-v3 serves the DeepSeek-V3-layout (MLA + MoE) demo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
state=.dsinfer
mkdir -p "$state" && chmod 700 "$state"
if [[ ! -s $state/dev.key ]]; then
  (umask 077; ./build/dsinfer keys add --file "$state/keys.json" --name local-dev --role admin > "$state/dev.key")
fi
echo "dsinfer: API key for local use is in $state/dev.key; TLS certificate: $state/tls-cert.pem" >&2
exec ./build/dsinfer serve --model "${DSI_DEMO_MODEL:-models/demo}" --listen 127.0.0.1:8443 \
  --keys-file "$state/keys.json" --state-dir "$state" --audit-log "$state/audit.log" "$@"
