"""The simulated side of ``dilaserve experiment``: the same requests through ``shared/sim`` (in process),
on as many instances as the cluster has workers, priced by the cluster's measured step profile, with
the policy settings the live services run (shared/config.py defaults through shared/policy/live.py) and
the live-cluster effects measured in the live runs (shared/sim/effects.py)."""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from shared.config import SchedulerConfig, WorkerConfig
from shared.policy.cost_model import CostModel
from shared.policy.live import live_policy_kwargs
from shared.policy.quality import QualityModel
from shared.profiles import read_profile
from shared.sim.effects import ClusterEffects
from shared.sim.engine import SimResult, simulate
from shared.sim.report import summarize
from shared.sim.workload import SimRequest
from tooling.experiment_workload import Request

SIM_CONFIG = "tp1"  # the simulator's name for the workers' one configuration


def profile_cost(path: Path) -> CostModel:
    data = read_profile(path)
    if data is None:
        raise ValueError(f"no step profile at {path}: run `dilaserve profile` first")
    return CostModel.from_profile(data, SIM_CONFIG)


def scaled(cost: CostModel, factor: float) -> CostModel:
    """Every curve's latencies × ``factor``."""
    return CostModel({n: [(x, y * factor) for x, y in zip(c.xs, c.ys)] for n, c in cost.curves.items()},
                     cost.learning_rate)


def quality_model(path: str | None, measured: dict[float, float]) -> tuple[QualityModel | None, str]:
    """``--quality``: a QualityModel JSON or a ``dilaserve eval`` JSON (its threshold rows on the dual
    cache, strict decoding as τ 1); else the accuracy per τ measured in the live runs; else none."""
    if path:
        data = json.loads(Path(path).read_text())
        if "results" in data:
            return QualityModel.from_points(eval_points(data)), path
        return QualityModel.from_data(data), path
    if measured:
        return QualityModel.from_points(measured), "live"
    return None, "none"


def eval_points(data: dict) -> dict[float, float]:
    pts = {}
    for r in data["results"]:
        if r.get("decoding") == "threshold" and r.get("cache") == "dual" and r.get("threshold") is not None:
            pts[float(r["threshold"])] = float(r["accuracy"])
        elif r.get("decoding") == "strict":
            pts[1.0] = float(r["accuracy"])
    if not pts:
        raise ValueError("the eval JSON has no threshold rows on the dual cache")
    return pts


def measured_effects(runs: list[dict], cores: float) -> dict[float, ClusterEffects]:
    """Per rate: the control-plane delays (median over runs of the idle warm-up's p50 per hop), the CPU
    the services and load generator used during that rate's replays, the live periods, and how much
    the live steps of one size vary (median over runs of ``step_spread``'s coefficient of variation)."""
    from tooling.experiment_metrics import median_part

    sc, wc = SchedulerConfig(), WorkerConfig()
    delays = dict(arrival_delay_s=median_part(runs, "to_scheduler_ms"), dispatch_delay_s=median_part(runs, "to_worker_ms"),
                  result_delay_s=median_part(runs, "result_return_ms"))
    cvs = [r["step_spread"]["cv"] for r in runs if (r.get("step_spread") or {}).get("cv") is not None]
    out = {}
    for rps in sorted({r["rps"] for r in runs}):
        busy = [r["cpu_cores"]["services"] for r in runs if r["rps"] == rps and r.get("cpu_cores")]
        out[rps] = ClusterEffects(**delays, heartbeat_s=wc.heartbeat_interval_s, tick_s=sc.lc_period_s,
                                  cpu_cores=cores, service_cores=statistics.median(busy) if busy else 0.0,
                                  cost_quantile=sc.cost_quantile, step_cv=statistics.median(cvs) if cvs else 0.0)
    return out


def with_speeds(requests: list[Request], speeds: dict[str, list[float]], seed: int,
                own: dict[str, dict[float, float]] | None = None) -> list[Request]:
    """Each request with its own decoding speeds at the τ they were measured live at (``own``, by request
    id), and for every other τ one drawn from those measured for its task (seeded by its id, the same
    draw for every policy); a task never measured keeps the mean speed."""
    out = []
    for r in requests:
        pool = speeds.get(r.shot.task)
        speed = random.Random(f"{seed}/{r.sim.request_id}").choice(pool) if pool else 1.0
        by_tau = tuple(sorted((own or {}).get(r.sim.request_id, {}).items()))
        out.append(replace(r, sim=replace(r.sim, speed=speed, speed_by_tau=by_tau)))
    return out


def speed_summary(speeds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per task: how many requests were measured and their speeds' p10 / p50 / p90."""
    def q(v: list[float], f: float) -> float:
        return v[min(len(v) - 1, int(f * len(v)))]
    return {t: {"n": len(v), "p10": q(v, 0.1), "p50": q(v, 0.5), "p90": q(v, 0.9)} for t, v in speeds.items() if v}


def sim_kwargs(policy: str, global_slo_s: float) -> dict:
    """The live scheduler's policy settings (its configuration defaults)."""
    sc = SchedulerConfig()
    kw = live_policy_kwargs(policy, drop_expired=sc.drop_expired, budget_step_s=sc.budget_step_s,
                            lc_period_s=sc.lc_period_s, place_safety=sc.place_safety)
    return dict(kw, global_slo_s=global_slo_s if policy == "tedi" else None)


@dataclass(frozen=True)
class SimSetup:
    """Everything but the policy, requests and effects: the same for every point."""
    workers: int
    cost: CostModel
    block_len: int
    quality: QualityModel | None
    truth_tps: dict[float, float] | None
    global_slo_s: float
    seed: int


def simulate_point(policy: str, requests: list[SimRequest], setup: SimSetup, effects: ClusterEffects) -> SimResult:
    return simulate(policy, requests, [SIM_CONFIG] * setup.workers, setup.cost, setup.seed,
                    block_len=setup.block_len, quality=setup.quality, truth_tps=setup.truth_tps or None,
                    effects=effects, **sim_kwargs(policy, setup.global_slo_s))


def step_scale(live_forward_s: dict[str, list[float]], res: SimResult) -> float | None:
    """How much slower the live steps ran than the simulated ones for the same requests: Σ live forward
    time / Σ simulated step time, over requests served in both (None: none were)."""
    live = sim = 0.0
    for r in res.requests:
        if r.finish_s is not None and live_forward_s.get(r.request_id):
            live += statistics.median(live_forward_s[r.request_id])
            sim += r.step_s
    return live / sim if live > 0 and sim > 0 else None


def summary(res: SimResult, duration_s: float) -> dict:
    return summarize(res, duration_s)


def simulate_repeats(policy: str, requests: list[SimRequest], setup: SimSetup, effects: ClusterEffects,
                     duration_s: float, step_scales: list[float],
                     spells: list[tuple[tuple[float, float], ...]] | None = None) -> dict:
    """One point simulated once, or with ``step_scales`` once per live repeat at that run's own machine
    speed, and with ``spells`` (one per repeat, or none) its speed over time: the mean of their
    summaries, with each repeat's attainment under ``repeats``."""
    if not step_scales:
        return summary(simulate_point(policy, requests, setup, effects), duration_s)
    spells = spells or [()] * len(step_scales)
    runs = [summary(simulate_point(policy, requests, setup,
                                   replace(effects, step_scale=s, step_scale_over_time=t)), duration_s)
            for s, t in zip(step_scales, spells, strict=True)]
    out = {k: _mean([r[k] for r in runs]) for k in runs[0]}
    out["repeats"] = [{"step_scale": s, "slo_attainment": r["slo_attainment"], "spells": [list(k) for k in t]}
                      for s, t, r in zip(step_scales, spells, runs)]
    return out


def _mean(values: list) -> float | None:
    if any(v is None for v in values):
        return None
    return round(statistics.fmean(values), 6)
