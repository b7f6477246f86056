#!/usr/bin/env bash
# test_e2e_needs_client.sh: tests/integration/run.sh must fail, not pass, when the
# openai npm client is not installed: its client suite is part of what server_e2e
# proves. Runs a copy of run.sh from a folder without node_modules and expects exit 1
# and a message that names scripts/deps.sh. Run from the source root.
set -u
BIN=${DSI_BIN:-build/dsinfer}
[ -x "$BIN" ] || { echo "SKIP: no dsinfer binary at $BIN"; exit 77; }
W=$(mktemp -d /tmp/dsinfer-e2e-noclient.XXXXXX)
trap 'rm -rf "$W"' EXIT
cp tests/integration/run.sh "$W/run.sh"
out=$(DSI_BIN=$BIN timeout 300 bash "$W/run.sh" 2>&1)
rc=$?
if [ "$rc" = 77 ]; then echo "SKIP: run.sh skipped for another reason: $out"; exit 77; fi
if [ "$rc" != 1 ]; then echo "FAIL: run.sh without the openai client exited $rc, want 1"; echo "$out" | tail -5; exit 1; fi
case $out in
*"scripts/deps.sh"*) echo "ok   e2e without the openai client fails and names scripts/deps.sh" ;;
*) echo "FAIL: the message does not say to run scripts/deps.sh: $out"; exit 1 ;;
esac
