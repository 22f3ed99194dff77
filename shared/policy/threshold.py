"""Per-request threshold choice (docs/design.md §4.3): the highest τ whose predicted time left fits the deadline.

Called by the worker's step loop live and by the simulated instance in ``shared.sim``: the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.policy.cost_model import CostModel
from shared.policy.step_predictor import StepPredictor

DEFAULT_CANDIDATES = (0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(slots=True, frozen=True)
class ThresholdParams:
    """``mode="fixed"``: always ``fixed`` (baselines). ``mode="deadline"``: §4.3 with a safety margin:
    plan to finish by ``arrival + margin × SLO``."""

    candidates: tuple[float, ...] = DEFAULT_CANDIDATES
    mode: str = "deadline"
    fixed: float = 0.9
    margin: float = 0.8

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(sorted(self.candidates, reverse=True)))


@dataclass(slots=True, frozen=True)
class BatchCost:
    """Step latencies for a batch R: refresh (pessimistic: everyone refreshes) and reuse."""

    refresh_s: float
    reuse_s: float


def batch_cost(cost: CostModel, config: str, full_len_sum: int, n_requests: int, block_len: int) -> BatchCost:
    """Dual cache: a refresh step runs Σ full_len tokens, a reuse step B·|R| tokens."""
    return BatchCost(cost.latency(config, full_len_sum), cost.latency(config, block_len * n_requests))


def refresh_left(num_blocks: int, blocks_refreshed: int) -> int:
    """Blocks whose refresh step has not run yet (the current one included if it had none)."""
    return max(0, num_blocks - blocks_refreshed)


def time_left(masked_left: int, n_refresh: int, tau: float, batch: BatchCost, predictor: StepPredictor) -> float:
    steps = predictor.steps_left(masked_left, tau)
    reuse = max(0.0, steps - n_refresh)
    return n_refresh * batch.refresh_s + reuse * batch.reuse_s


def planning_deadline_left(arrival_s: float, deadline_s: float, now_s: float, margin: float) -> float:
    """Seconds left until the planning deadline ``arrival + margin × (deadline − arrival)``."""
    return arrival_s + margin * (deadline_s - arrival_s) - now_s


def allowed_thresholds(candidates: tuple[float, ...], cap: float, floor: float) -> tuple[float, ...]:
    """Candidates within [floor, cap], highest first; the floor wins over the cap (a quality promise)."""
    allowed = tuple(t for t in candidates if floor - 1e-9 <= t <= cap + 1e-9)
    if allowed:
        return allowed
    below_cap = [t for t in candidates if t >= floor - 1e-9]
    return (min(below_cap),) if below_cap else (floor,)


def choose_threshold(
    *,
    masked_left: int,
    n_refresh: int,
    deadline_left_s: float,
    cap: float,
    min_threshold: float,
    batch: BatchCost,
    predictor: StepPredictor,
    params: ThresholdParams,
) -> float:
    """τ for one request for the next step (docs/design.md §4.3).

    ``deadline_left_s`` should come from ``planning_deadline_left`` (it carries the safety margin).
    No candidate fits → the lowest allowed τ (the feasibility rule).
    """
    if params.mode == "fixed":
        return max(params.fixed, min_threshold)
    allowed = allowed_thresholds(params.candidates, cap, min_threshold)
    for tau in allowed:
        if time_left(masked_left, n_refresh, tau, batch, predictor) <= deadline_left_s:
            return tau
    return allowed[-1]
