"""The reconfiguration planner inside the simulator (issue 5): plan every interval in virtual time and
execute plans with drain, teardown and launch delays — the simulated twin of the plan executor.

Every ``interval_s`` the planner bins the arrivals of the last ``window_s`` seconds into workload
classes and calls ``shared.policy.planner.milp.solve_plan`` with the current layout (hysteresis and
placement included), exactly as the planner service does. A changed plan gives each node a target
layout; the executor moves nodes towards their targets **rolling**, at most ``max_nodes_changing``
nodes at a time (a whole-cluster switch would otherwise leave nothing to serve during the launch
delay):

1. instances the node no longer wants are marked **draining**: the scheduler core places nothing new
   on them and migrates their requests away at block boundaries (``SchedulerCore._migrate``); a request
   for which no other instance has room keeps running there until it finishes;
2. a draining instance with no requests left is removed (``on_instance_lost``); its GPUs are free
   ``teardown_s`` later (process exit, memory release);
3. wanted instances are launched on the node as soon as its free GPUs allow; each becomes placeable
   ``launch_delay_s`` after its launch (weights load, warm-up).

Instance GPUs are accounted per node, so a launch never overlaps the instance it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.policy.cost_model import GPUS_PER_CONFIG, CostModel
from shared.policy.planner.milp import (ArrivalSample, ConfigSpec, Layout, PlannerInput, solve_plan,
                                        workload_classes)
from shared.policy.planner.placement import place
from shared.policy.step_predictor import LLADA_TPS_PRIOR
from shared.policy.types import InstanceView
from shared.sim.replay import ReplayCheck, layout_configs, window_requests

if TYPE_CHECKING:
    from shared.sim.engine import Simulator
    from shared.sim.instance import SimInstance


@dataclass(slots=True, frozen=True)
class SimPlannerSpec:
    interval_s: float = 10.0  # planning period (virtual seconds)
    window_s: float = 30.0  # arrivals the planner looks at
    n_classes: int = 8
    gpus_per_node: int = 4
    configs: tuple[str, ...] = ("tp1", "tp2", "tp4")  # TP degrees offered to the MILP (dual cache)
    launch_delay_s: float = 20.0  # launch → placeable (load weights, warm up)
    teardown_s: float = 2.0  # empty → GPUs free
    max_nodes_changing: int = 1  # rolling reconfiguration
    hysteresis: float = 0.10
    utilization: float = 0.8  # ρ: plan instances to be busy at most this fraction of the time
    slo_margin: float = 1.0
    # The GPU pool is fixed in a run, so idle GPUs are waste: let stage 2 spend all of them on SLO slack
    # (uncapped). The MILP's default cap of 0.25 is for allow_shrink, where stage 3 may then shrink.
    slack_cap: float = 1.0
    time_limit_s: float = 10.0
    mip_gap: float = 0.01
    # The pool is fixed: every GPU runs an instance, hysteresis ignores size (PlannerInput.fixed_pool) —
    # comparing instance counts of layouts that all fill the pool would only churn.
    fixed_pool: bool = True
    fill_idle: bool = True  # GPUs a plan still leaves idle run instances of the smallest configuration
    # A changed plan must beat the plan in force by this much SLO attainment in a replay of the window
    # (shared/sim/replay.py: the MILP has no queues); None: changes are taken on the MILP's word.
    replay_margin: float | None = 0.02
    peak_bin_s: float = 10.0  # plan for the busiest bin of the window (0: for its mean rate)


def node_sizes(gpus: int, per_node: int) -> list[int]:
    full, rest = divmod(gpus, per_node)
    return [per_node] * full + ([rest] if rest else [])


def config_specs(cost: CostModel, names: tuple[str, ...], budget_step_s: float) -> list[ConfigSpec]:
    """The simulated configurations as planner ``ConfigSpec``s (names = cost-model configs).

    ``max_tokens`` is the scheduler's per-instance token budget for the configuration, so the planner
    never counts on batches the scheduler would not form (an instance with room takes one request more
    only while its load stays within the budget; a lone request always fits: b = 1 is never capped)."""
    return [ConfigSpec(name=g, tp=GPUS_PER_CONFIG[g], cache="dual",
                       latency=tuple(zip(cost.curves[g].xs, cost.curves[g].ys)),
                       max_tokens=float(cost.budget_for(g, budget_step_s)))
            for g in names if g in cost.curves]


def peak_factor(window: list[ArrivalSample], now: float, span: float, bin_s: float) -> float:
    """Busiest ``bin_s`` bin's arrival rate ÷ the window's mean rate (≥ 1): the MILP is a fluid model
    with no queueing, so it is given the window's peak rate, not its mean (bursts are what miss SLOs)."""
    if bin_s <= 0 or not window or span <= bin_s:
        return 1.0
    bins = [0] * max(1, int(span // bin_s))
    for a in window:
        bins[min(len(bins) - 1, int((now - a.arrival_s) // bin_s))] += 1
    return max(1.0, max(bins) * len(bins) / len(window))


@dataclass(slots=True)
class PlanRecord:
    t_s: float
    changed: bool
    solve_s: float
    status: str
    instances: dict[str, int]
    unserved_frac: float
    quality: float
    reason: str


@dataclass(slots=True)
class SimPlanner:
    sim: "Simulator"
    spec: SimPlannerSpec
    thresholds: dict[float, float]
    nodes: list[int] = field(default_factory=list)  # GPUs per node
    configs: list[ConfigSpec] = field(default_factory=list)
    target: list[dict[str, int]] = field(default_factory=list)  # per node: wanted instances
    pending: list[list[str]] = field(default_factory=list)  # per node: launches waiting for GPUs
    records: list[PlanRecord] = field(default_factory=list)
    draining: list["SimInstance"] = field(default_factory=list)
    launched: int = 0
    drained: int = 0
    replay: ReplayCheck | None = None

    @classmethod
    def create(cls, sim: "Simulator", spec: SimPlannerSpec, gpus: int, candidates: tuple[float, ...],
               tps: dict[float, float] | None) -> "SimPlanner":
        prior = dict(tps or LLADA_TPS_PRIOR)
        thresholds = {c: prior[c] for c in candidates if c in prior} or prior
        p = cls(sim, spec, thresholds, node_sizes(gpus, spec.gpus_per_node),
                config_specs(sim.truth, spec.configs, sim.core.params.budget_step_s))
        if spec.replay_margin is not None:
            p.replay = ReplayCheck(sim.policy, sim.cost_name, margin=spec.replay_margin, hysteresis=spec.hysteresis,
                                   transition_s=spec.launch_delay_s + spec.teardown_s, seed=sim.seed,
                                   sim_kwargs=sim.replay_kwargs)
        p.target = [{} for _ in p.nodes]
        p.pending = [[] for _ in p.nodes]
        return p

    # --- the initial layout ------------------------------------------------------------------------
    def assign_nodes(self, insts: list["SimInstance"]) -> None:
        """Put the static start layout onto nodes (the planner's placement rule, no current layout)."""
        tp_of = {g: GPUS_PER_CONFIG[g] for g in GPUS_PER_CONFIG}
        counts: dict[str, int] = {}
        for inst in insts:
            counts[inst.config] = counts.get(inst.config, 0) + 1
        placed = place(counts, tp_of, self.nodes, None)
        if placed is None:
            raise ValueError(f"start layout {counts} does not fit nodes {self.nodes}")
        per_node, _ = placed
        slots = [(n, g) for n, node in enumerate(per_node) for g, c in sorted(node.items()) for _ in range(c)]
        for inst in insts:
            k = next(i for i, (_, g) in enumerate(slots) if g == inst.config)
            inst.node = slots.pop(k)[0]
            inst.state = "live"
        self.target = [dict(n) for n in per_node]

    # --- planning ------------------------------------------------------------------------------------
    def layout(self) -> Layout:
        """Current layout: live and launching instances plus queued launches (not draining ones)."""
        nodes: list[dict[str, int]] = [{} for _ in self.nodes]
        for inst in self.sim.insts:
            if inst.state in ("live", "launching"):
                nodes[inst.node][inst.config] = nodes[inst.node].get(inst.config, 0) + 1
        for n, queue in enumerate(self.pending):
            for g in queue:
                nodes[n][g] = nodes[n].get(g, 0) + 1
        return Layout(tuple(nodes))

    def plan(self, now: float) -> None:
        span = min(self.spec.window_s, now)  # the first windows are shorter than window_s
        window = [ArrivalSample(s.arrival_s, s.prompt_len, s.output_len, s.slo_s)
                  for s in self.sim.specs if now - span < s.arrival_s <= now]
        classes = workload_classes(window, span / peak_factor(window, now, span, self.spec.peak_bin_s),
                                   self.spec.n_classes, self.sim.block_len)
        cur = Layout(tuple(dict(n) for n in self.target))  # the plan in force (as the live planner)
        plan = solve_plan(PlannerInput(classes, self.configs, thresholds=self.thresholds,
                                       gpus_per_node=list(self.nodes), current=cur,
                                       time_limit_s=self.spec.time_limit_s, mip_gap=self.spec.mip_gap,
                                       hysteresis=self.spec.hysteresis, slo_margin=self.spec.slo_margin,
                                       utilization=self.spec.utilization, slack_cap=self.spec.slack_cap,
                                       fixed_pool=self.spec.fixed_pool))
        self.records.append(PlanRecord(round(now, 6), plan.changed, plan.solve_s, plan.status,
                                       dict(plan.instances), plan.objectives.get("unserved_frac", 0.0),
                                       plan.objectives.get("quality", 0.0), plan.reason))
        changed = plan.changed
        if changed and self.replay is not None:
            proposed = [self._filled(dict(n), n_i) for n_i, n in enumerate(plan.nodes)]
            verdict = self.replay.judge(window_requests(self.sim.specs, now - span, now), span,
                                        layout_configs(self.target), layout_configs(proposed))
            changed = verdict.changed
            rec = self.records[-1]
            rec.reason += "; " + verdict.note()
            rec.changed = changed
            if not changed:  # like a plan the MILP's own hysteresis kept: the record shows the layout in force
                rec.instances = Layout(tuple(self.target)).totals()
        if changed:
            self.target = [self._filled(dict(n), n_i) for n_i, n in enumerate(plan.nodes)]
            for queue in self.pending:
                queue.clear()  # re-derived from the new target by advance()
        self.advance(now)

    def _filled(self, node: dict[str, int], n: int) -> dict[str, int]:
        """The pool is fixed, so GPUs a plan leaves idle serve as extra capacity: fill them with the
        smallest configuration (most throughput per GPU). With ``fixed_pool`` the MILP already uses every
        usable GPU; this catches what it cannot (e.g. GPUs no offered configuration fits)."""
        if not self.spec.fill_idle or not self.configs:
            return node
        small = min(self.configs, key=lambda c: (c.tp, c.name))
        free = self.nodes[n] - sum(GPUS_PER_CONFIG[g] * c for g, c in node.items())
        if free >= small.tp:
            node[small.name] = node.get(small.name, 0) + free // small.tp
        return node

    # --- executing ----------------------------------------------------------------------------------
    def _node_insts(self, n: int, states: tuple[str, ...]) -> list["SimInstance"]:
        return [i for i in self.sim.insts if i.node == n and i.state in states]

    def _busy_node(self, n: int) -> bool:
        """Mid-transition: something is draining, stopping, launching or waiting for GPUs."""
        return bool(self.pending[n] or self._node_insts(n, ("draining", "stopping", "launching")))

    def _node_matches(self, n: int) -> bool:
        have: dict[str, int] = {}
        for inst in self._node_insts(n, ("live", "launching")):
            have[inst.config] = have.get(inst.config, 0) + 1
        for g in self.pending[n]:
            have[g] = have.get(g, 0) + 1
        return have == {g: c for g, c in self.target[n].items() if c}

    def advance(self, now: float) -> None:
        """Start transitions on nodes off target (rolling), then launch what free GPUs allow."""
        changing = sum(1 for n in range(len(self.nodes)) if self._busy_node(n))
        for n in range(len(self.nodes)):
            if self._node_matches(n) or self._busy_node(n):
                continue
            if changing >= self.spec.max_nodes_changing:
                break
            self._retarget(n, now)
            changing += 1
        for n in range(len(self.nodes)):
            self._launch_ready(n, now)

    def _retarget(self, n: int, now: float) -> None:
        want = dict(self.target[n])
        keep: list["SimInstance"] = []
        # Keep the busiest instances of each wanted configuration; drain the rest.
        for inst in sorted(self._node_insts(n, ("live", "launching")), key=lambda i: -len(i.members)):
            if want.get(inst.config, 0) > 0:
                want[inst.config] -= 1
                keep.append(inst)
            else:
                self._drain(inst, now)
        self.pending[n] = [g for g, c in sorted(want.items(), key=lambda x: -GPUS_PER_CONFIG[x[0]])
                           for _ in range(c)]

    def _drain(self, inst: "SimInstance", now: float) -> None:
        self.drained += 1
        if inst.state == "launching":  # never served anything: stop loading
            inst.state = "stopping"
            self.sim.schedule_free(inst, now + self.spec.teardown_s)
            return
        inst.state = "draining"
        self.draining.append(inst)
        self.sim.core.on_instance_update(InstanceView(inst.instance_id, inst.config, 0, True), now)

    def _free_gpus(self, n: int) -> int:
        used = sum(GPUS_PER_CONFIG[i.config] for i in self._node_insts(n, ("live", "launching", "draining",
                                                                          "stopping")))
        return self.nodes[n] - used

    def _launch_ready(self, n: int, now: float) -> None:
        queue = self.pending[n]
        while queue and GPUS_PER_CONFIG[queue[0]] <= self._free_gpus(n):
            g = queue.pop(0)
            inst = self.sim.add_instance(g, n, now + self.spec.launch_delay_s)
            inst.state = "launching"
            self.launched += 1

    def reap(self, now: float) -> None:
        """Draining instances with nothing left are removed; their GPUs free after teardown."""
        if not self.draining:
            return
        for inst in [i for i in self.draining if not i.members and not i.busy]:
            self.draining.remove(inst)
            inst.state = "stopping"
            self.sim.core.on_instance_lost(inst.instance_id, now)
            self.sim.schedule_free(inst, now + self.spec.teardown_s)

    def on_ready(self, inst: "SimInstance", now: float) -> None:
        if inst.state != "launching":
            return
        inst.state = "live"
        self.sim.core.on_instance_update(InstanceView(inst.instance_id, inst.config), now)
        self.advance(now)

    def on_freed(self, inst: "SimInstance", now: float) -> None:
        inst.state = "gone"
        self.advance(now)

    # --- report --------------------------------------------------------------------------------------
    def summary(self) -> dict:
        solves = sorted(r.solve_s for r in self.records)
        changes = [r for r in self.records if r.changed]
        return {
            "plans": len(self.records), "plan_changes": len(changes),
            "solve_s_p50": solves[len(solves) // 2] if solves else 0.0,
            "solve_s_max": solves[-1] if solves else 0.0,
            "instances_launched": self.launched, "instances_drained": self.drained,
            "changes": [{"t_s": r.t_s, "instances": r.instances, "reason": r.reason} for r in changes],
            "timeline": [{"t_s": r.t_s, "instances": r.instances, "changed": r.changed,
                          "unserved_frac": round(r.unserved_frac, 6), "quality": round(r.quality, 6)}
                         for r in self.records],
        }
