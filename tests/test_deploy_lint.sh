#!/usr/bin/env bash
# test_deploy_lint.sh: lints what deploy/ ships, and proves each linter can fail.
#   Dockerfile, deploy/docker/Dockerfile.cpu and .cuda: deploy/lint/dockerfile_lint.py
#     passes them; bad Dockerfiles (root user, shell-form CMD, :latest, apt
#     without cleanup, curl | sh, a secret in ENV, single stage) fail with their
#     rule ids
#   deploy/k8s: deploy/lint/k8s_check.py passes it; copies with a writable
#     model mount, no GPU request, a wrong probe path fail
#   yamllint (deploy/ YAML) and shellcheck (deploy/ shell scripts), both from
#     Debian (scripts/deps.sh); the container config loads in `dsinfer doctor`
#   keepalived -t on deploy/keepalived; crm_verify on deploy/pacemaker (both
#     from Debian via scripts/deps.sh: missing is a failure, not a skip)
# kubectl --dry-run=client needs an API server for discovery, so it is not run.
# Exit 0 pass, 1 fail, 77 skipped (python3 or PyYAML missing).
set -u
BIN=${DSI_BIN:-build/dsinfer}
command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null || { echo "skip: python3-yaml missing"; exit 77; }
dir=$(mktemp -d /tmp/dsi_deploy_lint.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fails=0
expect() { # expect DESCRIPTION WANT_RC PATTERN COMMAND...: rc and (if PATTERN) output
  local what=$1 want=$2 pat=$3; shift 3
  "$@" >"$dir/out" 2>&1; local rc=$?
  if [[ $rc -eq $want ]] && { [[ -z $pat ]] || grep -Eq -- "$pat" "$dir/out"; }; then echo "ok   $what"
  else echo "FAIL $what: rc $rc (want $want), pattern /$pat/"; sed 's/^/    /' "$dir/out"; fails=$((fails + 1)); fi
}
L=deploy/lint
expect "Dockerfile passes" 0 "" $L/dockerfile_lint.py Dockerfile
expect "deploy/docker/Dockerfile.cpu passes" 0 "" $L/dockerfile_lint.py deploy/docker/Dockerfile.cpu
expect "deploy/docker/Dockerfile.cuda passes" 0 "" $L/dockerfile_lint.py deploy/docker/Dockerfile.cuda
bad() { printf '%s\n' "$@" >"$dir/Dockerfile.bad"; }
bad "FROM debian:12 AS b" "RUN true" "FROM debian:12" "CMD dsinfer serve"
expect "no USER and shell-form CMD fail" 1 "DL3002.*DL3025|DL3025.*DL3002" bash -o pipefail -c "$L/dockerfile_lint.py $dir/Dockerfile.bad | tr '\n' ' '"
bad "FROM debian:latest AS b" "FROM debian" "USER 0" 'ENTRYPOINT ["x"]'
expect ":latest, no tag and USER 0 fail" 1 "DL3007.*DL3006.*DL3002" bash -o pipefail -c "$L/dockerfile_lint.py $dir/Dockerfile.bad | tr '\n' ' '"
bad "FROM debian:12 AS b" "RUN apt-get update && apt-get install -y curl" "RUN curl -fsSL https://x.example/i.sh | sh" \
    "ENV API_KEY=abc" "FROM debian:12" "USER 10001" 'CMD ["x"]'
expect "apt without cleanup, curl | sh, secret ENV fail" 1 "DL3015.*DL3009.*DSI001.*DL4006.*DSI002" \
    bash -o pipefail -c "$L/dockerfile_lint.py $dir/Dockerfile.bad | tr '\n' ' '"
bad "FROM debian:12" "USER 10001" 'CMD ["x"]'
expect "a single stage fails" 1 "DSI004" $L/dockerfile_lint.py "$dir/Dockerfile.bad"

expect "deploy/k8s passes" 0 "" $L/k8s_check.py deploy/k8s
mutate() { # mutate NAME SED_EXPR: a copy of deploy/k8s with deployment.yaml edited
  rm -rf "$dir/$1"; cp -r deploy/k8s "$dir/$1"; sed -i "$2" "$dir/$1/deployment.yaml"
}
mutate rw '/claimName: dsinfer-model/{n;d}'
expect "a writable model PVC fails" 1 "model PVC must be readOnly" $L/k8s_check.py "$dir/rw"
mutate nogpu '/nvidia.com\/gpu: 1/d'
expect "no GPU request fails" 1 "no nvidia.com/gpu" $L/k8s_check.py "$dir/nogpu"
mutate probe 's|path: /health/ready|path: /health/live|'
expect "readiness on /health/live fails" 1 "readinessProbe must GET /health/ready" $L/k8s_check.py "$dir/probe"
mutate root 's/runAsNonRoot: true/runAsNonRoot: false/'
expect "a root pod fails" 1 "runAsNonRoot" $L/k8s_check.py "$dir/root"
mutate grace 's/^//'
sed -i 's/"drain_timeout_s": 30/"drain_timeout_s": 30, "drain_grace_ms": 30000/' "$dir/grace/configmap.yaml"
expect "a grace period shorter than grace + drain fails" 1 "terminationGracePeriodSeconds 60 must exceed" \
  $L/k8s_check.py "$dir/grace"

if command -v yamllint >/dev/null; then
  expect "yamllint deploy/" 0 "" yamllint -s -c $L/yamllint.yaml deploy/
  printf 'a: 1\na: 2\n' >"$dir/dup.yaml"
  expect "yamllint catches a duplicate key" 1 "duplicate" yamllint -c $L/yamllint.yaml "$dir/dup.yaml"
else
  echo "FAIL yamllint not installed (scripts/deps.sh installs it)"; fails=$((fails + 1))
fi
if command -v shellcheck >/dev/null; then
  expect "shellcheck deploy/ scripts" 0 "" bash -c 'shellcheck -x -S warning $(find deploy -name "*.sh" | sort)'
else
  echo "FAIL shellcheck not installed (scripts/deps.sh installs it)"; fails=$((fails + 1))
fi
if command -v keepalived >/dev/null; then
  # as installed, but with the scripts where this checkout has them and root
  # as script user (the keepalived_script user need not exist here)
  sed -e 's/script_user keepalived_script/script_user root/' -e "s|/etc/keepalived/|$PWD/deploy/keepalived/|g" \
      deploy/keepalived/keepalived.conf >"$dir/ka.conf"
  expect "keepalived -t accepts deploy/keepalived/keepalived.conf" 0 "" keepalived -t -f "$dir/ka.conf"
  sed 's/advert_int 0.5/advert_int x/' "$dir/ka.conf" >"$dir/ka2.conf"
  expect "keepalived -t catches a bad value" 5 "" keepalived -t -f "$dir/ka2.conf"
else
  echo "FAIL keepalived not installed (scripts/deps.sh installs it)"; fails=$((fails + 1))
fi
if command -v crm_verify >/dev/null; then
  expect "crm_verify: the Pacemaker CIB is clean" 0 "" crm_verify -V --xml-file deploy/pacemaker/dsinfer-cib.xml
  sed 's/with-rsc="dsinfer"/with-rsc="nosuch"/' deploy/pacemaker/dsinfer-cib.xml >"$dir/cib.xml"
  expect "crm_verify catches a dangling colocation" 78 "unknown ID" crm_verify --xml-file "$dir/cib.xml"
else
  echo "FAIL crm_verify not installed (scripts/deps.sh installs pacemaker-cli-utils)"; fails=$((fails + 1))
fi
if [[ -x $BIN ]]; then
  expect "container config loads" 0 "^OK   config: deploy/docker/dsinfer.json is valid" \
      bash -c "'$BIN' doctor --config deploy/docker/dsinfer.json --model models/demo --state-dir '$dir' || true"
  expect "CPU container config loads" 0 "^OK   config: deploy/docker/dsinfer-cpu.json is valid" \
      bash -c "'$BIN' doctor --config deploy/docker/dsinfer-cpu.json --model models/demo --state-dir '$dir' || true"
fi
[[ $fails -eq 0 ]] && echo "all passed" || { echo "$fails failed"; exit 1; }
