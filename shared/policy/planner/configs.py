"""The planner's configurations (``ConfigSpec``) priced by a cost model: one builder for the planner
service and the simulated planner."""

from __future__ import annotations

from shared.instance_config import cache_of, tp_of
from shared.policy.cost_model import CostModel
from shared.policy.planner.types import ConfigSpec, PlannerError


def config_spec(cost: CostModel, name: str, budget_step_s: float = 0.0) -> ConfigSpec:
    """Configuration ``name`` priced by its own curve in ``cost``; a name the model has no curve for is
    refused (pricing it with another configuration's curve would plan capacity that is not there).

    ``max_tokens`` is the scheduler's per-instance token budget when ``budget_step_s`` > 0, so the planner
    never counts on batches the scheduler would not form (b = 1 is never capped); else 0 (the curve's end).
    """
    curve = cost.curves.get(name)
    if curve is None:
        raise PlannerError(f"configuration {name!r} has no latency curve in the cost model "
                           f"(it has {sorted(cost.curves)})")
    cap = float(cost.budget_for(name, budget_step_s)) if budget_step_s > 0 else 0.0
    return ConfigSpec(name=name, tp=tp_of(name), cache=cache_of(name),
                      latency=tuple(zip(curve.xs, curve.ys)), max_tokens=cap)


def config_specs(cost: CostModel, names: list[str] | tuple[str, ...],
                 budget_step_s: float = 0.0) -> list[ConfigSpec]:
    """``config_spec`` for each name, in order."""
    return [config_spec(cost, n, budget_step_s) for n in names]
