"""One planning round (docs/planner.md, "The planning round"): the planner service and the simulated
planner both call ``plan_round``, so they estimate rates and apply the knobs the same way.

window of arrivals → rate estimate (busiest bin) → workload classes → ``solve_plan`` against the layout
in force (hysteresis, placement) → on a fixed pool, idle GPUs filled → optional confirmation (the replay
check) → the plan to execute, or the layout in force with the reason it is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from shared.policy.planner.milp import solve_plan
from shared.policy.planner.types import ArrivalSample, ConfigSpec, Layout, Plan, PlannerInput
from shared.policy.planner.workload import workload_classes
from shared.policy.step_predictor import LLADA_TPS_PRIOR

# Relative SLO slack beyond this earns nothing unless the pool is fixed (docs/planner.md §Objective).
SHRINKABLE_SLACK_CAP = 0.25


class Arrival(Protocol):
    """What the round reads of an arrival (``ArrivalSample``, the simulator's ``SimRequest``)."""

    @property
    def arrival_s(self) -> float: ...
    @property
    def prompt_len(self) -> int: ...
    @property
    def output_len(self) -> int: ...
    @property
    def slo_s(self) -> float: ...


class Confirm(Protocol):
    """Second opinion on a changed plan (``shared.sim.replay.ReplayCheck.confirm``): the window's
    arrivals in (end_s − span_s, end_s], the layout in force and the proposal → (take it, note)."""

    def __call__(self, window: Sequence[Arrival], end_s: float, span_s: float, current: Layout,
                 proposed: Layout) -> tuple[bool, str]: ...


@dataclass(frozen=True, slots=True)
class RoundKnobs:
    window_s: float = 60.0  # arrivals the round looks at
    n_classes: int = 8
    peak_bin_s: float = 10.0  # plan for the window's busiest bin of this length (0: its mean rate)
    utilization: float = 0.8  # ρ: plan instances to be busy at most this fraction of the time
    slo_margin: float = 1.0
    hysteresis: float = 0.10
    time_limit_s: float = 10.0
    mip_gap: float = 0.01
    allow_shrink: bool = False  # last stage: fewest GPUs instead of fewest instances
    # The GPU pool is paid for whether used or not: every GPU runs an instance (PlannerInput.fixed_pool),
    # SLO slack is uncapped and GPUs a changed plan still leaves idle run the smallest configuration.
    fixed_pool: bool = False
    slack_cap: float | None = None  # None: 1.0 on a fixed pool, else SHRINKABLE_SLACK_CAP


@dataclass(frozen=True, slots=True)
class RoundInput:
    arrivals: Sequence[Arrival]  # what was observed; the round takes those in its window
    now_s: float
    current: Layout | None  # the plan in force
    configs: list[ConfigSpec]
    gpus_per_node: list[int]
    knobs: RoundKnobs = RoundKnobs()
    block_len: int = 32
    thresholds: dict[float, float] | None = None  # τ → tokens/step (None: LLADA_TPS_PRIOR)
    observed_since_s: float | None = None  # arrivals were seen from then on (None: the whole window)


def window_span(now_s: float, window_s: float, observed_since_s: float | None) -> float:
    """Seconds of arrivals the round looks at: the window, shorter while less has been observed."""
    if observed_since_s is None:
        return window_s
    return max(0.0, min(window_s, now_s - observed_since_s))


def peak_factor(window: Sequence[Arrival], now: float, span: float, bin_s: float) -> float:
    """Busiest ``bin_s`` bin's arrival rate ÷ the window's mean rate (≥ 1): the MILP is a fluid model
    with no queueing, so it is given the window's peak rate, not its mean (bursts are what miss SLOs)."""
    if bin_s <= 0 or not window or span <= bin_s:
        return 1.0
    bins = [0] * max(1, int(span // bin_s))
    for a in window:
        bins[min(len(bins) - 1, int((now - a.arrival_s) // bin_s))] += 1
    return max(1.0, max(bins) * len(bins) / len(window))


def planner_input(inp: RoundInput, window: Sequence[Arrival], span: float) -> PlannerInput:
    k = inp.knobs
    samples = [ArrivalSample(a.arrival_s, a.prompt_len, a.output_len, a.slo_s) for a in window]
    rate_span = span / peak_factor(samples, inp.now_s, span, k.peak_bin_s) if span > 0 else 0.0
    classes = workload_classes(samples, rate_span, k.n_classes, inp.block_len) if rate_span > 0 else []
    cap = k.slack_cap if k.slack_cap is not None else (1.0 if k.fixed_pool else SHRINKABLE_SLACK_CAP)
    return PlannerInput(classes, list(inp.configs), thresholds=dict(inp.thresholds or LLADA_TPS_PRIOR),
                        gpus_per_node=list(inp.gpus_per_node), current=inp.current,
                        allow_shrink=k.allow_shrink, fixed_pool=k.fixed_pool, time_limit_s=k.time_limit_s,
                        mip_gap=k.mip_gap, hysteresis=k.hysteresis, slo_margin=k.slo_margin,
                        utilization=k.utilization, slack_cap=cap)


def fill_idle(nodes: list[dict[str, int]], gpus_per_node: list[int],
              configs: list[ConfigSpec]) -> list[dict[str, int]]:
    """Each node's GPUs left idle as instances of the smallest configuration (most throughput per GPU).
    Under ``fixed_pool`` the MILP already uses every usable GPU; this is for what it cannot plan."""
    small = min(configs, key=lambda c: (c.tp, c.name))
    tp = {c.name: c.tp for c in configs}
    out = []
    for node, gpus in zip(nodes, gpus_per_node):
        node = dict(node)
        free = gpus - sum(tp[g] * c for g, c in node.items())
        if free >= small.tp:
            node[small.name] = node.get(small.name, 0) + free // small.tp
        out.append(node)
    return out


def _totals(nodes: list[dict[str, int]]) -> dict[str, int]:
    return Layout(tuple(nodes)).totals()


def kept(plan: Plan, current: Layout, note: str) -> Plan:
    """``plan`` turned down after the MILP proposed it: the layout in force, the proposal's objectives."""
    nodes = [dict(sorted((g, c) for g, c in n.items() if c)) for n in current.nodes]
    return replace(plan, changed=False, instances=current.totals(), nodes=nodes,
                   reason=f"{plan.reason}; {note}")


def plan_round(inp: RoundInput, confirm: Confirm | None = None) -> Plan:
    """One round. ``changed``: the plan's ``nodes`` are the new target; else they are the layout in force
    and ``reason`` says why it is kept. Pure apart from what ``confirm`` does."""
    span = window_span(inp.now_s, inp.knobs.window_s, inp.observed_since_s)
    window = [a for a in inp.arrivals if inp.now_s - span < a.arrival_s <= inp.now_s]
    plan = solve_plan(planner_input(inp, window, span))
    if not plan.changed:
        return plan
    if inp.knobs.fixed_pool:
        plan.nodes = fill_idle(plan.nodes, inp.gpus_per_node, inp.configs)
        plan.instances = _totals(plan.nodes)
    if confirm is None or inp.current is None:
        return plan
    ok, note = confirm(window, inp.now_s, span, inp.current, Layout(tuple(plan.nodes)))
    return replace(plan, reason=f"{plan.reason}; {note}") if ok else kept(plan, inp.current, note)
