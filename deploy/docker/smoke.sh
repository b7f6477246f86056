#!/usr/bin/env bash
# smoke.sh: builds the CPU image (deploy/docker/Dockerfile.cpu) and runs it as
# docs/operating.md section 16 says: non-root, read-only root file system, a
# tmpfs for /var/lib/dsinfer, the model mounted read-only at /models. Checks
# that the process runs as uid 10001, cannot write its root file system,
# answers /health/ready 200, and exits 0 on `docker stop` (SIGTERM drain).
# Run from the source root. The base image is DSI_DOCKER_BASE, else
# debian:12.11-slim if present or pullable, else dsinfer-base:bookworm-minbase
# (deploy/docker/bootstrap-base.sh) if present. Exit 0 pass, 1 fail, 77
# skipped with the reason (no docker, no daemon, no base image).
set -u
skip() { echo "skip: $*"; exit 77; }
command -v docker >/dev/null || skip "no docker client"
docker info >/dev/null 2>&1 || skip "no docker daemon reachable ($(docker info 2>&1 | grep -m1 -i error))"
base=${DSI_DOCKER_BASE:-}
if [[ -z $base ]]; then
  for b in debian:12.11-slim dsinfer-base:bookworm-minbase; do
    docker image inspect "$b" >/dev/null 2>&1 && { base=$b; break; }
  done
fi
if [[ -z $base ]]; then
  if timeout 60 docker pull -q debian:12.11-slim >/dev/null 2>&1; then
    base=debian:12.11-slim
  else
    skip "no base image: debian:12.11-slim is not here and cannot be pulled; make one with deploy/docker/bootstrap-base.sh"
  fi
fi
MODEL=$PWD/tests/golden/models/tiny-chat
[[ -f $MODEL/config.json ]] || skip "no model at $MODEL"
IMG=${DSI_DOCKER_IMAGE:-dsinfer:cpu-smoke}
name=dsinfer-smoke-$$
fails=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi; }
cleanup() { docker rm -f "$name" >/dev/null 2>&1; }
trap cleanup EXIT

echo "base image: $base"
# host network: the build's apt reaches the mirror the host reaches, whether or
# not the daemon runs a bridge
docker build -q --network host --build-arg BASE="$base" -f deploy/docker/Dockerfile.cpu -t "$IMG" . >/tmp/$name.build 2>&1
rc=$?
check "the CPU image builds" test "$rc" = 0
[[ $rc = 0 ]] || { tail -20 /tmp/$name.build; rm -f /tmp/$name.build; exit 1; }
rm -f /tmp/$name.build
check "the image runs as 10001, not root" test "$(docker image inspect -f '{{.Config.User}}' "$IMG")" = 10001:10001

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
docker run -d --name "$name" --read-only --tmpfs /var/lib/dsinfer:uid=10001,gid=10001,mode=0750 \
  --cap-drop ALL --security-opt no-new-privileges --network host \
  -v "$MODEL:/models:ro" "$IMG" --config /etc/dsinfer/dsinfer.json --listen "127.0.0.1:$port" >/dev/null
code=000
for _ in $(seq 1 300); do
  code=$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/health/ready")
  [[ $code = 200 ]] && break
  [[ $(docker inspect -f '{{.State.Running}}' "$name") = true ]] || break
  sleep 0.2
done
check "/health/ready answers 200 from the container" test "$code" = 200
check "dsinfer runs as uid 10001" test "$(docker exec "$name" id -u)" = 10001
check "the root file system is read-only" bash -c "! docker exec $name sh -c 'echo x > /etc/x' 2>/dev/null"
check "the model mount is read-only" bash -c "! docker exec $name sh -c 'echo x > /models/x' 2>/dev/null"
check "the state dir is writable (tmpfs)" docker exec "$name" test -f /var/lib/dsinfer/tls-cert.pem
docker stop -t 40 "$name" >/dev/null
check "docker stop drains and exits 0" test "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0
[[ $fails -eq 0 ]] || docker logs "$name" 2>&1 | tail -20
if [[ $fails -ne 0 ]]; then echo "$fails failed"; exit 1; fi
echo "all passed"
