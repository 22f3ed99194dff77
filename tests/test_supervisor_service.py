"""`dilaserve up --supervised`: the node supervisor process starts the workers of the plan in force and
follows published plans — a plan with more workers starts one, a plan with fewer drains one — and a
supervisor restarted after a SIGKILL adopts the worker its predecessor left running; on a real local
cluster (nats-server + redis-server on random ports, the shipped model)."""

from __future__ import annotations

import asyncio
import time

import httpx

from services.common.processes import free_port, start_service
from tooling.local_cluster import LocalCluster
from shared import subjects
from shared.schemas.cluster import InstanceCount, NodePlan, Plan


def _plan(plan_id: str, workers: int) -> Plan:
    ic = [InstanceCount(config="tp1-dual", count=workers)]
    return Plan(plan_id=plan_id, created_s=time.time(), instances=ic, reason="test",
                nodes=[NodePlan(node=0, instances=ic)])


async def _publish(nats_url: str, plan: Plan) -> None:
    from shared.transport import Bus

    bus = await Bus.connect(nats_url, name="test-plan-publisher")
    try:
        await bus.publish(subjects.plan_publish(), plan)
    finally:
        await bus.close()


def _wait_workers(url: str, want: list[str], timeout_s: float = 120.0) -> list[str]:
    end = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < end:
        seen = sorted(httpx.get(url + "/readyz", timeout=5).json().get("workers", []))
        if seen == want:
            return seen
        time.sleep(0.25)
    raise AssertionError(f"workers {seen}, expected {want} within {timeout_s:.0f}s")


def test_supervisor_follows_plans(tmp_path):
    env = {"DILASERVE_PLANNER_MODE": "static", "DILASERVE_PLANNER_SLOTS_PER_NODE": "2",
           "DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S": "2.0"}
    cluster = LocalCluster(tmp_path / "run", num_workers=1, port=free_port(), extra_env=env, supervised=True)
    try:
        cluster.start(timeout_s=180, progress=False)
        assert not any(p.name.startswith("worker") for p in cluster.services)  # the supervisor owns them
        _wait_workers(cluster.url, ["worker-0"])

        asyncio.run(_publish(cluster.nats_url, _plan("grow", 2)))
        _wait_workers(cluster.url, ["worker-0", "worker-1"])
        body = {"model": "dilaserve-tiny", "prompt": "123+456=", "max_tokens": 16}
        assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=120).status_code == 200

        asyncio.run(_publish(cluster.nats_url, _plan("shrink", 1)))
        _wait_workers(cluster.url, ["worker-0"])  # the scheduler drops it on its draining heartbeat
        log_path = cluster.run_dir / "logs" / "supervisor.log"
        end = time.monotonic() + 60
        while "applied plan shrink" not in log_path.read_text() and time.monotonic() < end:
            time.sleep(0.25)  # the supervisor logs once the drained process has exited
        log = log_path.read_text()
        assert "applied plan grow: drained [], started ['worker-1']" in log
        assert "applied plan shrink: drained ['worker-1'], started []" in log
        worker_log = (cluster.run_dir / "logs" / "worker-1.log").read_text()
        assert worker_log  # it ran, with its log beside the others

        # SIGKILL the supervisor: worker-0 keeps serving; a new supervisor adopts it instead of starting
        # a second worker-0, and stops it on shutdown like its own.
        old = next(p for p in cluster.services if p.name == "supervisor")
        old.popen.kill()
        old.popen.wait()
        assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=120).status_code == 200
        new = start_service("supervisor", ["supervisor", "--run-dir", str(cluster.run_dir)], cluster.run_dir,
                            cluster.env)
        cluster.services[cluster.services.index(old)] = new
        end = time.monotonic() + 60
        while "adopted ['worker-0'], started []" not in log_path.read_text() and time.monotonic() < end:
            assert new.alive(), new.log_tail()
            time.sleep(0.25)
        assert "adopted ['worker-0'], started []" in log_path.read_text()
        _wait_workers(cluster.url, ["worker-0"])
        assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=120).status_code == 200
    finally:
        cluster.stop()
    supervisor = next(p for p in cluster.services if p.name == "supervisor")
    assert supervisor.popen.returncode == 0, supervisor.log_tail()
