"""Metrics of ``dilaserve experiment``: one live run's numbers from its outcomes, and their spread over
repeats. The definitions follow the simulator's report (shared/sim/report.py) so the two compare:
attainment over every request sent (refusals and errors are misses), goodput = met / arrival window,
latency over served requests, τ weighted by each request's canvas."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Callable

from tooling.experiment_workload import Request
from tooling.loadgen import SERVED, Outcome, outcome_counts, overhead_parts, percentile

# the metrics compared live against simulated, and aggregated over repeats
METRICS = ("slo_attainment", "goodput_rps", "latency_p50_s", "latency_p99_s", "mean_threshold", "accuracy")
TAU_DIGITS = 2  # a request's mean τ within this many digits of a candidate ran at that τ alone


def _r(v: float | None, n: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, n)


def summarize_run(workload: list[Request], outcomes: list[Outcome], duration_s: float) -> dict:
    """One run's numbers; ``outcomes[i]`` answers ``workload[i]``."""
    if len(workload) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes for {len(workload)} requests")
    served = [(w, o) for w, o in zip(workload, outcomes) if o.kind == SERVED]
    met = [o.slo_met is True for o in outcomes]
    lat = [o.latency_s for _, o in served]
    tau = [(o.threshold_mean, w.sim.output_len) for w, o in served if o.threshold_mean is not None]
    weight = sum(n for _, n in tau)
    correct = [o.correct for _, o in served if o.correct is not None]
    n = len(outcomes)
    return {
        "requests": n,
        "slo_attainment": _r(sum(met) / n) if n else None,
        "slo_attainment_served": _r(sum(met) / len(served)) if served else None,
        "goodput_rps": _r(sum(met) / duration_s) if duration_s > 0 else None,
        "latency_p50_s": _r(percentile(lat, 50)),
        "latency_p99_s": _r(percentile(lat, 99)),
        "mean_threshold": _r(sum(t * k for t, k in tau) / weight) if weight else None,
        "accuracy": _r(sum(correct) / len(correct)) if correct else None,
        "outcomes": outcome_counts(outcomes),
        "attainment_by_class": by_class(workload, met),
        "overhead_parts_p50_ms": overhead_parts([o for _, o in served]),
        "timings_p50_ms": timings_p50([o for _, o in served]),
        "first_errors": [o.error for o in outcomes if o.error][:3],
        "send_lag_ms": send_lag_ms(outcomes),
    }


def send_lag_ms(outcomes: list[Outcome]) -> dict[str, float | None]:
    """How late the generator sent its requests: it shares the CPU with the cluster, and a late send is
    an arrival the cluster saw later than the simulator does."""
    lag = [o.send_lag_s * 1000 for o in outcomes]
    return {"p50": _r(percentile(lag, 50), 3), "p99": _r(percentile(lag, 99), 3), "max": _r(max(lag, default=None), 3)}


def timings_p50(served: list[Outcome]) -> dict[str, float | None]:
    """Median of every ``dlm.timings`` part over served requests (gateway, worker, forward, overhead)."""
    keys = sorted({k for o in served for k in (o.timings_ms or {})})
    return {k: _r(percentile([o.timings_ms[k] for o in served if o.timings_ms and o.timings_ms.get(k) is not None],
                             50), 3) for k in keys}


def by_class(workload: list[Request], met: list[bool]) -> dict[str, float]:
    tot: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for w, m in zip(workload, met):
        tot[w.sim.cls][0] += m
        tot[w.sim.cls][1] += 1
    return {c: round(v[0] / v[1], 6) for c, v in sorted(tot.items())}


def spread(values: list[float | None]) -> dict:
    """Mean, min, max and (population) standard deviation over repeats; ``n`` counts measured values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "std": None, "n": 0}
    return {"mean": _r(statistics.fmean(vals)), "min": _r(min(vals)), "max": _r(max(vals)),
            "std": _r(statistics.pstdev(vals)), "n": len(vals)}


def aggregate(runs: list[dict]) -> dict[tuple[float, str], dict]:
    """(rate, policy) → each metric's spread over that point's repeats, plus summed outcome counts."""
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["rps"], run["policy"])].append(run["live"])
    out = {}
    for key, lives in groups.items():
        agg = {m: spread([x[m] for x in lives]) for m in METRICS}
        agg["repeats"] = len(lives)
        agg["refused"] = sum(x["outcomes"]["refused_deadline_unmeetable"] for x in lives)
        agg["connection_errors"] = sum(x["outcomes"]["connection_errors"] for x in lives)
        http: dict[str, int] = defaultdict(int)
        for x in lives:
            for code, k in x["outcomes"]["http_errors_by_status"].items():
                http[code] += k
        agg["http_errors_by_status"] = dict(sorted(http.items()))
        out[key] = agg
    return out


def tokens_per_step(pairs: list[tuple[Request, Outcome]], candidates: tuple[float, ...]) -> dict[float, float]:
    """Measured tokens committed per step at each τ, from served requests that ran at one τ throughout
    (their mean τ is a candidate): canvas / steps, pooled."""
    acc: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for w, o in pairs:
        if o.kind != SERVED or o.threshold_mean is None or not o.steps:
            continue
        tau = round(o.threshold_mean, TAU_DIGITS)
        if any(abs(tau - c) < 1e-9 for c in candidates):
            acc[tau][0] += w.sim.output_len
            acc[tau][1] += o.steps
    return {t: round(v[0] / v[1], 4) for t, v in sorted(acc.items()) if v[1]}


def single_tau(o: Outcome, candidates: tuple[float, ...]) -> float | None:
    """The candidate τ a served request ran at throughout (its mean τ is that candidate), else None."""
    if o.kind != SERVED or o.threshold_mean is None:
        return None
    tau = round(o.threshold_mean, TAU_DIGITS)
    return next((c for c in candidates if abs(tau - c) < 1e-9), None)


def speeds_by_task(pairs: list[tuple[Request, Outcome]], tps: dict[float, float]) -> dict[str, list[float]]:
    """Each served request that ran at one measured τ: its own tokens per step ÷ the pooled figure at
    that τ, by task. A path prompt's open moves commit one at a time, a cum prompt's copied digits in
    bulk: the same mean hides requests twice as slow as it, and under a deadline they are the misses."""
    out: dict[str, list[float]] = defaultdict(list)
    for w, o in pairs:
        if (speed := request_speed(w, o, tps)) is not None:
            out[w.shot.task].append(speed)
    return {task: sorted(v) for task, v in sorted(out.items())}


def speeds_by_request(pairs: list[tuple[float, Request, Outcome]],
                      tps: dict[float, float]) -> dict[tuple[float, str], dict[float, float]]:
    """(rate, request id) → τ → the median of that request's speeds over the runs that served it at that
    one τ. A prompt decodes the same way each time at a τ (a path prompt with many open moves is slow
    in every run at τ 0.9), so its own speed, where measured, says more than a draw from its task's."""
    out: dict[tuple[float, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rps, w, o in pairs:
        if (speed := request_speed(w, o, tps)) is not None:
            out[(rps, w.sim.request_id)][single_tau(o, tuple(tps))].append(speed)
    return {k: {t: statistics.median(v) for t, v in sorted(by.items())} for k, by in out.items()}


def request_speed(w: Request, o: Outcome, tps: dict[float, float]) -> float | None:
    """A served request's tokens per step ÷ the pooled figure at the one τ it ran at (None: not one τ)."""
    tau = single_tau(o, tuple(tps))
    pooled = tps.get(tau) if tau is not None and o.steps else None
    return round(w.sim.output_len / o.steps / pooled, 4) if pooled else None


def accuracy_by_tau(pairs: list[tuple[Request, Outcome]], candidates: tuple[float, ...],
                    min_count: int = 20) -> dict[float, float]:
    """Measured answer accuracy at each τ (requests that ran at one τ), where at least ``min_count``."""
    acc: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for _, o in pairs:
        if o.kind != SERVED or o.threshold_mean is None or o.correct is None:
            continue
        tau = round(o.threshold_mean, TAU_DIGITS)
        if any(abs(tau - c) < 1e-9 for c in candidates):
            acc[tau][0] += o.correct
            acc[tau][1] += 1
    return {t: round(v[0] / v[1], 4) for t, v in sorted(acc.items()) if v[1] >= min_count}


def step_overhead_s(outcomes: list[Outcome]) -> float | None:
    """Median worker time per step outside the forward: (worker_ms − worker_forward_ms) / steps."""
    vals = []
    for o in outcomes:
        t = o.timings_ms or {}
        if o.kind == SERVED and o.steps and t.get("worker_ms") is not None and t.get("worker_forward_ms") is not None:
            vals.append(max(0.0, t["worker_ms"] - t["worker_forward_ms"]) / 1000.0 / o.steps)
    return round(statistics.median(vals), 6) if vals else None


def loop_overhead(gaps: list[tuple[int, float]]) -> tuple[float, float] | None:
    """The worker's step-loop time outside the forward as (fixed s, s per request in the step): the
    least-squares line through the workers' (requests, gap) samples, neither part negative (None: no
    samples). The loop's work is per request (τ choice, commits, events), the forward's hand-offs fixed."""
    pts = [(n, g) for n, g in gaps if n > 0 and g >= 0]
    if not pts:
        return None
    k = len(pts)
    mn, mg = sum(n for n, _ in pts) / k, sum(g for _, g in pts) / k
    var = sum((n - mn) ** 2 for n, _ in pts)
    slope = sum((n - mn) * (g - mg) for n, g in pts) / var if var > 0 else 0.0
    fixed = mg - slope * mn
    if slope < 0:
        fixed, slope = mg, 0.0
    elif fixed < 0:
        fixed, slope = 0.0, sum(n * g for n, g in pts) / sum(n * n for n, _ in pts)
    return round(fixed, 6), round(slope, 7)


def median_part(runs: list[dict], key: str) -> float:
    """Median over runs of one overhead part's p50 in the warm-up (an idle cluster: no queueing), in s."""
    vals = [r["warmup_overhead_parts_p50_ms"].get(key) for r in runs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) / 1000.0 if vals else 0.0


STEP_BIN = 1.1  # token counts within this factor of each other are "the same step" for the spread
STEPS = "steps.json"  # in each run's folder: [tokens, latency s] of every step the heartbeats reported
GAPS = "gaps.json"  # in each run's folder: [requests, step-loop s outside the forward] of those steps
STEP_TIMES = "step_times.json"  # in each run's folder: [start s after the replay began, tokens, latency s]


def steps_vs_profile(samples: list[tuple[int, float]], profile_latency_s: Callable[[int], float]) -> float | None:
    """Median over a run's steps of its latency ÷ the profile's at its token count: how fast the machine
    ran the model in that run, whatever the batches were (None: no steps)."""
    ratios = [lat / profile_latency_s(int(tok)) for tok, lat in samples if tok > 0 and lat > 0]
    return _r(statistics.median(ratios), 4) if ratios else None


def step_spread(samples: list[tuple[int, float]]) -> dict:
    """How much the live steps vary at a given size: each step's latency ÷ the median of the steps with
    a token count in the same ×1.1 bin, pooled; its p10 / p50 / p90 and coefficient of variation. The
    simulator's ground truth prices a step by its token count alone, and the live cost models refit to
    the 0.9 quantile of these steps, so a wide spread is planned for live and not simulated."""
    bins: dict[int, list[float]] = defaultdict(list)
    for tokens, latency_s in samples:
        if tokens > 0 and latency_s > 0:
            bins[int(math.log(tokens) / math.log(STEP_BIN))].append(latency_s)
    ratios = sorted(x / statistics.median(v) for v in bins.values() if len(v) >= 5 for x in v)
    if len(ratios) < 2:
        return {"n": len(ratios)}
    return {"n": len(ratios), "p10": _r(percentile(ratios, 10), 4), "p50": _r(percentile(ratios, 50), 4),
            "p90": _r(percentile(ratios, 90), 4), "cv": _r(statistics.pstdev(ratios) / statistics.mean(ratios), 4)}
