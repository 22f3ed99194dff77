"""Policies by name → a configured ``SchedulerCore`` (docs/design.md §7). The rules live in the core; a policy is
only a choice of switches, so no scheduling rule exists twice.

- ``fcfs``: FCFS order, fixed τ, no migration (INFaaS-like baseline).
- ``balance``: FCFS order, fixed τ, load-balancing migration at block boundaries (Llumnix-like).
- ``tedi``: the published policy: one deployment-wide SLO (so EDF = FCFS), slack-driven τ (§4.3),
  greedy caps over one SLO window (§4.4 "window"), migration; ignores priorities and quality floors.
- ``dilaserve``: ours: per-request deadlines, priority classes, EDF, quality floors, deadline-aware caps
  (§4.4 "deadline"), migration, and dropping queued requests that can no longer make their deadline;
  under overload it sheds queued work Moore–Hodgson style (the biggest requests of the lowest class
  first) rather than run everyone below τ 0.7, and its caps never go below that τ.
"""

from __future__ import annotations

from dataclasses import replace

from shared.policy.cost_model import CostModel
from shared.policy.scheduling import CoreParams, SchedulerCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import DEFAULT_CANDIDATES, ThresholdParams

POLICY_NAMES = ("fcfs", "balance", "tedi", "dilaserve")


def policy_params(name: str, *, global_slo_s: float | None = None, fixed_threshold: float = 0.9,
                  candidates: tuple[float, ...] = DEFAULT_CANDIDATES, **overrides) -> CoreParams:
    fixed = ThresholdParams(candidates=candidates, mode="fixed", fixed=fixed_threshold)
    slack = ThresholdParams(candidates=candidates, mode="deadline")
    if name == "fcfs":
        p = CoreParams(order="fcfs", use_priority=False, migrate=False, threshold=fixed)
    elif name == "balance":
        p = CoreParams(order="fcfs", use_priority=False, migrate=True, threshold=fixed)
    elif name == "tedi":
        if global_slo_s is None:
            raise ValueError("tedi needs the deployment-wide SLO (global_slo_s)")
        p = CoreParams(order="fcfs", use_priority=False, migrate=True, threshold=slack, load_control="window",
                       global_slo_s=global_slo_s, honour_floor=False)
    elif name == "dilaserve":
        p = CoreParams(order="edf", use_priority=True, migrate=True, threshold=slack, load_control="deadline",
                       drop_expired=True, shed_threshold=0.7, protect_admitted=True)
    else:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return replace(p, **overrides) if overrides else p


def make_core(name: str, cost: CostModel, predictor: StepPredictor, **kwargs) -> SchedulerCore:
    """A fresh ``SchedulerCore`` for policy ``name`` (see ``policy_params`` for keyword arguments)."""
    return SchedulerCore(policy_params(name, **kwargs), cost, predictor)
