#!/usr/bin/env python3
"""Writes (or checks) deploy/worker_env.json: the exact environment each worker container gets from
the compose file and from the Helm chart's default render, so the Rust test
`deploy_workers_start` can start each binary with it and show that it becomes ready.

    python3 deploy/tools/worker_env.py           # check that deploy/worker_env.json is current
    python3 deploy/tools/worker_env.py --write   # rewrite it

Compose values are interpolated as compose does with an empty environment. From the chart: literal
`env` values and the ConfigMap behind `envFrom`; Secret-backed variables are left out, as an
install without credentials would leave them unset.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract  # noqa: E402
from check_compose import BASE, interpolate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "deploy/worker_env.json"


def compose_env() -> dict[str, dict[str, str]]:
    services = interpolate(yaml.safe_load(BASE.read_text()))["services"]
    out: dict[str, dict[str, str]] = {}
    for svc in services.values():
        env = svc.get("environment") or {}
        role = env.get("ROLE")
        if role in contract.ROLES:
            out[role] = {k: str(v) for k, v in sorted(env.items())}
    return out


def chart_env() -> dict[str, dict[str, str]]:
    from check_chart import render

    docs = [d for ds in render(None).values() for d in ds]
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    out: dict[str, dict[str, str]] = {}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        for ctr in d["spec"]["template"]["spec"]["containers"]:
            env: dict[str, str] = {}
            for src in ctr.get("envFrom", []):
                ref = src.get("configMapRef")
                if ref:
                    env.update({k: str(v) for k, v in configmaps.get(ref["name"], {}).items()})
            for e in ctr.get("env", []):
                if "value" in e:
                    env[e["name"]] = str(e["value"])
            role = env.get("ROLE")
            if role in contract.ROLES:
                out[role] = dict(sorted(env.items()))
    return out


def main(argv: list[str]) -> int:
    text = json.dumps({"compose": compose_env(), "chart": chart_env()}, indent=2, sort_keys=True) + "\n"
    if "--write" in argv:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if not OUT.exists() or OUT.read_text() != text:
        print(f"{OUT.relative_to(ROOT)} is stale: run deploy/tools/worker_env.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
