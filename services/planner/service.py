"""Planner service (docs/design.md §4.5): keep the arrival window, solve the MILP every ``interval_s``, publish plans.

receive (the gateway's submissions, a plain core-NATS subscription: JetStream delivers the same messages
to it without this service ever acking or consuming them) → window of ``ArrivalSample``s → every
``interval_s`` the planning round (``shared.policy.planner.round.plan_round``, the simulated planner's
own) in a thread (CPU-bound) → ``Plan`` on ``subjects.plan_publish()`` and in Redis when it changed →
metrics (solve time, objectives, changes) → the actuator carries the plan out (``planner.actuator``:
the node supervisors that follow the published plan, or the Kubernetes worker Deployments;
services/planner/actuators).

On CPU the "GPUs" are worker slots: ``planner.nodes`` × ``planner.slots_per_node`` (default: one node
with ``num_workers`` slots); the configurations offered are ``planner.configs``, each priced by its own
curve in the scheduler's cost model (``config_specs`` refuses one the model has no curve for).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque

from services.planner.actuators import ActuationResult, Actuator, LocalActuator
from shared import subjects
from shared.config import PlannerConfig
from shared.policy.cost_model import CostModel
from shared.policy.planner.configs import config_specs
from shared.policy.planner.round import Confirm, RoundInput, RoundKnobs, plan_round
from shared.policy.planner.types import ArrivalSample, Layout
from shared.policy.planner.types import Plan as PolicyPlan
from shared.schemas.cluster import InstanceCount, NodePlan, Plan, PlannerHeartbeat
from shared.schemas.requests import SubmitRequest
from shared.telemetry.names import SPAN_PLANNER_SOLVE

log = logging.getLogger("dilaserve.planner")


def round_knobs(cfg: PlannerConfig) -> RoundKnobs:
    """The round's knobs from the ``planner`` settings (the rest at the round's defaults)."""
    return RoundKnobs(window_s=cfg.window_s, n_classes=cfg.n_classes, utilization=cfg.utilization,
                      hysteresis=cfg.hysteresis, time_limit_s=cfg.time_limit_s, mip_gap=cfg.mip_gap,
                      allow_shrink=cfg.allow_shrink)


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
                 budget_step_s: float = 0.0, replay: Confirm | None = None,
                 actuator: Actuator | None = None) -> None:
        self.cfg = cfg
        self.bus = bus
        self.store = store
        self.tel = tel
        self.block_length = block_length
        slots = cfg.slots_per_node or cfg.num_workers
        self.gpus_per_node = [slots] * max(1, cfg.nodes)
        names = [c.strip() for c in (cfg.configs or cfg.instance_config).split(",") if c.strip()]
        self.configs = config_specs(cost, names, budget_step_s)
        self.knobs = round_knobs(cfg)
        self.window: deque[ArrivalSample] = deque()
        self.observed_since_s: float | None = None  # set on start: no arrivals were seen before
        self.replay = replay  # planner.replay_margin >= 0: a change must win a replay of the window
        self.plan: Plan | None = None
        self.actuator: Actuator = actuator or LocalActuator()
        self.last_actuation: ActuationResult | None = None
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.observed_since_s = time.time()
        await self.actuator.start()
        stored = await self.store.load_plan()
        self.plan = stored or await self.initial_plan(self.observed_since_s)
        await self._publish(self.plan)
        self._subs = [await self.bus.subscribe(subjects.request_submit(lane), SubmitRequest, self.on_submit)
                      for lane in range(len(subjects.SUBMIT_STREAMS))]  # every lane a gateway may use
        # A stored plan is carried out again: a planner that died mid-change converges.
        self._tasks = [asyncio.create_task(self.plan_loop(stored)), asyncio.create_task(self.heartbeat_loop())]

    async def initial_plan(self, now_s: float) -> Plan:
        """What runs before any plan: what the actuator sees deployed, else ``num_workers`` x ``instance_config``."""
        try:
            seen = await self.actuator.observed()
        except Exception as exc:  # e.g. the API server briefly unreachable: start, the next plan corrects it
            log.warning("the %s actuator could not say what is deployed (%s): starting from the static plan",
                        self.actuator.name, exc)
            seen = None
        if not seen:
            return static_plan(self.cfg, now_s)
        ic = [InstanceCount(config=g, count=n) for g, n in sorted(seen.items()) if n > 0]
        return Plan(plan_id=uuid.uuid4().hex[:12], created_s=now_s, instances=ic, reason="as deployed",
                    nodes=[NodePlan(node=0, instances=ic)])

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.actuator.close()

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
        return self.run_round(self._trim(now_s), now_s)

    def run_round(self, window: list[ArrivalSample], now_s: float) -> PolicyPlan:
        """The planning round on ``window`` against the plan in force (no I/O: runs in a thread)."""
        current = layout_of(self.plan, len(self.gpus_per_node)) if self.plan is not None else None
        plan = plan_round(RoundInput(window, now_s, current, self.configs, list(self.gpus_per_node), self.knobs,
                                     self.block_length, observed_since_s=self.observed_since_s), self.replay)
        if not plan.changed:
            log.debug("layout kept: %s", plan.reason)
        return plan

    async def plan_once(self) -> Plan | None:
        """One planning round; returns the published plan when it changed."""
        now = time.time()
        window = self._trim(now)  # on the loop: on_submit appends to the deque there
        with self.tel.tracer.start_as_current_span(SPAN_PLANNER_SOLVE):
            result = await asyncio.get_running_loop().run_in_executor(None, self.run_round, window, now)
        self.tel.metrics.planner_solve(solve_s=result.solve_s, changed=result.changed,
                                       objectives={k: float(v) for k, v in result.objectives.items()})
        if not result.changed:
            return None
        new = to_wire(result, time.time())
        self.plan = new
        await self._publish(new)
        log.info("plan %s: %s (%s; solve %.3f s)", new.plan_id, result.instances, result.reason, result.solve_s)
        await self.actuate(new)
        return new

    async def actuate(self, plan: Plan) -> ActuationResult | None:
        """Have the actuator carry ``plan`` out; a failure is logged, the plan stays published."""
        try:
            self.last_actuation = await self.actuator.apply(plan)
        except Exception:
            log.exception("plan %s not carried out by the %s actuator", plan.plan_id, self.actuator.name)
            return None
        if not self.last_actuation.ok:
            log.warning("plan %s only partly in force: %s", plan.plan_id, self.last_actuation)
        return self.last_actuation

    async def _publish(self, plan: Plan) -> None:
        await self.store.save_plan(plan)
        await self.bus.publish(subjects.plan_publish(), plan)
        for ic in plan.instances:
            self.tel.metrics.instances(config=ic.config, count=ic.count)

    async def plan_loop(self, in_force: Plan | None = None) -> None:
        if in_force is not None:
            await self.actuate(in_force)
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
