#!/usr/bin/env bash
# smoke.sh [cpu|cuda]: builds a container image and runs it as
# docs/operating.md section 16 says: non-root, read-only root file system, a
# tmpfs for /var/lib/dsinfer, the model mounted read-only at /models, all
# capabilities dropped. Checks that the process runs as uid 10001, cannot write
# its root file system, answers /health/ready 200, and exits 0 on `docker stop`
# (SIGTERM drain).
#   cpu (default): deploy/docker/Dockerfile.cpu, served on the CPU backend.
#   cuda: deploy/docker/Dockerfile.cuda (Debian's CUDA 11.8 packages). No GPU
#     is needed or used: it checks that the CUDA runtime and cuBLAS resolve in
#     the image (ldd) and no driver library is baked in, that --version and
#     doctor run, that `serve` with the image's config (backend cuda, no
#     fallback) refuses to start with the reason, and then serves with
#     --backend-fallback cpu. A GPU run of the image is not part of it.
# Run from the source root. The base image is DSI_DOCKER_BASE, else
# debian:12.11-slim if present or pullable, else dsinfer-base:bookworm-minbase
# (deploy/docker/bootstrap-base.sh) if present. Exit 0 pass, 1 fail, 2 usage,
# 77 skipped with the reason (no docker, no daemon, no base image).
set -u
variant=${1:-cpu}
case $variant in
  cpu) dockerfile=deploy/docker/Dockerfile.cpu ;;
  cuda) dockerfile=deploy/docker/Dockerfile.cuda ;;
  *) echo "usage: smoke.sh [cpu|cuda]" >&2; exit 2 ;;
esac
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
IMG=${DSI_DOCKER_IMAGE:-dsinfer:$variant-smoke}
name=dsinfer-smoke-$$
fails=0
check() { local what=$1; shift; if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi; }
cleanup() { docker rm -f "$name" >/dev/null 2>&1; rm -f "/tmp/$name".*; }
trap cleanup EXIT
# the hardening every run here gets, as operating.md section 16 runs it
harden=(--read-only --tmpfs "/var/lib/dsinfer:uid=10001,gid=10001,mode=0750"
  --cap-drop ALL --security-opt no-new-privileges --network host -v "$MODEL:/models:ro")

echo "base image: $base, $dockerfile"
# host network: the build's apt reaches the mirror the host reaches, whether or
# not the daemon runs a bridge
t0=$SECONDS
docker build -q --network host --build-arg BASE="$base" -f "$dockerfile" -t "$IMG" . >"/tmp/$name.build" 2>&1
rc=$?
check "the $variant image builds ($((SECONDS - t0)) s)" test "$rc" = 0
[[ $rc = 0 ]] || { tail -20 "/tmp/$name.build"; exit 1; }
echo "image size: $(docker image inspect -f '{{.Size}}' "$IMG") bytes"
check "the image runs as 10001, not root" test "$(docker image inspect -f '{{.Config.User}}' "$IMG")" = 10001:10001

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve_args=(--config /etc/dsinfer/dsinfer.json --listen "127.0.0.1:$port")
if [[ $variant = cuda ]]; then
  # runs the binary with the entrypoint replaced: dsi ARGS..., output in /tmp/$name.out
  dsi() { timeout 120 docker run --rm "${harden[@]}" --entrypoint /usr/bin/dsinfer "$IMG" "$@" >"/tmp/$name.out" 2>&1; }
  docker run --rm --entrypoint /usr/bin/ldd "$IMG" /usr/bin/dsinfer >"/tmp/$name.ldd" 2>&1
  for lib in libcudart.so.11.0 libcublas.so.11 libcublasLt.so.11; do
    check "ldd resolves $lib in the image" grep -Eq "^\s*$lib => /\S+" "/tmp/$name.ldd"
  done
  check "ldd finds every library" bash -c "! grep -q 'not found' /tmp/$name.ldd"
  check "no driver library (libcuda) is baked into the image" \
    bash -c "! docker run --rm --entrypoint /bin/sh $IMG -c 'ls /usr/lib/*/libcuda.so* /usr/lib/libcuda.so*' >/dev/null 2>&1"
  dsi --version; rc=$?
  check "dsinfer --version runs (rc $rc: $(head -c 60 "/tmp/$name.out"))" \
    bash -c "[[ $rc = 0 ]] && grep -q '^dsinfer [0-9]' /tmp/$name.out"
  dsi doctor --config /etc/dsinfer/dsinfer.json; rc=$?
  sed 's/^/    doctor: /' "/tmp/$name.out"
  check "doctor finds the CUDA runtime and fails the gpu check: no GPU (rc $rc)" \
    bash -c "[[ $rc = 1 ]] && grep -q '^FAIL gpu: no CUDA device' /tmp/$name.out"
  dsi serve "${serve_args[@]}"; rc=$?
  sed 's/^/    serve --backend cuda: /' "/tmp/$name.out" | tail -3
  check "serve on backend cuda refuses to start without a GPU (rc $rc), saying why" \
    bash -c "[[ $rc != 0 && $rc != 124 ]] && grep -q 'backend cuda is not available' /tmp/$name.out"
  serve_args+=(--backend-fallback cpu)
fi

docker run -d --name "$name" "${harden[@]}" "$IMG" "${serve_args[@]}" >/dev/null
code=000
for _ in $(seq 1 300); do
  code=$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/health/ready")
  [[ $code = 200 ]] && break
  [[ $(docker inspect -f '{{.State.Running}}' "$name") = true ]] || break
  sleep 0.2
done
check "/health/ready answers 200 from the container" test "$code" = 200
[[ $variant = cpu ]] ||
  check "the cuda image falls back to the CPU backend, saying so" \
    bash -c "docker logs $name 2>&1 | grep -q 'backend_fallback: serving on the CPU backend'"
check "dsinfer runs as uid 10001" test "$(docker exec "$name" id -u)" = 10001
check "no capabilities are left" bash -c "docker exec $name grep -q '^CapEff:\s*0*$' /proc/1/status"
check "the root file system is read-only" bash -c "! docker exec $name sh -c 'echo x > /etc/x' 2>/dev/null"
check "the model mount is read-only" bash -c "! docker exec $name sh -c 'echo x > /models/x' 2>/dev/null"
check "the state dir is writable (tmpfs)" docker exec "$name" test -f /var/lib/dsinfer/tls-cert.pem
docker stop -t 40 "$name" >/dev/null
check "docker stop drains and exits 0" test "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0
[[ $fails -eq 0 ]] || docker logs "$name" 2>&1 | tail -20
if [[ $fails -ne 0 ]]; then echo "$fails failed"; exit 1; fi
echo "all passed"
