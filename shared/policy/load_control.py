"""Load control (docs/design.md §4.4): per-request threshold caps so that the demand fits the supply.

Two rules, selected by ``LoadController.mode``:
- ``"window"`` — the published rule: one SLO window; requests sorted by progress (most advanced first)
  greedily get the highest τ such that granted + own demand + everyone later at the lowest τ fits
  supply × window.
- ``"deadline"`` — ours: requests in deadline order; the work due by each deadline must fit the supply
  until that deadline. Computed in O(n·|τ|) with a suffix minimum of slack. Requests that can no longer
  make their deadline impose no constraint of their own (their work still counts).
"""

from __future__ import annotations

import heapq
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
    droppable: bool = False  # still queued: may be shed (running requests never are)
    priority: int = 0  # higher = more important; lower classes are shed first
    start_by_s: float | None = None  # queued: latest start that still makes its (planning) deadline


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
             predictor: StepPredictor, base_threshold: float | None = None) -> dict[str, float]:
        """Caps for every item; ``supply_tps`` is executed tokens per second over the whole cluster.
        ``base_threshold``: caps never go below it (the load already fits there: see ``shed``)."""
        self.next_due_s = now_s + self.period_s
        if not items:
            return {}
        if self.mode == "window":
            return self._window_caps(items, supply_tps * window_s, predictor)
        return self._deadline_caps(items, supply_tps, now_s, predictor, base_threshold)

    def shed(self, queued: list[LoadItem], supply_tps: float, now_s: float, predictor: StepPredictor,
             plan_threshold: float) -> list[str]:
        """Moore–Hodgson admission: which queued requests to shed so the rest start in time at ``plan_threshold``.

        ``queued``: the queue in placement order, each with ``start_by_s``, the latest start that still
        makes its planning deadline at ``plan_threshold`` (set by the core). Request k starts once the
        queued work ahead of it has drained: it is on time if Σ_{j<k} demand_j ≤ supply × (start_by_k −
        now), demand at ``plan_threshold`` (or the request's floor, if higher). Whenever that fails, the
        admitted request (k included) of the lowest priority class with the largest demand is shed, until
        it holds. For one class this is the classic rule that maximises the number of jobs meeting their
        deadlines on one machine (Moore–Hodgson, 1968): shedding the biggest job frees the most time.
        """
        heap: list[tuple[int, float, int, str]] = []
        cum = 0.0  # demand of the admitted requests so far
        out: list[str] = []
        for k, item in enumerate(queued):
            tau = max(plan_threshold, item.min_threshold if self.honour_floor else 0.0)
            d = demand(item, tau, predictor)
            start_by = item.start_by_s if item.start_by_s is not None else item.deadline_s
            room = supply_tps * (start_by - now_s)
            if room < 0:
                out.append(item.request_id)  # can no longer start in time: hopeless
                continue
            heapq.heappush(heap, (item.priority, -d, k, item.request_id))
            cum += d
            while heap and cum - d > room:
                _, neg_d, j, rid = heapq.heappop(heap)
                cum += neg_d
                out.append(rid)
                if j == k:
                    break  # k itself was the one to go: nothing is left to check for it
        return out

    def _allowed(self, item: LoadItem, base: float | None = None) -> tuple[float, ...]:
        floor = item.min_threshold if self.honour_floor else 0.0
        if base is not None:
            floor = max(floor, base)
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
                       predictor: StepPredictor, base: float | None = None) -> dict[str, float]:
        order = sorted(range(len(items)), key=lambda i: items[i].deadline_s)
        allowed = [self._allowed(items[i], base) for i in order]
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
