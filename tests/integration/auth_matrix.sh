#!/usr/bin/env bash
# auth_matrix.sh: end-to-end access control over real TLS 1.3 against a running
# `dsinfer serve` on the CPU backend with the tiny model:
#   1. roles x routes x key states (no key, malformed, unknown, disabled, expired,
#      admin, user, monitor, user limited to another model), with identical 401
#      bodies for unknown/disabled/expired keys;
#   2. mTLS: a client certificate mapped to a principal, an unknown CN refused;
#   3. rate limiting under a parallel burst: exactly rpm answers 200, the rest
#      429 with a Retry-After header;
#   4. reload under load: parallel clients while SIGHUP is sent repeatedly and the
#      keys file is rewritten; no request may fail; a revoked key stops working;
#      a broken keys file is rejected and the old keys keep working;
#   5. audit log lines are valid JSON without keys; chargeback metrics present.
# Exit 0 pass, 1 fail, 77 skip (no binary, model, curl or openssl).
set -u
cd "$(dirname "$0")/../.."
BIN=${DSI_BIN:-build/dsinfer}
MODEL=${DSI_AUTH_MODEL:-tests/golden/models/tiny-chat}
NAME=$(basename "$MODEL")
for t in curl openssl python3; do command -v $t >/dev/null || { echo "skip: no $t"; exit 77; }; done
[[ -x $BIN ]] || { echo "skip: no dsinfer binary at $BIN"; exit 77; }
[[ -d $MODEL ]] || { echo "skip: no model at $MODEL"; exit 77; }

dir=$(mktemp -d /tmp/dsi_auth_matrix.XXXXXX)
srv_pid=
cleanup() {
  [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  [[ -n ${KEEP:-} ]] && echo "kept $dir" || rm -rf "$dir"
}
trap cleanup EXIT
fails=0
check() { # check DESCRIPTION CONDITION...
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}

# ---- TLS material: a CA, a server certificate for localhost, two client certificates
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=dsinfer test CA" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem"
mkcert() { # mkcert NAME CN [server]
  ssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$dir/$1.key" -out "$dir/$1.csr"
  local ext=$dir/$1.ext
  if [[ ${3:-} == server ]]; then
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  ssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$ext" -out "$dir/$1.pem"
}
mkcert server localhost server
mkcert client billing-svc
mkcert stranger unknown-svc
[[ -s $dir/server.pem && -s $dir/client.pem ]] || { echo "FAIL cannot create test certificates"; exit 1; }

# ---- keys
K=$dir/keys.json
add() { "$BIN" keys add --file "$K" "$@" 2>/dev/null; }
ADMIN=$(add --name ops --role admin)
USER=$(add --name alice --role user --models "$NAME")
MON=$(add --name prom --role monitor)
OTHER=$(add --name bob --role user --models other-model)
DIS=$(add --name carol --role user)
EXP=$(add --name dave --role user --expires 2099-01-01)
LIM=$(add --name erin --role user --rpm 3)
for k in "$ADMIN" "$USER" "$MON" "$OTHER" "$DIS" "$EXP" "$LIM"; do
  [[ $k =~ ^dsi-[0-9a-f]{64}$ ]] || { echo "FAIL keys add did not print a key"; exit 1; }
done
id_of() { "$BIN" keys list --file "$K" | awk -F'\t' -v n="$1" '$2==n{print $1}'; }
"$BIN" keys revoke --file "$K" "$(id_of carol)" 2>/dev/null
# expire dave in the past and map the client certificate (editing by hand, as an operator would)
python3 - "$K" "$(id_of dave)" <<'PY'
import json, os, sys
path, dave = sys.argv[1], sys.argv[2]
d = json.load(open(path))
for k in d["keys"]:
    if k["id"] == dave: k["expires"] = "2020-01-01T00:00:00Z"
d["clients"] = [{"cn": "billing-svc", "name": "billing", "role": "user"}]
tmp = path + ".new"
with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f: json.dump(d, f, indent=1)
os.rename(tmp, path)
PY
UNKNOWN=dsi-$(printf '%064d' 7)

# ---- start the daemon
port=$((20000 + RANDOM % 20000))
"$BIN" serve --model "$MODEL" --backend cpu --listen "127.0.0.1:$port" --tls-cert "$dir/server.pem" \
  --tls-key "$dir/server.key" --tls-client-ca "$dir/ca.pem" --keys-file "$K" --audit-log "$dir/audit.log" \
  --state-dir "$dir" --log-level info >"$dir/server.log" 2>&1 &
srv_pid=$!
URL=https://localhost:$port
up=0
for _ in $(seq 1 120); do
  curl -sf -o /dev/null --cacert "$dir/ca.pem" "$URL/health/ready" && { up=1; break; }
  kill -0 $srv_pid 2>/dev/null || break
  sleep 0.5
done
if [[ $up != 1 ]]; then
  echo "FAIL dsinfer serve did not come up; log:"; tail -n 20 "$dir/server.log"; exit 1
fi

# req ROUTE [KEY|-] [extra curl args...]: prints the HTTP status; body in $dir/body, headers in $dir/hdr
req() {
  local route=$1 key=${2:--}; shift 2 || shift
  local method=GET data=
  case $route in
    /v1/chat/completions|/chat/completions)
      method=POST data="{\"model\":\"$NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2}" ;;
    /v1/completions) method=POST data="{\"model\":\"$NAME\",\"prompt\":\"hi\",\"max_tokens\":2}" ;;
    /v1/tokenize) method=POST data="{\"model\":\"$NAME\",\"prompt\":\"hi\"}" ;;
    /v1/detokenize) method=POST data="{\"model\":\"$NAME\",\"tokens\":[1,2]}" ;;
  esac
  local args=(-s -o "$dir/body" -D "$dir/hdr" -w '%{http_code}' --cacert "$dir/ca.pem" -X "$method")
  [[ -n $data ]] && args+=(-H 'Content-Type: application/json' --data "$data")
  if [[ $key == raw:* ]]; then args+=(-H "Authorization: ${key#raw:}")
  elif [[ $key != - ]]; then args+=(-H "Authorization: Bearer $key"); fi
  curl "${args[@]}" "$@" "$URL$route"
}

# ---- 1. roles x routes x key states
ROUTES=(/v1/chat/completions /chat/completions /v1/completions /v1/models /v1/tokenize /v1/detokenize /metrics)
#            chat chat-ds compl models tok detok metrics
declare -A WANT=(
  [ADMIN]="200 200 200 200 200 200 200"
  [USER]="200 200 200 200 200 200 403"
  [MON]="403 403 403 403 403 403 200"
  [OTHER]="403 403 403 403 403 403 403"
  [DIS]="401 401 401 401 401 401 401"
  [EXP]="401 401 401 401 401 401 401"
  [UNKNOWN]="401 401 401 401 401 401 401"
  [NONE]="401 401 401 401 401 401 401"
  [MALFORMED]="401 401 401 401 401 401 401"
)
for who in ADMIN USER MON OTHER DIS EXP UNKNOWN NONE MALFORMED; do
  case $who in
    NONE) key=- ;;
    MALFORMED) key="raw:Token ${ADMIN}" ;;
    *) key=${!who} ;;
  esac
  read -r -a want <<<"${WANT[$who]}"
  for i in "${!ROUTES[@]}"; do
    got=$(req "${ROUTES[$i]}" "$key")
    check "$who ${ROUTES[$i]} -> ${want[$i]}" test "$got" = "${want[$i]}"
    if [[ $who == DIS || $who == EXP || $who == UNKNOWN ]] && [[ ${ROUTES[$i]} == /v1/models ]]; then
      cp "$dir/body" "$dir/body.$who"
    fi
  done
done
check "health routes open without a key" test "$(req /health/live -)" = 200 -a "$(req /health/ready -)" = 200
check "401 bodies identical for unknown, disabled and expired keys" \
  bash -c 'cmp -s "$0/body.UNKNOWN" "$0/body.DIS" && cmp -s "$0/body.UNKNOWN" "$0/body.EXP"' "$dir"
check "401 body does not echo the key" bash -c '! grep -q "${0#dsi-}" "$1/body.DIS"' "$DIS" "$dir"
check "user may use its model" test "$(req /v1/chat/completions "$USER")" = 200

# ---- 2. mTLS
check "client certificate maps to a user principal" \
  test "$(req /v1/models - --cert "$dir/client.pem" --key "$dir/client.key")" = 200
check "client certificate principal lacks metrics" \
  test "$(req /metrics - --cert "$dir/client.pem" --key "$dir/client.key")" = 403
check "certificate with an unknown CN is refused" \
  test "$(req /v1/models - --cert "$dir/stranger.pem" --key "$dir/stranger.key")" = 401

# ---- 3. rate limiting under a burst (rpm 3)
for i in $(seq 1 8); do
  (curl -s -o /dev/null -D "$dir/burst.$i.hdr" -w '%{http_code}\n' --cacert "$dir/ca.pem" \
     -H "Authorization: Bearer $LIM" "$URL/v1/models" >"$dir/burst.$i") &
done
wait_jobs() { for j in $(jobs -p); do [[ $j == "$srv_pid" ]] || wait "$j"; done; }
wait_jobs
n200=$(cat "$dir"/burst.[0-9]* | grep -c '^200$')
n429=$(cat "$dir"/burst.[0-9]* | grep -c '^429$')
check "burst: exactly 3 of 8 admitted (rpm 3)" test "$n200" -eq 3
check "burst: the other 5 get 429" test "$n429" -eq 5
ra_ok=1
for i in $(seq 1 8); do
  if grep -q '^429$' "$dir/burst.$i"; then
    ra=$(tr -d '\r' <"$dir/burst.$i.hdr" | awk -F': ' 'tolower($1)=="retry-after"{print $2}')
    [[ $ra =~ ^[0-9]+$ && $ra -ge 1 && $ra -le 20 ]] || ra_ok=0
  fi
done
check "429 answers carry Retry-After (1..20 s)" test $ra_ok -eq 1

# ---- 4. reload under load
load() { # load N: N requests in a row with the admin key; prints non-200 statuses
  for _ in $(seq 1 "$1"); do
    c=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$dir/ca.pem" -H "Authorization: Bearer $ADMIN" "$URL/v1/models")
    [[ $c == 200 ]] || echo "$c"
  done
}
for w in 1 2 3 4; do load 60 >"$dir/load.$w" & done
NEW=
for i in $(seq 1 10); do
  if [[ $i == 5 ]]; then NEW=$(add --name frank --role user); fi
  kill -HUP $srv_pid
  sleep 0.2
done
wait_jobs
bad=$(cat "$dir"/load.* | wc -l)
codes=$(cat "$dir"/load.* | sort | uniq -c | tr -s ' \n' ' ')
check "reload under load: no request failed ($bad non-200:${codes:- none})" test "$bad" -eq 0
[[ $bad -eq 0 ]] || tail -n 30 "$dir/server.log"
check "daemon still running after SIGHUPs" kill -0 $srv_pid
check "key added before a reload works" test "$(req /v1/models "$NEW")" = 200
"$BIN" keys revoke --file "$K" "$(id_of alice)" 2>/dev/null
kill -HUP $srv_pid; sleep 1
check "revoked key refused after reload" test "$(req /v1/models "$USER")" = 401
cp "$K" "$dir/keys.good"
printf '{"version":1,"keys":[{"id":' >"$K"; chmod 600 "$K"
kill -HUP $srv_pid; sleep 1
check "broken keys file: old keys keep working" test "$(req /v1/models "$ADMIN")" = 200
check "broken keys file: rejection logged" grep -q "reload rejected" "$dir/server.log"
check "broken keys file: daemon still running" kill -0 $srv_pid

# ---- 5. audit log and metrics
req /metrics "$ADMIN" >/dev/null
check "metrics: per-principal chargeback counters" grep -q '^dsinfer_principal_tokens_total{principal="ops",kind="prompt"}' "$dir/body"
check "metrics: every metric family declared once (Prometheus rejects duplicates)" \
  bash -c '[[ -z $(grep "^# TYPE " "$0/body" | sort | uniq -d) ]]' "$dir"
check "audit log exists" test -s "$dir/audit.log"
check "audit lines are JSON objects with the documented fields" python3 - "$dir/audit.log" <<'PY'
import json, sys
need = {"time","request_id","key_id","principal","role","remote_addr","route","model","status",
        "prompt_tokens","completion_tokens","latency_ms","denial"}
n = denials = 0
for line in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(line); n += 1
    assert need <= set(o), set(o) ^ need
    denials += o["denial"] is not None
assert n > 50 and denials > 20, (n, denials)
PY
leak=0
for k in "$ADMIN" "$USER" "$MON" "$OTHER" "$DIS" "$EXP" "$LIM" "$NEW"; do
  grep -q "${k#dsi-}" "$dir/audit.log" "$dir/server.log" && leak=1
done
check "no key appears in the audit log or the server log" test $leak -eq 0
check "no prompt text in the audit log" bash -c '! grep -q "\"hi\"" "$0/audit.log"' "$dir"

echo "$fails failed"
[[ $fails -eq 0 ]]
