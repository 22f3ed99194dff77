"""Planner service (DESIGN §4.5): keep the arrival window, solve the MILP every ``interval_s``, publish plans.

receive (the gateway's submissions, a plain core-NATS subscription: JetStream delivers the same messages
to it without this service ever acking or consuming them) → window of ``ArrivalSample``s → every
``interval_s`` ``workload_classes`` + ``solve_plan`` in a thread (CPU-bound) → ``Plan`` on
``subjects.plan_publish()`` and in Redis when it changed → metrics (solve time, objectives, changes).

On CPU the "GPUs" are worker slots: ``planner.nodes`` × ``planner.slots_per_node`` (default: one node
with ``num_workers`` slots); the configurations offered are ``tp1-<cache>`` (one slot per worker), priced
by the scheduler's cost model for that configuration.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import replace

from shared import subjects
from shared.config import PlannerConfig
from shared.instance_config import cache_of, tp_of
from shared.policy.cost_model import CostModel
from shared.policy.planner.milp import (ArrivalSample, ConfigSpec, Layout, PlannerInput, solve_plan,
                                        workload_classes)
from shared.policy.planner.types import Plan as PolicyPlan
from shared.schemas.cluster import InstanceCount, NodePlan, Plan, PlannerHeartbeat
from shared.schemas.requests import SubmitRequest
from shared.sim.replay import ReplayCheck, layout_configs, window_requests
from shared.telemetry.names import SPAN_PLANNER_SOLVE

log = logging.getLogger("dilaserve.planner")


def config_specs(cost: CostModel, names: list[str], budget_step_s: float = 0.0) -> list[ConfigSpec]:
    """Planner configurations priced by ``cost`` (a name it lacks uses its first curve: on CPU there is
    one, the tiny model's); ``max_tokens`` = the scheduler's per-worker token budget when given."""
    out = []
    for name in names:
        key = name if name in cost.curves else next(iter(cost.curves))
        curve = cost.curves[key]
        cap = float(cost.budget_for(key, budget_step_s)) if budget_step_s > 0 else 0.0
        out.append(ConfigSpec(name=name, tp=tp_of(name), cache=cache_of(name),
                              latency=tuple(zip(curve.xs, curve.ys)), max_tokens=cap))
    return out


def to_wire(plan: PolicyPlan, now_s: float, plan_id: str | None = None) -> Plan:
    """The policy's plan as the wire ``Plan``: totals, per-node counts, objective values."""
    return Plan(
        plan_id=plan_id or uuid.uuid4().hex[:12], created_s=now_s,
        instances=[InstanceCount(config=g, count=c) for g, c in sorted(plan.instances.items())],
        reason=plan.reason,
        nodes=[NodePlan(node=n, instances=[InstanceCount(config=g, count=c) for g, c in sorted(node.items()) if c])
               for n, node in enumerate(plan.nodes)],
        objectives={k: float(v) for k, v in plan.objectives.items()},
        solve_s=plan.solve_s, status=plan.status,
    )


def layout_of(plan: Plan, n_nodes: int) -> Layout:
    nodes: list[dict[str, int]] = [{} for _ in range(n_nodes)]
    if plan.nodes:
        for npl in plan.nodes:
            if npl.node < n_nodes:
                nodes[npl.node] = {ic.config: ic.count for ic in npl.instances}
    elif n_nodes:
        nodes[0] = {ic.config: ic.count for ic in plan.instances}
    return Layout(tuple(nodes))


def static_plan(cfg: PlannerConfig, now_s: float) -> Plan:
    """The layout the cluster starts with: ``num_workers`` × ``instance_config`` on node 0."""
    ic = [InstanceCount(config=cfg.instance_config, count=cfg.num_workers)]
    return Plan(plan_id=uuid.uuid4().hex[:12], created_s=now_s, instances=ic, reason="static",
                nodes=[NodePlan(node=0, instances=ic)])


class PlannerService:
    def __init__(self, cfg: PlannerConfig, bus, store, tel, cost: CostModel, block_length: int,
                 budget_step_s: float = 0.0, replay: ReplayCheck | None = None) -> None:
        self.cfg = cfg
        self.bus = bus
        self.store = store
        self.tel = tel
        self.block_length = block_length
        slots = cfg.slots_per_node or cfg.num_workers
        self.gpus_per_node = [slots] * max(1, cfg.nodes)
        names = [c.strip() for c in (cfg.configs or cfg.instance_config).split(",") if c.strip()]
        self.configs = config_specs(cost, names, budget_step_s)
        self.window: deque[ArrivalSample] = deque()
        self.replay = replay  # planner.replay_margin >= 0: a change must win a replay of the window
        self.plan: Plan | None = None
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.plan = await self.store.load_plan() or static_plan(self.cfg, time.time())
        await self._publish(self.plan)
        self._subs = [await self.bus.subscribe(subjects.request_submit(), SubmitRequest, self.on_submit)]
        self._tasks = [asyncio.create_task(self.plan_loop()), asyncio.create_task(self.heartbeat_loop())]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the window ---------------------------------------------------------------------------
    async def on_submit(self, s: SubmitRequest, headers: dict[str, str]) -> None:
        self.observe(s)

    def observe(self, s: SubmitRequest) -> None:
        slo = (s.deadline_s - s.arrival_s) if s.deadline_s is not None else self.cfg.default_slo_s
        if s.max_tokens > 0 and slo > 0:
            self.window.append(ArrivalSample(s.arrival_s, len(s.prompt_ids), s.max_tokens, slo))

    def _trim(self, now_s: float) -> list[ArrivalSample]:
        while self.window and self.window[0].arrival_s <= now_s - self.cfg.window_s:
            self.window.popleft()
        return sorted(self.window, key=lambda a: a.arrival_s)

    # -- planning -----------------------------------------------------------------------------
    def solve(self, now_s: float) -> PolicyPlan:
        window = self._trim(now_s)
        classes = workload_classes(window, self.cfg.window_s, self.cfg.n_classes, self.block_length)
        current = layout_of(self.plan, len(self.gpus_per_node)) if self.plan is not None else None
        plan = solve_plan(PlannerInput(
            classes, self.configs, gpus_per_node=list(self.gpus_per_node), current=current,
            allow_shrink=self.cfg.allow_shrink, time_limit_s=self.cfg.time_limit_s, mip_gap=self.cfg.mip_gap,
            hysteresis=self.cfg.hysteresis, utilization=self.cfg.utilization))
        if plan.changed and self.replay is not None and current is not None:
            verdict = self.replay.judge(window_requests(window, now_s - self.cfg.window_s, now_s), self.cfg.window_s,
                                        layout_configs(current.nodes), layout_configs(plan.nodes))
            plan = replace(plan, changed=verdict.changed, reason=f"{plan.reason}; {verdict.note()}")
            if not verdict.changed:
                log.info("proposed %s not taken: %s", plan.instances, verdict.note())
        return plan

    async def plan_once(self) -> Plan | None:
        """One planning round; returns the published plan when it changed."""
        now = time.time()
        with self.tel.tracer.start_as_current_span(SPAN_PLANNER_SOLVE):
            result = await asyncio.get_running_loop().run_in_executor(None, self.solve, now)
        self.tel.metrics.planner_solve(solve_s=result.solve_s, changed=result.changed,
                                       objectives={k: float(v) for k, v in result.objectives.items()})
        if not result.changed:
            return None
        new = to_wire(result, time.time())
        self.plan = new
        await self._publish(new)
        log.info("plan %s: %s (%s; solve %.3f s)", new.plan_id, result.instances, result.reason, result.solve_s)
        return new

    async def _publish(self, plan: Plan) -> None:
        await self.store.save_plan(plan)
        await self.bus.publish(subjects.plan_publish(), plan)
        for ic in plan.instances:
            self.tel.metrics.instances(config=ic.config, count=ic.count)

    async def plan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            if self.cfg.mode != "milp":
                continue
            try:
                await self.plan_once()
            except Exception:  # a bad window must not stop the loop; the current plan stays in force
                log.exception("planning failed")

    async def heartbeat_loop(self) -> None:
        while True:
            plan_id = self.plan.plan_id if self.plan is not None else ""
            try:
                await self.bus.publish(subjects.planner_heartbeat(),
                                       PlannerHeartbeat(planner_id=self.cfg.planner_id, plan_id=plan_id,
                                                        sent_s=time.time()))
            except Exception as exc:
                log.warning("heartbeat not sent: %s", exc)
            await asyncio.sleep(0.5)
