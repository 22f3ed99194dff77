"""The Telemetry object each service holds: tracer, metrics, propagation, Prometheus text, shutdown.

Providers are per object and used directly (never installed as OTel globals by default), because
global providers can be set only once per process and tests build many Telemetry objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

import prometheus_client as prom
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from shared.telemetry import propagation
from shared.telemetry.config import TelemetryConfig
from shared.telemetry.metrics import ServiceMetrics
from shared.telemetry.providers import build_meter_provider, build_resource, build_tracer_provider

log = logging.getLogger(__name__)

# Health and scrape endpoints would otherwise dominate the trace store.
DEFAULT_EXCLUDED_URLS = "/metrics,/healthz,/readyz"


class Telemetry:
    def __init__(self, config: TelemetryConfig, tracer_provider: TracerProvider,
                 meter_provider: MeterProvider) -> None:
        self.config = config
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: trace.Tracer = tracer_provider.get_tracer(f"dilaserve.{config.service}")
        self.meter: otel_metrics.Meter = meter_provider.get_meter(f"dilaserve.{config.service}")
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.metrics = ServiceMetrics(self.meter, self.registry)
        self._http: tuple[Any, threading.Thread] | None = None
        self._closed = False

    # --- propagation -----------------------------------------------------------------------------
    def inject(self, carrier: MutableMapping[str, str] | None = None,
               context: Context | None = None) -> dict[str, str]:
        return propagation.inject(carrier, context)

    def extract(self, headers: Mapping[str, str] | None, context: Context | None = None) -> Context:
        return propagation.extract(headers, context)

    # --- Prometheus ------------------------------------------------------------------------------
    def prometheus_text(self) -> tuple[bytes, str]:
        """(body, content type) for a `GET /metrics` response."""
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def serve_metrics(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve Prometheus text on its own port (for services without an HTTP app); returns the port."""
        if self._http is None:
            server, thread = prom.start_http_server(port, addr=host, registry=self.registry)
            self._http = (server, thread)
        return int(self._http[0].server_port)

    # --- HTTP ------------------------------------------------------------------------------------
    def instrument_fastapi(self, app: Any, excluded_urls: str = DEFAULT_EXCLUDED_URLS) -> Any:
        """Server spans for every request (W3C context taken from incoming headers).

        Per-message ASGI send/receive spans are off: an SSE stream would otherwise emit one per chunk.
        """
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # heavy: import on use

        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.tracer_provider,
                                           meter_provider=self.meter_provider, excluded_urls=excluded_urls,
                                           exclude_spans=["receive", "send"])
        return app

    # --- lifecycle -------------------------------------------------------------------------------
    def force_flush(self, timeout_s: float | None = None) -> None:
        ms = int((timeout_s if timeout_s is not None else self.config.export_timeout_s) * 1000)
        self.tracer_provider.force_flush(ms)
        self.meter_provider.force_flush(ms)

    def shutdown(self) -> None:
        """Flush and stop exporters and the metrics port. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()
            self._http = None
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception:  # noqa: BLE001 - telemetry must never take a service down
                log.warning("telemetry shutdown failed for %s", type(provider).__name__, exc_info=True)


def setup_telemetry(service: str, env: Mapping[str, str] | None = None, *,
                    config: TelemetryConfig | None = None,
                    span_processors: tuple[SpanProcessor, ...] = (),
                    metric_readers: tuple[MetricReader, ...] = (),
                    set_global: bool = False) -> Telemetry:
    """Build telemetry for `service` from OTEL_*/DILASERVE_* in `env` (default os.environ).

    With no OTLP endpoint nothing is exported and nothing blocks. `span_processors`/`metric_readers`
    are for tests (in-memory capture). `set_global=True` also installs the providers as OTel globals
    (first call in the process wins) so third-party instrumentation picks them up.
    """
    cfg = config or TelemetryConfig.from_env(service, env)
    resource = build_resource(cfg)
    tel = Telemetry(cfg, build_tracer_provider(cfg, resource, span_processors),
                    build_meter_provider(cfg, resource, metric_readers))
    if set_global:
        _set_globals_once(tel)
    if cfg.metrics_port is not None:
        try:
            tel.serve_metrics(cfg.metrics_port, cfg.metrics_host)
        except OSError:  # e.g. several local processes sharing one env: keep serving, just unscraped
            log.warning("cannot serve metrics on %s:%s", cfg.metrics_host, cfg.metrics_port, exc_info=True)
    log.info("telemetry for %s: traces=%s metrics=%s ratio=%.3g", service,
             cfg.traces_endpoint or "off", cfg.metrics_endpoint or "off", cfg.sample_ratio)
    return tel


_GLOBALS_SET = False
_GLOBALS_LOCK = threading.Lock()


def _set_globals_once(tel: Telemetry) -> None:
    global _GLOBALS_SET
    with _GLOBALS_LOCK:
        if _GLOBALS_SET:
            return
        trace.set_tracer_provider(tel.tracer_provider)
        otel_metrics.set_meter_provider(tel.meter_provider)
        _GLOBALS_SET = True
