"""Discrete-event simulation of one policy on one workload and cluster layout (virtual clock).

Events: arrivals, per-instance step ends, and a 1 s tick (load control, drops, heartbeats when idle).
After each event the simulator calls ``SchedulerCore.schedule(now)`` and applies its output exactly as
the scheduler service would publish it: placements, migrations at block boundaries, caps, drops.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from shared.instance_config import InstanceConfig, tp_of as gpus_of
from shared.policy.cost_model import CostModel
from shared.profiles import cost_model_named
from shared.policy.policies import make_core
from shared.policy.quality import QualityModel
from shared.policy.scheduling import SchedulerCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.types import InstanceView, RequestView, SchedulerOutput
from shared.sim.effects import ClusterEffects
from shared.sim.instance import SimInstance, SimReq
from shared.sim.planner import Drain, Effect, Launch, SimPlanner, SimPlannerSpec, replay_for
from shared.sim.workload import SimRequest

ARRIVAL, STEP_END, TICK = 0, 1, 2
PLAN, LAUNCHED, FREED = 3, 4, 5  # planner runs only (shared/sim/planner.py)
READY = 6  # an initial instance that becomes placeable later (``ready_s``: replays of a transition)
DISPATCH = 7  # a placed request reaches its instance (``ClusterEffects.dispatch_delay_s`` > 0)
TICK_S = 1.0  # the default tick and heartbeat period (``ClusterEffects`` sets others)


def parse_layout(layout: str, gpus: int) -> list[str]:
    """``tp1``/``tp2``/``tp4``: all instances of one degree; ``mixed``: ½ TP1, ¼ TP2, ¼ TP4 GPUs;
    or explicit ``tp1:8,tp2:2,tp4:1`` (instance counts). Returns one config name per instance."""
    if InstanceConfig.parse_or_none(layout):
        return [layout] * max(1, gpus // gpus_of(layout))
    if layout == "mixed":
        n4, n2 = gpus // 16, gpus // 8
        n1 = gpus - 4 * n4 - 2 * n2
        return ["tp1"] * n1 + ["tp2"] * n2 + ["tp4"] * n4
    out: list[str] = []
    for part in layout.split(","):
        name, count = part.split(":")
        out += [name.strip()] * int(count)
    return out


def _cost(cost: str | CostModel) -> CostModel:
    """A fresh model each call: the scheduler core refits its own online, the truth must not move."""
    return cost.copy() if isinstance(cost, CostModel) else cost_model_named(cost)


@dataclass(slots=True)
class SimResult:
    policy: str
    requests: list[SimReq]
    end_s: float
    tau_timeline: list[tuple[float, float]] = field(default_factory=list)  # (second, token-weighted mean τ)
    planner: dict | None = None  # planner runs: plans, changes, solve times (SimPlanner.summary)


class Simulator:
    def __init__(self, policy: str, requests: list[SimRequest], configs: list[str], cost_name: str | CostModel,
                 seed: int, block_len: int = 32, global_slo_s: float | None = None,
                 quality: QualityModel | None = None, truth_tps: dict[float, float] | None = None,
                 max_drain_s: float = 600.0, planner: SimPlannerSpec | None = None, gpus: int = 0,
                 ready_s: dict[int, float] | None = None, effects: ClusterEffects | None = None,
                 **policy_kwargs):
        self.policy = policy
        # what a replay of a window needs to run this same policy on another layout (shared/sim/replay.py)
        self.replay_kwargs = dict(policy_kwargs, block_len=block_len, global_slo_s=global_slo_s,
                                  quality=quality, truth_tps=truth_tps)
        self.cost_name, self.seed = cost_name, seed
        self.truth = _cost(cost_name)
        self.truth_tps = StepPredictor(truth_tps)
        self.core: SchedulerCore = make_core(policy, _cost(cost_name), StepPredictor(truth_tps),
                                             global_slo_s=global_slo_s, **policy_kwargs)
        self.effects = effects or ClusterEffects()
        if self.effects.cost_quantile > 0:
            self.core.cost.quantile = self.effects.cost_quantile
        self._dispatching: list[tuple[SimReq, SimInstance]] = []
        self.quality = (quality or QualityModel()).accuracy
        self.rng = random.Random(seed)
        self._jitter = random.Random(f"{seed}/steps")  # its own stream: runs without jitter stay as they were
        self.specs = requests
        self.block_len = block_len
        self.max_drain_s = max_drain_s
        self.insts = [SimInstance(f"i{k:02d}-{c}", c, k) for k, c in enumerate(configs)]
        self.ready_s = dict(ready_s or {})  # instance index → when it becomes placeable (default 0)
        self.by_id = {i.instance_id: i for i in self.insts}
        self.reqs: dict[str, SimReq] = {}
        self.events: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self._tau_bins: dict[int, list[float]] = {}
        self._pending_restart: SimInstance | None = None  # the instance whose step just ended
        self.planner: SimPlanner | None = None
        if planner is not None:
            candidates = policy_kwargs.get("candidates") or tuple(sorted(StepPredictor(truth_tps).tps, reverse=True))
            pool = gpus or sum(gpus_of(c) for c in configs)
            replay = replay_for(planner, simulate, policy, cost_name, seed, self.replay_kwargs)
            self.planner = SimPlanner.create(planner, pool, tuple(candidates), truth_tps, self.truth,
                                             self.core.params.budget_step_s, block_len, replay)
            for inst, node in zip(self.insts, self.planner.assign_nodes([i.config for i in self.insts])):
                inst.node, inst.state = node, "live"

    def _push(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self.events, (t, self._seq, kind, arg))
        self._seq += 1

    def run(self) -> SimResult:
        for inst in self.insts:
            if self.ready_s.get(inst.index, 0.0) > 0.0:
                self._push(self.ready_s[inst.index], READY, inst.index)
            else:
                self.core.on_instance_update(InstanceView(inst.instance_id, inst.config), 0.0)
        for k, spec in enumerate(self.specs):
            self._push(spec.arrival_s + self.effects.arrival_delay_s, ARRIVAL, k)
        self._push(0.0, TICK, 0)
        last_arrival = self.specs[-1].arrival_s if self.specs else 0.0
        if self.planner is not None:
            self._push(self.planner.spec.interval_s, PLAN, 0)
        now = 0.0
        while self.events:
            now, _, kind, arg = heapq.heappop(self.events)
            if kind == ARRIVAL:
                self._arrive(self.specs[arg], now)
            elif kind == STEP_END:
                self._step_end(self.insts[arg], now)
            elif kind == DISPATCH:
                self._dispatched(arg)
            elif kind == READY:
                inst = self.insts[arg]
                self.core.on_instance_update(InstanceView(inst.instance_id, inst.config), now)
            elif kind >= PLAN:
                self._planner_event(kind, arg, now, last_arrival)
            elif kind == TICK:
                self._tick(now, last_arrival)
                continue
            self._apply(self.core.schedule(now), now)
        for r in self.reqs.values():
            if r.outcome == "pending":
                r.outcome = "unfinished"
        timeline = [(float(s), v[0] / v[1]) for s, v in sorted(self._tau_bins.items()) if v[1] > 0]
        return SimResult(self.policy, list(self.reqs.values()), now, timeline,
                         self.planner.summary() if self.planner is not None else None)

    # --- events ---------------------------------------------------------------------------------------
    def _arrive(self, spec: SimRequest, now: float) -> None:
        r = SimReq(spec.request_id, spec.arrival_s, spec.arrival_s + spec.slo_s, spec.prompt_len,
                   spec.output_len, self.block_len, spec.min_threshold, spec.speed, dict(spec.speed_by_tau))
        self.reqs[r.request_id] = r
        self.core.on_arrival(RequestView(r.request_id, r.arrival_s, r.true_deadline_s, r.prompt_len,
                                         r.output_len, self.block_len, spec.priority, spec.min_threshold), now)

    def _step_end(self, inst: SimInstance, now: float) -> None:
        stepped = inst.in_step
        boundary, finished = inst.end_step(self.rng, self.truth_tps, self.quality)
        self._record_tau(stepped, now)
        for r in finished:
            r.finish_s, r.outcome = now + self.effects.result_delay_s, "finished"
            self.core.on_finished(r.request_id, now)
        for r in boundary:
            if r.move_to is not None:
                self._move(r, inst, r.move_to, now)
            else:
                self.core.on_progress(r.request_id, r.committed, r.blocks_refreshed, True, now)
        if now >= inst.next_heartbeat_s:
            self._heartbeat(inst, now)
        self._pending_restart = inst

    def _tick(self, now: float, last_arrival: float) -> None:
        busy = any(i.members for i in self.insts) or self.core.queue_length() > 0
        if not busy and now > last_arrival:
            return  # nothing left to do; no more ticks
        if now > last_arrival + self.max_drain_s:
            return  # give up on what is left (reported as unfinished)
        self._apply(self.core.schedule(now), now)
        self._push(now + self.effects.tick_s, TICK, 0)

    def _heartbeat(self, inst: SimInstance, now: float) -> None:
        steps, tps = inst.take_samples()
        self.core.on_instance_update(InstanceView(inst.instance_id, inst.config, 0, inst.state == "draining",
                                                  steps, tps), now)
        inst.next_heartbeat_s = now + self.effects.heartbeat_s

    # --- applying the scheduler's decisions ------------------------------------------------------------
    def _apply(self, out: SchedulerOutput, now: float) -> None:
        for rid in out.rejected:
            self.reqs[rid].outcome = "rejected"
        for rid in out.dropped:
            self.reqs[rid].outcome = "dropped"
        for rid, cap in out.caps.items():
            self.reqs[rid].cap = cap
        for m in out.migrations:
            r, src, dst = self.reqs[m.request_id], self.by_id[m.src_instance_id], self.by_id[m.dst_instance_id]
            if src.busy and r in src.in_step:
                r.move_to = dst  # the source already started its next step: move at its end
            else:
                self._move(r, src, dst, now)
        for p in out.placements:
            r = self.reqs[p.request_id]
            r.cap, r.deadline_s = p.cap, p.deadline_s
            if r.placed_s is None:
                r.placed_s = now
            if self.effects.dispatch_delay_s > 0:
                self._dispatching.append((r, self.by_id[p.instance_id]))
                self._push(now + self.effects.dispatch_delay_s, DISPATCH, len(self._dispatching) - 1)
            else:
                self.by_id[p.instance_id].members[r.request_id] = r
        restart, self._pending_restart = self._pending_restart, None
        if restart is not None:
            self._start(restart, now)
        for p in out.placements:
            self._start(self.by_id[p.instance_id], now)
        for m in out.migrations:
            self._start(self.by_id[m.dst_instance_id], now)
        if self.planner is not None:
            self._planner_apply(self.planner.reap(self.by_id, now), now)

    def _dispatched(self, k: int) -> None:
        """A placed request reaches its instance after the control plane's dispatch delay."""
        r, inst = self._dispatching[k]
        if r.outcome == "pending":
            inst.members[r.request_id] = r
            if self._pending_restart is None and not inst.busy:
                self._pending_restart = inst  # _apply (right after this event) starts it

    def _move(self, r: SimReq, src: SimInstance, dst: SimInstance, now: float) -> None:
        src.members.pop(r.request_id, None)
        dst.members[r.request_id] = r
        r.move_to = None

    def _start(self, inst: SimInstance, now: float) -> None:
        if inst.busy or not inst.members:
            return
        scale = self.effects.latency_scale(1 + sum(1 for i in self.insts if i.busy))
        scale *= self.effects.size_scale(inst.step_tokens()) * self.effects.time_scale(now)
        if self.effects.step_cv > 0:
            scale *= self.effects.step_factor(self._jitter)
        lat = inst.start_step(now, self.core.cost, self.truth, self.core.predictor, self.core.params.threshold,
                              scale)
        self._push(now + lat + self.effects.step_loop_s(len(inst.in_step)), STEP_END, inst.index)

    # --- the planner's hooks (planner runs only) ---------------------------------------------------------
    def _planner_event(self, kind: int, arg: int, now: float, last_arrival: float) -> None:
        assert self.planner is not None
        if kind == PLAN:
            self._planner_apply(self.planner.plan(self.specs, self.insts, now), now)
            if now + self.planner.spec.interval_s <= last_arrival:
                self._push(now + self.planner.spec.interval_s, PLAN, 0)
            return
        inst = self.insts[arg]
        if kind == LAUNCHED:
            if inst.state != "launching":  # drained while loading: it never serves
                return
            inst.state = "live"
            self.core.on_instance_update(InstanceView(inst.instance_id, inst.config), now)
        else:
            inst.state = "gone"
        self._planner_apply(self.planner.advance(self.insts, now), now)

    def _planner_apply(self, effects: list[Effect], now: float) -> None:
        """Carry out the planner's effects, in order."""
        for e in effects:
            if isinstance(e, Launch):
                self.add_instance(e.config, e.node, e.ready_s).state = "launching"
                continue
            inst = self.by_id[e.instance_id]
            if isinstance(e, Drain):
                inst.state = "draining"
                self.core.on_instance_update(InstanceView(inst.instance_id, inst.config, 0, True), now)
                continue
            inst.state = "stopping"
            if e.lost:
                self.core.on_instance_lost(inst.instance_id, now)
            self.schedule_free(inst, e.free_s)

    def add_instance(self, config: str, node: int, ready_s: float) -> SimInstance:
        """A launched instance: holds its GPUs now, placeable (registered with the core) at ``ready_s``."""
        inst = SimInstance(f"i{len(self.insts):02d}-{config}", config, len(self.insts), node=node)
        self.insts.append(inst)
        self.by_id[inst.instance_id] = inst
        self._push(ready_s, LAUNCHED, inst.index)
        return inst

    def schedule_free(self, inst: SimInstance, t: float) -> None:
        self._push(t, FREED, inst.index)

    def _record_tau(self, stepped: list[SimReq], now: float) -> None:
        if not stepped:
            return
        b = self._tau_bins.setdefault(int(now), [0.0, 0.0])
        for r in stepped:
            b[0] += r.tau
            b[1] += 1.0


def simulate(policy: str, requests: list[SimRequest], configs: list[str], cost_name: str | CostModel, seed: int,
             **kwargs) -> SimResult:
    return Simulator(policy, requests, configs, cost_name, seed, **kwargs).run()
