"""Enumerated columns j = (class k, threshold c, configuration g, operating batch b) of the planner MILP.

A column is one way to serve class k: every request runs at threshold c on an instance of g that
carries b such requests at a time. Its constants (docs/planner.md §Columns):

    n_k    = ⌈O_k / B⌉                                  refresh steps per request (fixed)
    U_kc   = max(0, O_k / T_c − n_k)                    reuse steps per request
    t_j    = n_k · L_g(b · F_k) + U_kc · L_g(b · r_kg)  time of one request (docs/design.md §4.1, pessimistic:
                                                        when one request refreshes, all b do)
    w_j    = t_j / b                                    instance-seconds per request on g
    σ_j    = (S'_k − t_j) / S'_k,  S'_k = slo_margin·S_k   relative SLO slack

with F_k = prompt + output tokens and r_kg the tokens of one reuse step (B for dual cache, the mean
block-to-end length for prefix cache, F_k without a cache). Columns with t_j > S'_k are not generated:
that is the per-class SLO constraint. Batch dependence is thereby linear in the MILP (y_j is a rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.policy.cost_model import CostModel
from shared.policy.planner.types import ConfigSpec, PlannerInput, WorkloadClass


@dataclass(frozen=True, slots=True)
class Column:
    k: int  # index into PlannerInput.classes
    c: float  # threshold
    g: int  # index into PlannerInput.configs
    b: int  # operating batch (concurrent requests of the class on one instance)
    t: float  # t_j seconds
    w: float  # w_j instance-seconds per request
    slack: float  # σ_j


def reuse_tokens(cls: WorkloadClass, cache: str) -> float:
    """r_kg: tokens executed by one request's reuse step under the cache mode."""
    if cache == "dual":
        return float(min(cls.block_len, cls.output_len))
    if cache == "prefix":
        # Block i (0-based) runs from its start to the end of the canvas: O − i·B tokens; mean over i.
        return cls.output_len - cls.block_len * (cls.blocks - 1) / 2.0
    return float(cls.full_len)


def request_time(cls: WorkloadClass, tokens_per_step: float, cfg: ConfigSpec, b: int,
                 latency: CostModel) -> float:
    """t_j for one column (seconds)."""
    n = cls.blocks
    reuse = max(0.0, cls.output_len / tokens_per_step - n)
    refresh_s = latency.latency_envelope(cfg.name, b * cls.full_len)
    reuse_s = latency.latency_envelope(cfg.name, b * reuse_tokens(cls, cfg.cache))
    return n * refresh_s + reuse * reuse_s


def latency_model(configs: list[ConfigSpec]) -> CostModel:
    """One CostModel over every configuration's curve (its monotone envelope is what columns use)."""
    return CostModel({cfg.name: list(cfg.latency) for cfg in configs})


def token_cap(cfg: ConfigSpec) -> float:
    return cfg.max_tokens if cfg.max_tokens > 0 else max(x for x, _ in cfg.latency)


def class_columns(k: int, cls: WorkloadClass, inp: PlannerInput, latency: CostModel) -> list[Column]:
    """Every SLO-feasible column of class k (may be empty: the class cannot be served at all)."""
    budget = inp.slo_margin * cls.slo_s
    cols = []
    for g, cfg in enumerate(inp.configs):
        for b in cfg.batch_sizes:
            if b > 1 and b * cls.full_len > token_cap(cfg):
                continue  # beyond the profiled range: do not trust extrapolation
            for c, tps in sorted(inp.thresholds.items(), reverse=True):
                t = request_time(cls, tps, cfg, b, latency)
                if t <= budget:
                    cols.append(Column(k=k, c=c, g=g, b=b, t=t, w=t / b, slack=(budget - t) / budget))
    return cols


def fastest_time(cls: WorkloadClass, inp: PlannerInput, latency: CostModel) -> float:
    """Lowest t over every configuration at the lowest threshold and b = 1 (for infeasibility reasons)."""
    tps = max(inp.thresholds.values())
    return min(request_time(cls, tps, cfg, 1, latency) for cfg in inp.configs)
