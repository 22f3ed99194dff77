"""The worker's per-step τ choice: ``shared.policy.threshold.choose_threshold`` — the very function the
simulated instance calls (shared/sim/instance.py) — with the batch's cost from the cost model, each
request's deadline, the scheduler's cap and the request's ``min_threshold`` floor.

Also refits the worker's own cost model and step predictor from each step, and collects the samples the
heartbeat carries to the scheduler (which refits its copies the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.config import SchedulerConfig, WorkerConfig
from shared.instance_config import InstanceConfig
from shared.policy.cost_model import CostModel
from shared.policy.live import live_cost_model, live_threshold_params
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import (ThresholdParams, allowed_thresholds, batch_cost, choose_threshold,
                                     planning_deadline_left)
from shared.profiles import load_profiles, model_dir, read_tps_prior
from shared.schemas.cluster import StepLatencySample, ThresholdTpsSample

MAX_STEP_SAMPLES = 64  # per heartbeat (the newest)


@dataclass(slots=True)
class _Req:
    arrival_s: float
    deadline_s: float  # inf: no SLO
    cap: float
    floor: float
    full_len: int
    output_len: int
    num_blocks: int
    masked_left: int
    blocks_refreshed: int


class ThresholdControl:
    def __init__(self, params: ThresholdParams, cost: CostModel, predictor: StepPredictor, config: str,
                 block_length: int) -> None:
        self.params = params
        self.cost = cost
        self.predictor = predictor
        self.config = config
        self.block_length = block_length
        cost.ensure(config)
        self.reqs: dict[str, _Req] = {}
        self._steps: list[StepLatencySample] = []
        self._tps: dict[float, list[int]] = {}

    def initial(self, cap: float, floor: float | None) -> float:
        """τ before the first step: the highest the cap and floor allow (the fixed τ for fcfs/balance)."""
        if self.params.mode == "fixed":
            return max(self.params.fixed, floor or 0.0)
        return allowed_thresholds(self.params.candidates, cap, floor or 0.0)[0]

    def add(self, rid: str, arrival_s: float, deadline_s: float | None, cap: float, floor: float | None,
            prompt_len: int, output_len: int, masked_left: int, block_index: int, block_length: int) -> None:
        self.reqs[rid] = _Req(arrival_s, math.inf if deadline_s is None else deadline_s, cap, floor or 0.0,
                              prompt_len + output_len, output_len, -(-output_len // block_length), masked_left,
                              block_index)

    def set_cap(self, rid: str, cap: float) -> None:
        r = self.reqs.get(rid)
        if r is not None:
            r.cap = cap

    def choose(self, rids: list[str], now_s: float, keep) -> dict[str, float]:
        """τ for every request of the next step (``keep``: the ids still held; others are forgotten)."""
        for rid in [x for x in self.reqs if x not in keep]:
            del self.reqs[rid]
        batch = [self.reqs[r] for r in rids if r in self.reqs]
        bc = batch_cost(self.cost, self.config, sum(r.full_len for r in batch), max(1, len(batch)), self.block_length)
        out = {}
        for rid in rids:
            r = self.reqs.get(rid)
            if r is None:
                continue
            out[rid] = choose_threshold(
                masked_left=r.masked_left, n_refresh=max(0, r.num_blocks - r.blocks_refreshed),
                deadline_left_s=planning_deadline_left(r.arrival_s, r.deadline_s, now_s, self.params.margin),
                cap=r.cap, min_threshold=r.floor, batch=bc, predictor=self.predictor, params=self.params)
        return out

    def observe(self, elapsed_s: float, tokens_executed: int, requests, gap_before_s: float | None = None) -> None:
        """One engine step (``StepOutput`` fields): progress, online refit, heartbeat samples.
        ``gap_before_s``: the step loop's time outside the forward since the previous step came back
        (None after an idle wait), sent with the step's sample for ``dilaserve experiment``."""
        if tokens_executed > 0:
            self.cost.observe(self.config, tokens_executed, elapsed_s)
            self._steps.append(StepLatencySample(tokens=tokens_executed, latency_s=elapsed_s,
                                                 num_requests=len(requests), gap_before_s=gap_before_s))
            del self._steps[:-MAX_STEP_SAMPLES]
        for o in requests:
            k = len(o.committed_token_ids)
            r = self.reqs.get(o.request_id)
            if r is not None:
                r.masked_left = max(0, r.masked_left - k)
                if o.step_kind == "refresh":
                    r.blocks_refreshed = max(r.blocks_refreshed, o.block_index + 1)
            tau = round(float(o.threshold), 4)
            self.predictor.observe(tau, k, 1)
            stat = self._tps.setdefault(tau, [0, 0])
            stat[0] += k
            stat[1] += 1

    def take_samples(self) -> tuple[list[StepLatencySample], list[ThresholdTpsSample]]:
        steps, self._steps = self._steps, []
        tps = [ThresholdTpsSample(threshold=t, tokens=v[0], steps=v[1]) for t, v in sorted(self._tps.items())]
        self._tps = {}
        return steps, tps


def worker_threshold_control(sc: SchedulerConfig, wcfg: WorkerConfig, config: InstanceConfig) -> ThresholdControl:
    """The worker's controller under the scheduler's policy settings; its cost model starts from the
    profile measured on this worker's device kind (or the prior: shared/policy/live.py)."""
    profile = load_profiles(sc.cost_profile, model_dir(wcfg.model_dir)).get(config.device)
    cost = live_cost_model(sc.cost_model, config.name, {config.name: profile} if profile else None,
                           sc.cost_quantile)
    predictor = StepPredictor(read_tps_prior(model_dir(wcfg.model_dir)))
    return ThresholdControl(live_threshold_params(sc.policy, sc.global_slo_s), cost, predictor, config.name,
                            wcfg.block_length)
