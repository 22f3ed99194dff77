"""Builders for the per-Telemetry OTel providers. Exporters exist only when an endpoint is configured,
so an unconfigured service never opens a socket or starts an export thread."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from shared.telemetry.config import TelemetryConfig


def build_resource(cfg: TelemetryConfig) -> Resource:
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; the explicit keys below win.
    return Resource.create({
        "service.namespace": "dilaserve",
        "service.name": cfg.service,
        "service.instance.id": cfg.instance_id,
    })


def build_tracer_provider(cfg: TelemetryConfig, resource: Resource,
                          extra_processors: tuple[SpanProcessor, ...] = ()) -> TracerProvider:
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if cfg.traces_endpoint:
        exporter = OTLPSpanExporter(endpoint=cfg.traces_endpoint, timeout=cfg.export_timeout_s)
        provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=cfg.export_timeout_s * 1000))
    for proc in extra_processors:
        provider.add_span_processor(proc)
    return provider


def build_meter_provider(cfg: TelemetryConfig, resource: Resource,
                         extra_readers: tuple[MetricReader, ...] = ()) -> MeterProvider:
    readers: list[MetricReader] = list(extra_readers)
    if cfg.metrics_endpoint:
        exporter = OTLPMetricExporter(endpoint=cfg.metrics_endpoint, timeout=cfg.export_timeout_s)
        readers.append(PeriodicExportingMetricReader(
            exporter,
            export_interval_millis=cfg.metric_export_interval_s * 1000,
            export_timeout_millis=cfg.export_timeout_s * 1000,
        ))
    return MeterProvider(resource=resource, metric_readers=readers)
