#!/usr/bin/env bash
# test_ha.sh: active/standby failover with the shipped keepalived config
# (deploy/keepalived), for real, on one machine: network namespaces a, b
# (dsinfer + keepalived each) and c (the client) on a bridge, VIP 10.213.0.100.
#   1. crash: loadgen drives the VIP; the primary's link is cut and its
#      dsinfer and keepalived killed -9. The VIP must move to b and /health/ready
#      answer through it within 3 s; loadgen may lose the requests in flight
#      plus those it sends on keep-alive connections already open to the dead
#      node (curl's pool): at most 2 x its concurrency.
#   2. drain: the primary comes back and takes the VIP (preempt); with
#      loadgen running, its dsinfer gets SIGTERM: /health/ready turns 503 but
#      requests are still served for drain_grace_ms (4000, the keepalived
#      setting of docs/operating.md section 9), the track script fails and the
#      VIP moves within that grace; then the old primary drains and exits 0.
#      No request may get 503 or fail to connect; the only loss allowed is the
#      requests in flight on the old primary at the instant the VIP moves: its
#      answers can no longer leave it (the address is gone), and the client
#      waits for them until its own timeout (or a reset from the new holder, if
#      it sends more): at most loadgen's concurrency. A handshake cut by the
#      move sent no request and is resent (loadgen's connect_retries).
# Prints "failover_s=..." and the loss counts (bench/RESULTS.md records them).
# Samplers capture rc before they take the time, since "$(now) $?" would
# expand $? after the command substitution (always 0).
# Needs root, ip netns, keepalived, curl; exit 77 (skipped, with the reason)
# where any is missing. Label ha.
set -u
BIN=${DSI_BIN:-build/dsinfer}
LG=${LOADGEN:-$(dirname "$BIN")/loadgen}
MODEL=tests/golden/models/tiny-chat
skip() { echo "skip: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "no ip (iproute2)"
command -v keepalived >/dev/null || skip "no keepalived (apt-get install keepalived)"
command -v curl >/dev/null || skip "no curl"
[[ -x $BIN && -x $LG ]] || skip "no dsinfer/loadgen binaries"
# Sub-second failover timing means nothing on an overloaded machine (a CI VM
# running parallel builds starves keepalived's timers and the TLS probes):
# skip there rather than report noise.
ck_s=0.8 ck_timeout=1 ck_fall=1
load=$(cut -d' ' -f1 /proc/loadavg) ncpu=$(nproc)
awk -v l="$load" -v n="$ncpu" 'BEGIN {exit !(l > 2 * n)}' &&
  skip "load average $load on $ncpu cores: failover timings would be meaningless"
p=dsiha$$
A=${p}a B=${p}b C=${p}c BR=${p}br
ip netns add "$BR" 2>/dev/null || skip "cannot create network namespaces here"
W=$(mktemp -d /tmp/dsi_ha.XXXXXX)
pids=() dpid_a="" kpid_a=""
cleanup() {
  for x in "${pids[@]}"; do kill -9 "$x" 2>/dev/null; done
  wait 2>/dev/null
  for n in "$A" "$B" "$C" "$BR"; do ip netns del "$n" 2>/dev/null; done
  [[ ${KEEP:-0} = 1 ]] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
fails=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi; }
now() { date +%s.%N; }
VIP=10.213.0.100
GRACE_MS=4000 # docs/operating.md section 9: track interval 1 s + check 0.8 s + takeover, with margin
CONC=2        # loadgen's concurrency: the most requests that can be in flight
ip -n "$BR" link add br0 type bridge && ip -n "$BR" link set br0 up
declare -A addr=([$A]=10.213.0.1 [$B]=10.213.0.2 [$C]=10.213.0.10)
for n in "$A" "$B" "$C"; do
  [[ $n = "$BR" ]] || ip netns add "$n"
  ip -n "$n" link add eth0 type veth peer name "p-${n: -1}" netns "$BR"
  ip -n "$BR" link set "p-${n: -1}" master br0 up
  ip -n "$n" addr add "${addr[$n]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
done
KEY=$("$BIN" keys add --file "$W/keys.json" --name ha --role user 2>/dev/null)
(umask 077; printf '%s\n' "$KEY" >"$W/key")
start_dsinfer() { # NS NAME
  mkdir -p "$W/$2"
  ip netns exec "$1" "$BIN" serve --model "$MODEL" --listen 0.0.0.0:8443 --keys-file "$W/keys.json" \
    --state-dir "$W/$2" --backend cpu --threads 1 --drain-timeout-s 10 --drain-grace-ms $GRACE_MS >>"$W/$2.log" 2>&1 &
  pids+=($!)
  eval "dpid_$2=$!"
}
ready() { ip netns exec "$1" curl -fsk --max-time 1 -o /dev/null https://127.0.0.1:8443/health/ready; }
wait_ready() { for _ in $(seq 1 300); do ready "$1" && return 0; sleep 0.1; done; return 1; }
start_keepalived() { # NS NAME PRIORITY PEER
  printf '#!/bin/sh\nDSINFER_VRRP_STATE_FILE=%s exec %s "$@"\n' "$W/$2.vrrp" "$PWD/deploy/keepalived/dsinfer-notify.sh" >"$W/$2-notify.sh"
  chmod 700 "$W/$2-notify.sh"
  sed -e "s/^\( *\)router_id .*/\1router_id ha_$2/" -e "/script_user/d" -e "/enable_script_security/d" \
      -e "s|/etc/keepalived/dsinfer-check.sh \(.*\)\"|$PWD/deploy/keepalived/dsinfer-check.sh \1 $ck_s\"|" \
      -e "s/timeout 1$/timeout $ck_timeout/" -e "s/fall 1$/fall $ck_fall/" \
      -e "s|notify /etc/keepalived/dsinfer-notify.sh|notify $W/$2-notify.sh|" \
      -e "s/priority 150/priority $3/" -e "s/192.0.2.12/$4/" -e "s|192.0.2.100/24|$VIP/24|" \
      deploy/keepalived/keepalived.conf >"$W/$2.conf"
  ip netns exec "$1" keepalived -n -l -P -f "$W/$2.conf" -p "$W/$2.pid" -r "$W/$2.vrrp.pid" \
    >>"$W/$2.ka.log" 2>&1 &
  pids+=($!)
  eval "kpid_$2=$!"
}
has_vip() { ip -n "$1" -o addr show dev eth0 | grep -q " $VIP/"; }
wait_vip() { for _ in $(seq 1 100); do has_vip "$1" && return 0; sleep 0.1; done; return 1; }
wait_no_vip() { for _ in $(seq 1 100); do has_vip "$1" || return 0; sleep 0.1; done; return 1; }
# vip_watch NS OUT: "time 0|1" every 50 ms, 1 when NS holds the VIP
vip_watch() { local rc; while :; do has_vip "$1"; rc=$?; echo "$(now) $rc"; sleep 0.05; done >"$2"; }
# probe OUT: /health/ready through the VIP every 0.1 s, "start rc end" lines: a
# probe begun before the kill never counts, and the failover ends when the first
# probe begun after it has its answer (what a client sees)
probe() {
  local rc t
  while :; do
    t=$(now)
    ip netns exec "$C" curl -fsk --max-time 0.5 -o /dev/null "https://$VIP:8443/health/ready"; rc=$?
    echo "$t $rc $(now)"; sleep 0.1
  done >"$1"
}
load() { # OUT SECONDS
  ip netns exec "$C" "$LG" --url "https://$VIP:8443" --key-file "$W/key" --insecure --model tiny-chat \
 --concurrency $CONC --duration "$2" --prompt-words 2:6 --max-tokens 2:4 --timeout 10 --seed 1 --log-errors --json >"$1" 2>"$1.err"
}
# errors FILE: lost, completed, lost sent requests (transport), refused (HTTP errors
# and requests never sent), connect_retries, the by-status map
errors() {
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); b=j["errors_by_status"]; t=b.get("transport",0)
print(j["errors"], j["requests_completed"], t, j["errors"]-t, j["connect_retries"], json.dumps(b, separators=(",",":")))' "$1"
}

start_dsinfer "$A" a; start_dsinfer "$B" b
check "both dsinfer instances ready" bash -c "$(declare -f ready wait_ready); wait_ready $A && wait_ready $B"
start_keepalived "$A" a 150 "${addr[$B]}"; start_keepalived "$B" b 100 "${addr[$A]}"
check "the VIP comes up on the primary" wait_vip "$A"
check "and not on the standby" bash -c "! ip -n $B -o addr show dev eth0 | grep -q ' $VIP/'"

# --- 1. crash of the primary --------------------------------------------------
probe "$W/probe1" & ppid=$!; pids+=("$ppid")
vip_watch "$B" "$W/vip1" & vpid=$!; pids+=("$vpid")
load "$W/lg1.json" 8 & lpid=$!
sleep 2.5
check "the primary held the VIP until the crash" has_vip "$A"
tk=$(now)
# A host that dies sends nothing more: cut the link first, then kill keepalived's
# VRRP child too (killed with its parent alone, it would exit cleanly and send a
# priority-0 advert, which hands the VIP over at once, unlike a crash).
ip -n "$A" link set eth0 down
kill -9 "$(cat "$W/a.vrrp.pid")" "$kpid_a" "$dpid_a"
wait "$lpid"
kill "$ppid" "$vpid" 2>/dev/null
check "the VIP moved to the standby" has_vip "$B"
fo=$(awk -v t="$tk" '$1 > t && $2 == 0 {print $3 - t; exit}' "$W/probe1")
vip_s=$(awk -v t="$tk" '$1 > t && $2 == 0 {print $1 - t; exit}' "$W/vip1")
echo "failover_s=${fo:-none} vip_moved_s=${vip_s:-none}"
check "service resumes through the VIP within 3 s" awk -v f="${fo:-99}" 'BEGIN {exit !(f <= 3)}'
read -r e1 n1 t1 r1 c1 s1 < <(errors "$W/lg1.json")
echo "crash: lost=$e1 completed=$n1 by_status=$s1 connect_retries=$c1"
check "at most in-flight + pooled-connection requests (2 x $CONC) lost in the crash" test "$e1" -le $((2 * CONC))
check "requests completed after the failover" test "$n1" -gt 0

# --- 2. drain hand-over ---------------------------------------------------------
ip -n "$A" link set eth0 up
start_dsinfer "$A" a
check "the old primary is ready again" wait_ready "$A"
start_keepalived "$A" a 150 "${addr[$B]}"
check "it takes the VIP back (preempt)" wait_vip "$A"
check "and the standby gives it up" wait_no_vip "$B"
vip_watch "$B" "$W/vip2" & vpid=$!; pids+=("$vpid")
load "$W/lg2.json" 10 & lpid=$!
sleep 2
check "the primary held the VIP until SIGTERM" has_vip "$A"
td=$(now)
kill -TERM "$dpid_a"
wait "$lpid"
kill "$vpid" 2>/dev/null
vip2=$(awk -v t="$td" '$1 > t && $2 == 0 {print $1 - t; exit}' "$W/vip2")
check "the VIP moved on drain" test -n "$vip2"
check "within the grace (${vip2:-none} s < $GRACE_MS ms)" awk -v v="${vip2:-99}" -v g="$GRACE_MS" 'BEGIN {exit !(v < g / 1000)}'
read -r e2 n2 t2 r2 c2 s2 < <(errors "$W/lg2.json")
echo "drain: vip_moved_s=${vip2:-none} lost=$e2 completed=$n2 by_status=$s2 connect_retries=$c2"
check "no request refused (503) or left unsent in the drain" test "$r2" -eq 0
check "at most the requests in flight when the VIP moved ($CONC) lost in the drain" test "$t2" -le "$CONC"
sed 's/^/    /' "$W/lg2.json.err" # one line per failed transfer (loadgen --log-errors)
check "requests completed across the drain" test "$n2" -gt 0
check "the drained instance exited 0" wait "$dpid_a"
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed (logs: KEEP=1)"; exit 1; }
