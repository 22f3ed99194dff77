"""compose.yaml and deploy/: schema-valid, commands exist, dashboards query metrics we define.

No Docker engine is needed: the Compose schema ships inside the check-jsonschema package.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.cli import SUBCOMMANDS
from shared.telemetry import names

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dilaserve.json"
METRIC_TOKEN = re.compile(r"\bdilaserve_[a-z0-9_]+")
SUBCOMMAND_RE = re.compile(r"(?:^|[\s;&|])dilaserve\s+([a-z][a-z-]*)")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def _dilaserve_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose["services"].items() if "build" in v}


def _command_text(svc: dict[str, Any]) -> str:
    cmd = svc.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


# --- schema ---------------------------------------------------------------------------------------

def test_compose_validates_with_check_jsonschema_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vendored_compose_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    schema = json.loads((files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert not list(validator.iter_errors(compose))
    for broken in ({"image": "x", "no_such_key": 1}, {"image": ["not", "a", "string"]},
                   {"image": "x", "healthcheck": {"test": 5}}):
        assert list(validator.iter_errors({"services": {"gateway": broken}})), broken


# --- services -------------------------------------------------------------------------------------

def test_every_dilaserve_service_runs_an_existing_subcommand(compose: dict[str, Any]) -> None:
    services = _dilaserve_services(compose)
    assert {"gateway", "scheduler", "planner", "worker", "worker-gpu"} <= set(services)
    for name, svc in services.items():
        subs = SUBCOMMAND_RE.findall(_command_text(svc))
        assert len(subs) == 1, f"{name}: command must run exactly one `dilaserve <subcommand>`"
        assert subs[0] in SUBCOMMANDS, f"{name}: unknown subcommand {subs[0]!r}"
        module = SUBCOMMANDS[subs[0]][0]
        assert importlib.util.find_spec(module) is not None, f"{name}: module {module} does not exist"


def test_services_are_configured_for_the_compose_network(compose: dict[str, Any]) -> None:
    for name, svc in _dilaserve_services(compose).items():
        env = svc["environment"]
        assert env["DILASERVE_NATS_URL"] == "nats://nats:4222", name
        assert env["DILASERVE_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", name
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
    expected = {"nats", "redis", "otel-collector", "prometheus", "grafana", "jaeger"}
    assert expected <= set(compose["services"])


def test_nats_and_redis_persist_and_report_health(compose: dict[str, Any]) -> None:
    nats, redis = compose["services"]["nats"], compose["services"]["redis"]
    assert "-js" in nats["command"] and "/data" in nats["command"]
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_gpu_worker_is_profiled_and_reserves_nvidia_devices(compose: dict[str, Any]) -> None:
    cpu, gpu = compose["services"]["worker"], compose["services"]["worker-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert cpu["environment"]["DILASERVE_WORKER_DEVICE"] == "cpu"
    assert gpu["environment"]["DILASERVE_WORKER_DEVICE"] == "cuda"


def test_bind_mounts_exist_in_the_repo(compose: dict[str, Any]) -> None:
    mounts = [v.split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])
              if isinstance(v, str) and v.startswith("./")]
    assert mounts
    for src in mounts:
        assert (ROOT / src).exists(), src


def test_dockerfile_pins_the_projects_torch_and_ships_the_model() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)
    assert torch_pin and f"ARG TORCH_VERSION={torch_pin.group(1)}" in text
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "COPY models ./models" in text
    assert (ROOT / "models").is_dir()


# --- observability config -------------------------------------------------------------------------

def test_prometheus_scrapes_compose_services(compose: dict[str, Any]) -> None:
    prom = _yaml(DEPLOY / "prometheus.yml")
    hosts: set[str] = set()
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            hosts |= {t.rsplit(":", 1)[0] for t in sc["targets"]}
        for dns in job.get("dns_sd_configs", []):
            hosts |= set(dns["names"])
    assert {"otel-collector", "gateway", "worker"} <= hosts
    assert hosts - {"localhost"} <= set(compose["services"])


def test_collector_pipelines_are_wired() -> None:
    cfg = _yaml(DEPLOY / "otel-collector.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for p in pipelines.values():
        assert set(p["receivers"]) <= set(cfg["receivers"])
        assert set(p["exporters"]) <= set(cfg["exporters"])
        assert set(p.get("processors", [])) <= set(cfg["processors"])
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    prom_port = cfg["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert f"otel-collector:{prom_port}" in (DEPLOY / "prometheus.yml").read_text()


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_queries_name_defined_metrics() -> None:
    defined = names.exposed_metric_names()
    used: set[str] = set()
    for panel in _dashboard()["panels"]:
        found = {m for t in panel["targets"] for m in METRIC_TOKEN.findall(t["expr"])}
        assert found, f"panel {panel['title']!r} queries no DiLaServe metric"
        assert found <= defined, f"panel {panel['title']!r}: undefined {sorted(found - defined)}"
        used |= found
    required = [names.SLO, names.REQUEST_LATENCY, names.THRESHOLD_CHOSEN, names.THRESHOLD_CAP,
                names.COMMITTED_PER_STEP, names.STEPS, names.QUEUE_DEPTH, names.INSTANCES, names.PLANNER_SOLVE]
    for spec in required:
        assert used & set(spec.exposed_names()), f"no panel shows {spec.name}"


def test_dashboard_datasource_is_provisioned() -> None:
    ds = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml")
    uids = {d["uid"] for d in ds["datasources"]}
    for panel in _dashboard()["panels"]:
        assert panel["datasource"]["uid"] in uids


def test_committed_dashboard_matches_its_generator() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run: python deploy/grafana/build_dashboard.py"
