"""deploy/helm/dilaserve: rendered by a real Helm engine, valid Kubernetes objects, wired to the code.

No helm binary and no cluster are needed: ``helm-python-sdk`` bundles Helm's Go SDK (v4) as a shared
library and renders the chart offline (``lookup`` returns nothing, ``.Capabilities`` are Helm's
defaults). Every rendered object is validated with ``kubernetes-validate`` against the Kubernetes
OpenAPI schemas it ships (strict: unknown fields fail). The ServiceMonitor is a Prometheus Operator
CRD that those schemas do not cover; it is checked against the Services it selects instead. The
NATS and Redis subcharts are declared in Chart.yaml but not vendored, so their templates are not
rendered here (`helm dependency build` fetches them on a machine that can).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from services.common.cli import SUBCOMMANDS
from shared.config import SECTIONS, Config, deployment_map, load_config
from shared.schemas.cluster import WorkerHeartbeat
from shared.schemas.codec import encode

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "dilaserve"
RELEASE, NS = "dls", "serving"
K8S_VERSION = "1.33"
TELEMETRY_SOURCE = (ROOT / "shared" / "telemetry" / "config.py").read_text()
GPU_VALUES = {"workers": {"instances": [
    {"name": "tp1-dual", "replicas": 2, "gpus": 1, "image": {"repository": "dilaserve-gpu"},
     "nodeSelector": {"nvidia.com/gpu.present": "true"},
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
     "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}},
    {"name": "tp1-prefix", "replicas": 1, "gpus": 1, "image": {"repository": "dilaserve-gpu"}}]},
    "planner": {"nodes": 2, "slotsPerNode": 8}}
EXTERNAL_VALUES = {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.infra:4222"},
                   "redis": {"enabled": False}, "externalRedis": {"url": "redis://redis.infra:6379/0"},
                   "serviceMonitor": {"enabled": True}, "otelCollector": {"tracesEndpoint": "tempo.infra:4317"},
                   "gateway": {"autoscaling": {"enabled": False}}, "scheduler": {"replicas": 1}}
VALUE_SETS = {"default": {}, "gpu": GPU_VALUES, "external": EXTERNAL_VALUES}


@functools.lru_cache(maxsize=None)
def _render(values_json: str) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(json.loads(values_json), name=RELEASE, namespace=NS)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values``."""
    out = []
    for path, text in sorted(_render(json.dumps(values or {}, sort_keys=True)).items()):
        if path.endswith(".txt"):
            continue
        out += [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def containers(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(Deployment name, pod spec, container) for every DiLaServe container (the image's own)."""
    out = []
    for name, d in by_kind(objs, "Deployment").items():
        spec = d["spec"]["template"]["spec"]
        out += [(name, spec, c) for c in spec["containers"] if c["image"].split(":")[0].startswith("dilaserve")]
    return out


def container_env(objs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own entries (downward API
    values stand in as the pod's name and namespace; $(VAR) is expanded as the kubelet does)."""
    cms = by_kind(objs, "ConfigMap")
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(cms[src["configMapRef"]["name"]]["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        else:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.name": "pod-0", "metadata.namespace": NS}[path]
    return env


# --- the engine -----------------------------------------------------------------------------------

def test_a_real_helm_engine_renders_the_chart():
    assert helm.helm_sdk_version().startswith(("v3.", "v4."))
    objs = render()
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount",
            "Role", "RoleBinding", "ConfigMap"} <= kinds
    assert set(by_kind(objs, "Deployment")) == {f"{RELEASE}-dilaserve-{c}" for c in
                                                ("gateway", "scheduler", "planner", "otel-collector",
                                                 "worker-tp1-dual")}
    with helm.Chart.load(str(CHART)) as chart:  # a template error surfaces as an error, not as output
        with pytest.raises(helm.HelmError, match="externalNats.url is required"):
            chart.render({"nats": {"enabled": False}}, name=RELEASE, namespace=NS)


def test_helm_lint_finds_nothing_but_the_unvendored_dependencies():
    report = helm.lint(str(CHART), namespace=NS, kube_version="v1.33.0")
    assert not report["errors"], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert all("missing these dependencies: nats,redis" in m["error"] for m in problems), problems
    assert {d["name"]: d["status"] for d in helm.dependency_list(str(CHART))} == {"nats": "missing",
                                                                               "redis": "missing"}


@pytest.mark.parametrize("values, message", [
    ({"workers": {"instances": [{"name": "TP1", "replicas": 1, "gpus": 0}]}}, "does not match pattern"),
    ({"workers": {"instances": []}}, "minItems|minimum 1 items|at least 1"),
    ({"planner": {"actuator": "k8s"}}, "'local', 'kubernetes'"),
    ({"env": {"WORKER_DEVICE": "cuda"}}, "invalid propertyName"),
    ({"serviceMonitor": {"enabled": "yes"}}, "serviceMonitor/enabled"),
])
def test_values_schema_refuses_bad_values_with_the_key_named(values, message):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values, name=RELEASE, namespace=NS)


# --- Kubernetes schemas ---------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_validates_against_the_kubernetes_schemas(values):
    checked = 0
    for obj in render(values):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: see test_service_monitor_selects_the_metrics_ports
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 20


def test_the_schema_check_rejects_a_broken_object():
    deployment = by_kind(render(), "Deployment")[f"{RELEASE}-dilaserve-gateway"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replica"] = 2  # a typo: strict mode refuses unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- wired to the code ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_command_is_an_existing_dilaserve_subcommand(values):
    seen = set()
    for name, _, c in containers(render(values)):
        cmd = c["command"]
        assert cmd[0] == "dilaserve" and len(cmd) == 2, f"{name}: {cmd}"
        assert cmd[1] in SUBCOMMANDS, f"{name}: unknown subcommand {cmd[1]!r}"
        assert importlib.util.find_spec(SUBCOMMANDS[cmd[1]][0]) is not None
        seen.add(cmd[1])
    assert seen == {"gateway", "scheduler", "planner", "worker"}


def _known_env(name: str) -> bool:
    if name.startswith("OTEL_") or name in ("DILASERVE_METRICS_PORT", "DILASERVE_METRICS_HOST",
                                            "DILASERVE_INSTANCE_ID", "DILASERVE_OTLP_TIMEOUT_S"):
        return f'"{name}"' in TELEMETRY_SOURCE  # read by shared/telemetry/config.py
    if not name.startswith("DILASERVE_"):
        return name == "POD_NAME"  # only used to build the ids below
    section, _, field = name[len("DILASERVE_"):].lower().partition("_")
    return section in SECTIONS and field in getattr(Config(), section).__dataclass_fields__


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_env_var_is_one_the_code_reads_and_loads(values):
    objs = render(values)
    for name, _, c in containers(objs):
        env = container_env(objs, c)
        unknown = sorted(k for k in env if not _known_env(k))
        assert not unknown, f"{name}: no code reads {unknown}"
        load_config(env=env)  # types and the planner's actuator settings pass the code's own checks


def test_ports_match_what_the_services_listen_on():
    objs = render()
    deployments, services = by_kind(objs, "Deployment"), by_kind(objs, "Service")
    for name, _, c in containers(objs):
        env, ports = container_env(objs, c), {p["name"]: p["containerPort"] for p in c["ports"]}
        if c["command"][1] == "gateway":
            cfg = load_config(env=env).gateway
            assert cfg.host == "0.0.0.0" and ports == {"http": cfg.port} and env["DILASERVE_METRICS_PORT"] == ""
        else:
            assert ports == {"metrics": int(env["DILASERVE_METRICS_PORT"])}, name
    for sname, svc in services.items():
        pods = [d["spec"]["template"] for d in deployments.values()
                if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {sname} selects no pods"
        for port in svc["spec"]["ports"]:
            for pod in pods:
                names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, f"{sname}: {port['targetPort']} is no container port"
    env = container_env(objs, containers(objs)[0][2])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{RELEASE}-dilaserve-otel-collector:4318"
    assert f"{RELEASE}-dilaserve-otel-collector" in services


def test_nats_and_redis_are_dependencies_or_external_urls():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps = {d["name"]: d for d in chart["dependencies"]}
    assert deps["nats"]["condition"] == "nats.enabled" and deps["redis"]["condition"] == "redis.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nats = values["nats"]["config"]
    assert nats["cluster"]["enabled"] and nats["cluster"]["replicas"] == 3 and nats["jetstream"]["enabled"]
    redis = values["redis"]
    assert redis["architecture"] == "replication" and redis["sentinel"]["enabled"]
    assert redis["sentinel"]["masterService"]["enabled"]  # a plain redis:// URL that follows failover
    env = by_kind(render(), "ConfigMap")[f"{RELEASE}-dilaserve-env"]["data"]
    assert env["DILASERVE_NATS_URL"] == f"nats://{RELEASE}-nats:4222"
    assert env["DILASERVE_REDIS_URL"] == f"redis://{RELEASE}-redis-master:6379/0"
    env = by_kind(render(EXTERNAL_VALUES), "ConfigMap")[f"{RELEASE}-dilaserve-env"]["data"]
    assert env["DILASERVE_NATS_URL"] == "nats://nats.infra:4222"
    assert env["DILASERVE_REDIS_URL"] == "redis://redis.infra:6379/0"
    with helm.Chart.load(str(CHART)) as c, pytest.raises(helm.HelmError, match="masterService.enabled must stay true"):
        c.render({"redis": {"sentinel": {"masterService": {"enabled": False}}}}, name=RELEASE, namespace=NS)


# --- the components -------------------------------------------------------------------------------

def test_workers_are_one_deployment_per_instance_configuration_with_gpus_probe_and_drain():
    objs = render(GPU_VALUES)
    workers = {n: d for n, d in by_kind(objs, "Deployment").items() if "-worker-" in n}
    assert set(workers) == {f"{RELEASE}-dilaserve-worker-tp1-dual", f"{RELEASE}-dilaserve-worker-tp1-prefix"}
    pdbs = by_kind(objs, "PodDisruptionBudget")
    for name, d in workers.items():
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = container_env(objs, c)
        assert c["image"] == "dilaserve-gpu:latest" and env["DILASERVE_WORKER_DEVICE"] == "cuda"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
        assert env["DILASERVE_WORKER_CACHE_MODE"] == name.rsplit("-", 1)[1]
        assert env["DILASERVE_WORKER_WORKER_ID"] == "pod-0"  # the pod name: the planner maps heartbeats to pods
        assert "kill -TERM 1" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
        assert spec["terminationGracePeriodSeconds"] >= 120
        assert c["readinessProbe"]["exec"]["command"] == ["python", "/etc/dilaserve/probe/worker_ready.py"]
        mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["probe"]
        volume = {v["name"]: v for v in spec["volumes"]}["probe"]["configMap"]["name"]
        assert mount == "/etc/dilaserve/probe" and "worker_ready.py" in by_kind(objs, "ConfigMap")[volume]["data"]
        assert name in pdbs and pdbs[name]["spec"]["selector"] == d["spec"]["selector"]
    tp1 = workers[f"{RELEASE}-dilaserve-worker-tp1-dual"]["spec"]["template"]["spec"]
    assert tp1["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and tp1["tolerations"][0]["key"] == "nvidia.com/gpu"
    longer = render({"maxSloS": 900})
    spec = by_kind(longer, "Deployment")[f"{RELEASE}-dilaserve-worker-tp1-dual"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 900  # follows the largest SLO


def _probe_module():
    spec = importlib.util.spec_from_file_location("worker_ready", CHART / "files" / "worker_ready.py")
    assert spec and spec.loader
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def _heartbeat(worker_id: str = "pod-0", draining: bool = False) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id=worker_id, instance_config="dilaserve-tiny/cpu/tp1-dual", num_active=0,
                           num_active_tokens=0, max_batch=32, step_latency_ema_s=0.0, tokens_per_step_ema=0.0,
                           num_steps_total=0, sent_s=0.0, draining=draining)


def test_the_readiness_probe_reads_the_workers_own_heartbeat(monkeypatch):
    monkeypatch.delenv("DILASERVE_WORKER_WORKER_ID", raising=False)
    probe = _probe_module()
    hb = {f: getattr(_heartbeat(), f) for f in _heartbeat().__struct_fields__ if f != "draining"}
    assert probe.ready(encode(WorkerHeartbeat(**hb)))
    assert not probe.ready(encode(WorkerHeartbeat(**hb, draining=True)))
    assert probe.main() == 1  # no worker id in this environment: not ready, and it says why
    data = by_kind(render(), "ConfigMap")[f"{RELEASE}-dilaserve-worker-probe"]["data"]["worker_ready.py"]
    assert data.strip() == (CHART / "files" / "worker_ready.py").read_text().strip()


def test_the_planner_may_scale_exactly_the_worker_deployments():
    objs = render(GPU_VALUES)
    name = f"{RELEASE}-dilaserve-planner"
    workers = sorted(n for n in by_kind(objs, "Deployment") if "-worker-" in n)
    rules = {tuple(r["resources"]): r for r in by_kind(objs, "Role")[name]["rules"]}
    assert set(rules[("deployments/scale",)]["verbs"]) >= {"get", "patch"}
    assert sorted(rules[("deployments/scale",)]["resourceNames"]) == workers
    assert set(rules[("deployments",)]["verbs"]) == {"get", "list", "watch"}
    assert sorted(rules[("deployments",)]["resourceNames"]) == workers
    binding = by_kind(objs, "RoleBinding")[name]
    assert binding["roleRef"]["name"] == name and binding["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": NS}]
    pod = by_kind(objs, "Deployment")[name]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and name in by_kind(objs, "ServiceAccount")
    cfg = load_config(env=container_env(objs, pod["containers"][0])).planner
    assert cfg.actuator == "kubernetes" and cfg.k8s_namespace == NS
    assert deployment_map(cfg.k8s_deployments) == {"tp1-dual": workers[0], "tp1-prefix": workers[1]}
    assert cfg.configs == "tp1-dual,tp1-prefix" and cfg.num_workers == 3
    assert (cfg.nodes, cfg.slots_per_node) == (2, 8)


def test_gateway_scales_and_schedulers_run_two_with_distinct_ids():
    objs = render()
    hpa = by_kind(objs, "HorizontalPodAutoscaler")[f"{RELEASE}-dilaserve-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-dilaserve-gateway" and hpa["spec"]["minReplicas"] >= 2
    gw = by_kind(objs, "Deployment")[f"{RELEASE}-dilaserve-gateway"]
    assert "replicas" not in gw["spec"]  # the HPA owns it
    probes = gw["spec"]["template"]["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz" and probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sched = by_kind(objs, "Deployment")[f"{RELEASE}-dilaserve-scheduler"]
    assert sched["spec"]["replicas"] == 2
    env = container_env(objs, sched["spec"]["template"]["spec"]["containers"][0])
    assert load_config(env=env).scheduler.scheduler_id == "pod-0"  # one id per pod, for a leader lease
    pdbs = by_kind(objs, "PodDisruptionBudget")
    assert {f"{RELEASE}-dilaserve-gateway", f"{RELEASE}-dilaserve-scheduler"} <= set(pdbs)


def test_service_monitor_selects_the_metrics_ports():
    assert not by_kind(render(), "ServiceMonitor")  # auto: offline there is no monitoring.coreos.com API
    objs = render(EXTERNAL_VALUES)
    sm = by_kind(objs, "ServiceMonitor")[f"{RELEASE}-dilaserve"]
    selected = [s for s in by_kind(objs, "Service").values()
                if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    port_names = {p["name"] for s in selected for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"
    assert {"http", "metrics", "prometheus"} <= {ep["port"] for ep in sm["spec"]["endpoints"]}


def test_collector_pipelines_are_wired_and_match_compose():
    for values in ({}, EXTERNAL_VALUES):
        cm = by_kind(render(values), "ConfigMap")[f"{RELEASE}-dilaserve-otel-collector"]
        cfg = yaml.safe_load(cm["data"]["config.yaml"])
        for p in cfg["service"]["pipelines"].values():
            assert set(p["receivers"]) <= set(cfg["receivers"]) and set(p["exporters"]) <= set(cfg["exporters"])
            assert set(p.get("processors", [])) <= set(cfg["processors"])
        assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
        assert cfg["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    assert "tempo.infra:4317" in cm["data"]["config.yaml"]


def test_dashboard_configmap_is_the_shipped_dashboard():
    shipped = (ROOT / "deploy" / "grafana" / "dashboards" / "dilaserve.json").read_text()
    assert (CHART / "files" / "dilaserve.json").read_text() == shipped, \
        "copy deploy/grafana/dashboards/dilaserve.json to deploy/helm/dilaserve/files/"
    cm = by_kind(render(), "ConfigMap")[f"{RELEASE}-dilaserve-dashboard"]
    assert json.loads(cm["data"]["dilaserve.json"]) == json.loads(shipped)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_same_images_and_commands_as_compose():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    objs = render(GPU_VALUES)
    chart_subs = {c["command"][1] for _, _, c in containers(objs)}
    compose_subs = {re.search(r"dilaserve\s+([a-z-]+)", " ".join(s["command"]) if isinstance(s["command"], list)
                              else s["command"]).group(1) for s in compose.values() if "build" in s}
    assert chart_subs == compose_subs
    images = {c["image"].split(":")[0] for _, _, c in containers(objs)} | {
        c["image"].split(":")[0] for _, _, c in containers(render())}
    assert images == {compose["gateway"]["image"].split(":")[0], compose["worker-gpu"]["image"].split(":")[0]}
    collector = by_kind(render(), "Deployment")[f"{RELEASE}-dilaserve-otel-collector"]
    assert collector["spec"]["template"]["spec"]["containers"][0]["image"] == compose["otel-collector"]["image"]


async def test_the_readiness_probe_against_a_real_nats_server(nats_url):
    import asyncio

    from shared import subjects
    from shared.transport import Bus

    probe = _probe_module()
    bus = await Bus.connect(nats_url, name="fake-worker")
    draining = {"now": False}

    async def beat() -> None:  # what a worker sends every heartbeat_interval_s
        while True:
            await bus.publish(subjects.worker_heartbeat("pod-0"), _heartbeat(draining=draining["now"]))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(beat())
    try:
        assert await probe.probe(nats_url, "pod-0", 3.0) is True
        draining["now"] = True
        await asyncio.sleep(0.2)
        assert await probe.probe(nats_url, "pod-0", 3.0) is False
        with pytest.raises(Exception):  # no heartbeat for this pod: not ready (main() exits 1)
            await probe.probe(nats_url, "pod-1", 0.5)
    finally:
        task.cancel()
        await bus.close()
