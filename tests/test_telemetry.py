"""shared.telemetry: OTLP/HTTP export to an in-test receiver, W3C propagation, Prometheus text."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest, ExportMetricsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import TelemetryConfig, setup_telemetry
from shared.telemetry import names as n


class OtlpReceiver:
    """Tiny OTLP/HTTP (protobuf) endpoint on a random loopback port that keeps every request."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                reply = receiver._record(self.path, body)
                self.send_response(200 if reply is not None else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply or b"")))
                self.end_headers()
                self.wfile.write(reply or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, path: str, body: bytes) -> bytes | None:
        with self._lock:
            if path == "/v1/traces":
                self.traces.append(ExportTraceServiceRequest.FromString(body))
                return ExportTraceServiceResponse().SerializeToString()
            if path == "/v1/metrics":
                self.metrics.append(ExportMetricsServiceRequest.FromString(body))
                return ExportMetricsServiceResponse().SerializeToString()
        return None

    def spans(self) -> list[tuple[str, object]]:
        """(service.name, span) for every received span."""
        out = []
        for req in self.traces:
            for rs in req.resource_spans:
                service = _attr(rs.resource.attributes, "service.name")
                out.extend((service, s) for ss in rs.scope_spans for s in ss.spans)
        return out

    def metric_names(self) -> set[str]:
        return {m.name for req in self.metrics for rm in req.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attr(attributes: object, key: str) -> str | None:
    for kv in attributes:  # type: ignore[attr-defined]
        if kv.key == key:
            return kv.value.string_value
    return None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    # Long interval: metrics leave only on force_flush/shutdown, so the test decides when.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            "DILASERVE_OTLP_TIMEOUT_S": "5", **extra}


def _record_everything(tel) -> None:
    m = tel.metrics
    m.request_admitted()
    m.queue_depth(4)
    m.request_finished(outcome="completed", slo_met=True, latency_s=1.2, queue_s=0.05)
    m.request_finished(outcome="expired", slo_met=False, latency_s=9.0)
    m.request_finished(outcome="rejected", slo_met=None)
    m.step(latency_s=0.03, tokens_executed=512, num_refresh=1, num_reuse=3,
           committed_tokens=[3, 4, 1, 6], thresholds=[0.9, 0.8, 0.7, 0.9], caps=[0.9, 0.8, 0.8, 0.9])
    m.instances(config="tp1-dual", count=2)
    m.planner_solve(solve_s=0.02, changed=True, objectives={"quality": 0.9, "unserved_frac": 0.0})


def test_spans_exported_over_otlp_http(receiver: OtlpReceiver) -> None:
    tel = setup_telemetry("gateway", env=_env(receiver.endpoint))
    with tel.tracer.start_as_current_span(n.SPAN_GATEWAY_SUBMIT) as parent:
        parent.set_attribute(n.ATTR_REQUEST_ID, "req-1")
        with tel.tracer.start_as_current_span("child"):
            pass
    tel.shutdown()  # flushes the batch processor
    spans = {s.name: (svc, s) for svc, s in receiver.spans()}
    assert set(spans) == {n.SPAN_GATEWAY_SUBMIT, "child"}
    svc, p = spans[n.SPAN_GATEWAY_SUBMIT]
    _, c = spans["child"]
    assert svc == "gateway"
    assert c.trace_id == p.trace_id and c.parent_span_id == p.span_id
    assert _attr(p.attributes, n.ATTR_REQUEST_ID) == "req-1"


def test_metrics_exported_over_otlp_http(receiver: OtlpReceiver) -> None:
    tel = setup_telemetry("worker", env=_env(receiver.endpoint))
    _record_everything(tel)
    tel.force_flush()
    tel.shutdown()
    got = receiver.metric_names()
    assert {spec.name for spec in n.ALL_METRICS} <= got, sorted(got)


def test_trace_context_round_trips_between_services(receiver: OtlpReceiver) -> None:
    gateway = setup_telemetry("gateway", env=_env(receiver.endpoint))
    scheduler = setup_telemetry("scheduler", env=_env(receiver.endpoint))
    with gateway.tracer.start_as_current_span(n.SPAN_GATEWAY_SUBMIT) as sent:
        headers = gateway.inject({})
    assert headers["traceparent"].startswith("00-")
    # Receiving side: headers as NATS delivers them (keys may arrive with other casing).
    ctx = scheduler.extract({"Traceparent": headers["traceparent"]})
    with scheduler.tracer.start_as_current_span(n.SPAN_SCHEDULER_ADMIT, context=ctx) as got:
        pass
    assert got.get_span_context().trace_id == sent.get_span_context().trace_id
    assert got.parent is not None and got.parent.span_id == sent.get_span_context().span_id
    gateway.shutdown()
    scheduler.shutdown()
    by_service = {svc: s for svc, s in receiver.spans()}
    assert set(by_service) == {"gateway", "scheduler"}
    assert by_service["gateway"].trace_id == by_service["scheduler"].trace_id


def test_extract_of_nothing_is_an_empty_context() -> None:
    tel = setup_telemetry("worker", env={})
    for headers in (None, {}, {"traceparent": "garbage"}):
        assert not trace.get_current_span(tel.extract(headers)).get_span_context().is_valid
    assert tel.inject({}) == {}  # no active span: nothing to propagate
    tel.shutdown()


def test_inject_updates_the_given_carrier() -> None:
    tel = setup_telemetry("worker", env={})
    carrier = {"x-request-id": "r1"}
    with tel.tracer.start_as_current_span("s"):
        out = tel.inject(carrier)
    assert "traceparent" in carrier and out == carrier
    tel.shutdown()


def _memory_telemetry(env: dict[str, str]):
    exporter = InMemorySpanExporter()
    return setup_telemetry("worker", env=env, span_processors=(SimpleSpanProcessor(exporter),)), exporter


def test_sampler_ratio_zero_drops_roots_but_follows_sampled_parent() -> None:
    tel, exporter = _memory_telemetry({"OTEL_TRACES_SAMPLER_ARG": "0"})
    with tel.tracer.start_as_current_span("root"):
        pass
    assert exporter.get_finished_spans() == ()
    parent = tel.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    with tel.tracer.start_as_current_span("follows", context=parent):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["follows"]
    tel.shutdown()


def test_prometheus_text_contains_every_metric() -> None:
    tel = setup_telemetry("gateway", env={})
    _record_everything(tel)
    body, content_type = tel.prometheus_text()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for spec in n.ALL_METRICS:
        for name in spec.exposed_names():
            assert name in text, name
    assert 'dilaserve_requests_total{outcome="expired"} 1.0' in text
    assert 'dilaserve_slo_total{met="false"} 1.0' in text
    assert 'dilaserve_steps_total{kind="reuse"} 3.0' in text
    assert 'dilaserve_instances{config="tp1-dual"} 2.0' in text
    assert "dilaserve_committed_tokens_total 14.0" in text
    tel.shutdown()


def test_many_setups_in_one_process_are_independent() -> None:
    a = setup_telemetry("gateway", env={})
    b = setup_telemetry("gateway", env={})
    a.metrics.request_admitted(5)
    assert b"dilaserve_requests_admitted_total 5.0" in a.prometheus_text()[0]
    assert b"dilaserve_requests_admitted_total 0.0" in b.prometheus_text()[0]
    a.shutdown()
    a.shutdown()  # idempotent
    b.shutdown()


def test_unknown_outcome_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tel = setup_telemetry("gateway", env={})
    tel.metrics.request_finished(outcome="done")
    tel.metrics.request_finished(outcome="done")
    assert [r.message for r in caplog.records].count(
        "request_finished: unknown outcome 'done' (expected one of %s)" % (n.OUTCOMES,)) == 1
    assert b'dilaserve_requests_total{outcome="done"} 2.0' in tel.prometheus_text()[0]
    tel.shutdown()


def test_busy_metrics_port_does_not_break_setup() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        tel = setup_telemetry("worker", env={"DILASERVE_METRICS_PORT": str(port), "DILASERVE_METRICS_HOST": "127.0.0.1"})
        tel.metrics.queue_depth(1)
        tel.shutdown()


def test_config_from_env() -> None:
    cfg = TelemetryConfig.from_env("planner", {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://other:4318/custom",
        "OTEL_TRACES_SAMPLER_ARG": "0.25", "DILASERVE_INSTANCE_ID": "p-1", "DILASERVE_METRICS_PORT": "9464"})
    assert cfg.traces_endpoint == "http://collector:4318/v1/traces"
    assert cfg.metrics_endpoint == "http://other:4318/custom"
    assert (cfg.sample_ratio, cfg.instance_id, cfg.metrics_port) == (0.25, "p-1", 9464)
    off = TelemetryConfig.from_env("planner", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                               "OTEL_SDK_DISABLED": "true"})
    assert off.traces_endpoint is None and off.metrics_endpoint is None
    assert TelemetryConfig.from_env("x", {"OTEL_TRACES_SAMPLER": "always_off"}).sample_ratio == 0.0
    assert TelemetryConfig.from_env("x", {}).traces_endpoint is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_absent_collector_neither_raises_nor_blocks() -> None:
    env = _env(f"http://127.0.0.1:{_closed_port()}", DILASERVE_OTLP_TIMEOUT_S="1")
    start = time.monotonic()
    tel = setup_telemetry("worker", env=env)
    with tel.tracer.start_as_current_span("s"):
        _record_everything(tel)
    assert time.monotonic() - start < 0.5  # recording never waits on the network
    tel.shutdown()
    assert time.monotonic() - start < 5.0  # flush gives up after the export timeout


def test_serve_metrics_on_own_port() -> None:
    tel = setup_telemetry("scheduler", env={})
    port = tel.serve_metrics(0, host="127.0.0.1")
    tel.metrics.queue_depth(7)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert b"dilaserve_queue_depth 7.0" in resp.read()
    tel.shutdown()


def test_instrument_fastapi_server_spans_continue_remote_trace() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    tel, exporter = _memory_telemetry({})
    app = FastAPI()

    @app.get("/v1/requests/{rid}")
    def get_request(rid: str) -> dict[str, str]:
        return {"id": rid}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {}

    tel.instrument_fastapi(app)
    client = TestClient(app)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert client.get("/v1/requests/a", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["GET /v1/requests/{rid}"]
    assert spans[0].kind is trace.SpanKind.SERVER
    assert format(spans[0].context.trace_id, "032x") == trace_id
    tel.shutdown()


def test_observability_doc_lists_every_metric() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text()
    for spec in n.ALL_METRICS:
        assert f"`{spec.exposed_names()[0].removesuffix('_bucket')}`" in doc, spec.name


def _services_in_trace(receiver: OtlpReceiver, trace_id: str) -> set[str]:
    return {svc for svc, s in receiver.spans() if s.trace_id.hex() == trace_id}


@pytest.mark.slow
def test_one_trace_spans_gateway_scheduler_and_worker(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """A request carrying our traceparent yields spans from every service in that same trace:
    the gateway continues the client's context (instrument_fastapi) and it crosses both NATS hops."""
    import httpx

    from tooling.local_cluster import LocalCluster, free_port

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "500",
           "OTEL_BSP_SCHEDULE_DELAY": "200"}  # export within ~0.2 s instead of relying on shutdown flushes
    cluster = LocalCluster(tmp_path / "run", num_workers=1, port=free_port(), extra_env=env)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        cluster.start(timeout_s=120, progress=False)
        resp = httpx.post(cluster.url + "/v1/completions", timeout=120,
                          headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                          json={"model": "dilaserve-tiny", "prompt": "1+1=", "max_tokens": 8})
        assert resp.status_code == 200, resp.text
        wanted_metrics = {n.REQUESTS.name, n.STEPS.name, n.STEP_LATENCY.name}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                {"gateway", "scheduler", "worker"} <= _services_in_trace(receiver, trace_id)
                and wanted_metrics <= receiver.metric_names()):  # metrics export every 0.5 s, spans sooner
            time.sleep(0.2)
    finally:
        cluster.stop()
    traces: dict[str, set[str]] = {}
    for svc, s in receiver.spans():
        traces.setdefault(s.trace_id.hex(), set()).add(f"{svc}:{s.name}")
    assert {"gateway", "scheduler", "worker"} <= _services_in_trace(receiver, trace_id), traces
    assert wanted_metrics <= receiver.metric_names()


def _collector_prometheus_name(spec: n.MetricSpec) -> str:
    """The OTel→Prometheus name rule the collector's Prometheus exporter applies (suffixes on):
    tokens of [a-zA-Z0-9:], unit suffix unless a `{annotation}` or already a token, `_total` for
    counters, `_ratio` for gauges with unit "1"."""
    import re

    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", spec.name) if t]
    unit = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "", "%": "percent"}.get(spec.unit, spec.unit)
    if "{" in spec.unit or "}" in spec.unit:
        unit = ""
    if unit and unit not in tokens:
        tokens.append(unit)
    if spec.kind is n.Kind.COUNTER:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if spec.kind is n.Kind.GAUGE and spec.unit == "1":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    return "_".join(tokens)


def test_otlp_and_direct_scrape_give_the_same_prometheus_names() -> None:
    for spec in n.ALL_METRICS:
        base = spec.exposed_names()[0].removesuffix("_bucket")
        assert _collector_prometheus_name(spec) == base, spec
