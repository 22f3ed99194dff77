"""Per-policy metrics from a simulation (the JSON report's numbers)."""

from __future__ import annotations

import math

from shared.sim.engine import SimResult

METRIC_DIGITS = 6


def _pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: stable and exact for reports)."""
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def latencies(res: SimResult) -> list[float]:
    return sorted(r.finish_s - r.arrival_s for r in res.requests if r.finish_s is not None)


def summarize(res: SimResult, duration_s: float) -> dict:
    """Attainment counts every request (dropped, rejected, unfinished = missed); latencies cover finished
    requests only; τ and accuracy are token-weighted over finished requests."""
    reqs = res.requests
    n = len(reqs)
    ok = sum(1 for r in reqs if r.finish_s is not None and r.finish_s <= r.true_deadline_s + 1e-9)
    lat = latencies(res)
    done = [r for r in reqs if r.finish_s is not None]
    tokens = sum(r.committed for r in done)
    out = {
        "requests": n,
        "finished": len(done),
        "dropped": sum(1 for r in reqs if r.outcome == "dropped"),
        "rejected": sum(1 for r in reqs if r.outcome == "rejected"),
        "unfinished": sum(1 for r in reqs if r.outcome == "unfinished"),
        "slo_attainment": ok / n if n else math.nan,
        "goodput_rps": ok / duration_s if duration_s > 0 else math.nan,
        "latency_p50_s": _pct(lat, 50),
        "latency_p90_s": _pct(lat, 90),
        "latency_p99_s": _pct(lat, 99),
        "mean_latency_s": sum(lat) / len(lat) if lat else math.nan,
        "mean_threshold": sum(r.tau_tokens for r in done) / tokens if tokens else math.nan,
        "est_accuracy": sum(r.acc_tokens for r in done) / tokens if tokens else math.nan,
        "refresh_steps": sum(r.refresh_steps for r in reqs),
        "reuse_steps": sum(r.reuse_steps for r in reqs),
        "sim_end_s": res.end_s,
    }
    return {k: (round(v, METRIC_DIGITS) if isinstance(v, float) and math.isfinite(v) else
                (None if isinstance(v, float) else v)) for k, v in out.items()}
