"""Every metric and span name DiLaServe emits, with units, help text and buckets: the only place they live.

Metric names are the Prometheus *base* names. Counters are exposed with a ``_total`` suffix by both
paths (prometheus_client for ``GET /metrics``; the collector's Prometheus exporter for OTLP), histograms
as ``_bucket``/``_sum``/``_count``. Units use OTel curly-brace annotations (``{request}``) for plain
counts because the collector drops those, whereas unit ``1`` would make it append ``_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    name: str                       # Prometheus base name (counters: without `_total`)
    kind: Kind
    unit: str                       # OTel unit
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only

    def exposed_names(self) -> tuple[str, ...]:
        """Series names as they appear in Prometheus."""
        if self.kind is Kind.COUNTER:
            return (f"{self.name}_total",)
        if self.kind is Kind.HISTOGRAM:
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.name,)


LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0)
QUEUE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
THRESHOLD_BUCKETS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
TOKENS_PER_STEP_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
STEP_TOKENS_BUCKETS = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
SOLVE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

# "rejected": refused by the gateway (429 rate limit, 503 in-flight bound or submission failure);
# "deadline_unmeetable": refused or shed by the scheduler because its deadline cannot be met (HTTP 503).
OUTCOME_DEADLINE_UNMEETABLE = "deadline_unmeetable"
OUTCOMES = ("completed", "rejected", "cancelled", "failed", "expired", OUTCOME_DEADLINE_UNMEETABLE)
STEP_KINDS = ("refresh", "reuse")

REQUESTS = MetricSpec("dilaserve_requests", Kind.COUNTER, "{request}",
                      "Finished requests by outcome", ("outcome",))
REQUESTS_ADMITTED = MetricSpec("dilaserve_requests_admitted", Kind.COUNTER, "{request}",
                               "Requests admitted by the scheduler")
SLO = MetricSpec("dilaserve_slo", Kind.COUNTER, "{request}",
                 "Finished requests that carried an SLO, by whether it was met", ("met",))
REQUEST_LATENCY = MetricSpec("dilaserve_request_latency_seconds", Kind.HISTOGRAM, "s",
                             "End-to-end request latency", ("outcome",), LATENCY_BUCKETS_S)
QUEUE_TIME = MetricSpec("dilaserve_queue_time_seconds", Kind.HISTOGRAM, "s",
                        "Time from arrival to first placement on a worker", (), QUEUE_BUCKETS_S)
QUEUE_DEPTH = MetricSpec("dilaserve_queue_depth", Kind.GAUGE, "{request}",
                         "Requests waiting for placement")
THRESHOLD_CHOSEN = MetricSpec("dilaserve_threshold_chosen", Kind.HISTOGRAM, "{threshold}",
                              "Confidence threshold tau chosen per request per step", (), THRESHOLD_BUCKETS)
THRESHOLD_CAP = MetricSpec("dilaserve_threshold_cap", Kind.HISTOGRAM, "{threshold}",
                           "Threshold cap in force per request per step", (), THRESHOLD_BUCKETS)
COMMITTED_PER_STEP = MetricSpec("dilaserve_committed_tokens_per_step", Kind.HISTOGRAM, "{token}",
                                "Tokens committed per request per step", (), TOKENS_PER_STEP_BUCKETS)
COMMITTED_TOKENS = MetricSpec("dilaserve_committed_tokens", Kind.COUNTER, "{token}",
                              "Tokens committed (throughput numerator)")
STEPS = MetricSpec("dilaserve_steps", Kind.COUNTER, "{step}",
                   "Per-request denoising steps by cache step type", ("kind",))
STEP_LATENCY = MetricSpec("dilaserve_step_latency_seconds", Kind.HISTOGRAM, "s",
                          "Wall time of one batched denoising step", (), STEP_BUCKETS_S)
STEP_TOKENS = MetricSpec("dilaserve_step_tokens", Kind.HISTOGRAM, "{token}",
                         "Tokens executed (forward-pass positions) in one batched step", (), STEP_TOKENS_BUCKETS)
INSTANCES = MetricSpec("dilaserve_instances", Kind.GAUGE, "{instance}",
                       "Model instances per parallel configuration", ("config",))
PLANNER_SOLVE = MetricSpec("dilaserve_planner_solve_seconds", Kind.HISTOGRAM, "s",
                           "Reconfiguration MILP solve time", (), SOLVE_BUCKETS_S)
PLANS = MetricSpec("dilaserve_plans", Kind.COUNTER, "{plan}", "Plans computed by the planner")
PLANNER_OBJECTIVE = MetricSpec("dilaserve_planner_objective", Kind.GAUGE, "{value}",
                               "Objective values of the last solved plan (docs/planner.md)", ("objective",))
PLAN_CHANGES = MetricSpec("dilaserve_plan_changes", Kind.COUNTER, "{plan}",
                          "Plans that changed the deployment")

ALL_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS, REQUESTS_ADMITTED, SLO, REQUEST_LATENCY, QUEUE_TIME, QUEUE_DEPTH,
    THRESHOLD_CHOSEN, THRESHOLD_CAP, COMMITTED_PER_STEP, COMMITTED_TOKENS, STEPS,
    STEP_LATENCY, STEP_TOKENS, INSTANCES, PLANNER_SOLVE, PLANS, PLAN_CHANGES, PLANNER_OBJECTIVE,
)


def exposed_metric_names() -> frozenset[str]:
    """Every series name Prometheus may hold for DiLaServe metrics (used by tests and dashboards)."""
    return frozenset(n for spec in ALL_METRICS for n in spec.exposed_names())


# Span names: `<service>.<operation>`; HTTP server spans are named by the FastAPI instrumentation
# ("POST /v1/completions"). The request path is: HTTP span -> gateway.<kind> -> scheduler.place
# -> worker.assign (context carried in NATS headers at each hop).
SPAN_GATEWAY_COMPLETION = "gateway.completion"
SPAN_GATEWAY_CHAT = "gateway.chat"
SPAN_GATEWAY_SUBMIT = "gateway.submit"
SPAN_GATEWAY_RELAY = "gateway.relay"
SPAN_SCHEDULER_ADMIT = "scheduler.admit"
SPAN_SCHEDULER_PLACE = "scheduler.place"
SPAN_SCHEDULER_MIGRATE = "scheduler.migrate"
SPAN_WORKER_ASSIGN = "worker.assign"
SPAN_WORKER_REQUEST = "worker.request"
SPAN_WORKER_BLOCK = "worker.block"
SPAN_PLANNER_SOLVE = "planner.solve"
SPAN_SUPERVISOR_APPLY = "supervisor.apply_plan"

# Span attribute keys.
ATTR_REQUEST_ID = "dilaserve.request.id"
ATTR_INSTANCE_ID = "dilaserve.instance.id"
ATTR_CONFIG = "dilaserve.config"
ATTR_SLO_MS = "dilaserve.slo_ms"
ATTR_PRIORITY = "dilaserve.priority"
ATTR_OUTCOME = "dilaserve.outcome"
ATTR_THRESHOLD = "dilaserve.threshold"
ATTR_THRESHOLD_CAP = "dilaserve.threshold_cap"
ATTR_PROMPT_TOKENS = "dilaserve.prompt_tokens"
ATTR_OUTPUT_TOKENS = "dilaserve.output_tokens"
ATTR_BLOCK_INDEX = "dilaserve.block.index"
