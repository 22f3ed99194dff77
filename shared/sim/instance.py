"""A simulated worker instance: continuous step-level batching, refresh/reuse steps, per-request τ.

The τ choice is ``shared.policy.threshold.choose_threshold`` (the worker's own function). Step latency
comes from the ground-truth cost model; each block takes block ÷ (the ground-truth tokens per step of
the chosen τ × the request's own speed) steps on average (``_block_commit``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from shared.policy.cost_model import CostModel
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import ThresholdParams, batch_cost, choose_threshold, planning_deadline_left
from shared.policy.types import StepSample, TpsSample


@dataclass(slots=True, eq=False)
class SimReq:
    request_id: str
    arrival_s: float
    true_deadline_s: float
    prompt_len: int
    output_len: int
    block_len: int
    min_threshold: float
    speed: float = 1.0  # × the ground-truth tokens per step (SimRequest.speed)
    speed_by_tau: dict[float, float] = field(default_factory=dict)  # SimRequest.speed_by_tau
    deadline_s: float = 0.0  # the one the policy plans against (from the placement)
    cap: float = 1.0
    committed: int = 0
    block_done: int = 0  # committed tokens in the current block
    block_steps_left: int = 0  # steps the current block still takes (drawn: _block_commit)
    block_mean: float = 0.0  # the tokens per step that draw was made at
    blocks_refreshed: int = 0
    needs_refresh: bool = True
    tau: float = 0.9
    tau_tokens: float = 0.0  # Σ τ × tokens committed at τ
    acc_tokens: float = 0.0  # Σ accuracy(τ) × tokens
    refresh_steps: int = 0
    reuse_steps: int = 0
    step_s: float = 0.0  # Σ latency of the steps it took part in (the live worker_forward_ms)
    placed_s: float | None = None
    finish_s: float | None = None
    outcome: str = "pending"  # pending | finished | dropped | rejected
    move_to: "SimInstance | None" = None  # deferred migration (if the source was mid-step)

    @property
    def full_len(self) -> int:
        return self.prompt_len + self.output_len


@dataclass(slots=True, eq=False)
class SimInstance:
    instance_id: str
    config: str
    index: int
    members: dict[str, SimReq] = field(default_factory=dict)
    in_step: list[SimReq] = field(default_factory=list)
    busy: bool = False
    step_samples: list[StepSample] = field(default_factory=list)
    tps: dict[float, list[int]] = field(default_factory=dict)  # τ -> [tokens, steps] since last heartbeat
    next_heartbeat_s: float = 0.0
    node: int = -1  # planner runs: the node holding its GPUs (shared/sim/planner.py)
    state: str = "live"  # launching | live | draining | stopping | gone (planner runs only change it)

    def step_tokens(self) -> int:
        """The tokens the next step runs: a refreshing request its whole sequence, the others a block."""
        return sum(r.full_len if r.needs_refresh else r.block_len for r in self.members.values())

    def start_step(self, now_s: float, cost: CostModel, truth: CostModel, predictor: StepPredictor,
                   params: ThresholdParams, scale: float = 1.0) -> float:
        """Choose τ for everyone and return the step's latency (the caller schedules its end); ``scale``
        stretches the ground truth (a CPU shared with other instances and services)."""
        batch = list(self.members.values())
        n, block = len(batch), batch[0].block_len
        full_sum = sum(r.full_len for r in batch)
        tokens = self.step_tokens()
        bc = batch_cost(cost, self.config, full_sum, n, block)
        for r in batch:
            r.tau = choose_threshold(
                masked_left=r.output_len - r.committed,
                n_refresh=-(-r.output_len // r.block_len) - r.blocks_refreshed,
                deadline_left_s=planning_deadline_left(r.arrival_s, r.deadline_s, now_s, params.margin),
                cap=r.cap, min_threshold=r.min_threshold, batch=bc, predictor=predictor, params=params)
        latency = truth.latency(self.config, tokens) * scale
        for r in batch:
            r.step_s += latency
        self.step_samples.append(StepSample(tokens, latency))
        self.in_step = batch
        self.busy = True
        return latency

    def end_step(self, rng: random.Random, truth_tps: StepPredictor, quality) -> tuple[list[SimReq], list[SimReq]]:
        """Commit tokens; returns (requests now at a block boundary, finished requests)."""
        boundary, finished = [], []
        for r in self.in_step:
            k = _block_commit(r, truth_tps.tokens_per_step(r.tau) * r.speed_by_tau.get(r.tau, r.speed), rng)
            if r.needs_refresh:
                r.refresh_steps += 1
                r.blocks_refreshed += 1
                r.needs_refresh = False
            else:
                r.reuse_steps += 1
            r.committed += k
            r.block_done += k
            r.tau_tokens += r.tau * k
            r.acc_tokens += quality(r.tau) * k
            stat = self.tps.setdefault(r.tau, [0, 0])
            stat[0] += k
            stat[1] += 1
            if r.committed >= r.output_len:
                finished.append(r)
            elif r.block_done >= r.block_len:
                r.block_done = 0
                r.needs_refresh = True
                boundary.append(r)
        for r in finished:
            del self.members[r.request_id]
        self.in_step = []
        self.busy = False
        return boundary, finished

    def take_samples(self) -> tuple[list[StepSample], list[TpsSample]]:
        steps, self.step_samples = self.step_samples, []
        tps = [TpsSample(t, v[0], v[1]) for t, v in sorted(self.tps.items())]
        self.tps = {}
        return steps, tps


def _block_commit(r: SimReq, mean: float, rng: random.Random) -> int:
    """Tokens ``r`` commits this step. A measured tokens per step is a ratio of totals (tokens ÷ steps),
    so a block of B tokens takes B / mean steps on average: the number of steps is drawn (stochastic
    rounding) when the block starts or τ changes, and the block's tokens are spread over them. Drawing
    each step's tokens around the mean and cutting the last one at the block's end instead takes
    ceil-like step counts: 4 steps for a block of 16 at 4.47 tokens per step (3.58 asked), 3 at 7.1 (2.25)."""
    left = min(r.block_len - r.block_done, r.output_len - r.committed)
    if r.block_steps_left <= 0 or mean != r.block_mean:
        s = left / max(mean, 1e-9)
        r.block_steps_left = max(1, min(left, int(s) + (1 if rng.random() < s - int(s) else 0)))
        r.block_mean = mean
    k = -(-left // r.block_steps_left)
    r.block_steps_left -= 1
    return k
