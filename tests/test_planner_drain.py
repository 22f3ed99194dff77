"""The drain rule (shared/policy/planner/drain.py) the simulated planner and the node supervisor share."""

from __future__ import annotations

import asyncio

from services.supervisor.service import Supervisor
from shared.policy.planner.drain import Running, to_drain, to_launch
from shared.schemas.cluster import InstanceCount, NodePlan, Plan


def test_keeps_the_busiest_then_the_oldest():
    running = [Running("a", "tp1", 0), Running("b", "tp1", 3), Running("c", "tp1", 0), Running("d", "tp4", 1)]
    assert to_drain(running, {"tp1": 1, "tp4": 1}) == ["a", "c"]  # b holds requests: kept
    assert to_drain(running, {"tp1": 2}) == ["d", "c"]  # ties: the newest goes; in keep order
    assert to_drain(running, {}) == ["b", "d", "a", "c"]
    assert to_drain(running, {"tp1": 5, "tp4": 1}) == []


def test_launches_what_the_kept_ones_do_not_cover():
    running = [Running("a", "tp1"), Running("b", "tp1")]
    assert to_launch(running, {"tp4": 1, "tp1": 1, "tp2": 0}) == {"tp4": 1}
    assert to_launch(running, {"tp1": 3}) == {"tp1": 1} and to_launch([], {}) == {}


class _Gone:
    """A stand-in worker process that has already exited (drains at once)."""

    pid = 0
    popen = None

    def alive(self) -> bool:
        return False


def _plan(plan_id: str, n: int) -> Plan:
    ic = [InstanceCount(config="tp1-dual", count=n)]
    return Plan(plan_id=plan_id, created_s=0.0, instances=ic, reason="test", nodes=[NodePlan(node=0, instances=ic)])


def test_supervisor_drains_by_the_rule():
    sup = Supervisor(0, 3, lambda wid, cfg: _Gone(), worker_ids=["w0", "w1", "w2"])
    assert asyncio.run(sup.apply(_plan("grow", 3))).started == ["w0", "w1", "w2"]
    res = asyncio.run(sup.apply(_plan("shrink", 1)))  # no load seen on a node: the newest go
    assert sorted(res.drained) == ["w1", "w2"] and list(sup.instances) == ["w0"]
