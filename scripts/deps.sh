#!/usr/bin/env bash
# Installs the Debian 12 packages dsinfer builds and tests with. Idempotent: packages
# already present are not fetched again. Uses sudo when not root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev
      libssl-dev libmicrohttpd-dev libgnutls28-dev libcjson-dev libpcre2-dev
      libopenmpi-dev openmpi-bin libcurl4-openssl-dev
      curl openssl gnutls-bin nodejs npm systemd gnuplot-nox python3
      yamllint shellcheck keepalived pacemaker-cli-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# nodejs from another source may provide npm itself
if [[ " ${missing[*]} " == *" npm "* ]] && command -v npm >/dev/null; then
  missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The official openai npm client and zod (structured output), pinned by
# tests/integration/package-lock.json, for the end-to-end tests.
if [[ ! -d $root/tests/integration/node_modules/openai || ! -d $root/tests/integration/node_modules/zod ]]; then
  (cd "$root/tests/integration" && npm ci --no-audit --no-fund --loglevel=error)
fi
