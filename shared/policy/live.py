"""What the live services need to build the policy objects from their settings (plain values in).

The scheduler service builds its ``SchedulerCore`` here; the worker takes the same policy's
``ThresholdParams`` and cost model for its per-step τ choice (``choose_threshold``). Measured profiles
come in as data (shared/profiles.py reads them).
"""

from __future__ import annotations

from typing import Mapping

from shared.policy.cost_model import CostModel, profile_points, tiny_cpu_points
from shared.policy.policies import make_core, policy_params
from shared.policy.scheduling import SchedulerCore
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import ThresholdParams


def live_cost_model(name: str, config: str, profiles: Mapping[str, dict] | None = None,
                    quantile: float = 0.0) -> CostModel:
    """``name`` "" (``scheduler.cost_model``): one curve per measured profile (configuration name →
    ``dilaserve profile`` data), and ``config`` from the conservative prior when no profile covers it;
    otherwise a built-in model (``llada8b-gh200``, ``tiny-cpu`` = the prior alone). ``quantile`` > 0:
    heartbeats refit it toward that quantile of the measured steps (``scheduler.cost_quantile``)."""
    if name:
        cost = CostModel.named(name, config)
    else:
        curves = {cfg: profile_points(data) for cfg, data in (profiles or {}).items()}
        curves.setdefault(config, tiny_cpu_points())
        cost = CostModel(curves)
    cost.quantile = quantile or None
    return cost


def live_policy_kwargs(policy: str, *, drop_expired: bool = True, budget_step_s: float = 0.5,
                       lc_period_s: float = 1.0, place_safety: float = 0.0) -> dict:
    """The scheduler settings that override the policy's defaults (``policy_params`` keywords): the live
    scheduler's core and the planner's replay of a window (shared/sim/replay.py) use the same ones.
    ``place_safety`` 0 keeps the policy's own."""
    kwargs: dict = {"budget_step_s": budget_step_s, "lc_period_s": lc_period_s}
    if policy == "dilaserve":  # the other policies never drop: their switch stays off
        kwargs["drop_expired"] = drop_expired
    if place_safety > 0:
        kwargs["place_safety"] = place_safety
    return kwargs


def live_core(policy: str, cost: CostModel, *, global_slo_s: float = 0.0,
              tps_prior: dict[float, float] | None = None, **settings) -> SchedulerCore:
    """``settings``: the keywords of ``live_policy_kwargs``; ``tps_prior``: the model's own tokens per
    step per τ (shared/profiles.py ``read_tps_prior``), else the built-in prior."""
    return make_core(policy, cost, StepPredictor(tps_prior), global_slo_s=global_slo_s or None,
                     **live_policy_kwargs(policy, **settings))


def live_threshold_params(policy: str, global_slo_s: float = 0.0) -> ThresholdParams:
    return policy_params(policy, global_slo_s=global_slo_s or (1.0 if policy == "tedi" else None)).threshold
