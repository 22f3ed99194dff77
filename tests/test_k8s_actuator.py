"""The planner's Kubernetes actuator against the HTTP contract of the Scale subresource.

No Kubernetes API server runs here. The tests start an in-process fake API server (aiohttp on a
random loopback port) that implements what the actuator calls, with the official ``kubernetes``
client on the other side:

- ``GET/PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` (autoscaling/v1 Scale; a
  PATCH must be a JSON merge or strategic merge patch, as a real server requires for an object body);
- ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}`` whose ``status.readyReplicas`` catches up
  with ``spec.replicas`` after a delay, as pods become ready;
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=…`` and ``PATCH …/pods/{name}``: on a scale-down
  the fake ReplicaSet removes the pods with the lowest ``controller.kubernetes.io/pod-deletion-cost``
  first (newest among equals), and a removed pod lingers while terminating.

What this does not show: a real controller's timing, RBAC, admission, the kubelet running the
preStop drain. Those need a cluster (docs/operations.md, "Kubernetes").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web

from services.planner.actuators import LocalActuator, make_actuator
from services.planner.actuators.kube_api import DELETION_COST, KubeApi
from services.planner.actuators.kubernetes import KubernetesActuator
from services.planner.service import PlannerService
from shared.config import Config, PlannerConfig, load_config
from shared.schemas.cluster import InstanceCount, NodePlan, Plan

NS = "serving"
MERGE_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class FakePod:
    name: str
    created: datetime
    ready_at: float
    cost: int = 0
    gone_at: float | None = None  # terminating until then

    def ready(self, now: float) -> bool:
        return self.gone_at is None and now >= self.ready_at


@dataclass
class FakeDeployment:
    name: str
    replicas: int
    generation: int = 1
    observed: int = 1
    pods: dict[str, FakePod] = field(default_factory=dict)


class FakeApiServer:
    """The slice of the Kubernetes API the actuator uses, with a toy Deployment controller."""

    def __init__(self, ready_delay_s: float = 0.3, terminate_s: float = 0.3) -> None:
        self.ready_delay_s, self.terminate_s = ready_delay_s, terminate_s
        self.deployments: dict[str, FakeDeployment] = {}
        self.requests: list[tuple[float, str, str, str]] = []  # (t, method, path, content type)
        self.annotated: dict[str, int] = {}
        self._seq = itertools.count()

    def add(self, name: str, replicas: int, ready: bool = True) -> list[str]:
        dep = self.deployments[name] = FakeDeployment(name, replicas)
        for _ in range(replicas):
            self._create(dep, 0.0 if ready else time.monotonic() + self.ready_delay_s)
        return list(dep.pods)

    def _create(self, dep: FakeDeployment, ready_at: float) -> None:
        k = next(self._seq)
        name = f"{dep.name}-{k:05d}"
        dep.pods[name] = FakePod(name, _T0 + timedelta(seconds=k), ready_at)

    def live(self, dep: FakeDeployment) -> list[FakePod]:
        return [p for p in dep.pods.values() if p.gone_at is None]

    # -- the controller -------------------------------------------------------------------------
    def reconcile(self) -> None:
        now = time.monotonic()
        for dep in self.deployments.values():
            for p in [p for p in dep.pods.values() if p.gone_at is not None and now >= p.gone_at]:
                del dep.pods[p.name]
            live = self.live(dep)
            for _ in range(dep.replicas - len(live)):
                self._create(dep, now + self.ready_delay_s)
            # ReplicaSet order: not ready first, then the lowest deletion cost, then the newest
            for p in sorted(live, key=lambda p: (p.ready(now), p.cost, -p.created.timestamp()))[:max(0, len(live) - dep.replicas)]:
                p.gone_at = now + self.terminate_s
            dep.observed = dep.generation

    async def _controller(self) -> None:
        while True:
            self.reconcile()
            await asyncio.sleep(0.02)

    # -- HTTP -----------------------------------------------------------------------------------
    def _record(self, req: web.Request) -> None:
        self.requests.append((time.monotonic(), req.method, req.path, req.content_type))

    def _dep(self, req: web.Request) -> FakeDeployment:
        name = req.match_info["name"]
        if req.match_info["ns"] != NS or name not in self.deployments:
            raise web.HTTPNotFound(text='{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}',
                                   content_type="application/json")
        return self.deployments[name]

    async def _merge_body(self, req: web.Request) -> dict:
        if req.content_type not in MERGE_TYPES:
            raise web.HTTPUnsupportedMediaType(text=f"unsupported patch type {req.content_type}")
        body = await req.json()
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="a merge patch is an object")
        return body

    def _scale(self, dep: FakeDeployment) -> dict:
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": dep.name, "namespace": NS},
                "spec": {"replicas": dep.replicas},
                "status": {"replicas": len(self.live(dep)), "selector": f"app={dep.name}"}}

    async def get_scale(self, req: web.Request) -> web.Response:
        self._record(req)
        return web.json_response(self._scale(self._dep(req)))

    async def patch_scale(self, req: web.Request) -> web.Response:
        self._record(req)
        dep, body = self._dep(req), await self._merge_body(req)
        replicas = body.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise web.HTTPUnprocessableEntity(text="spec.replicas must be a non-negative integer")
        if replicas != dep.replicas:
            dep.replicas, dep.generation = replicas, dep.generation + 1
        return web.json_response(self._scale(dep))

    async def get_deployment(self, req: web.Request) -> web.Response:
        self._record(req)
        dep, now = self._dep(req), time.monotonic()
        live = self.live(dep)
        ready = sum(p.ready(now) for p in live)
        labels = {"app": dep.name}
        return web.json_response({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": dep.name, "namespace": NS, "generation": dep.generation},
            "spec": {"replicas": dep.replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "worker", "image": "dilaserve:latest"}]}}},
            "status": {"observedGeneration": dep.observed, "replicas": len(live), "readyReplicas": ready or None,
                       "availableReplicas": ready or None},
        })

    def _pod(self, dep: FakeDeployment, p: FakePod) -> dict:
        meta = {"name": p.name, "namespace": NS, "labels": {"app": dep.name},
                "creationTimestamp": p.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "annotations": {DELETION_COST: str(p.cost)} if p.cost else {}}
        if p.gone_at is not None:
            meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
        return {"metadata": meta, "spec": {"containers": [{"name": "worker", "image": "dilaserve:latest"}]}}

    async def list_pods(self, req: web.Request) -> web.Response:
        self._record(req)
        selector = req.query.get("labelSelector", "")
        items = [self._pod(d, p) for d in self.deployments.values() if selector == f"app={d.name}"
                 for p in d.pods.values()]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    async def patch_pod(self, req: web.Request) -> web.Response:
        self._record(req)
        body = await self._merge_body(req)
        for d in self.deployments.values():
            if req.match_info["name"] in d.pods:
                p = d.pods[req.match_info["name"]]
                p.cost = int(body["metadata"]["annotations"][DELETION_COST])
                self.annotated[p.name] = p.cost
                return web.json_response(self._pod(d, p))
        raise web.HTTPNotFound()

    def app(self) -> web.Application:
        base = "/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        app = web.Application()
        app.add_routes([web.get(base + "/scale", self.get_scale), web.patch(base + "/scale", self.patch_scale),
                        web.get(base, self.get_deployment),
                        web.get("/api/v1/namespaces/{ns}/pods", self.list_pods),
                        web.patch("/api/v1/namespaces/{ns}/pods/{name}", self.patch_pod)])
        return app


@pytest.fixture
async def fake_api():
    server = FakeApiServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    controller = asyncio.create_task(server._controller())
    server.url = f"http://127.0.0.1:{port}"
    yield server
    controller.cancel()
    await runner.cleanup()


def _cfg(url: str, deployments: str, timeout_s: float = 10.0) -> PlannerConfig:
    return PlannerConfig(actuator="kubernetes", k8s_namespace=NS, k8s_deployments=deployments, k8s_api_url=url,
                         k8s_ready_timeout_s=timeout_s, k8s_poll_s=0.05)


def _actuator(fake: FakeApiServer, deployments: str, timeout_s: float = 10.0) -> KubernetesActuator:
    cfg = _cfg(fake.url, deployments, timeout_s)
    act = make_actuator(cfg)
    assert isinstance(act, KubernetesActuator)
    return act


def _plan(**counts: int) -> Plan:
    ic = [InstanceCount(config=g.replace("_", "-"), count=n) for g, n in counts.items()]
    return Plan(plan_id="p1", created_s=0.0, instances=ic, nodes=[NodePlan(node=0, instances=ic)])


def _scale_patches(fake: FakeApiServer) -> list[tuple[float, str, str]]:
    return [(t, path, ctype) for t, m, path, ctype in fake.requests if m == "PATCH" and path.endswith("/scale")]


async def test_scale_up_patches_the_scale_subresource_and_waits_for_ready_replicas(fake_api):
    fake_api.add("w-tp1", 1)
    act = _actuator(fake_api, "tp1-dual=w-tp1")
    t0 = time.monotonic()
    res = await act.apply(_plan(tp1_dual=3))
    waited = time.monotonic() - t0
    assert res.ok and res.targets == {"tp1-dual": 3} and res.ready == {"tp1-dual": 3}
    assert waited >= fake_api.ready_delay_s  # it did not return on the PATCH alone
    (_, path, ctype), = _scale_patches(fake_api)
    assert path == f"/apis/apps/v1/namespaces/{NS}/deployments/w-tp1/scale" and ctype in MERGE_TYPES
    assert sum(p.ready(time.monotonic()) for p in fake_api.deployments["w-tp1"].pods.values()) == 3
    await act.close()


async def test_scale_down_drains_the_idle_pods_and_waits_until_they_are_gone(fake_api):
    busy, idle, half = fake_api.add("w-tp1", 3)
    act = _actuator(fake_api, "tp1-dual=w-tp1")
    act.view.load = {busy: 5, idle: 0, half: 2}
    act.view.live = {busy, idle, half}

    async def scheduler_hands_back() -> None:  # the draining heartbeats reach the scheduler later
        await asyncio.sleep(0.6)
        act.view.live = {busy}

    t0 = time.monotonic()
    _, res = await asyncio.gather(scheduler_hands_back(), act.apply(_plan(tp1_dual=1)))
    assert time.monotonic() - t0 >= 0.6  # waited for the scheduler to stop listing them
    assert sorted(res.drained) == sorted([idle, half]) and res.ok
    assert fake_api.annotated == {idle: -1000, half: -1000}  # exactly the drained ones were marked
    assert list(fake_api.deployments["w-tp1"].pods) == [busy]  # the busiest stayed; the others are gone
    await act.close()


async def test_a_mark_left_on_a_keeper_by_an_earlier_scale_down_is_cleared(fake_api):
    idle, busy = fake_api.add("w-tp1", 2)  # the busy one is the newest: the ReplicaSet's pick on a tie
    fake_api.deployments["w-tp1"].pods[busy].cost = -1000  # an earlier scale-down timed out
    act = _actuator(fake_api, "tp1-dual=w-tp1")
    act.view.load = {busy: 4, idle: 0}
    res = await act.apply(_plan(tp1_dual=1))
    assert res.drained == [idle] and list(fake_api.deployments["w-tp1"].pods) == [busy]
    assert fake_api.annotated == {idle: -1000, busy: 0}
    await act.close()


async def test_a_change_of_configuration_drains_before_it_scales_up(fake_api):
    fake_api.add("w-dual", 2)
    fake_api.add("w-prefix", 0)
    act = _actuator(fake_api, "tp1-dual=w-dual,tp1-prefix=w-prefix")
    res = await act.apply(_plan(tp1_dual=1, tp1_prefix=1))
    assert res.ok and res.ready == {"tp1-dual": 1, "tp1-prefix": 1} and len(res.drained) == 1
    patches = _scale_patches(fake_api)
    assert [p.rsplit("/", 2)[-2] for _, p, _ in patches] == ["w-dual", "w-prefix"]
    # the scale-up waited for the drained pod to terminate
    assert patches[1][0] - patches[0][0] >= fake_api.terminate_s
    await act.close()


async def test_a_configuration_the_plan_leaves_out_goes_to_zero(fake_api):
    fake_api.add("w-dual", 1)
    fake_api.add("w-prefix", 2)
    act = _actuator(fake_api, "tp1-dual=w-dual,tp1-prefix=w-prefix")
    res = await act.apply(_plan(tp1_dual=2))
    assert res.targets == {"tp1-dual": 2, "tp1-prefix": 0} and res.ready == {"tp1-dual": 2, "tp1-prefix": 0}
    assert not fake_api.deployments["w-prefix"].pods
    await act.close()


async def test_readiness_that_never_comes_is_reported_not_waited_for_forever(fake_api):
    fake_api.add("w-tp1", 1)
    fake_api.ready_delay_s = 3600.0
    act = _actuator(fake_api, "tp1-dual=w-tp1", timeout_s=0.5)
    t0 = time.monotonic()
    res = await act.apply(_plan(tp1_dual=2))
    assert time.monotonic() - t0 < 5.0
    assert res.timed_out == ["w-tp1"] and not res.ok and res.ready == {"tp1-dual": 1}
    await act.close()


async def test_a_configuration_without_a_deployment_is_reported(fake_api):
    fake_api.add("w-tp1", 1)
    act = _actuator(fake_api, "tp1-dual=w-tp1")
    res = await act.apply(_plan(tp1_dual=1, tp2_dual=1))
    assert res.unknown == {"tp2-dual": 1} and not res.ok
    assert not _scale_patches(fake_api)  # tp1-dual already had its one replica
    await act.close()


async def test_the_fake_refuses_patch_types_a_real_server_would_not_merge(fake_api):
    # The fake is strict about the contract, so the actuator's own PATCHes passing it means something.
    fake_api.add("w-tp1", 1)
    api = KubeApi(NS, fake_api.url)
    from kubernetes.client.exceptions import ApiException
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(api.apps.patch_namespaced_deployment_scale, "w-tp1", NS, {"spec": {"replicas": 2}},
                                _content_type="application/apply-patch+yaml")
    assert err.value.status == 415 and fake_api.deployments["w-tp1"].replicas == 1
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(api.get_scale, "no-such-deployment")
    assert err.value.status == 404
    assert await asyncio.to_thread(api.set_scale, "w-tp1", 2) == 2
    api.close()


async def test_the_planner_starts_from_what_is_deployed(fake_api):
    fake_api.add("w-dual", 2)
    fake_api.add("w-prefix", 1)
    cfg = _cfg(fake_api.url, "tp1-dual=w-dual,tp1-prefix=w-prefix")
    act = make_actuator(cfg)
    svc = object.__new__(PlannerService)  # initial_plan needs only the config and the actuator
    svc.cfg, svc.actuator = cfg, act
    plan = await svc.initial_plan(0.0)
    assert {ic.config: ic.count for ic in plan.instances} == {"tp1-dual": 2, "tp1-prefix": 1}
    assert plan.reason == "as deployed"
    await act.close()


async def test_the_planner_hands_a_changed_plan_to_its_actuator(fake_api):
    fake_api.add("w-tp1", 1)
    cfg = _cfg(fake_api.url, "tp1-dual=w-tp1")
    svc = object.__new__(PlannerService)
    svc.actuator, svc.last_actuation = make_actuator(cfg), None
    res = await svc.actuate(_plan(tp1_dual=2))
    assert res is svc.last_actuation and res.ready == {"tp1-dual": 2}
    await svc.actuator.close()


async def test_the_local_actuator_hands_plans_to_the_supervisors():
    act = make_actuator(PlannerConfig())
    assert isinstance(act, LocalActuator) and await act.observed() is None
    res = await act.apply(_plan(tp1_dual=3))
    assert res.delegated and res.targets == {"tp1-dual": 3} and res.ok


def test_the_actuator_setting_is_validated_with_a_clear_error():
    assert load_config(env={}).planner.actuator == "local"
    with pytest.raises(ValueError, match="planner.actuator must be one of"):
        load_config(env={"DILASERVE_PLANNER_ACTUATOR": "k8s"})
    with pytest.raises(ValueError, match="planner.k8s_deployments must name"):
        load_config(env={"DILASERVE_PLANNER_ACTUATOR": "kubernetes"})
    with pytest.raises(ValueError, match="'tp1-dual' is not configuration=deployment"):
        load_config(env={"DILASERVE_PLANNER_ACTUATOR": "kubernetes", "DILASERVE_PLANNER_K8S_DEPLOYMENTS": "tp1-dual"})
    cfg = load_config(env={"DILASERVE_PLANNER_ACTUATOR": "kubernetes",
                           "DILASERVE_PLANNER_K8S_DEPLOYMENTS": "tp1-dual=a, tp1-prefix=b"})
    assert isinstance(cfg, Config) and cfg.planner.k8s_deployments == "tp1-dual=a, tp1-prefix=b"


def test_without_a_namespace_outside_a_pod_the_error_says_what_to_set(tmp_path, monkeypatch):
    from services.planner.actuators import kube_api
    monkeypatch.setattr(kube_api, "NAMESPACE_FILE", tmp_path / "absent")
    with pytest.raises(ValueError, match="planner.k8s_namespace is not set"):
        kube_api.own_namespace("")
    assert kube_api.own_namespace("prod") == "prod"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="needs a pod's service account or planner.k8s_api_url"):
        KubeApi("prod")


class _Bus:
    def __init__(self) -> None:
        self.published: list[tuple[str, object]] = []

    async def publish(self, subject: str, msg: object) -> None:
        self.published.append((subject, msg))

    async def subscribe(self, subject: str, type_: type, cb) -> object:
        class _Sub:
            async def unsubscribe(self) -> None:
                return None
        return _Sub()


class _Store:
    def __init__(self) -> None:
        self.plan: Plan | None = None

    async def load_plan(self) -> Plan | None:
        return self.plan

    async def save_plan(self, plan: Plan) -> None:
        self.plan = plan


async def test_a_planning_round_that_adds_a_worker_scales_its_deployment(fake_api):
    from shared.policy.cost_model import CostModel
    from shared.policy.planner.types import ArrivalSample
    from shared.telemetry import setup_telemetry

    fake_api.add("w-tp1", 1)
    cfg = _cfg(fake_api.url, "tp1-dual=w-tp1")
    cfg.num_workers, cfg.slots_per_node = 1, 2
    bus, store = _Bus(), _Store()
    svc = PlannerService(cfg, bus, store, setup_telemetry("planner", env={}), CostModel.tiny_cpu("tp1-dual"), 8,
                         actuator=make_actuator(cfg, bus))
    svc.observed_since_s = time.time() - 60.0
    await svc.actuator.start()
    svc.plan = await svc.initial_plan(svc.observed_since_s)
    assert svc.plan.reason == "as deployed"
    now = time.time()
    for i in range(120):  # 2 req/s of 128-token outputs within 3 s: more than one CPU worker carries
        svc.window.append(ArrivalSample(now - 60.0 + 0.5 * i, 16, 128, 3.0))
    new = await svc.plan_once()
    assert new is not None and store.plan is new and {ic.config: ic.count for ic in new.instances} == {"tp1-dual": 2}
    assert svc.last_actuation.ready == {"tp1-dual": 2} and fake_api.deployments["w-tp1"].replicas == 2
    await svc.actuator.close()


async def test_an_unreachable_api_server_at_start_falls_back_to_the_static_plan(fake_api):
    cfg = _cfg(fake_api.url, "tp1-dual=missing-deployment")  # 404 from the API server
    svc = object.__new__(PlannerService)
    svc.cfg, svc.actuator = cfg, make_actuator(cfg)
    plan = await svc.initial_plan(0.0)
    assert plan.reason == "static" and {ic.config: ic.count for ic in plan.instances} == {"tp1-dual": 2}
    await svc.actuator.close()
