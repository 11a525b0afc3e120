#!/usr/bin/env python3
"""Checks deploy/docker-compose.yml (and the GPU override) beyond what the compose-spec schema says.

    python3 deploy/tools/check_compose.py           # check
    python3 deploy/tools/check_compose.py --write   # rewrite deploy/compose_env_vars.txt

- Interpolates ${VAR:-default} the way compose does (empty environment), then checks types the
  schema leaves open (replicas, ports).
- Each worker service runs a known ROLE from an image that holds it (the small image only has
  the generator and the coordinator), and sets only the EMBEDFLEET_* variables of that binary
  (deploy/tools/contract.py); the NATS URL and the store point at the compose services.
- Prometheus (deploy/prometheus/prometheus.yml) scrapes every worker service on its metrics port,
  and scrapes nothing that is not a service.
- Build targets exist in the Dockerfiles; bind-mounted paths exist; Grafana's home dashboard is a
  mounted file.
- deploy/compose_env_vars.txt lists exactly the EMBEDFLEET_* variables the compose files set.
Needs PyYAML.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "docker-compose.yml"
OVERRIDES = [DEPLOY / "docker-compose.gpu.yml"]
ENV_LIST = DEPLOY / "compose_env_vars.txt"
INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
IMAGE_ROLES = {"small": {"generator", "coordinator"}, "runtime": set(contract.ROLES) | {"cli"}}


def interpolate(value):
    if isinstance(value, str):
        # ${VAR:?message}: a value the user must give (a secret); it stands in as `required-VAR`.
        return INTERP.sub(lambda m: f"required-{m.group(1)}" if "?" in (m.group(2) or "") else (m.group(3) or ""), value).replace(
            "$$", "$"
        )
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", path.read_text()))


def env_vars(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for f in files:
        for name, svc in (yaml.safe_load(f.read_text()).get("services") or {}).items():
            env = svc.get("environment") or {}
            keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
            # The NATS server's own variables (the roles' passwords it checks) are not settings
            # of an embedfleet binary.
            if name == "nats":
                continue
            names |= {k for k in keys if k.startswith("EMBEDFLEET_")}
    return names


def main(argv: list[str]) -> int:
    files = [BASE, *OVERRIDES]
    used = env_vars(files)
    listing = "".join(f"{n}\n" for n in sorted(used))
    if "--write" in argv:
        ENV_LIST.write_text(listing)
        print(f"wrote {ENV_LIST.relative_to(ROOT)}")
        return 0

    errors: list[str] = []
    err = errors.append
    if not ENV_LIST.exists() or ENV_LIST.read_text() != listing:
        err(f"{ENV_LIST.relative_to(ROOT)} is stale: run deploy/tools/check_compose.py --write")

    base = interpolate(yaml.safe_load(BASE.read_text()))
    services = base["services"]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
                if name not in services:
                    err(f"prometheus job {job['job_name']} scrapes {name}, which is no compose service")

    for path in files:
        doc = interpolate(yaml.safe_load(path.read_text()))
        for name, svc in doc["services"].items():
            full = merge(services.get(name, {}), svc) if path != BASE else svc
            build = full.get("build")
            if isinstance(build, dict):
                dockerfile = (DEPLOY / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()
                if not dockerfile.exists():
                    err(f"{path.name}: {name}: no {dockerfile}")
                elif build.get("target") and build["target"] not in dockerfile_targets(dockerfile):
                    err(f"{path.name}: {name}: {dockerfile.name} has no target {build['target']}")
            replicas = (full.get("deploy") or {}).get("replicas")
            if replicas is not None and not str(replicas).isdigit():
                err(f"{path.name}: {name}: replicas {replicas!r} is not a number")
            for port in full.get("ports", []):
                # ADDRESS:HOST:CONTAINER, and the address said: a port published on every interface
                # is open to the network (the default must be 127.0.0.1).
                m = re.fullmatch(r"(?:(\d{1,3}(?:\.\d{1,3}){3}):)?\d+(:\d+)?(/(tcp|udp))?", str(port))
                if not m:
                    err(f"{path.name}: {name}: port {port!r} is not ADDRESS:HOST:CONTAINER")
                elif path == BASE and m.group(1) != "127.0.0.1":
                    err(f"{path.name}: {name}: port {port!r} is published on every interface; bind it to 127.0.0.1 by default")
            for vol in full.get("volumes", []):
                src = str(vol).split(":", 1)[0]
                if src.startswith((".", "/")) and not (DEPLOY / src).exists():
                    err(f"{path.name}: {name}: bind mount {src} does not exist")
            env = full.get("environment") or {}
            role = env.get("ROLE")
            if role is None:
                continue
            if role not in (*contract.ROLES, "cli"):
                err(f"{path.name}: {name}: unknown ROLE {role!r}")
                continue
            target = (build or {}).get("target") if isinstance(build, dict) else None
            if target in IMAGE_ROLES and role not in IMAGE_ROLES[target]:
                err(f"{path.name}: {name}: the {target} image has no {role}")
            for var in env:
                if var.startswith("EMBEDFLEET_") and var not in contract.allowed_env(role):
                    err(f"{path.name}: {name}: {var} is not a flag of the {role}")
                elif not var.startswith("EMBEDFLEET_") and var not in contract.OTHER_ENV:
                    err(f"{path.name}: {name}: unexpected variable {var}")
            if path == BASE:
                nats = env.get("EMBEDFLEET_NATS_URL", "")
                if not any(nats.startswith(f"nats://{s}:") for s in services):
                    err(f"{name}: EMBEDFLEET_NATS_URL {nats!r} is not a compose service")
                endpoint = env.get("EMBEDFLEET_S3_ENDPOINT", "")
                if not any(endpoint.startswith(f"http://{s}:") for s in services):
                    err(f"{name}: EMBEDFLEET_S3_ENDPOINT {endpoint!r} is not a compose service")
                if role != "cli":
                    port = int(env.get("EMBEDFLEET_METRICS_ADDR", "0.0.0.0:9090").rsplit(":", 1)[1])
                    if scraped.get(name) != port:
                        err(f"{name}: Prometheus does not scrape it on its metrics port {port}")
                    if "9090" not in [str(p) for p in full.get("expose", [])]:
                        err(f"{name}: metrics port not exposed")
                    if "/tmp" not in full.get("tmpfs", []) or not full.get("read_only"):
                        err(f"{name}: workers run read-only with a /tmp tmpfs")

    roles = {(s.get("environment") or {}).get("ROLE") for s in services.values()}
    for role in contract.ROLES:
        if role not in roles:
            err(f"no service runs the {role}")
    gen = services.get("generator", {})
    if int((gen.get("deploy") or {}).get("replicas", 1)) < 2:
        err("the fleet runs two generators")
    init = services.get("minio-init", {})
    if "mb" not in " ".join(map(str, init.get("command", []))) or "embedfleet" not in str(init):
        err("minio-init must create the bucket embedfleet")
    for name, svc in services.items():
        if "image" in svc and ":" not in svc["image"].split("/")[-1]:
            err(f"{name}: image {svc['image']} is not pinned by tag")
        if str(svc["image"]).endswith(":latest"):
            err(f"{name}: image {svc['image']} uses latest")
    grafana = services["grafana"]
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    for target, src in mounts.items():
        if home.startswith(target + "/") and not (DEPLOY / src / home[len(target) + 1:]).exists():
            err(f"grafana home dashboard {home} is not a mounted file")

    for e in errors:
        print(f"check_compose: {e}", file=sys.stderr)
    print(f"check_compose: {len(services)} services, {len(used)} EMBEDFLEET_* variables: "
          f"{'FAILED' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
