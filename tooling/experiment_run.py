"""The sweep of ``dilaserve experiment``: the interleaved live runs, then the simulator on the same
requests, then the report (tooling/experiment.py is the command line)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from shared.policy.threshold import DEFAULT_CANDIDATES
from shared.profiles import SHIPPED_MODEL_DIR, profile_path
from shared.sim.effects import ClusterEffects
from tooling.experiment_calibrate import (calibrate, run_factors, run_gaps, run_spells, size_factors, slowdowns,
                                         speed_warning, step_factors)
from tooling.experiment_metrics import (GAPS, STEP_TIMES, STEPS, accuracy_by_tau, loop_overhead, speeds_by_request,
                                        speeds_by_task, step_overhead_s, step_spread, summarize_run, tokens_per_step)
from tooling.experiment_sim import SimSetup
from tooling.experiment_workload import Request, WorkloadSpec, build_workload, warmup_shots
from tooling.loadgen import SERVED, Outcome, overhead_parts

WARMUP_PROBLEMS = 256


@dataclass(frozen=True, slots=True)
class RunKey:
    repeat: int
    rps: float
    policy: str


def sweep_order(policies: list[str], rates: list[float], repeats: int) -> list[RunKey]:
    """Repeat by repeat; inside one, every rate with every policy, the policy order rotated by the repeat
    (so no policy always runs first after a rate change)."""
    out = []
    for k in range(repeats):
        for rps in rates:
            out += [RunKey(k, rps, policies[(i + k) % len(policies)]) for i in range(len(policies))]
    return out


@dataclass(frozen=True)
class ExperimentSpec:
    policies: list[str]
    rates: list[float]
    repeats: int
    workload: WorkloadSpec
    workers: int = 2
    warmup_s: float = 5.0
    timeout_s: float = 120.0
    quality: str | None = None
    sim_cores: float = 2.0
    model_dir: Path = SHIPPED_MODEL_DIR
    candidates: tuple[float, ...] = field(default=DEFAULT_CANDIDATES)

    def config(self) -> dict:
        w = self.workload
        return {"policies": self.policies, "rates": self.rates, "repeats": self.repeats, "workers": self.workers,
                "warmup_s": self.warmup_s, "timeout_s": self.timeout_s, "trace": w.trace, "duration_s": w.duration_s,
                "seed": w.seed, "slo_ms": w.slo_ms, "slo_classes": [dict(asdict(c), slo_ms=w.slo_ms_of(c))
                                                                  for c in w.classes],
                "tedi_slo_s": w.mean_slo_s(), "max_tokens": w.max_tokens, "block_len": w.block_len,
                "max_positions": w.max_positions, "tasks": list(w.tasks), "keep_output": w.keep_output,
                "rate_basis": w.rate_basis,
                "model_dir": str(self.model_dir), "sim_cores": self.sim_cores, "quality": self.quality}


Log = Callable[[str], None]


def run_record(key: RunKey, index: int, workload: list[Request], live, duration_s: float) -> dict:
    warm_ok = [o for o in live.warmup if o.kind == SERVED]
    wall = max(live.wall_s, 1e-9)
    return {"policy": key.policy, "rps": key.rps, "repeat": key.repeat, "order": index,
            "live": summarize_run(workload, live.outcomes, duration_s), "wall_s": round(live.wall_s, 3),
            "warmup_requests": len(live.warmup), "warmup_overhead_parts_p50_ms": overhead_parts(warm_ok),
            "cpu_cores": {k: round(v / wall, 4) for k, v in live.cpu_s.items()}, "run_dir": live.run_dir,
            "phases_s": live.phases_s, "step_spread": step_spread(live.steps)}


def progress_line(i: int, n: int, rec: dict, took_s: float) -> str:
    lv, c = rec["live"], rec["live"]["outcomes"]
    att = "n/a" if lv["slo_attainment"] is None else f"{lv['slo_attainment']:.3f}"
    p50 = "n/a" if lv["latency_p50_s"] is None else f"{lv['latency_p50_s']:.3f} s"
    errors = sum(c["http_errors_by_status"].values()) + c["connection_errors"]
    return (f"[{i + 1}/{n}] {rec['policy']} {rec['rps']:g} req/s repeat {rec['repeat'] + 1}: {lv['requests']} sent, "
            f"attainment {att}, p50 {p50}, refused {c['refused_deadline_unmeetable']}, errors {errors} "
            f"({took_s:.0f} s)")


def run_live_sweep(spec: ExperimentSpec, workloads: dict[float, list[Request]], warmup, out: Path,
                   log: Log) -> tuple[list[dict], list[tuple[RunKey, Request, Outcome]]]:
    from tooling.experiment_live import policy_env, run_live

    order = sweep_order(spec.policies, spec.rates, spec.repeats)
    env_of = {p: policy_env(p, spec.workload.mean_slo_s(), spec.workload.block_len) for p in spec.policies}
    out.mkdir(parents=True, exist_ok=True)
    runs, pairs = [], []
    for i, key in enumerate(order):
        t0 = time.perf_counter()
        run_dir = out / "runs" / f"{i:03d}-{key.policy}-{key.rps:g}-r{key.repeat}"
        live = run_live(run_dir, key.policy, workloads[key.rps], warmup, workers=spec.workers,
                        env=env_of[key.policy], warmup_s=spec.warmup_s, timeout_s=spec.timeout_s)
        rec = run_record(key, i, workloads[key.rps], live, spec.workload.duration_s)
        runs.append(rec)
        with (out / "runs.jsonl").open("a") as f:  # kept if a later run fails or the sweep is stopped
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        save_outcomes(run_dir, live.outcomes)
        (run_dir / STEPS).write_text(json.dumps(live.steps))
        (run_dir / GAPS).write_text(json.dumps(live.gaps))
        (run_dir / STEP_TIMES).write_text(json.dumps(live.step_times))
        pairs += [(key, w, o) for w, o in zip(workloads[key.rps], live.outcomes)]
        log(progress_line(i, len(order), rec, time.perf_counter() - t0))
    return runs, pairs


Pairs = list[tuple[RunKey, Request, Outcome]]
OUTCOMES = "outcomes.jsonl"  # in each run's folder: one line per request of the workload, in its order
SIM_ONLY = ("sim_cores", "quality")  # settings that change only the simulation: --resimulate may vary them


def live_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in SIM_ONLY}


def save_outcomes(run_dir: Path, outcomes: list[Outcome]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / OUTCOMES).write_text("".join(json.dumps(asdict(o), sort_keys=True) + "\n" for o in outcomes))


def load_sweep(out: Path, spec: ExperimentSpec, workloads: dict[float, list[Request]]) -> tuple[list[dict], Pairs]:
    """The runs and outcomes a finished sweep in ``out`` saved, checked against the spec given now."""
    saved = out / "experiment.json"
    if saved.exists() and live_config(json.loads(saved.read_text())["config"]) != live_config(spec.config()):
        raise ValueError(f"{saved} was run with other settings than these: give the sweep's own options")
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    pairs: Pairs = []
    for rec in runs:
        if rec["rps"] not in workloads or rec["policy"] not in spec.policies:
            raise ValueError(f"{out}: a run of {rec['policy']} at {rec['rps']} req/s is not in this sweep")
        path = Path(rec["run_dir"]) / OUTCOMES
        if not path.exists():
            raise ValueError(f"{path} is missing: this sweep was run before outcomes were saved")
        outcomes = [Outcome(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        key = RunKey(rec["repeat"], rec["rps"], rec["policy"])
        pairs += [(key, w, o) for w, o in zip(workloads[key.rps], outcomes, strict=True)]
    return runs, pairs


def run_sim(spec: ExperimentSpec, workloads: dict[float, list[Request]], runs: list[dict],
            pairs: Pairs) -> tuple[dict, dict]:
    """Every (rate, policy) simulated with the effects measured live and the steps as fast as the live
    ones (speed_of_steps): once per repeat at that run's own speed where the runs saved their steps (the
    workload is the same in every repeat, the machine's speed is not), else once."""
    from tooling.experiment_sim import (measured_effects, profile_cost, quality_model, scaled,
                                        simulate_repeats, speed_summary, with_speeds)

    served = [(w, o) for _, w, o in pairs]
    tps = tokens_per_step(served, spec.candidates)
    speeds = speeds_by_task(served, tps)
    own = speeds_by_request([(key.rps, w, o) for key, w, o in pairs], tps)
    workloads = {rps: with_speeds(reqs, speeds, spec.workload.seed, {i: v for (r, i), v in own.items() if r == rps})
                 for rps, reqs in workloads.items()}
    quality, quality_src = quality_model(spec.quality, accuracy_by_tau(served, spec.candidates))
    setup = SimSetup(spec.workers, profile_cost(profile_path(spec.model_dir, "cpu")), spec.workload.block_len,
                     quality, tps, spec.workload.mean_slo_s(), spec.workload.seed)
    effects = measured_effects(runs, spec.sim_cores)
    # the worker's time per step outside the forward grows with the batch (τ choice, commits and events
    # per request): measured at each rate, as the services' CPU is
    effects = {rps: replace(e, **step_loop_effects(rps, runs, pairs)) for rps, e in effects.items()}
    slowdowns(spec.rates, spec.policies, workloads, runs, pairs, setup, effects)
    scale, effects, source = speed_of_steps(spec, workloads, runs, pairs, setup, effects)
    machine = run_factors(runs, setup) if source == "step_samples" else None  # before the profile is scaled
    spells = {(r["rps"], r["policy"], r["repeat"]): run_spells(r.get("run_dir"), setup, effects[r["rps"]])
              for r in runs} if machine else {}
    # The live cost model has refit to this machine's steps during the warm-up: the simulated policy
    # starts from the scaled profile too, which is also the simulated truth.
    setup = replace(setup, cost=scaled(setup.cost, scale or 1.0))
    sim = {(rps, p): simulate_repeats(p, [r.sim for r in workloads[rps]], setup, effects[rps],
                                      spec.workload.duration_s, _run_scales(machine, rps, p, scale),
                                      [v for (r, q, _), v in sorted(spells.items()) if (r, q) == (rps, p)])
           for rps in spec.rates for p in spec.policies}
    measured = {"tokens_per_step": tps, "speed_by_task": speed_summary(speeds),
                "requests_with_own_speed": len(own), "quality_source": quality_src,
                "quality": quality.points if quality is not None else None, "profile_scale": scale,
                "profile_scale_source": source,
                "effects_by_rps": {rps: e.as_dict() for rps, e in effects.items()},
                "profile": str(profile_path(spec.model_dir, "cpu"))}
    return sim, measured


def _run_scales(speeds: dict | None, rps: float, policy: str, scale: float | None) -> list[float]:
    """Each live repeat's step_scale: its own steps' ratio to the profile ÷ the profile's factor."""
    return [round(f / (scale or 1.0), 4) for (r, p, _), f in sorted((speeds or {}).items()) if (r, p) == (rps, policy)]


def step_loop_effects(rps: float, runs: list[dict], pairs: Pairs) -> dict[str, float]:
    """The worker's time per step outside the forward at one rate: from the gaps the workers timed
    between their forwards (fixed + per request in the step), or, for a sweep saved without them, the
    requests' median (worker − forward) / steps, which also counts the wait for the step in flight
    when a request arrives (the simulator has that wait already)."""
    gaps = [g for r in runs if r["rps"] == rps for g in run_gaps(r.get("run_dir")) or []]
    fit = loop_overhead(gaps)
    if fit is not None:
        return {"step_overhead_s": fit[0], "step_overhead_per_request_s": fit[1]}
    return {"step_overhead_s": step_overhead_s([o for key, _, o in pairs if key.rps == rps]) or 0.0}


def speed_of_steps(spec: ExperimentSpec, workloads: dict[float, list[Request]], runs: list[dict], pairs: Pairs,
                   setup: SimSetup, effects: dict[float, ClusterEffects]) -> tuple[float | None, dict, str]:
    """The factor on the profile and each rate's effects. From the live steps where the runs saved them:
    the lowest rate's steps set the factor and each rate's own steps its step_scale, which then holds the
    shared CPU as measured (cpu_cores 0). Otherwise the lowest rate's request forward times set the factor
    (calibrate) and the shared CPU is modelled from --sim-cores."""
    factors = step_factors(runs, setup)
    if not factors:
        return calibrate(min(spec.rates), spec.policies, workloads, pairs, setup, effects), effects, "forward_times"
    low, sizes = factors[min(factors)], size_factors(runs, setup)
    return low, {rps: replace(e, cpu_cores=0.0, step_scale=round(factors[rps] / low, 4),
                              step_scale_by_tokens=sizes.get(rps, ()))
                 for rps, e in effects.items()}, "step_samples"


def run_experiment(spec: ExperimentSpec, out: Path, log: Log, encode: Callable[[str], list[int]],
                   resimulate: bool = False) -> dict:
    """The sweep, or with ``resimulate`` the simulated side and the report again on the live runs a
    finished sweep saved in ``out`` (after a change to the simulator)."""
    from tooling.experiment_report import points, table_lines, write_json, write_plots

    workloads = {rps: build_workload(spec.workload, rps, encode) for rps in spec.rates}
    if resimulate:
        runs, pairs = load_sweep(out, spec, workloads)
        log(f"experiment: simulating again the {len(runs)} live runs saved in {out}")
    else:
        warmup = warmup_shots(spec.workload, WARMUP_PROBLEMS, encode)
        log(f"experiment: {len(spec.policies)} policies × {len(spec.rates)} rates × {spec.repeats} repeats, "
            f"{spec.workers} workers, {spec.workload.duration_s:g} s each; out {out}")
        runs, pairs = run_live_sweep(spec, workloads, warmup, out, log)
    sim, measured = run_sim(spec, workloads, runs, pairs)
    report = {"config": spec.config(), "measured": measured, "runs": runs,
              "points": points(runs, sim, {r: len(w) for r, w in workloads.items()})}
    json_path = write_json(report, out / "experiment.json")
    plots = write_plots(report, out)
    for line in table_lines(report):
        log(line)
    warning = speed_warning(runs)
    if warning:
        log(warning)
    report["paths"] = {"json": str(json_path), "plots": [str(p) for p in plots]}
    return report
