"""How fast this machine ran the cluster's steps against the profile: the factor the simulator's profile
is scaled by (calibrate), and each run's own slowdown (slowdowns), for ``dilaserve experiment``."""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

from shared.sim.effects import ClusterEffects
from tooling.experiment_sim import SimSetup, scaled, simulate_point, step_scale
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


def speed_warning(runs: list[dict], limit: float = 2.0) -> str | None:
    """A line for a person when the runs' slowdowns against the profile differ by more than ``limit``×."""
    vals = [r["slowdown_vs_profile"] for r in runs if r.get("slowdown_vs_profile")]
    if len(vals) < 2 or max(vals) <= limit * min(vals):
        return None
    return (f"warning: the machine's speed changed between runs (steps {min(vals):.1f}–{max(vals):.1f}× the "
            f"profile, runs[].slowdown_vs_profile): live differences may be the machine's, not the policies'")


CALIBRATION_ROUNDS = 4  # fixed-point rounds; a slower step changes the batches, hence the step times
CALIBRATION_TOLERANCE = 0.02


def calibrate(low: float, policies: list[str], workloads: Workloads, pairs: Pairs, setup: SimSetup,
              effects: dict[float, ClusterEffects]) -> float | None:
    """The factor on the profile at which the simulated forward time of the requests at the lowest rate
    matches the live one (median over policies): how much slower than the profile this machine's steps
    run for reasons outside the cluster. None: nothing was served in both."""
    scales = []
    for policy in policies:
        fwd = live_forward(pairs, low, policy)
        factor: float | None = 1.0
        for _ in range(CALIBRATION_ROUNDS):
            res = simulate_point(policy, [r.sim for r in workloads[low]],
                                 replace(setup, cost=scaled(setup.cost, factor)), effects[low])
            ratio = step_scale(fwd, res)
            if ratio is None:
                factor = None if factor == 1.0 else factor
                break
            factor *= ratio
            if abs(ratio - 1.0) < CALIBRATION_TOLERANCE:
                break
        if factor is not None:
            scales.append(factor)
    return round(statistics.median(scales), 4) if scales else None


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
