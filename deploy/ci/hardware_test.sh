#!/usr/bin/env bash
# hardware_test.sh: CI stage 2, hardware test. Runs `dsinfer doctor --json`
# and fails on thresholds: GPUs present, free memory, temperature, ECC, CUDA
# driver version, and any FAIL of doctor's gpu/driver checks (--strict: any
# FAIL at all). Arguments after `--` go to doctor (e.g. --config FILE).
#
#   deploy/ci/hardware_test.sh [--min-gpus N] [--min-free-gib G] [--max-temp-c T]
#                              [--require-ecc] [--min-driver MAJOR.MINOR] [--strict]
#                              [--report FILE] [-- DOCTOR_ARGS...]
# Defaults: --min-gpus 1, --max-temp-c 85. --min-gpus 0 runs on a CPU-only host.
# Exit 0 pass, 1 a threshold failed, 2 usage.
set -euo pipefail
# shellcheck source=deploy/ci/common.sh
source "$(dirname "$0")/common.sh"
min_gpus=1 min_free_gib=0 max_temp=85 ecc=0 min_driver=0.0 strict=0 report=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --min-gpus) min_gpus=$2; shift 2 ;;
    --min-free-gib) min_free_gib=$2; shift 2 ;;
    --max-temp-c) max_temp=$2; shift 2 ;;
    --require-ecc) ecc=1; shift ;;
    --min-driver) min_driver=$2; shift 2 ;;
    --strict) strict=1; shift ;;
    --report) report=$2; shift 2 ;;
    --) shift; break ;;
    *) usage_die "$0 [--min-gpus N] [--min-free-gib G] [--max-temp-c T] [--require-ecc] [--min-driver X.Y] [--strict] [--report FILE] [-- DOCTOR_ARGS...]" ;;
  esac
done
[[ $min_gpus =~ ^[0-9]+$ && $max_temp =~ ^[0-9]+$ && $min_free_gib =~ ^[0-9.]+$ && $min_driver =~ ^[0-9]+\.[0-9]+$ ]] ||
  usage_die "numeric thresholds expected"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
"$DSINFER" doctor --json "$@" >"$out"
set -e
[[ -n $report ]] && cp "$out" "$report"
python3 - "$out" "$min_gpus" "$min_free_gib" "$max_temp" "$ecc" "$min_driver" "$strict" <<'PY'
import json, sys
path, min_gpus, min_free_gib, max_temp, ecc, min_driver, strict = sys.argv[1:]
try:
    j = json.load(open(path))
except ValueError as e:
    sys.exit(f"FAIL: doctor --json did not print JSON: {e}")
bad = []
gpus = j.get("gpus", [])
if len(gpus) < int(min_gpus):
    bad.append(f"{len(gpus)} GPU(s) visible, at least {min_gpus} required")
for g in gpus:
    i = g["index"]
    if g["free_bytes"] < float(min_free_gib) * 2**30:
        bad.append(f"GPU {i}: {g['free_bytes'] / 2**30:.1f} GiB free < {min_free_gib} GiB")
    t = g.get("temperature_c")
    if t is not None and t > int(max_temp):
        bad.append(f"GPU {i}: {t} C > {max_temp} C")
    if int(ecc) and not g.get("ecc_enabled"):
        bad.append(f"GPU {i}: ECC is off")
if gpus:
    want = tuple(int(x) for x in min_driver.split("."))
    have = tuple(int(x) for x in j.get("cuda_driver", "0.0").split("."))
    if have < want:
        bad.append(f"CUDA driver {j.get('cuda_driver')} < {min_driver}")
for c in j.get("checks", []):
    if c["level"] == "fail" and (int(strict) or c["check"] in ("gpu", "driver")):
        bad.append(f"doctor {c['check']}: {c['message']}")
for b in bad:
    print("FAIL:", b, file=sys.stderr)
desc = ", ".join(f"GPU {g['index']} sm_{g['compute_capability']} {g['free_bytes'] / 2**30:.1f} GiB free "
                 f"{g.get('temperature_c')} C ecc={g.get('ecc_enabled')}" for g in gpus) or "no GPU"
print(("ok: " if not bad else "failed: ") + desc, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
