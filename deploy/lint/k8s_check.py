#!/usr/bin/env python3
"""k8s_check.py: offline checks of deploy/k8s (kubectl --dry-run=client needs
an API server for discovery, so it cannot run in CI). Parses every YAML
document of the kustomization's resources and checks what the deployment
promises a security review:
  - each document has apiVersion, kind, metadata.name
  - the Deployment's pod runs as non-root without privilege escalation, drops
    all capabilities, has a read-only root file system, mounts the model
    volume read-only, requests and limits nvidia.com/gpu, probes
    /health/ready (readiness) and /health/live (liveness), has a preStop hook
    and a grace period longer than dsinfer's drain_timeout_s
  - every Secret, ConfigMap and PVC the pod mounts is named; a
    PodDisruptionBudget and an HPA select / target the Deployment, the HPA on
    the dsinfer_running_sequences Pods metric
Prints one line per finding and exits 1 when there is any (2: usage).

  deploy/lint/k8s_check.py deploy/k8s
"""
import json
import os
import sys

import yaml


def load(dirpath):
    kust = yaml.safe_load(open(os.path.join(dirpath, "kustomization.yaml")))
    docs = []
    for r in kust.get("resources", []):
        for d in yaml.safe_load_all(open(os.path.join(dirpath, r))):
            if d is not None:
                docs.append((r, d))
    return docs


def check(docs):
    bad = []
    by_kind = {}
    for f, d in docs:
        for k in ("apiVersion", "kind"):
            if k not in d:
                bad.append(f"{f}: a document without {k}")
        if not (d.get("metadata") or {}).get("name"):
            bad.append(f"{f}: {d.get('kind')} without metadata.name")
        by_kind.setdefault(d.get("kind"), []).append(d)
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        return bad + [f"want one Deployment, found {len(deps)}"]
    dep = deps[0]
    name = dep["metadata"]["name"]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("runAsUser", 0) == 0:
        bad.append("pod: runAsNonRoot with a non-zero runAsUser required")
    if pod.get("automountServiceAccountToken", True):
        bad.append("pod: automountServiceAccountToken must be false (dsinfer never calls the API server)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    cm_names = {d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])}
    for cm in by_kind.get("ConfigMap", []):
        for k, v in (cm.get("data") or {}).items():
            if k.endswith(".json"):
                try:
                    cfg = json.loads(v)
                except ValueError as e:
                    bad.append(f"ConfigMap {cm['metadata']['name']}: {k} is not JSON: {e}")
                    continue
                # SIGTERM comes after preStop (5 s); dsinfer then serves drain_grace_ms
                # more before its drain of up to drain_timeout_s
                need = cfg.get("drain_timeout_s", 30) + cfg.get("drain_grace_ms", 0) / 1000 + 5
                if grace <= need:
                    bad.append(f"pod: terminationGracePeriodSeconds {grace} must exceed preStop + "
                               f"drain_grace_ms + drain_timeout_s ({need:g} s)")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext", {})
        cn = c["name"]
        if sc.get("allowPrivilegeEscalation", True):
            bad.append(f"{cn}: allowPrivilegeEscalation must be false")
        if not sc.get("readOnlyRootFilesystem"):
            bad.append(f"{cn}: readOnlyRootFilesystem must be true")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            bad.append(f"{cn}: capabilities must drop ALL")
        if ":" not in c.get("image", "") or c["image"].endswith(":latest"):
            bad.append(f"{cn}: image must carry a pinned tag")
        for m in c.get("volumeMounts", []):
            v = vols.get(m["name"])
            if v is None:
                bad.append(f"{cn}: mounts undeclared volume {m['name']}")
            elif "secret" in v and not m.get("readOnly"):
                bad.append(f"{cn}: Secret volume {m['name']} must be mounted readOnly")
    main = [c for c in pod.get("containers", []) if c["name"] == name]
    if not main:
        return bad + [f"no container named {name}"]
    c = main[0]
    def probe_path(p):
        return ((c.get(p) or {}).get("httpGet") or {}).get("path")
    if probe_path("readinessProbe") != "/health/ready":
        bad.append("dsinfer: readinessProbe must GET /health/ready")
    if probe_path("livenessProbe") != "/health/live":
        bad.append("dsinfer: livenessProbe must GET /health/live")
    if not ((c.get("lifecycle") or {}).get("preStop")):
        bad.append("dsinfer: no preStop hook")
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        if not (res.get(k) or {}).get("nvidia.com/gpu"):
            bad.append(f"dsinfer: resources.{k} has no nvidia.com/gpu")
    model = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/models"]
    if not model or not model[0].get("readOnly"):
        bad.append("dsinfer: the model volume (/models) must be mounted readOnly")
    elif "persistentVolumeClaim" in vols.get(model[0]["name"], {}) and \
            not vols[model[0]["name"]]["persistentVolumeClaim"].get("readOnly"):
        bad.append("dsinfer: the model PVC must be readOnly")
    for v in vols.values():
        if "configMap" in v and v["configMap"]["name"] not in cm_names:
            bad.append(f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the kustomization")
        if "secret" in v and not v["secret"].get("secretName"):
            bad.append(f"volume {v['name']}: Secret without secretName")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not any((p["spec"].get("selector") or {}).get("matchLabels", {}).items() <= labels.items() for p in pdbs):
        bad.append("no PodDisruptionBudget selects the Deployment's pods")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    ok = False
    for h in hpas:
        ref = h["spec"].get("scaleTargetRef", {})
        mets = [m.get("pods", {}).get("metric", {}).get("name") for m in h["spec"].get("metrics", [])
                if m.get("type") == "Pods"]
        ok |= ref.get("kind") == "Deployment" and ref.get("name") == name and "dsinfer_running_sequences" in mets
    if not ok:
        bad.append("no HPA scales the Deployment on the dsinfer_running_sequences Pods metric")
    return bad


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("usage: k8s_check.py DIR (with kustomization.yaml)", file=sys.stderr)
        return 2
    bad = check(load(argv[1]))
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
