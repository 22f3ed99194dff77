"""How fast this machine ran the cluster's steps against the profile: the factor the simulator's profile
is scaled by (calibrate), and each run's own slowdown (slowdowns), for ``dilaserve experiment``."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from shared.sim.effects import ClusterEffects
from tooling.experiment_metrics import GAPS, STEP_TIMES, STEPS, steps_vs_profile
from tooling.experiment_sim import SIM_CONFIG, SimSetup, scaled, simulate_point, step_scale
from tooling.experiment_workload import Request
from tooling.loadgen import SERVED, Outcome

Pairs = list[tuple[Any, Request, Outcome]]  # (run key with rps, policy, repeat; request; its outcome)
Workloads = dict[float, list[Request]]


def slowdowns(rates: list[float], policies: list[str], workloads: Workloads, runs: list[dict], pairs: Pairs,
              setup: SimSetup, effects: dict[float, ClusterEffects]) -> None:
    """Each run's ``slowdown_vs_profile``: its live forward time / the simulated one of the same requests
    on the unscaled profile. Runs that differ much ran on a machine whose speed changed between them."""
    for rps in rates:
        for policy in policies:
            res = simulate_point(policy, [r.sim for r in workloads[rps]], setup, effects[rps])
            for run in runs:
                if run["rps"] == rps and run["policy"] == policy:
                    s = step_scale(live_forward(pairs, rps, policy, run["repeat"]), res)
                    run["slowdown_vs_profile"] = None if s is None else round(s, 4)
    for run in runs:
        run["steps_vs_profile"] = run_steps_vs_profile(run.get("run_dir"), setup)


def run_steps(run_dir: str | None) -> list[tuple[int, float]] | None:
    """The run's saved heartbeat step samples (tokens, latency s); None for a run saved without them."""
    return _saved_pairs(run_dir, STEPS)


def run_gaps(run_dir: str | None) -> list[tuple[int, float]] | None:
    """The run's saved step-loop samples (requests in the step, s outside the forward); None without them."""
    return _saved_pairs(run_dir, GAPS)


def _saved_pairs(run_dir: str | None, name: str) -> list[tuple[int, float]] | None:
    if not run_dir or not (path := Path(run_dir) / name).is_file():
        return None
    return [(int(n), float(x)) for n, x in json.loads(path.read_text())]


def run_step_times(run_dir: str | None) -> list[tuple[float, int, float]] | None:
    """The run's steps with their start times (s after the replay began, tokens, latency s); None for a
    run saved without them."""
    if not run_dir or not (path := Path(run_dir) / STEP_TIMES).is_file():
        return None
    return [(float(t), int(n), float(x)) for t, n, x in json.loads(path.read_text())]


SPELL_S = 1.0  # a run's speed is followed in windows this long: a slow spell of a second or more queues
SPELL_MIN_STEPS = 20  # a window with fewer steps keeps the run's own speed (factor 1)


def run_spells(run_dir: str | None, setup: SimSetup, sizes: ClusterEffects) -> tuple[tuple[float, float], ...]:
    """``ClusterEffects.step_scale_over_time`` knots for one run: in each window, Σ latency ÷ Σ profile
    latency (× the rate's size factor) of the steps that started in it, ÷ the same over the whole run.
    Empty for a run saved without step times."""
    rows = run_step_times(run_dir)
    if not rows:
        return ()
    priced = [(t, lat, setup.cost.latency(SIM_CONFIG, n) * sizes.size_scale(n)) for t, n, lat in rows if n > 0]
    total = sum(x[1] for x in priced) / max(sum(x[2] for x in priced), 1e-12)
    windows: dict[int, list[float]] = {}
    for t, lat, price in priced:
        w = windows.setdefault(math.floor(t / SPELL_S), [0.0, 0.0, 0])
        w[0], w[1], w[2] = w[0] + lat, w[1] + price, w[2] + 1
    return tuple((k * SPELL_S, round(w[0] / w[1] / total, 4) if w[2] >= SPELL_MIN_STEPS and w[1] > 0 else 1.0)
                 for k, w in sorted(windows.items()))


def run_steps_vs_profile(run_dir: str | None, setup: SimSetup) -> float | None:
    """The run's steps against the profile at their own sizes; None for a run saved without them."""
    samples = run_steps(run_dir)
    return None if samples is None else steps_vs_profile(samples, lambda t: setup.cost.latency(SIM_CONFIG, t))


def step_factors(runs: list[dict], setup: SimSetup) -> dict[float, float] | None:
    """Per rate: Σ latency ÷ Σ profile latency of the live steps of all its runs, at their own sizes: how
    fast this machine ran the model at that load, the CPU the workers and services share included. None
    when a rate has no step samples (a sweep saved without them)."""
    return _factors(runs, setup, lambda r: r["rps"])


def run_factors(runs: list[dict], setup: SimSetup) -> dict[tuple[float, str, int], float] | None:
    """The same ratio for each run alone, by (rate, policy, repeat): the machine's speed during that run.
    A shared VM drifts between runs of one point (10–20 % over a sweep), and a point at the edge of
    capacity turns that into attainment differences of 0.2–0.3, which the simulator then follows."""
    return _factors(runs, setup, lambda r: (r["rps"], r["policy"], r["repeat"]))


def _factors(runs: list[dict], setup: SimSetup, key: Callable[[dict], Any]) -> dict | None:
    out = {}
    for k in sorted({key(r) for r in runs}):
        samples = [s for r in runs if key(r) == k for s in run_steps(r.get("run_dir")) or []]
        live = sum(lat for _, lat in samples)
        profile = sum(setup.cost.latency(SIM_CONFIG, t) for t, _ in samples)
        if live <= 0 or profile <= 0:
            return None
        out[k] = round(live / profile, 4)
    return out or None


SIZE_BIN = 2.0  # step sizes are binned ×2 apart for the per-size factors
SIZE_MIN_STEPS = 50  # a bin with fewer live steps gets no knot of its own


def size_factors(runs: list[dict], setup: SimSetup) -> dict[float, tuple[tuple[float, float], ...]]:
    """Per rate: ``ClusterEffects.step_scale_by_tokens`` knots from the live steps of all its runs. In
    each ×2 bin of step sizes, Σ latency ÷ Σ profile latency ÷ the rate's own ratio over all sizes, at
    the bin's mean size in log tokens: how much more than the rest of the steps the machine slowed steps
    of that size at that load (bigger ones sharing the CPU with the services for longer)."""
    out = {}
    for rps in sorted({r["rps"] for r in runs}):
        samples = [(t, lat) for r in runs if r["rps"] == rps for t, lat in run_steps(r.get("run_dir")) or []
                   if t > 0 and lat > 0]
        bins: dict[int, list[tuple[int, float, float]]] = {}
        for t, lat in samples:
            bins.setdefault(int(math.log(t, SIZE_BIN)), []).append((t, lat, setup.cost.latency(SIM_CONFIG, t)))
        rows = [x for b in bins.values() for x in b]
        if not rows:
            out[rps] = ()
            continue
        total = sum(x[1] for x in rows) / sum(x[2] for x in rows)
        knots = []
        for _, b in sorted(bins.items()):
            if len(b) >= SIZE_MIN_STEPS:
                size = math.exp(statistics.fmean(math.log(t) for t, _, _ in b))
                knots.append((round(size, 1), round(sum(x[1] for x in b) / sum(x[2] for x in b) / total, 4)))
        out[rps] = tuple(knots)
    return out


def speed_warning(runs: list[dict], limit: float = 1.5) -> str | None:
    """A line for a person when the machine ran the model at speeds differing by more than ``limit``×
    between runs. Measured per step against the profile at the step's size (``steps_vs_profile``), so
    that bigger batches under load do not read as a slower machine; sweeps saved without step samples
    fall back to ``slowdown_vs_profile`` (Σ live ÷ Σ simulated forward time of the same requests),
    which also grows with the queue past saturation."""
    key = "steps_vs_profile" if sum(1 for r in runs if r.get("steps_vs_profile")) >= 2 else "slowdown_vs_profile"
    vals = [r[key] for r in runs if r.get(key)]
    if len(vals) < 2 or max(vals) <= limit * min(vals):
        return None
    return (f"warning: the machine's speed changed between runs (steps {min(vals):.1f}–{max(vals):.1f}× the "
            f"profile, runs[].{key}): live differences may be the machine's, not the policies'")


CALIBRATION_RANGE = (0.25, 8.0)  # the factors searched: a machine 4× faster to 8× slower than the profile
CALIBRATION_STEP = 1.25  # the scan's step from 1 to the first crossing
CALIBRATION_ROUNDS = 8  # bisection halvings of that step in log space: the factor to within ≈ 0.1 %
CALIBRATION_TOLERANCE = 0.01


def calibrate(low: float, policies: list[str], workloads: Workloads, pairs: Pairs, setup: SimSetup,
              effects: dict[float, ClusterEffects]) -> float | None:
    """The factor on the profile at which the simulated forward time of the requests at the lowest rate
    matches the live one (median over policies): how much slower than the profile this machine's steps
    run for reasons outside the cluster. None: nothing was served in both."""
    scales = [f for f in (_policy_factor(low, p, workloads, pairs, setup, effects) for p in policies) if f]
    return round(statistics.median(scales), 4) if scales else None


def _policy_factor(low: float, policy: str, workloads: Workloads, pairs: Pairs, setup: SimSetup,
                   effects: dict[float, ClusterEffects]) -> float | None:
    """The factor nearest to 1 at which live / simulated forward time crosses 1: scanned outward from 1
    in steps, then bisected. The ratio falls as the factor rises (slower steps, longer queues, larger
    batches) until the queue saturates; past that the per-step budget shrinks the batches of slower
    steps and the ratio can rise back through 1, so a fixed point or a bisection over the whole range
    can land on a second, spurious crossing."""
    fwd = live_forward(pairs, low, policy)

    def ratio(factor: float) -> float | None:
        res = simulate_point(policy, [r.sim for r in workloads[low]],
                             replace(setup, cost=scaled(setup.cost, factor)), effects[low])
        return step_scale(fwd, res)

    bracket = _first_crossing(ratio)
    if bracket is None:
        return None
    lo, hi = bracket
    for _ in range(CALIBRATION_ROUNDS):
        mid = (lo * hi) ** 0.5
        r = ratio(mid)
        if r is None or abs(r - 1.0) < CALIBRATION_TOLERANCE:
            return mid
        lo, hi = (mid, hi) if r > 1.0 else (lo, mid)
    return (lo * hi) ** 0.5


def _first_crossing(ratio: Callable[[float], float | None]) -> tuple[float, float] | None:
    """(lo, hi) one step apart with ratio(lo) ≥ 1 ≥ ratio(hi), nearest to factor 1; the range's end if
    the ratio never crosses; None if nothing was served in both."""
    r = ratio(1.0)
    if r is None:
        return None
    up = r > 1.0
    f, (low_end, high_end) = 1.0, CALIBRATION_RANGE
    while low_end < f < high_end:
        nxt = min(f * CALIBRATION_STEP, high_end) if up else max(f / CALIBRATION_STEP, low_end)
        r = ratio(nxt)
        if r is None or (r <= 1.0 if up else r >= 1.0):
            return (f, nxt) if up else (nxt, f)
        f = nxt
    return (f, f)


def live_forward(pairs: Pairs, rps: float, policy: str, repeat: int | None = None) -> dict[str, list[float]]:
    """Request id → the live forward times (s) of its served runs at one rate under one policy (one
    repeat's, or all)."""
    fwd: dict[str, list[float]] = {}
    for key, w, o in pairs:
        if key.rps == rps and key.policy == policy and repeat in (None, key.repeat) and o.kind == SERVED \
                and o.timings_ms:
            if o.timings_ms.get("worker_forward_ms") is not None:
                fwd.setdefault(w.sim.request_id, []).append(o.timings_ms["worker_forward_ms"] / 1000.0)
    return fwd
