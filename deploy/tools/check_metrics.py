#!/usr/bin/env python3
"""Checks that the dashboard and the Prometheus rules query only the metrics of deploy/METRICS.md.

    python3 deploy/tools/check_metrics.py [DASHBOARD.json ...] [RULES.yml ...]

Without arguments it checks deploy/grafana/dashboards/*.json, helm/embedfleet/dashboards/*.json and
deploy/prometheus/rules/*.yml. For every PromQL expression (panel targets, template-variable
queries, alert and recording rules) it fails when:
  - a name starting with embedfleet_ is not in METRICS.md (a histogram's _bucket/_sum/_count
    series count as its name, and only for histograms);
  - a selector `name{label=...}` uses a label the metric does not declare (job, instance, and le
    on _bucket series, are always allowed);
  - a `by (...)` / `without (...)` clause names a label that none of the expression's metrics
    declares;
  - a counter is read without rate()/increase()/irate() or a bare sum, or a gauge or histogram
    through rate() (catches a counter/gauge mix-up in either direction).
Also checks that the table in METRICS.md is well formed (types, _total suffix on counters).
Prometheus' own series (up) are allowed. Needs PyYAML only for rule files.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS_MD = ROOT / "deploy/METRICS.md"
ALWAYS_LABELS = {"job", "instance"}
BUILTIN_SERIES = {"up"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
ROW = re.compile(r"^\|\s*`(embedfleet_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|([^|]*)\|\s*$")
NAME = re.compile(r"\bembedfleet_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"\s*,?")
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
RANGE_FUNC = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def load_contract() -> dict[str, dict]:
    metrics: dict[str, dict] = {}
    problems = []
    for line in METRICS_MD.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            if line.startswith("| `embedfleet_"):
                problems.append(f"METRICS.md: row not in the form | `name` | type | labels | meaning |: {line}")
            continue
        name, kind, labels, meaning = m.group(1), m.group(2), m.group(3), m.group(4).strip()
        if name in metrics:
            problems.append(f"METRICS.md: {name} listed twice")
        if kind not in {"counter", "gauge", "histogram", "summary"}:
            problems.append(f"METRICS.md: {name}: unknown type {kind!r}")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"METRICS.md: counter {name} must end in _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"METRICS.md: {name} ends in _total but is a {kind}")
        if not meaning:
            problems.append(f"METRICS.md: {name} has no meaning")
        metrics[name] = {"type": kind, "labels": set(re.findall(r"`([a-z_]+)`", labels))}
    if not metrics:
        problems.append("METRICS.md: no metric rows found")
    if problems:
        raise SystemExit("\n".join(problems))
    return metrics


def resolve(name: str, metrics: dict[str, dict]) -> tuple[str, str] | None:
    """(base name, series suffix) for a series name, or None when it is not in the contract."""
    if name in metrics:
        return name, ""
    for suffix in HIST_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and metrics.get(base, {}).get("type") in {"histogram", "summary"}:
            return base, suffix
    return None


def check_expr(expr: str, where: str, metrics: dict[str, dict]) -> list[str]:
    errors = []
    # Template variables and Grafana macros are not PromQL; blank them out before parsing.
    clean = re.sub(r"\$__\w+|\$\{?\w+\}?", "5m", expr)
    used: dict[str, tuple[str, str]] = {}
    for name in NAME.findall(clean):
        r = resolve(name, metrics)
        if r is None:
            errors.append(f"{where}: {name} is not in deploy/METRICS.md")
        else:
            used[name] = r
    for sel_name, body in SELECTOR.findall(clean):
        if sel_name in {"by", "without", "on", "ignoring", "group_left", "group_right"}:
            continue
        r = used.get(sel_name)
        if r is None:
            if not sel_name.startswith("embedfleet_") and sel_name not in BUILTIN_SERIES:
                errors.append(f"{where}: series {sel_name} is neither in METRICS.md nor built in")
            continue
        base, suffix = r
        allowed = metrics[base]["labels"] | ALWAYS_LABELS | ({"le"} if suffix == "_bucket" else set())
        pos, labels = 0, []
        while pos < len(body):
            m = MATCHER.match(body, pos)
            if not m:
                errors.append(f"{where}: cannot parse matchers {{{body}}}")
                break
            labels.append(m.group(1))
            pos = m.end()
        for label in labels:
            if label not in allowed:
                errors.append(f"{where}: {sel_name} has no label {label!r} (declared: "
                              f"{', '.join(sorted(metrics[base]['labels'])) or 'none'})")
    declared = set().union(*(metrics[b]["labels"] for b, _ in used.values())) if used else set()
    declared |= ALWAYS_LABELS
    if any(s == "_bucket" for _, s in used.values()):
        declared.add("le")
    for _, group in GROUPING.findall(clean):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in declared:
                errors.append(f"{where}: grouping label {label!r} is declared by none of "
                              f"{', '.join(sorted(used)) or 'its metrics'}")
    for func, name in RANGE_FUNC.findall(clean):
        r = used.get(name)
        if r is None:
            continue
        base, suffix = r
        kind = metrics[base]["type"]
        if kind == "gauge" and func in {"rate", "irate", "increase"}:
            errors.append(f"{where}: {func}() of gauge {name}")
        if kind in {"histogram", "summary"} and not suffix:
            errors.append(f"{where}: {func}() of histogram {name} without _bucket/_sum/_count")
    # A counter anywhere outside rate()/increase()/irate() is only fine in a bare sum (totals).
    inside = {n for _, n in RANGE_FUNC.findall(clean)}
    for name, (base, suffix) in used.items():
        if metrics[base]["type"] == "counter" and name not in inside:
            if not re.fullmatch(rf"\s*sum\s*\(\s*{re.escape(name)}\s*\)\s*", clean):
                errors.append(f"{where}: counter {name} used without rate()/increase()")
    return errors


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    data = json.loads(path.read_text())
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(data.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"{path.name}: panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for v in data.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            out.append((f"{path.name}: variable {v.get('name')!r}", m.group(1) if m else q))
    return out


def rule_exprs(path: Path) -> list[tuple[str, str]]:
    import yaml  # noqa: PLC0415 (only rule files need it)

    data = yaml.safe_load(path.read_text()) or {}
    out = []
    for g in data.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            out.append((f"{path.name}: rule {name!r}", r["expr"]))
            rec = r.get("record")
            if rec and rec.startswith("embedfleet_"):
                out.append((f"{path.name}: record {rec!r}", rec))
    return out


def main(argv: list[str]) -> int:
    metrics = load_contract()
    files = [Path(a) for a in argv] or [
        *sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")),
        *sorted((ROOT / "helm/embedfleet/dashboards").glob("*.json")),
        *sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")),
    ]
    errors, exprs = [], 0
    for f in files:
        items = dashboard_exprs(f) if f.suffix == ".json" else rule_exprs(f)
        if not items:
            errors.append(f"{f}: no queries found")
        for where, expr in items:
            exprs += 1
            errors.extend(check_expr(expr, where, metrics))
    for e in errors:
        print(f"check_metrics: {e}", file=sys.stderr)
    print(f"check_metrics: {exprs} queries in {len(files)} files against {len(metrics)} metrics: "
          f"{'FAILED' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
