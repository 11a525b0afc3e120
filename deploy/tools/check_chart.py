#!/usr/bin/env python3
"""Lints and renders helm/embedfleet with the real Helm engine, validates every manifest against the
Kubernetes schemas, and checks what the chart promises.

    python check_chart.py [--kube-versions 1.37.0,1.30.0] [--out DIR]

Helm: the PyPI package helm-python-sdk (Helm's Go SDK v4 in a shared library, called via ctypes);
schemas: the PyPI package kubernetes-validate (strict: unknown fields are errors). Renders three
value sets: the defaults, values-gpu.yaml, and ci/all-on-values.yaml (every option on). Then:
  - `helm lint` finds no error and no warning but the known one (the optional nats dependency is
    not downloaded here);
  - every built-in kind validates against each Kubernetes version; the ServiceMonitor (a CRD) gets
    a structural check;
  - workers: probes on /healthz and /readyz, non-root, read-only root, no privilege escalation,
    /tmp an emptyDir, the right image flavour, only their own EMBEDFLEET_* variables
    (deploy/tools/contract.py), Services select them, the HPA scales the generator;
  - the GPU values give the trainer and the evaluator nvidia.com/gpu, the node selector, the
    tolerations and EMBEDFLEET_DEVICE=cuda; the defaults request no GPU;
  - values that cannot work (cuda on the cpu image, a trainer on the small image) fail to render.
"""
from __future__ import annotations

import argparse
import re
import copy
import json
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/embedfleet"
RELEASE, NAMESPACE = "embedfleet", "fleet"
VALUE_SETS = {
    "default": None,
    "gpu": CHART / "values-gpu.yaml",
    "all-on": CHART / "ci/all-on-values.yaml",
}
KNOWN_LINT_WARNINGS = ("chart directory is missing these dependencies: nats",)


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.errors.append(msg)


def render(values: dict | None) -> dict[str, list[dict]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: dict[str, list[dict]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs[path] = [d for d in yaml.safe_load_all(text) if d]
    return docs


def cargo_version() -> str:
    """The workspace's version: the tag of the images scripts/images.sh builds."""
    text = (CHART.parent.parent / "Cargo.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def check_workers(c: Checker, name: str, objs: list[dict], values: dict) -> None:
    by_kind: dict[str, list[dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                   for d in by_kind.get("Deployment", [])}
    c.check(set(deployments) == set(contract.ROLES),
            f"{name}: Deployments {sorted(deployments)} are not one per role")
    configmaps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    settings = configmaps.get(RELEASE, {}).get("data", {})
    for key in settings:
        c.check(key in contract.COMMON_ENV, f"{name}: ConfigMap key {key} is not a common worker flag")
    secret_name = values.get("secrets", {}).get("existingSecret") or RELEASE
    c.check(bool(values.get("secrets", {}).get("existingSecret")) != bool(by_kind.get("Secret")),
            f"{name}: a Secret is rendered exactly when no existingSecret is given")
    gpu_values = yaml.safe_load((CHART / "values.yaml").read_text())
    if name == "gpu":
        gpu_values = merge(gpu_values, yaml.safe_load((CHART / "values-gpu.yaml").read_text()))
    elif name == "all-on":
        gpu_values = merge(gpu_values, yaml.safe_load((CHART / "ci/all-on-values.yaml").read_text()))

    for role, d in deployments.items():
        where = f"{name}: {role}"
        cfg = gpu_values[role]
        pod = d["spec"]["template"]["spec"]
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        c.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics",
                f"{where}: no Prometheus scrape annotations")
        c.check(pod["securityContext"].get("runAsNonRoot") is True, f"{where}: not runAsNonRoot")
        c.check(pod.get("automountServiceAccountToken") is False, f"{where}: mounts an API token")
        (ctr,) = pod["containers"]
        sc = ctr["securityContext"]
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem writable")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
        c.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities kept")
        probes = {p: ctr.get(p, {}).get("httpGet", {}) for p in ("livenessProbe", "readinessProbe", "startupProbe")}
        c.check(probes["livenessProbe"].get("path") == "/healthz", f"{where}: liveness is not /healthz")
        c.check(probes["readinessProbe"].get("path") == "/readyz", f"{where}: readiness is not /readyz")
        c.check(probes["startupProbe"].get("path") == "/healthz", f"{where}: no startup probe")
        ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
        c.check(all(p.get("port") == "metrics" for p in probes.values()) and "metrics" in ports,
                f"{where}: probes not on the metrics port")
        c.check(settings.get("EMBEDFLEET_METRICS_ADDR") == f"0.0.0.0:{ports.get('metrics')}",
                f"{where}: EMBEDFLEET_METRICS_ADDR does not match the container port")
        mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        c.check("emptyDir" in vols.get(mounts.get("/tmp", ""), {}), f"{where}: /tmp is not an emptyDir")
        image = ctr["image"]
        c.check(image.endswith(f"-{cfg['imageFlavor']}"), f"{where}: image {image} is not {cfg['imageFlavor']}")
        # The default values name exactly the images scripts/images.sh builds (and compose runs).
        if not values.get("image"):
            wanted = f"ghcr.io/embedfleet/embedfleet:{cargo_version()}-{cfg['imageFlavor']}"
            c.check(image == wanted, f"{where}: image {image} is not {wanted}, which scripts/images.sh builds")
        if role in ("trainer", "evaluator"):
            c.check(not image.endswith("-small"), f"{where}: the small image has no {role}")
        env = env_of(ctr)
        c.check(env.get("ROLE", {}).get("value") == role, f"{where}: ROLE is not {role}")
        for var in env:
            if var.startswith("EMBEDFLEET_"):
                c.check(var in contract.allowed_env(role), f"{where}: {var} is not a flag of the {role}")
            else:
                c.check(var in contract.OTHER_ENV or var in {e["name"] for e in values.get("extraEnv", [])},
                        f"{where}: unexpected variable {var}")
        for var, e in env.items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                c.check(ref["name"] == secret_name, f"{where}: {var} from Secret {ref['name']}, not {secret_name}")
        c.check(("OPENAI_API_KEY" in env) == (role == "generator"), f"{where}: only generators get the LLM key")
        if role in ("trainer", "evaluator"):
            c.check(env.get("EMBEDFLEET_DEVICE", {}).get("value") == cfg["device"], f"{where}: device")
        limits = ctr.get("resources", {}).get("limits", {})
        requests = ctr.get("resources", {}).get("requests", {})
        gpus = int(cfg.get("gpu", 0) or 0)
        if gpus:
            c.check(str(limits.get("nvidia.com/gpu")) == str(gpus) == str(requests.get("nvidia.com/gpu")),
                    f"{where}: nvidia.com/gpu requests/limits are not {gpus}")
            c.check(pod.get("nodeSelector") == cfg["nodeSelector"], f"{where}: nodeSelector not from values")
            c.check(pod.get("tolerations") == cfg["tolerations"], f"{where}: tolerations not from values")
            c.check(env.get("EMBEDFLEET_DEVICE", {}).get("value") == "cuda", f"{where}: GPU pod not on cuda")
            c.check(d["spec"].get("strategy", {}).get("type") == "Recreate",
                    f"{where}: a GPU Deployment must use the Recreate strategy")
        else:
            c.check("nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests,
                    f"{where}: requests a GPU it was not given")
        if values.get("bus", {}).get("credsSecret"):
            key = values["bus"].get("credsSecretKey", "nats.creds")
            c.check(settings.get("EMBEDFLEET_NATS_CREDS") == f"/etc/embedfleet/nats/{key}"
                    and mounts.get("/etc/embedfleet/nats") == "nats-creds",
                    f"{where}: the NATS creds file is not mounted where EMBEDFLEET_NATS_CREDS points")

    services = by_kind.get("Service", [])
    for s in services:
        sel = s["spec"]["selector"]
        hits = [r for r, d in deployments.items()
                if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        c.check(len(hits) == 1, f"{name}: Service {s['metadata']['name']} selects {hits}")
        c.check(s["spec"]["ports"][0]["targetPort"] == "metrics", f"{name}: Service port is not metrics")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    c.check(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["name"] == deployments["generator"]["metadata"]["name"],
            f"{name}: no HPA on the generator")
    c.check("replicas" not in deployments["generator"]["spec"],
            f"{name}: the generator Deployment sets replicas although the HPA owns them")
    sms = by_kind.get("ServiceMonitor", [])
    sm_on = bool(values.get("metrics", {}).get("serviceMonitor", {}).get("enabled"))
    c.check(bool(sms) == sm_on, f"{name}: ServiceMonitor rendered: {bool(sms)}, enabled: {sm_on}")
    for sm in sms:
        spec = sm["spec"]
        c.check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{name}: ServiceMonitor apiVersion")
        sel = spec["selector"]["matchLabels"]
        matched = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        c.check(len(matched) == 4, f"{name}: ServiceMonitor selects {len(matched)} Services, not 4")
        for s in matched:
            c.check(s["metadata"]["labels"].get(spec["jobLabel"], "").startswith("embedfleet-"),
                    f"{name}: Service {s['metadata']['name']} has no {spec['jobLabel']} label")
        for ep in spec["endpoints"]:
            c.check(ep["port"] in {p["name"] for s in matched for p in s["spec"]["ports"]},
                    f"{name}: ServiceMonitor port {ep['port']} is no Service port")
    dash = [m for m in configmaps.values() if "embedfleet.json" in m.get("data", {})]
    if values.get("grafanaDashboard", {}).get("enabled"):
        shipped = (ROOT / "deploy/grafana/dashboards/embedfleet.json").read_text().strip()
        c.check(len(dash) == 1 and json.loads(dash[0]["data"]["embedfleet.json"]) == json.loads(shipped),
                f"{name}: the dashboard ConfigMap is not deploy/grafana/dashboards/embedfleet.json")
    else:
        c.check(not dash, f"{name}: dashboard ConfigMap rendered although disabled")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-versions", default="1.37.0,1.30.0")
    ap.add_argument("--out", type=Path, help="write the rendered manifests here")
    args = ap.parse_args()
    versions = args.kube_versions.split(",")
    c = Checker()

    lint = helm.lint(str(CHART), strict=False)
    for m in lint["messages"]:
        if m["severity"] >= 2 and not m["error"].endswith(KNOWN_LINT_WARNINGS):
            c.errors.append(f"helm lint: {m['path']}: {m['error']}")
    c.errors.extend(f"helm lint: {e}" for e in lint["errors"])
    for vname, vfile in VALUE_SETS.items():
        if vfile:
            lint = helm.lint(str(CHART), yaml.safe_load(vfile.read_text()))
            for m in lint["messages"]:
                if m["severity"] >= 2 and not m["error"].endswith(KNOWN_LINT_WARNINGS):
                    c.errors.append(f"helm lint ({vname}): {m['path']}: {m['error']}")

    total = 0
    for vname, vfile in VALUE_SETS.items():
        values = yaml.safe_load(vfile.read_text()) if vfile else None
        docs = render(values)
        objs = [o for items in docs.values() for o in items]
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{vname}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
        for o in objs:
            where = f"{vname}: {o['kind']} {o['metadata']['name']}"
            if o["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no schema in kubernetes-validate; check_workers checks its shape
            for ver in versions:
                try:
                    kubernetes_validate.validate(o, ver, strict=True)
                except kubernetes_validate.ValidationError as e:
                    c.errors.append(f"{where}: Kubernetes {ver}: {e.message} at {'/'.join(map(str, e.path))}")
                except Exception as e:  # noqa: BLE001 (unknown kind or version: report, fail)
                    c.errors.append(f"{where}: Kubernetes {ver}: {type(e).__name__}: {e}")
        check_workers(c, vname, objs, values or {})
        kinds = sorted({o["kind"] for o in objs})
        print(f"check_chart: {vname}: {len(objs)} objects ({', '.join(kinds)}) "
              f"validated against Kubernetes {', '.join(versions)}")
        total += len(objs)

    # Values that cannot work must fail to render, with a message that says why.
    bad = {
        "trainer on cuda with the cpu image": {"trainer": {"device": "cuda"}},
        "trainer on the small image": {"trainer": {"imageFlavor": "small"}},
        "GPU without the gpu image": {"evaluator": {"gpu": 1}},
        "unknown log format": {"logFormat": "xml"},
        # values.schema.json
        "a misspelt top-level key": {"networkPolicies": {"enabled": False}},
        "a negative budget cap": {"coordinator": {"defaultMaxCostUsd": -1}},
        "a local folder as a model source": {"allowedModelSources": "hub,/models"},
        "seven stream replicas": {"bus": {"streams": {"replicas": 7}}},
    }
    for what, values in bad.items():
        try:
            render(values)
            c.errors.append(f"rendering with {what} should fail")
        except helm.HelmError as e:
            print(f"check_chart: rejected as it should: {what}: {str(e).splitlines()[-1][:120]}")

    for e in c.errors:
        print(f"check_chart: {e}", file=sys.stderr)
    print(f"check_chart: Helm {helm.helm_sdk_version()}, {total} manifests: {'FAILED' if c.errors else 'ok'}")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
