"""Load control (DESIGN §4.4): per-request threshold caps so that the demand fits the supply.

Two rules, selected by ``LoadController.mode``:
- ``"window"`` — the published rule: one SLO window; requests sorted by progress (most advanced first)
  greedily get the highest τ such that granted + own demand + everyone later at the lowest τ fits
  supply × window.
- ``"deadline"`` — ours: requests in deadline order; the work due by each deadline must fit the supply
  until that deadline. Computed in O(n·|τ|) with a suffix minimum of slack. Requests that can no longer
  make their deadline impose no constraint of their own (their work still counts).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import allowed_thresholds


@dataclass(slots=True)
class LoadItem:
    """One active (queued or running) request, as the load controller sees it."""

    request_id: str
    masked_left: int
    n_refresh: int
    full_len: int
    block_len: int
    progress: float  # fraction of the output committed
    deadline_s: float
    min_threshold: float = 0.0


def demand(item: LoadItem, tau: float, predictor: StepPredictor) -> float:
    """Executed tokens still needed: refresh_left · full_len + reuse_left(τ) · B."""
    reuse = max(0.0, predictor.steps_left(item.masked_left, tau) - item.n_refresh)
    return item.n_refresh * item.full_len + reuse * item.block_len


class LoadController:
    def __init__(self, candidates: tuple[float, ...], mode: str = "window", period_s: float = 1.0,
                 honour_floor: bool = True):
        if mode not in ("window", "deadline"):
            raise ValueError(f"unknown load-control mode {mode!r}")
        self.candidates = tuple(sorted(candidates, reverse=True))
        self.mode = mode
        self.period_s = period_s
        self.honour_floor = honour_floor
        self.next_due_s = float("-inf")

    def due(self, now_s: float) -> bool:
        return now_s >= self.next_due_s

    def caps(self, items: list[LoadItem], supply_tps: float, window_s: float, now_s: float,
             predictor: StepPredictor) -> dict[str, float]:
        """Caps for every item; ``supply_tps`` is executed tokens per second over the whole cluster."""
        self.next_due_s = now_s + self.period_s
        if not items:
            return {}
        if self.mode == "window":
            return self._window_caps(items, supply_tps * window_s, predictor)
        return self._deadline_caps(items, supply_tps, now_s, predictor)

    def _allowed(self, item: LoadItem) -> tuple[float, ...]:
        floor = item.min_threshold if self.honour_floor else 0.0
        return allowed_thresholds(self.candidates, 1.0, floor)

    def _window_caps(self, items: list[LoadItem], supply: float, predictor: StepPredictor) -> dict[str, float]:
        order = sorted(range(len(items)), key=lambda i: -items[i].progress)  # stable: ties keep input order
        allowed = [self._allowed(items[i]) for i in order]
        dmin = [demand(items[i], a[-1], predictor) for i, a in zip(order, allowed)]
        rest = sum(dmin)
        granted = 0.0
        caps: dict[str, float] = {}
        for k, i in enumerate(order):
            rest -= dmin[k]
            item, choice = items[i], allowed[k][-1]
            for tau in allowed[k]:
                d = demand(item, tau, predictor)
                if granted + d + rest <= supply:
                    choice = tau
                    break
            granted += demand(item, choice, predictor)
            caps[item.request_id] = choice
        return caps

    def _deadline_caps(self, items: list[LoadItem], supply_tps: float, now_s: float,
                       predictor: StepPredictor) -> dict[str, float]:
        order = sorted(range(len(items)), key=lambda i: items[i].deadline_s)
        allowed = [self._allowed(items[i]) for i in order]
        dmin = [demand(items[i], a[-1], predictor) for i, a in zip(order, allowed)]
        # slack[k]: supply until deadline k minus the minimum work due by then; inf when unconstrained.
        slack, cum = [0.0] * len(order), 0.0
        for k, i in enumerate(order):
            cum += dmin[k]
            horizon = items[i].deadline_s - now_s
            slack[k] = supply_tps * horizon - cum if supply_tps * horizon >= dmin[k] else float("inf")
        suffix_min, running = [0.0] * len(order), float("inf")
        for k in range(len(order) - 1, -1, -1):
            running = min(running, slack[k])
            suffix_min[k] = running
        extra = 0.0
        caps: dict[str, float] = {}
        for k, i in enumerate(order):
            item, choice = items[i], allowed[k][-1]
            for tau in allowed[k]:
                add = demand(item, tau, predictor) - dmin[k]
                if extra + add <= suffix_min[k]:
                    choice = tau
                    extra += add
                    break
            caps[item.request_id] = choice
        return caps
