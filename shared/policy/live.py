"""What the live services need to build the policy objects from their settings (plain values in).

The scheduler service builds its ``SchedulerCore`` here; the worker takes the same policy's
``ThresholdParams`` and cost model for its per-step τ choice (``choose_threshold``).
"""

from __future__ import annotations

from pathlib import Path

from shared.policy.cost_model import CostModel
from shared.policy.policies import make_core, policy_params
from shared.policy.scheduling import SchedulerCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import ThresholdParams

# `dilaserve profile --json docs/results/profile_cpu.json` (docs/benchmarks.md) writes the small model's profile here.
PROFILE_PATH = Path(__file__).resolve().parents[2] / "docs" / "results" / "profile_cpu.json"


def live_cost_model(name: str, config: str) -> CostModel:
    """``""``: the small model's profile if it was written, else the built-in tiny-CPU default."""
    if not name:
        return CostModel.from_profile_json(PROFILE_PATH, config) if PROFILE_PATH.exists() else CostModel.tiny_cpu(config)
    return CostModel.named(name, config)


def live_policy_kwargs(policy: str, *, drop_expired: bool = False, budget_step_s: float = 0.5,
                       lc_period_s: float = 1.0) -> dict:
    """The scheduler settings that override the policy's defaults (``policy_params`` keywords): the live
    scheduler's core and the planner's replay of a window (shared/sim/replay.py) use the same ones."""
    kwargs: dict = {"budget_step_s": budget_step_s, "lc_period_s": lc_period_s}
    if policy == "dilaserve":  # the other policies never drop: their switch stays off
        kwargs["drop_expired"] = drop_expired
    return kwargs


def live_core(policy: str, cost: CostModel, *, global_slo_s: float = 0.0, drop_expired: bool = False,
              budget_step_s: float = 0.5, lc_period_s: float = 1.0) -> SchedulerCore:
    kwargs = live_policy_kwargs(policy, drop_expired=drop_expired, budget_step_s=budget_step_s,
                                lc_period_s=lc_period_s)
    return make_core(policy, cost, StepPredictor(), global_slo_s=global_slo_s or None, **kwargs)


def live_threshold_params(policy: str, global_slo_s: float = 0.0) -> ThresholdParams:
    return policy_params(policy, global_slo_s=global_slo_s or (1.0 if policy == "tedi" else None)).threshold
