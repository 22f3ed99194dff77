"""Replay check for planner proposals: is the proposed layout better in the simulator?

The planner's MILP is a fluid model: it has no queues, so it misjudges bursts — on the code trace's
bursts it proposes all-TP1 "to serve more tokens" while, with queues and deadlines, long prompts then
miss their SLOs (docs/planner.md). Before a changed plan is executed, the window's arrivals are replayed
in the discrete-event simulator, with the same scheduling policy and cost model, once on the current
layout and once on the proposed one (fresh clusters, same seed) — with the transition: the instances the
proposal shares with the current layout serve from the start, the ones it adds only after
``transition_s`` (teardown + launch), and the window is repeated until the proposal has served one whole
window after that (the next minutes are assumed to look like the last window). A change that pays off
only in steady state but costs capacity now loses the replay. The change goes ahead only if the
proposal's SLO attainment is higher by at least ``margin`` — or, attainment within ``margin``, its mean
threshold is higher by ``hysteresis``. The simulated planner and the planner service
call the same ``ReplayCheck`` (through ``confirm``, the planning round's second opinion); the simulator
itself is passed in (``simulate``), since the simulator runs the simulated planner that uses this check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.policy.cost_model import CostModel
from shared.policy.planner.types import Layout
from shared.sim.instance import SimReq
from shared.sim.workload import SimRequest


class SimulateFn(Protocol):
    """``shared.sim.engine.simulate``: a run whose ``requests`` are the simulated requests."""

    def __call__(self, policy: str, requests: list[SimRequest], configs: list[str], cost_name: str | CostModel,
                 seed: int, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    attainment: float  # fraction of the window's requests that met their deadline
    mean_threshold: float  # token-weighted τ of the finished ones (0 when none finished)


@dataclass(frozen=True, slots=True)
class ReplayVerdict:
    changed: bool
    current: ReplayOutcome
    proposed: ReplayOutcome

    def note(self) -> str:
        c, p = self.current, self.proposed
        return (f"replay attainment {c.attainment:.3f} -> {p.attainment:.3f}, τ {c.mean_threshold:.3f} -> "
                f"{p.mean_threshold:.3f}" + ("" if self.changed else " (kept)"))


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """Lexicographic like the MILP: attainment first — the proposal must win by ``margin``, or lose by
    less than ``margin`` and then raise the mean threshold by ``hysteresis`` (relative)."""

    simulate: SimulateFn
    policy: str
    cost: CostModel | str  # what the simulator prices steps with (a name or a fitted model)
    margin: float = 0.02
    hysteresis: float = 0.10
    transition_s: float = 0.0  # a replaced instance's GPUs serve nothing this long (teardown + launch)
    seed: int = 0
    sim_kwargs: dict = field(default_factory=dict)  # the policy's knobs (block_len, candidates, …)

    def outcome(self, requests: list[SimRequest], configs: list[str],
                ready_s: dict[int, float] | None = None) -> ReplayOutcome:
        """How ``requests`` fare on a fresh static cluster of ``configs`` (instance i placeable from
        ``ready_s[i]``, default at once)."""
        if not requests:
            return ReplayOutcome(1.0, 0.0)
        if not configs:
            return ReplayOutcome(0.0, 0.0)
        res = self.simulate(self.policy, requests, configs, self.cost, self.seed, ready_s=ready_s,
                            **self.sim_kwargs)
        reqs: list[SimReq] = res.requests
        met = sum(1 for r in reqs if r.finish_s is not None and r.finish_s <= r.true_deadline_s + 1e-9)
        done = [r for r in reqs if r.finish_s is not None]
        tokens = sum(r.committed for r in done)
        return ReplayOutcome(met / len(requests), sum(r.tau_tokens for r in done) / tokens if tokens else 0.0)

    def judge(self, window: list[SimRequest], window_s: float, current: list[str],
              proposed: list[str]) -> ReplayVerdict:
        """Current layout vs the change to ``proposed``, assuming the next while looks like the last
        ``window_s``: the window's arrivals are replayed back to back until the proposal has served one
        whole window after its transition (1 + ⌈transition_s / window_s⌉ copies). The instances both
        layouts share serve from the start, the ones the proposal adds only after ``transition_s``."""
        copies = 1 + math.ceil(self.transition_s / window_s) if window_s > 0 else 1
        requests = repeated(window, window_s, copies)
        cur = self.outcome(requests, current)
        kept, new = split_change(current, proposed)
        ready = {i: self.transition_s for i in range(len(kept), len(kept) + len(new))}
        res = self.outcome(requests, kept + new, ready)
        gain = res.attainment - cur.attainment
        better = gain >= self.margin or (
            gain > -self.margin and res.mean_threshold >= cur.mean_threshold * (1.0 + self.hysteresis) > 0)
        return ReplayVerdict(better, cur, res)

    def confirm(self, window: Sequence, end_s: float, span_s: float, current: Layout,
                proposed: Layout) -> tuple[bool, str]:
        """The planning round's ``Confirm``: ``judge`` on the window (end_s − span_s, end_s]."""
        v = self.judge(window_requests(window, end_s - span_s, end_s), span_s, layout_configs(current.nodes),
                       layout_configs(proposed.nodes))
        return v.changed, v.note()


def repeated(window: list[SimRequest], window_s: float, copies: int) -> list[SimRequest]:
    """``copies`` back-to-back copies of a window re-timed to start at 0 (ids made unique)."""
    if copies <= 1:
        return list(window)
    return [SimRequest(f"{r.request_id}#{k}", r.arrival_s + k * window_s, r.prompt_len, r.output_len, r.slo_s,
                       r.priority, r.min_threshold, r.cls) for k in range(copies) for r in window]


def split_change(current: list[str], proposed: list[str]) -> tuple[list[str], list[str]]:
    """``proposed`` as (instances the current layout already runs, instances to launch)."""
    left = list(current)
    kept, new = [], []
    for g in proposed:
        if g in left:
            left.remove(g)
            kept.append(g)
        else:
            new.append(g)
    return kept, new


def window_requests(arrivals: Iterable, start_s: float, end_s: float) -> list[SimRequest]:
    """Arrivals in (start_s, end_s] as simulator requests re-timed to start at 0. Accepts anything with
    ``arrival_s``, ``prompt_len``, ``output_len``, ``slo_s`` (``SimRequest``, the planner's ``ArrivalSample``)."""
    out = []
    for k, a in enumerate(a for a in arrivals if start_s < a.arrival_s <= end_s):
        out.append(SimRequest(getattr(a, "request_id", f"w{k}"), a.arrival_s - start_s, a.prompt_len,
                              a.output_len, a.slo_s, getattr(a, "priority", 0), getattr(a, "min_threshold", 0.0),
                              getattr(a, "cls", "default")))
    return out


def layout_configs(nodes: Iterable[dict[str, int]]) -> list[str]:
    """Per-node instance counts → one configuration name per instance."""
    return [g for node in nodes for g, c in sorted(node.items()) for _ in range(c)]
