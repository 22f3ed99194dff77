"""Generate dashboards/dilaserve.json (run: python deploy/grafana/build_dashboard.py).

Panels are declared as data so the PromQL stays readable; tests check the committed JSON matches
this output and that every query names a metric from shared/telemetry/names.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "dilaserve-prometheus"}
SEL = 'pipeline="$pipeline"'   # otlp (via collector) or scrape (direct); never both at once
RI = "$__rate_interval"
OUT = Path(__file__).parent / "dashboards" / "dilaserve.json"


def q(expr: str, legend: str) -> dict:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, extra: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[dict]:
    sel = f"{SEL}{extra}"
    return [q(f"histogram_quantile({x}, sum by (le) (rate({metric}_bucket{{{sel}}}[{RI}])))", f"p{int(x * 100)}")
            for x in qs]


def mean(metric: str, legend: str) -> dict:
    return q(f"sum(rate({metric}_sum{{{SEL}}}[{RI}])) / sum(rate({metric}_count{{{SEL}}}[{RI}]))", legend)


# (title, unit, targets, description)
PANELS: list[tuple[str, str, list[dict], str]] = [
    ("SLO attainment", "percentunit",
     [q(f'sum(rate(dilaserve_slo_total{{{SEL},met="true"}}[{RI}])) / sum(rate(dilaserve_slo_total{{{SEL}}}[{RI}]))',
        "attainment")],
     "Share of finished requests with an SLO that met it"),
    ("Requests by outcome", "reqps",
     [q(f"sum by (outcome) (rate(dilaserve_requests_total{{{SEL}}}[{RI}]))", "{{outcome}}"),
      q(f"sum(rate(dilaserve_requests_admitted_total{{{SEL}}}[{RI}]))", "admitted")],
     "Finished requests per second; goodput is completed with SLO met"),
    ("End-to-end latency (completed)", "s",
     quantiles("dilaserve_request_latency_seconds", ',outcome="completed"'), "Percentiles of request latency"),
    ("Queue time", "s", quantiles("dilaserve_queue_time_seconds"), "Arrival to first placement"),
    ("Queue depth", "short",
     [q(f"sum(dilaserve_queue_depth{{{SEL}}})", "waiting")], "Requests waiting for placement"),
    ("Threshold τ chosen vs cap", "short",
     [mean("dilaserve_threshold_chosen", "τ chosen (mean)"), mean("dilaserve_threshold_cap", "cap (mean)"),
      *quantiles("dilaserve_threshold_chosen", qs=(0.1,))],
     "Per request per step; τ below the cap means the slack controller relaxed it"),
    ("Committed tokens per step", "short",
     [mean("dilaserve_committed_tokens_per_step", "per request per step (mean)")],
     "Compare with τ 0.9 → 3.0 … 0.5 → 6.6 (LLaDA, dual cache)"),
    ("Token throughput", "short",
     [q(f"sum(rate(dilaserve_committed_tokens_total{{{SEL}}}[{RI}]))", "committed tokens/s")],
     "Committed tokens per second, all workers"),
    ("Refresh / reuse step mix", "short",
     [q(f"sum by (kind) (rate(dilaserve_steps_total{{{SEL}}}[{RI}]))", "{{kind}}")],
     "Per-request denoising steps per second by cache step type"),
    ("Step latency", "s", quantiles("dilaserve_step_latency_seconds"), "Wall time of one batched step"),
    ("Tokens executed per step", "short",
     [mean("dilaserve_step_tokens", "mean"), *quantiles("dilaserve_step_tokens", qs=(0.99,))],
     "Forward-pass positions per batched step (the cost model's x axis)"),
    ("Instances per configuration", "short",
     [q(f"sum by (config) (dilaserve_instances{{{SEL}}})", "{{config}}")], "Model instances by parallel config"),
    ("Planner solve time", "s",
     [*quantiles("dilaserve_planner_solve_seconds", qs=(0.5, 0.99)),
      q(f"sum(increase(dilaserve_plan_changes_total{{{SEL}}}[5m]))", "plan changes / 5m")],
     "MILP solve time and how often the plan changed"),
]


def panel(i: int, title: str, unit: str, targets: list[dict], description: str) -> dict:
    refs = [dict(t, refId=chr(ord("A") + k), datasource=DS) for k, t in enumerate(targets)]
    return {
        "id": i + 1, "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": refs,
    }


def dashboard() -> dict:
    pipeline_var = {
        "name": "pipeline", "label": "pipeline", "type": "custom", "query": "otlp,scrape",
        "current": {"text": "otlp", "value": "otlp"},
        "options": [{"text": v, "value": v, "selected": v == "otlp"} for v in ("otlp", "scrape")],
    }
    return {
        "uid": "dilaserve-overview", "title": "DiLaServe", "tags": ["dilaserve"], "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [pipeline_var]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUT}\n")
