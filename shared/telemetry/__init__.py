"""DiLaServe telemetry: OpenTelemetry traces and metrics, Prometheus text, W3C context over NATS headers.

    from shared.telemetry import setup_telemetry
    tel = setup_telemetry("gateway")
    with tel.tracer.start_as_current_span("gateway.submit"):
        headers = tel.inject({})          # -> NATS message headers
    ctx = tel.extract(msg.headers)        # on the receiving side
    tel.metrics.request_finished(outcome="completed", slo_met=True, latency_s=1.2, queue_s=0.01)
    body, ctype = tel.prometheus_text()   # GET /metrics
    tel.shutdown()
"""

from shared.telemetry.config import TelemetryConfig
from shared.telemetry.core import Telemetry, setup_telemetry
from shared.telemetry.metrics import ServiceMetrics

__all__ = ["ServiceMetrics", "Telemetry", "TelemetryConfig", "setup_telemetry"]
