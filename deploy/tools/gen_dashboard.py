#!/usr/bin/env python3
"""Writes the embedfleet Grafana dashboard from the readable description below.

    python3 deploy/tools/gen_dashboard.py          # (re)write the JSON files
    python3 deploy/tools/gen_dashboard.py --check  # fail if a committed JSON differs (CI)

Outputs (identical): deploy/grafana/dashboards/embedfleet.json (provisioned by docker compose) and
helm/embedfleet/dashboards/embedfleet.json (shipped by the chart as a Grafana sidecar ConfigMap).
Queries use only the metric names in deploy/METRICS.md (deploy/tools/check_metrics.py checks it).
Standard library only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = [
    ROOT / "deploy/grafana/dashboards/embedfleet.json",
    ROOT / "helm/embedfleet/dashboards/embedfleet.json",
]
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False, "format": "table"})
    else:
        t.update({"instant": False, "range": True})
    return t


def targets(*pairs: tuple[str, str]) -> list[dict]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(title: str, desc: str, tgts: list[dict], unit: str = "short", stack: bool = False,
               min0: bool = True) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
              "spanNulls": False}
    if stack:
        custom.update({"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30})
    defaults: dict = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, desc: str, tgts: list[dict], unit: str = "short", decimals: int | None = None,
         thresholds: list[dict] | None = None) -> dict:
    defaults: dict = {
        "unit": unit,
        "thresholds": {"mode": "absolute",
                       "steps": thresholds or [{"color": "green", "value": None}]},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS, "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto",
                    "justifyMode": "auto", "orientation": "auto"},
    }


def dashboard() -> dict:
    lay = Layout()

    lay.row("Runs")
    lay.add(stat(
        "Runs in flight", "Runs not yet done, failed or cancelled, by state.",
        targets(('sum by (state) (embedfleet_coordinator_runs{state!~"done|failed|cancelled"})',
                 "{{state}}"))), 4, 8)
    lay.add(timeseries(
        "Runs by state", "Runs in each state of the coordinator's run state machine.",
        targets(("sum by (state) (embedfleet_coordinator_runs)", "{{state}}")), stack=True), 10, 8)
    lay.add(stat(
        "Workers ready", "Ready workers per stage (embedfleet_worker_up = 1, same as /readyz).",
        targets(("sum by (stage) (embedfleet_worker_up)", "{{stage}}")),
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]), 6, 8)
    lay.add(stat(
        "Targets down", "Worker endpoints Prometheus cannot scrape (crashed or unreachable).",
        targets(('count(up{job=~"embedfleet-.+"} == 0) or vector(0)', "down")),
        thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 4, 8)

    lay.row("Question generation")
    lay.add(timeseries(
        "Chunks per second", "Chunks recorded done by the coordinator, and chunks processed by the "
        "generators by outcome.",
        targets((f"sum(rate(embedfleet_coordinator_chunks_done_total[{RATE}]))", "done (coordinator)"),
                (f"sum by (outcome) (rate(embedfleet_generator_chunks_total[{RATE}]))",
                 "generators: {{outcome}}")), unit="ops"), 8, 8)
    lay.add(timeseries(
        "Questions per second", "Questions kept after parsing, filtering and deduplication.",
        targets((f"sum(rate(embedfleet_generator_questions_total[{RATE}]))", "questions")),
        unit="ops"), 8, 8)
    lay.add(timeseries(
        "LLM requests per second", "Chat-completion requests by outcome.",
        targets((f"sum by (outcome) (rate(embedfleet_generator_llm_requests_total[{RATE}]))",
                 "{{outcome}}")), unit="reqps", stack=True), 8, 8)
    lay.add(timeseries(
        "LLM 429 responses", "Rate-limited responses per second, and their share of all requests.",
        targets((f"sum(rate(embedfleet_generator_llm_rate_limited_total[{RATE}]))", "429/s"),
                (f"sum(rate(embedfleet_generator_llm_rate_limited_total[{RATE}])) / "
                 f"sum(rate(embedfleet_generator_llm_requests_total[{RATE}]))", "share of requests")),
        unit="short"), 8, 8)
    lay.add(timeseries(
        "LLM tokens per second", "Tokens billed, by kind (prompt or completion).",
        targets((f"sum by (kind) (rate(embedfleet_generator_llm_tokens_total[{RATE}]))", "{{kind}}")),
        stack=True), 8, 8)
    lay.add(timeseries(
        "Rate-limiter wait", "Time requests waited in the fleet-wide rate limiter before sending.",
        targets(*[(f"histogram_quantile({q}, sum by (le) "
                   f"(rate(embedfleet_generator_ratelimit_wait_seconds_bucket[{RATE}])))", f"p{p}")
                  for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))]), unit="s"), 8, 8)
    lay.add(stat(
        "LLM cost in range", "Estimated LLM spend over the dashboard's time range.",
        targets(("sum(increase(embedfleet_generator_llm_cost_usd_total[$__range]))", "USD")),
        unit="currencyUSD", decimals=2), 6, 6)
    lay.add(stat(
        "LLM cost total", "Estimated LLM spend since the generators started (resets with them).",
        targets(("sum(embedfleet_generator_llm_cost_usd_total)", "USD")),
        unit="currencyUSD", decimals=2), 6, 6)
    lay.add(timeseries(
        "LLM cost per hour", "Spend rate, extrapolated to an hour.",
        targets((f"sum(rate(embedfleet_generator_llm_cost_usd_total[{RATE}])) * 3600", "USD/h")),
        unit="currencyUSD"), 12, 6)

    lay.row("Training")
    lay.add(timeseries(
        "Training loss", "MultipleNegativesRankingLoss of the latest step, per trainer.",
        targets(("embedfleet_trainer_loss", "{{instance}}")), unit="short", min0=False), 8, 8)
    lay.add(timeseries(
        "Steps per second", "Optimizer steps per second as the trainer reports it, and as "
        "Prometheus measures it from the step counter.",
        targets(("embedfleet_trainer_steps_per_second", "reported {{instance}}"),
                (f"sum(rate(embedfleet_trainer_steps_total[{RATE}]))", "measured (all trainers)"))),
        8, 8)
    lay.add(timeseries(
        "Learning rate", "Learning rate of the latest step (warmup and schedule).",
        targets(("embedfleet_trainer_learning_rate", "{{instance}}"))), 8, 8)

    lay.row("Evaluation")
    ndcg = {
        "type": "bargauge", "title": "NDCG@10 per checkpoint",
        "description": "NDCG@10 on the validation set for each evaluated checkpoint ('base' is the "
                       "base model). Pick runs with the run variable.",
        "datasource": DS,
        "targets": [target('max by (run, checkpoint) (embedfleet_evaluator_ndcg_at_10{run=~"$run"})',
                           "{{run}} {{checkpoint}}", instant=True)],
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1, "decimals": 4,
                                     "thresholds": {"mode": "absolute",
                                                    "steps": [{"color": "blue", "value": None}]}},
                        "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }
    lay.add(ndcg, 12, 10)
    lay.add(timeseries(
        "NDCG@10 over time", "NDCG@10 as checkpoints are evaluated.",
        targets(('max by (run, checkpoint) (embedfleet_evaluator_ndcg_at_10{run=~"$run"})',
                 "{{run}} {{checkpoint}}")), unit="percentunit"), 12, 10)

    lay.row("Queues")
    lay.add(timeseries(
        "Consumer pending", "Messages waiting in each stage's JetStream consumer (the largest value "
        "any worker of the stage reports).",
        targets(("max by (stage) (embedfleet_worker_consumer_pending)", "{{stage}}"))), 8, 8)
    lay.add(timeseries(
        "Redeliveries per second", "Messages received again after a nak, a crash or an ack timeout.",
        targets((f"sum by (stage) (rate(embedfleet_worker_consumer_redelivered_total[{RATE}]))",
                 "{{stage}}")), unit="ops"), 8, 8)
    lay.add(timeseries(
        "Messages per second", "Work messages handled, by stage and outcome.",
        targets((f"sum by (stage, outcome) (rate(embedfleet_worker_messages_total[{RATE}]))",
                 "{{stage}} {{outcome}}")), unit="ops"), 8, 8)
    lay.add(stat(
        "Dead letters in range", "Messages moved to the dead-letter subject (their runs failed).",
        targets(('sum by (stage) (increase(embedfleet_worker_messages_total{outcome="dead_letter"}'
                 '[$__range]))', "{{stage}}")),
        thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 8, 8)
    lay.add(timeseries(
        "Processing time p95", "95th percentile of the time from receiving a message to its ack.",
        targets((f"histogram_quantile(0.95, sum by (stage, le) "
                 f"(rate(embedfleet_worker_processing_seconds_bucket[{RATE}])))", "{{stage}}")),
        unit="s"), 16, 8)

    lay.row("Health and storage")
    lay.add({
        "type": "state-timeline", "title": "Worker readiness",
        "description": "embedfleet_worker_up per worker: 1 ready, 0 not ready; gaps mean no scrape.",
        "datasource": DS,
        "targets": targets(("embedfleet_worker_up", "{{stage}} {{instance}}")),
        "fieldConfig": {"defaults": {
            "mappings": [{"type": "value", "options": {
                "0": {"text": "not ready", "color": "red", "index": 0},
                "1": {"text": "ready", "color": "green", "index": 1}}}],
            "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                         {"color": "green", "value": 1}]}},
            "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False}},
    }, 24, 8)
    lay.add(timeseries(
        "Scrape targets up", "Prometheus' own view: 1 when a worker's /metrics answers.",
        targets(('up{job=~"embedfleet-.+"}', "{{job}} {{instance}}"))), 8, 8)
    lay.add(timeseries(
        "Store throughput", "Bytes per second to and from the artifact store, by operation.",
        targets((f"sum by (op) (rate(embedfleet_store_bytes_total[{RATE}]))", "{{op}}")),
        unit="Bps"), 8, 8)
    lay.add(timeseries(
        "Store latency p95", "95th percentile latency of artifact-store operations.",
        targets((f"histogram_quantile(0.95, sum by (op, le) "
                 f"(rate(embedfleet_store_op_seconds_bucket[{RATE}])))", "{{op}}")), unit="s"), 8, 8)

    return {
        "uid": "embedfleet-overview",
        "title": "embedfleet",
        "description": "embedfleet fleet: runs, question generation and LLM usage, training, "
                       "evaluation, queues, worker health. Metric contract: deploy/METRICS.md.",
        "tags": ["embedfleet"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 41,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {"text": "Prometheus", "value": "embedfleet-prometheus"},
             "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "run", "label": "Run", "type": "query", "datasource": DS,
             "query": {"query": "label_values(embedfleet_evaluator_ndcg_at_10, run)",
                       "refId": "run"},
             "definition": "label_values(embedfleet_evaluator_ndcg_at_10, run)",
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []},
        ]},
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def sanity(d: dict) -> list[str]:
    """Layout and wiring mistakes Grafana would load silently."""
    errors = []
    ids = [p["id"] for p in d["panels"]]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    cells: dict[tuple[int, int], str] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > 24:
            errors.append(f"panel {p['title']!r} is wider than the grid")
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                if (x, y) in cells:
                    errors.append(f"panel {p['title']!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = p["title"]
        if p["type"] != "row":
            if p.get("datasource") != DS or any(t.get("datasource") != DS for t in p["targets"]):
                errors.append(f"panel {p['title']!r} does not use the datasource variable")
            if not p["targets"]:
                errors.append(f"panel {p['title']!r} has no query")
    provisioned = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    var = next(v for v in d["templating"]["list"] if v["name"] == "datasource")
    if f"uid: {var['current']['value']}" not in provisioned:
        errors.append("the datasource variable's default is not the provisioned data source's uid")
    return sorted(set(errors))


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        stale = [p for p in OUTPUTS if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"gen_dashboard: {p.relative_to(ROOT)} is not what deploy/tools/gen_dashboard.py "
                  "writes; run it and commit the result", file=sys.stderr)
        problems = sanity(dashboard())
        for e in problems:
            print(f"gen_dashboard: {e}", file=sys.stderr)
        panels = sum(p["type"] != "row" for p in dashboard()["panels"])
        print(f"gen_dashboard: {panels} panels, files current: {'no' if stale else 'yes'}, "
              f"layout: {'FAILED' if problems else 'ok'}")
        return 1 if stale or problems else 0
    for p in OUTPUTS:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
