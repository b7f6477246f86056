#!/usr/bin/env bash
# test_parallel_serve.sh: `mpirun -np 2 dsinfer serve --tensor-parallel 2` end to end:
# rank 0 serves plain HTTP on loopback with the tiny chat model, answers one
# greedy chat request with the same text as a single-process daemon, only rank 0
# listens, and a SIGTERM to rank 0 (what systemd sends to the unit) drains it,
# the worker shuts down on rank 0's message, and mpirun exits 0. Then a worker
# killed with SIGKILL takes the whole job down (mpirun non-zero, no rank left
# behind) instead of leaving rank 0 serving without it or hanging.
# DSI_TP_BACKEND=cuda runs the same checks on the CUDA backend (one GPU per
# rank, NCCL; on the 2-GPU machine: scripts/gpu_tp_check.sh); CI runs the CPU.
# Exit 0 pass, 1 fail, 77 skipped (no mpirun, curl or python3).
set -u
BIN=${DSI_BIN:-build/dsinfer}
BACKEND=${DSI_TP_BACKEND:-cpu}
export NCCL_NVLS_ENABLE=0
# bundled GPU-machine libraries (LD_LIBRARY_PATH) can break the system curl
CURL="env -u LD_LIBRARY_PATH curl"
MPI_X="-x ASAN_OPTIONS -x OMP_WAIT_POLICY -x NCCL_NVLS_ENABLE"
[ -n "${LD_LIBRARY_PATH:-}" ] && MPI_X="$MPI_X -x LD_LIBRARY_PATH"
skip() { echo "skipped: $1"; exit 77; }
command -v mpirun >/dev/null || skip "mpirun not installed (openmpi-bin)"
command -v curl >/dev/null || skip "curl not installed"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$BIN" ] || skip "no binary at $BIN"
MODEL=tests/golden/models/tiny-chat
W=$(mktemp -d /tmp/dsi-tp-serve.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT
FAILS=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; FAILS=$((FAILS + 1)); fi; }

export OMP_WAIT_POLICY=passive ASAN_OPTIONS=detect_leaks=0
KEY=$("$BIN" keys add --file "$W/keys.json" --name alice --role user 2>/dev/null) || { echo "keys add failed"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start LOG PREFIX...: starts `PREFIX $BIN serve ...` in the background; sets PORT, PID
start() {
    local log=$1; shift
    PORT=$(free_port)
    "$@" "$BIN" serve --model "$MODEL" --keys "$W/keys.json" --state-dir "$W/state-$PORT" --plain-http true \
        --listen "127.0.0.1:$PORT" --threads 1 --drain-timeout-s 5 --backend "$BACKEND" ${EXTRA:-} >"$log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 1 900); do
        grep -q "ready: serving" "$log" && return 0
        kill -0 "$PID" 2>/dev/null || { echo "daemon exited:"; cat "$log"; return 1; }
        sleep 0.2
    done
    echo "daemon did not become ready:"; cat "$log"; return 1
}
CHAT='{"model":"tiny-chat","messages":[{"role":"user","content":"Hello there"}],"max_tokens":8,"temperature":0}'
ask() { $CURL -sS --max-time 120 -H "Authorization: Bearer $KEY" -d "$CHAT" "http://127.0.0.1:$1/v1/chat/completions"; }
content() { python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'; }

# single process reference
start "$W/one.log" env || exit 1
REF=$(ask "$PORT" | content)
kill -TERM "$PID"; wait "$PID"

# two ranks
EXTRA="--tensor-parallel 2" start "$W/tp.log" mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    $MPI_X || exit 1
MPID=$PID
check "backend is $BACKEND-tp" grep -q "backend $BACKEND-tp" "$W/tp.log"
check "ready 200" test "$($CURL -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health/ready")" = 200
GOT=$(ask "$PORT" | content)
echo "  single: $REF"
echo "  2 ranks: $GOT"
check "chat answered" test -n "$GOT"
check "same greedy text as one process" test "$GOT" = "$REF"
R0=""
R1=""
for p in $(pgrep -P "$MPID"); do
    if tr '\0' '\n' <"/proc/$p/environ" | grep -q '^OMPI_COMM_WORLD_RANK=0$'; then R0=$p; else R1=$p; fi
done
check "found both ranks" test -n "$R0" -a -n "$R1"
# listening_sockets PID PORT: how many TCP sockets listening on PORT the process
# holds (Open MPI's own listening sockets on other ports do not count)
listening_sockets() {
    python3 - "$1" "$2" <<'PY'
import os, sys
pid, port = sys.argv[1], "%04X" % int(sys.argv[2])
listen = set()
for f in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        for line in open(f).read().splitlines()[1:]:
            c = line.split()
            if c[3] == "0A" and c[1].endswith(":" + port):
                listen.add(c[9])
    except OSError:
        pass
n = 0
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        t = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if t.startswith("socket:[") and t[8:-1] in listen:
        n += 1
print(n)
PY
}
check "rank 0 listens on the HTTP port" test "$(listening_sockets "$R0" "$PORT")" -ge 1
check "rank 1 does not" test "$(listening_sockets "$R1" "$PORT")" = 0
kill -TERM "$R0"
wait "$MPID"
RC=$?
check "mpirun exits 0 after SIGTERM to rank 0" test "$RC" = 0
check "rank 0 drained" grep -q -i "drain\|stopp\|shut" "$W/tp.log"
[ "$FAILS" = 0 ] || { echo "--- log"; cat "$W/tp.log"; }

# a dead worker ends the job
EXTRA="--tensor-parallel 2" start "$W/kill.log" mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    $MPI_X || exit 1
MPID=$PID
R0=""
R1=""
for p in $(pgrep -P "$MPID"); do
    if tr '\0' '\n' <"/proc/$p/environ" | grep -q '^OMPI_COMM_WORLD_RANK=0$'; then R0=$p; else R1=$p; fi
done
kill -KILL "$R1"
wait "$MPID"
RC=$?
check "mpirun exits non-zero when a worker dies" test "$RC" != 0
gone=1
for _ in $(seq 1 100); do kill -0 "$R0" 2>/dev/null || { gone=0; break; }; sleep 0.2; done
check "rank 0 does not outlive the job" test "$gone" = 0
check "mpirun names the dead rank" grep -q "process rank 1 .*signal 9" "$W/kill.log"
echo "$FAILS failed"
[ "$FAILS" = 0 ]
