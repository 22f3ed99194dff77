"""Supervisor.run with a real nats-server and redis-server: a plan published while the node was not
listening is picked up from Redis when the planner's heartbeat reports its id; an unchanged reported id,
or one whose plan Redis does not hold, changes nothing. Workers are stand-in `sleep` processes (the
worker itself is exercised by tests/test_supervisor_service.py)."""

from __future__ import annotations

import asyncio
import subprocess
import time

from services.common.processes import Proc, free_port, start_nats, wait_port
from services.supervisor.service import Supervisor
from shared import subjects
from shared.schemas.cluster import InstanceCount, NodePlan, Plan, PlannerHeartbeat
from shared.transport import Bus, Store

from conftest import _stop


def _plan(plan_id: str, workers: int) -> Plan:
    ic = [InstanceCount(config="tp1-dual", count=workers)]
    return Plan(plan_id=plan_id, created_s=time.time(), instances=ic, reason="test",
                nodes=[NodePlan(node=0, instances=ic)])


async def _until(cond, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not cond():
        await asyncio.sleep(0.05)
    return cond()


async def test_missed_plan_is_read_back_on_the_planners_heartbeat(tmp_path, redis_url):
    port = free_port()
    nats = start_nats(tmp_path, port)
    wait_port(port, 30, nats)
    bus = await Bus.connect(f"nats://127.0.0.1:{port}", name="supervisor-follow-test")
    store = await Store.connect(redis_url + "/2")

    def spawn(worker_id: str, config: str) -> Proc:
        return Proc(worker_id, subprocess.Popen(["sleep", "60"]), tmp_path / f"{worker_id}.log")

    sup = Supervisor(node=0, slots=2, spawn=spawn, worker_ids=["worker-0", "worker-1"], drain_timeout_s=5)
    follow = asyncio.create_task(sup.run(bus, store))
    try:
        await asyncio.sleep(0.3)  # subscriptions in place
        await store.save_plan(_plan("missed", 2))  # saved, never published: as if sent during a blip

        async def heartbeat(plan_id: str) -> None:
            await bus.publish(subjects.planner_heartbeat(),
                              PlannerHeartbeat(planner_id="planner-0", plan_id=plan_id, sent_s=time.time()))

        await heartbeat("not-in-redis")  # Redis holds another plan: nothing to apply
        await asyncio.sleep(0.5)
        assert sup.running() == {} and sup.plan_id == ""
        await heartbeat("missed")
        assert await _until(lambda: sup.plan_id == "missed"), sup.plan_id
        assert sup.running() == {"tp1-dual": 2}

        await bus.publish(subjects.plan_publish(), _plan("shrink", 1))  # a published plan still wins
        assert await _until(lambda: sup.plan_id == "shrink"), sup.plan_id
        await heartbeat("missed")  # the planner still reports the id it reported before: no change
        await asyncio.sleep(0.5)
        assert sup.plan_id == "shrink" and sup.running() == {"tp1-dual": 1}
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        sup.stop_all(grace_s=5)
        await store.r.flushdb()
        await store.close()
        await bus.close()
        _stop(nats)
