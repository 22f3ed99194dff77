"""Telemetry configuration, read explicitly from an environment mapping (never at import time).

Standard OTel variables are honoured where they exist; DiLaServe-specific knobs use ``DILASERVE_*``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class TelemetryConfig:
    service: str
    instance_id: str
    traces_endpoint: str | None = None    # full URL of the OTLP/HTTP traces endpoint, or None: no export
    metrics_endpoint: str | None = None   # full URL of the OTLP/HTTP metrics endpoint, or None: no export
    sample_ratio: float = 1.0
    metric_export_interval_s: float = 10.0
    export_timeout_s: float = 5.0
    metrics_port: int | None = None       # serve Prometheus text on this port (services without HTTP)
    metrics_host: str = "0.0.0.0"

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> "TelemetryConfig":
        env = os.environ if env is None else env
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
        port = env.get("DILASERVE_METRICS_PORT", "").strip()
        return cls(
            service=service,
            instance_id=env.get("DILASERVE_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}",
            traces_endpoint=None if disabled else _endpoint(env, "TRACES", "v1/traces"),
            metrics_endpoint=None if disabled else _endpoint(env, "METRICS", "v1/metrics"),
            sample_ratio=_sample_ratio(env),
            metric_export_interval_s=float(env.get("OTEL_METRIC_EXPORT_INTERVAL", "10000")) / 1000.0,
            export_timeout_s=float(env.get("DILASERVE_OTLP_TIMEOUT_S", "5")),
            metrics_port=int(port) if port else None,
            metrics_host=env.get("DILASERVE_METRICS_HOST", "0.0.0.0"),
        )


def _endpoint(env: Mapping[str, str], signal: str, path: str) -> str | None:
    """Signal-specific endpoint wins and is used verbatim; the base endpoint gets `/v1/<signal>` appended."""
    if env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/{path}" if base else None


def _sample_ratio(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("always_on", "parentbased_always_on"):
        return 1.0
    ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    return min(1.0, max(0.0, ratio))
