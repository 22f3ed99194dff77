"""Workload classes k from a window of arrivals (docs/design.md §4.5): deterministic median splits.

Each arrival is a point (log prompt_len, log output_len, log slo_s). Starting from one group, the group
with the largest (count × widest log-range) is split at the median of its widest dimension until there
are ``n_classes`` groups or no group can be split. Log scale because lengths and SLOs are heavy-tailed
and what matters for step cost is ratios. Deterministic: sorting keys include the arrival index.
"""

from __future__ import annotations

import math

from shared.policy.planner.types import ArrivalSample, PlannerError, WorkloadClass

Point = tuple[float, float, float, int]  # log prompt, log output, log slo, arrival index


def _points(arrivals: list[ArrivalSample]) -> list[Point]:
    pts = []
    for i, a in enumerate(arrivals):
        if a.output_len <= 0 or a.prompt_len < 0 or a.slo_s <= 0:
            raise PlannerError(f"arrival {i}: needs output_len > 0, prompt_len >= 0, slo_s > 0: {a}")
        pts.append((math.log1p(a.prompt_len), math.log(a.output_len), math.log(a.slo_s), i))
    return pts


def _widest(group: list[Point]) -> tuple[int, float]:
    """(dimension, log-range) of the widest dimension of a group."""
    best_dim, best_range = 0, 0.0
    for dim in range(3):
        vals = [p[dim] for p in group]
        r = max(vals) - min(vals)
        if r > best_range + 1e-12:
            best_dim, best_range = dim, r
    return best_dim, best_range


def _split(group: list[Point], dim: int) -> tuple[list[Point], list[Point]]:
    """Split at the median, moving the cut so equal values stay together (both halves non-empty)."""
    ordered = sorted(group, key=lambda p: (p[dim], p[3]))
    cut = len(ordered) // 2
    lo = cut
    while lo > 0 and ordered[lo - 1][dim] == ordered[cut][dim]:
        lo -= 1
    hi = cut
    while hi < len(ordered) and ordered[hi][dim] == ordered[cut][dim]:
        hi += 1
    # Pick the nearer boundary that leaves both sides non-empty.
    cut = lo if (lo > 0 and (cut - lo <= hi - cut or hi >= len(ordered))) else hi
    return ordered[:cut], ordered[cut:]


def _groups(points: list[Point], n_classes: int) -> list[list[Point]]:
    groups = [points]
    while len(groups) < n_classes:
        scored = [(len(g) * _widest(g)[1], -i, i) for i, g in enumerate(groups)]
        score, _, idx = max(scored)
        if score <= 0.0:
            break  # every group is a single point in feature space
        group = groups.pop(idx)
        a, b = _split(group, _widest(group)[0])
        groups[idx:idx] = [a, b]
    return groups


def workload_classes(arrivals: list[ArrivalSample], window_s: float, n_classes: int,
                     block_len: int = 32) -> list[WorkloadClass]:
    """Bin ``arrivals`` (seen over ``window_s`` seconds) into at most ``n_classes`` classes.

    Representative lengths are the class means rounded up (the tokens to produce are what the mean
    says); the SLO is the class minimum, so planning for the class meets every member's deadline.
    """
    if window_s <= 0:
        raise PlannerError(f"window_s must be > 0, got {window_s}")
    if n_classes < 1:
        raise PlannerError(f"n_classes must be >= 1, got {n_classes}")
    if not arrivals:
        return []
    groups = _groups(_points(arrivals), n_classes)
    raw = []
    for g in groups:
        members = [arrivals[p[3]] for p in g]
        raw.append((min(a.slo_s for a in members),
                    math.ceil(sum(a.output_len for a in members) / len(members)),
                    math.ceil(sum(a.prompt_len for a in members) / len(members)),
                    len(members)))
    raw.sort()
    return [WorkloadClass(class_id=i, prompt_len=p, output_len=o, slo_s=s, rate=n / window_s,
                          block_len=block_len, count=n)
            for i, (s, o, p, n) in enumerate(raw)]
