"""The reconfiguration planner inside the simulator: plan every interval in virtual time and execute
plans with drain, teardown and launch delays — the simulated twin of the planner service and the plan
executor.

Every ``interval_s`` the simulator calls ``SimPlanner.plan``, which runs the planning round
(``shared.policy.planner.round.plan_round``, the planner service's own) on the arrivals of the last
``window_s`` seconds against the plan in force. A changed plan gives each node a target layout; the
planner moves nodes towards their targets **rolling**, at most ``max_nodes_changing`` nodes at a time (a
whole-cluster switch would otherwise leave nothing to serve during the launch delay):

1. instances the node no longer wants are **drained** (``drain.to_drain``, the supervisor's rule): the
   scheduler core places nothing new on them and migrates their requests away at block boundaries
   (``SchedulerCore._migrate``); a request no other instance has room for keeps running there;
2. a draining instance with no requests left is removed; its GPUs are free ``teardown_s`` later;
3. wanted instances are launched on the node as soon as its free GPUs allow; each becomes placeable
   ``launch_delay_s`` after its launch (weights load, warm-up).

The planner reads the simulator's instances and returns effects (``Launch``, ``Drain``, ``Free``); the
simulator applies them, in order, and owns every instance's state. GPUs are accounted per node, so a
launch never overlaps the instance it replaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.instance_config import tp_of
from shared.policy.cost_model import CostModel
from shared.policy.planner.configs import config_specs
from shared.policy.planner.drain import Running, to_drain, to_launch
from shared.policy.planner.placement import place
from shared.policy.planner.round import RoundInput, RoundKnobs, plan_round
from shared.policy.planner.types import ConfigSpec, Layout
from shared.policy.step_predictor import LLADA_TPS_PRIOR
from shared.sim.instance import SimInstance
from shared.sim.replay import ReplayCheck, SimulateFn
from shared.sim.workload import SimRequest


@dataclass(slots=True, frozen=True)
class SimPlannerSpec:
    interval_s: float = 10.0  # planning period (virtual seconds)
    window_s: float = 30.0  # arrivals the planner looks at
    n_classes: int = 8
    gpus_per_node: int = 4
    configs: tuple[str, ...] = ("tp1", "tp2", "tp4")  # offered to the MILP (those the cost model prices)
    launch_delay_s: float = 20.0  # launch → placeable (load weights, warm up)
    teardown_s: float = 2.0  # empty → GPUs free
    max_nodes_changing: int = 1  # rolling reconfiguration
    hysteresis: float = 0.10
    utilization: float = 0.8  # ρ: plan instances to be busy at most this fraction of the time
    slo_margin: float = 1.0
    time_limit_s: float = 10.0
    mip_gap: float = 0.01
    # A changed plan must beat the plan in force by this much SLO attainment in a replay of the window
    # (shared/sim/replay.py: the MILP has no queues); None: changes are taken on the MILP's word.
    replay_margin: float | None = 0.02
    peak_bin_s: float = 10.0  # plan for the busiest bin of the window (0: for its mean rate)

    def knobs(self) -> RoundKnobs:
        """The round's knobs. The simulated pool is fixed (``fixed_pool``): idle GPUs are waste."""
        return RoundKnobs(window_s=self.window_s, n_classes=self.n_classes, peak_bin_s=self.peak_bin_s,
                          utilization=self.utilization, slo_margin=self.slo_margin, hysteresis=self.hysteresis,
                          time_limit_s=self.time_limit_s, mip_gap=self.mip_gap, fixed_pool=True)


@dataclass(frozen=True, slots=True)
class Launch:
    config: str
    node: int
    ready_s: float  # placeable from then on


@dataclass(frozen=True, slots=True)
class Drain:
    instance_id: str  # a live instance: nothing new placed on it, its requests migrate away


@dataclass(frozen=True, slots=True)
class Free:
    instance_id: str
    free_s: float  # its GPUs are free then
    lost: bool  # it was placeable: the scheduler core forgets it (a launch still loading never was)


Effect = Launch | Drain | Free


def node_sizes(gpus: int, per_node: int) -> list[int]:
    full, rest = divmod(gpus, per_node)
    return [per_node] * full + ([rest] if rest else [])


def replay_for(spec: SimPlannerSpec, simulate: SimulateFn, policy: str, cost: CostModel | str, seed: int,
               sim_kwargs: dict) -> ReplayCheck | None:
    """The replay check of ``spec`` (None when off): a change pays a teardown and a launch."""
    if spec.replay_margin is None:
        return None
    return ReplayCheck(simulate, policy, cost, margin=spec.replay_margin, hysteresis=spec.hysteresis,
                       transition_s=spec.launch_delay_s + spec.teardown_s, seed=seed, sim_kwargs=sim_kwargs)


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
    spec: SimPlannerSpec
    thresholds: dict[float, float]
    block_len: int
    nodes: list[int] = field(default_factory=list)  # GPUs per node
    configs: list[ConfigSpec] = field(default_factory=list)
    target: list[dict[str, int]] = field(default_factory=list)  # per node: wanted instances
    pending: list[list[str]] = field(default_factory=list)  # per node: launches waiting for GPUs
    records: list[PlanRecord] = field(default_factory=list)
    draining: list[str] = field(default_factory=list)  # instance ids, in drain order
    launched: int = 0
    drained: int = 0
    replay: ReplayCheck | None = None

    @classmethod
    def create(cls, spec: SimPlannerSpec, gpus: int, candidates: tuple[float, ...],
               tps: dict[float, float] | None, cost: CostModel, budget_step_s: float, block_len: int,
               replay: ReplayCheck | None = None) -> SimPlanner:
        prior = dict(tps or LLADA_TPS_PRIOR)
        thresholds = {c: prior[c] for c in candidates if c in prior} or prior
        offered = [g for g in spec.configs if g in cost.curves]
        nodes = node_sizes(gpus, spec.gpus_per_node)
        return cls(spec, thresholds, block_len, nodes, config_specs(cost, offered, budget_step_s),
                   target=[{} for _ in nodes], pending=[[] for _ in nodes], replay=replay)

    # --- the initial layout ------------------------------------------------------------------------
    def assign_nodes(self, configs: list[str]) -> list[int]:
        """Nodes for the static start layout (one config per instance), by the planner's placement rule."""
        counts: dict[str, int] = {}
        for g in configs:
            counts[g] = counts.get(g, 0) + 1
        placed = place(counts, {g: tp_of(g) for g in counts}, self.nodes, None)
        if placed is None:
            raise ValueError(f"start layout {counts} does not fit nodes {self.nodes}")
        per_node, _ = placed
        slots = [(n, g) for n, node in enumerate(per_node) for g, c in sorted(node.items()) for _ in range(c)]
        out = []
        for g in configs:
            k = next(i for i, (_, name) in enumerate(slots) if name == g)
            out.append(slots.pop(k)[0])
        self.target = [dict(n) for n in per_node]
        return out

    # --- planning ------------------------------------------------------------------------------------
    def plan(self, arrivals: Sequence[SimRequest], insts: Sequence[SimInstance], now: float) -> list[Effect]:
        cur = Layout(tuple(dict(n) for n in self.target))  # the plan in force (as the live planner)
        plan = plan_round(RoundInput(arrivals, now, cur, self.configs, list(self.nodes), self.spec.knobs(),
                                     self.block_len, self.thresholds, observed_since_s=0.0),
                          self.replay.confirm if self.replay is not None else None)
        self.records.append(PlanRecord(round(now, 6), plan.changed, plan.solve_s, plan.status,
                                       dict(plan.instances), plan.objectives.get("unserved_frac", 0.0),
                                       plan.objectives.get("quality", 0.0), plan.reason))
        if plan.changed:
            self.target = [dict(n) for n in plan.nodes]
            for queue in self.pending:
                queue.clear()  # re-derived from the new target by advance()
        return self.advance(insts, now)

    # --- executing ----------------------------------------------------------------------------------
    @staticmethod
    def _node_insts(insts: Sequence[SimInstance], n: int, states: tuple[str, ...]) -> list[SimInstance]:
        return [i for i in insts if i.node == n and i.state in states]

    def _busy_node(self, insts: Sequence[SimInstance], n: int) -> bool:
        """Mid-transition: something is draining, stopping, launching or waiting for GPUs."""
        return bool(self.pending[n] or self._node_insts(insts, n, ("draining", "stopping", "launching")))

    def _node_matches(self, insts: Sequence[SimInstance], n: int) -> bool:
        have: dict[str, int] = {}
        for inst in self._node_insts(insts, n, ("live", "launching")):
            have[inst.config] = have.get(inst.config, 0) + 1
        for g in self.pending[n]:
            have[g] = have.get(g, 0) + 1
        return have == {g: c for g, c in self.target[n].items() if c}

    def advance(self, insts: Sequence[SimInstance], now: float) -> list[Effect]:
        """Start transitions on nodes off target (rolling), then launch what free GPUs allow."""
        out: list[Effect] = []
        changing = sum(1 for n in range(len(self.nodes)) if self._busy_node(insts, n))
        for n in range(len(self.nodes)):
            if self._node_matches(insts, n) or self._busy_node(insts, n):
                continue
            if changing >= self.spec.max_nodes_changing:
                break
            out += self._retarget(insts, n, now)
            changing += 1
        for n in range(len(self.nodes)):
            out += self._launch_ready(insts, n, now)
        return out

    def _retarget(self, insts: Sequence[SimInstance], n: int, now: float) -> list[Effect]:
        running = self._node_insts(insts, n, ("live", "launching"))
        view = [Running(i.instance_id, i.config, len(i.members)) for i in running]
        state = {i.instance_id: i.state for i in running}
        out = [self._drain(iid, state[iid], now) for iid in to_drain(view, self.target[n])]
        launch = to_launch(view, self.target[n])
        self.pending[n] = [g for g, c in sorted(launch.items(), key=lambda x: -tp_of(x[0])) for _ in range(c)]
        return out

    def _drain(self, instance_id: str, state: str, now: float) -> Effect:
        self.drained += 1
        if state == "launching":  # never served anything: stop loading
            return Free(instance_id, now + self.spec.teardown_s, lost=False)
        self.draining.append(instance_id)
        return Drain(instance_id)

    def _free_gpus(self, insts: Sequence[SimInstance], n: int) -> int:
        held = self._node_insts(insts, n, ("live", "launching", "draining", "stopping"))
        return self.nodes[n] - sum(tp_of(i.config) for i in held)

    def _launch_ready(self, insts: Sequence[SimInstance], n: int, now: float) -> list[Effect]:
        queue, free = self.pending[n], self._free_gpus(insts, n)
        out: list[Effect] = []
        while queue and tp_of(queue[0]) <= free:
            g = queue.pop(0)
            free -= tp_of(g)
            out.append(Launch(g, n, now + self.spec.launch_delay_s))
            self.launched += 1
        return out

    def reap(self, by_id: Mapping[str, SimInstance], now: float) -> list[Effect]:
        """Draining instances with nothing left are removed; their GPUs free after teardown."""
        if not self.draining:
            return []
        empty = [iid for iid in self.draining if not by_id[iid].members and not by_id[iid].busy]
        for iid in empty:
            self.draining.remove(iid)
        return [Free(iid, now + self.spec.teardown_s, lost=True) for iid in empty]

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
