"""The planner service's replay check (planner.replay_margin): the same ReplayCheck the simulated planner
uses, on the live window and the scheduler's cost model. No NATS or Redis: ``solve`` is the pure part."""

from __future__ import annotations

import time

from services.planner.main import replay_check
from services.planner.service import PlannerService, static_plan
from shared.config import Config
from shared.policy.cost_model import CostModel
from shared.policy.planner.types import ArrivalSample


def _service(replay_margin: float, transition_s: float) -> PlannerService:
    cfg = Config()
    cfg.planner.num_workers, cfg.planner.slots_per_node = 1, 2
    cfg.planner.replay_margin, cfg.planner.replay_transition_s = replay_margin, transition_s
    cfg.scheduler.cost_model = "tiny-cpu"  # the replay prices with the prior too, as the MILP below does
    cost = CostModel.tiny_cpu(cfg.planner.instance_config)
    svc = PlannerService(cfg.planner, None, None, None, cost, cfg.worker.block_length,
                         budget_step_s=cfg.scheduler.budget_step_s, replay=replay_check(cfg))
    svc.plan = static_plan(cfg.planner, time.time())
    return svc


def _busy_window(svc: PlannerService, now: float) -> None:
    # 2 req/s of 128-token outputs with a 3 s SLO for the last minute: more than one CPU worker carries
    for i in range(120):
        svc.window.append(ArrivalSample(now - 60.0 + 0.5 * i, 16, 128, 3.0))


def test_replay_off_by_default_and_the_milp_adds_a_worker():
    cfg = Config()
    assert cfg.planner.replay_margin < 0 and replay_check(cfg) is None
    svc = _service(-1.0, 5.0)
    now = time.time()
    _busy_window(svc, now)
    plan = svc.solve(now)
    assert plan.changed and plan.instances == {"tp1-dual": 2} and "replay" not in plan.reason


def test_replay_confirms_a_change_that_helps_and_vetoes_one_that_gains_nothing():
    now = time.time()
    svc = _service(0.02, 1.0)
    _busy_window(svc, now)
    plan = svc.solve(now)
    assert plan.changed and "replay attainment" in plan.reason and "(kept)" not in plan.reason
    # Light load on 2 workers: the MILP's last stage (fewest instances) proposes 1; in the replay both
    # meet every deadline at the same τ, so the replay keeps 2 — why replay_margin is off by default live,
    # where the planner also sizes the cluster.
    for margin, changed in ((-1.0, True), (0.02, False)):
        light = _service(margin, 1.0)
        light.plan = static_plan(light.cfg, now)
        light.plan.instances[0].count = light.plan.nodes[0].instances[0].count = 2
        for i in range(6):
            light.window.append(ArrivalSample(now - 60.0 + 10.0 * i, 16, 32, 30.0))
        shrink = light.solve(now)
        assert shrink.changed is changed and ("(kept)" in shrink.reason) is not changed, shrink.reason
