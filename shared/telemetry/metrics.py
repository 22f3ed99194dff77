"""ServiceMetrics: one call per domain event, recorded twice — into OTel instruments (exported over OTLP
when configured) and into a per-object prometheus_client registry (served as text on ``/metrics``).

Keeping a private registry per Telemetry object lets tests create many in one process without
"duplicated timeseries" errors, and the mirror needs no extra dependency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import prometheus_client as prom
from opentelemetry.metrics import Meter

from shared.telemetry import names as n

log = logging.getLogger(__name__)


class _Dual:
    """One metric in both worlds; `labels` are passed as keyword attributes."""

    def __init__(self, spec: n.MetricSpec, meter: Meter, registry: prom.CollectorRegistry) -> None:
        self.spec = spec
        self._otel = _otel_instrument(spec, meter)
        self._prom = _prom_metric(spec, registry)

    def _child(self, labels: dict[str, str]) -> Any:
        return self._prom.labels(**labels) if self.spec.labels else self._prom

    def add(self, value: float = 1.0, **labels: str) -> None:
        self._otel.add(value, labels or None)
        self._child(labels).inc(value)

    def record(self, value: float, **labels: str) -> None:
        self._otel.record(value, labels or None)
        self._child(labels).observe(value)

    def set(self, value: float, **labels: str) -> None:
        self._otel.set(value, labels or None)
        self._child(labels).set(value)


def _otel_instrument(spec: n.MetricSpec, meter: Meter) -> Any:
    if spec.kind is n.Kind.COUNTER:
        return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind is n.Kind.GAUGE:
        return meter.create_gauge(spec.name, unit=spec.unit, description=spec.description)
    return meter.create_histogram(spec.name, unit=spec.unit, description=spec.description,
                                  explicit_bucket_boundaries_advisory=list(spec.buckets))


def _prom_metric(spec: n.MetricSpec, registry: prom.CollectorRegistry) -> Any:
    common: dict[str, Any] = {"labelnames": spec.labels, "registry": registry}
    if spec.kind is n.Kind.COUNTER:
        return prom.Counter(spec.name, spec.description, **common)
    if spec.kind is n.Kind.GAUGE:
        return prom.Gauge(spec.name, spec.description, **common)
    return prom.Histogram(spec.name, spec.description, buckets=spec.buckets, **common)


class ServiceMetrics:
    """Domain-level recording API used by every service (see names.py for what each metric means)."""

    def __init__(self, meter: Meter, registry: prom.CollectorRegistry) -> None:
        self._m = {spec.name: _Dual(spec, meter, registry) for spec in n.ALL_METRICS}
        self._warned: set[str] = set()

    def _get(self, spec: n.MetricSpec) -> _Dual:
        return self._m[spec.name]

    # --- gateway / scheduler -------------------------------------------------------------------
    def request_finished(self, outcome: str, slo_met: bool | None = None,
                         latency_s: float | None = None, queue_s: float | None = None) -> None:
        """One finished request; `slo_met` None means it carried no SLO (not counted in attainment).

        An outcome outside names.OUTCOMES is a caller bug, but metrics must never break a request path:
        it is logged once and still counted under its own label, where the dashboard shows it.
        """
        if outcome not in n.OUTCOMES and outcome not in self._warned:
            self._warned.add(outcome)
            log.warning("request_finished: unknown outcome %r (expected one of %s)", outcome, n.OUTCOMES)
        self._get(n.REQUESTS).add(1, outcome=outcome)
        if slo_met is not None:
            self._get(n.SLO).add(1, met=str(bool(slo_met)).lower())
        if latency_s is not None:
            self._get(n.REQUEST_LATENCY).record(latency_s, outcome=outcome)
        if queue_s is not None:
            self._get(n.QUEUE_TIME).record(queue_s)

    def request_admitted(self, count: int = 1) -> None:
        self._get(n.REQUESTS_ADMITTED).add(count)

    def queue_depth(self, depth: int) -> None:
        self._get(n.QUEUE_DEPTH).set(depth)

    # --- worker ----------------------------------------------------------------------------------
    def step(self, latency_s: float, tokens_executed: int, num_refresh: int = 0, num_reuse: int = 0,
             committed_tokens: int | Sequence[int] = 0, thresholds: Sequence[float] = (),
             caps: Sequence[float] = ()) -> None:
        """One batched denoising step.

        `num_refresh`/`num_reuse`: requests in the batch that ran a refresh / reuse step.
        `committed_tokens`: per-request counts (preferred: one entry per request, like `thresholds`)
        or the batch total (then recorded as one observation). `thresholds`/`caps`: per request.
        """
        self._get(n.STEP_LATENCY).record(latency_s)
        self._get(n.STEP_TOKENS).record(tokens_executed)
        if num_refresh:
            self._get(n.STEPS).add(num_refresh, kind="refresh")
        if num_reuse:
            self._get(n.STEPS).add(num_reuse, kind="reuse")
        per_request = [committed_tokens] if isinstance(committed_tokens, int) else list(committed_tokens)
        for c in per_request:
            self._get(n.COMMITTED_PER_STEP).record(c)
        total = sum(per_request)
        if total:
            self._get(n.COMMITTED_TOKENS).add(total)
        for tau in thresholds:
            self._get(n.THRESHOLD_CHOSEN).record(tau)
        for cap in caps:
            self._get(n.THRESHOLD_CAP).record(cap)

    # --- planner ---------------------------------------------------------------------------------
    def instances(self, config: str, count: int) -> None:
        self._get(n.INSTANCES).set(count, config=config)

    def planner_solve(self, solve_s: float, changed: bool, objectives: dict[str, float] | None = None) -> None:
        self._get(n.PLANNER_SOLVE).record(solve_s)
        self._get(n.PLANS).add(1)
        if changed:
            self._get(n.PLAN_CHANGES).add(1)
        for name, value in (objectives or {}).items():
            self._get(n.PLANNER_OBJECTIVE).set(value, objective=name)
