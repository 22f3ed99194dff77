"""Build workloads and run every policy at every sweep point; returns the JSON report and raw results."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from shared.policy.cost_model import CostModel
from shared.policy.quality import QualityModel
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import batch_cost, time_left
from shared.profiles import cost_model_named
from shared.sim.effects import ClusterEffects
from shared.sim.engine import parse_layout, simulate
from shared.sim.planner import SimPlannerSpec
from shared.sim.report import latencies, summarize
from shared.sim.workload import (LengthScaling, SloClass, build_requests, load_trace, mean_multiplier,
                                 median, native_rps, phased_rows, rescale_arrivals, synthetic_rows)

GENERATORS = ("poisson", "gamma")


@dataclass(slots=True, frozen=True)
class Trace:
    """What the plots need from one run: sorted latencies of finished requests, τ over time."""

    latencies: list[float]
    tau_timeline: list[tuple[float, float]]


@dataclass(slots=True)
class SimSpec:
    trace: str = "azure_conv"
    gpus: int = 16
    layout: str = "tp1"
    config: str = "llada8b-gh200"
    policies: tuple[str, ...] = ("fcfs", "balance", "tedi", "dilaserve")
    duration_s: float | None = 120.0  # None: the whole trace once
    seed: int = 0
    scaling: LengthScaling = field(default_factory=LengthScaling)
    classes: list[SloClass] = field(default_factory=lambda: [SloClass("default", 1.0, 1.0)])
    base_latency_s: float | None = None  # None: solo latency of the median request at the top τ
    burst_cv: float = 4.0
    candidates: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    fixed_threshold: float = 0.9
    tedi_slo: str = "mean"  # tedi's one SLO under a class mix: traffic-weighted "mean" or "min"
    drop: bool = True  # dilaserve drops queued requests that can no longer make it
    reject: bool = False  # dilaserve refuses infeasible requests at arrival
    budget_step_s: float = 0.065  # per-instance token budget: most tokens whose step stays under this
    quality: QualityModel | None = None
    planner: SimPlannerSpec | None = None  # None: the static --layout (planner off)
    phase_rps: tuple[float, ...] = ()  # phased traces: one mean rate per phase
    effects: ClusterEffects = field(default_factory=ClusterEffects)  # live-cluster effects (default: none)


def base_latency(spec: SimSpec, cost: CostModel, prompt_median: float) -> float:
    """Latency of the median request alone on a TP1 instance at the highest τ (the SLO's unit)."""
    if spec.base_latency_s:
        return spec.base_latency_s
    cfg = "tp1" if "tp1" in cost.configs else cost.configs[0]
    s = spec.scaling
    blocks = -(-s.output_len // s.block_len)
    bc = batch_cost(cost, cfg, int(prompt_median) + s.output_len, 1, s.block_len)
    return time_left(s.output_len, blocks, max(spec.candidates), bc, StepPredictor())


def workload_rows(spec: SimSpec, rps: float | None):
    if spec.trace in GENERATORS:
        if rps is None:
            raise ValueError(f"--trace {spec.trace} needs --rps or --sweep-rps")
        return synthetic_rows(spec.trace, rps, spec.duration_s or 120.0, spec.seed, spec.burst_cv)
    if "," in spec.trace:
        return phased_rows(spec.trace.split(","), rps, spec.duration_s, spec.phase_rps)
    return rescale_arrivals(load_trace(spec.trace), rps, spec.duration_s)


def tedi_slo(spec: SimSpec, slo_scale: float, base: float) -> float:
    mult = mean_multiplier(spec.classes) if spec.tedi_slo == "mean" else min(c.multiplier for c in spec.classes)
    return mult * slo_scale * base


def run_point(spec: SimSpec, rps: float | None, slo_scale: float, base: float) -> tuple[dict, dict[str, Trace]]:
    rows = workload_rows(spec, rps)
    reqs = build_requests(rows, spec.scaling, spec.classes, slo_scale, base, spec.seed)
    configs = parse_layout(spec.layout, spec.gpus)
    span = spec.duration_s or (rows[-1].t if rows else 0.0)
    summaries, raw = {}, {}
    for name in spec.policies:
        kwargs = {"global_slo_s": tedi_slo(spec, slo_scale, base), "candidates": spec.candidates,
                  "fixed_threshold": spec.fixed_threshold, "budget_step_s": spec.budget_step_s}
        if name == "dilaserve":
            kwargs.update(drop_expired=spec.drop, reject_infeasible=spec.reject)
        if spec.planner is not None:
            kwargs.update(planner=spec.planner, gpus=spec.gpus)
        if not spec.effects.is_default():
            kwargs["effects"] = spec.effects
        res = simulate(name, reqs, configs, spec.config, spec.seed, block_len=spec.scaling.block_len,
                       quality=spec.quality, **kwargs)
        summaries[name] = summarize(res, span)
        if res.planner is not None:
            summaries[name]["planner"] = res.planner
        if "," in spec.trace and spec.duration_s:
            summaries[name]["attainment_by_phase"] = phase_attainment(res, spec.duration_s, spec.trace.count(",") + 1)
        raw[name] = Trace(latencies(res), res.tau_timeline)
    rate = rps if rps is not None else (len(rows) / span if span > 0 else 0.0)
    return {"rps": round(rate, 6), "slo_scale": round(slo_scale, 6), "requests": len(reqs),
            "policies": summaries}, raw


def phase_attainment(res, duration_s: float, phases: int) -> list[float]:
    """SLO attainment of the requests that arrived in each phase of a phased trace."""
    span = duration_s / phases
    met, tot = [0] * phases, [0] * phases
    for r in res.requests:
        k = min(phases - 1, int(r.arrival_s // span))
        tot[k] += 1
        met[k] += r.finish_s is not None and r.finish_s <= r.true_deadline_s + 1e-9
    return [round(m / t, 6) if t else None for m, t in zip(met, tot)]


def report_config(spec: SimSpec, base: float, prompt_median: float) -> dict:
    s = spec.scaling
    cfg = {
        "trace": spec.trace, "gpus": spec.gpus, "layout": spec.layout,
        "instances": parse_layout(spec.layout, spec.gpus), "config": spec.config,
        "policies": list(spec.policies), "duration_s": spec.duration_s, "seed": spec.seed,
        "output_len": s.output_len, "block_len": s.block_len, "prompt_scale": s.prompt_scale,
        "min_prompt": s.min_prompt, "max_prompt": s.max_prompt, "keep_output": s.keep_output,
        "median_prompt": prompt_median, "base_latency_s": round(base, 6),
        "slo_classes": [{"name": c.name, "fraction": c.fraction, "multiplier": c.multiplier,
                         "priority": c.priority, "min_threshold": c.min_threshold} for c in spec.classes],
        "thresholds": list(spec.candidates), "fixed_threshold": spec.fixed_threshold,
        "tedi_slo": spec.tedi_slo, "dilaserve_drop": spec.drop, "dilaserve_reject": spec.reject, "budget_step_s": spec.budget_step_s,
    }
    if not spec.effects.is_default():
        cfg["effects"] = spec.effects.as_dict()
    if spec.planner is not None:
        cfg["planner"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec.planner).items()}
    if "," in spec.trace:
        cfg["native_rps"] = [round(native_rps(load_trace(t)), 6) for t in spec.trace.split(",")]
        cfg["phase_rps"] = list(spec.phase_rps)
    elif spec.trace not in GENERATORS:
        cfg["native_rps"] = round(native_rps(load_trace(spec.trace)), 6)
    else:
        cfg["burst_cv"] = spec.burst_cv
    return cfg


def prompt_median(spec: SimSpec) -> float:
    srcs = ["azure_conv"] if spec.trace in GENERATORS else spec.trace.split(",")
    return median([spec.scaling.prompt(r.prompt) for src in srcs for r in load_trace(src)])


def run(spec: SimSpec, points: list[tuple[float | None, float]], progress=None) -> tuple[dict, list[dict[str, Trace]]]:
    cost = cost_model_named(spec.config)
    pm = prompt_median(spec)
    base = base_latency(spec, cost, pm)
    out, raws = [], []
    for rps, scale in points:
        point, raw = run_point(spec, rps, scale, base)
        out.append(point)
        raws.append(raw)
        if progress:
            progress(point)
    return {"config": report_config(spec, base, pm), "points": out}, raws


def dumps(report: dict) -> str:
    """Canonical JSON (sorted keys, NaN → null): the same seed gives byte-identical output."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(report), sort_keys=True, indent=2) + "\n"
