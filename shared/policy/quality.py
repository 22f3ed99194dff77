"""Estimated accuracy as a function of τ (for reports; the MILP's quality objective uses τ directly).

Default: LLaDA-8B-Instruct GSM8K anchors (docs/design.md §5): 79.3 % at one token per step (τ = 1.0) and
78.5 % at τ = 0.9. Below 0.9 we extrapolate with an accelerating loss
``acc(τ) = acc(1) − a·(1 − τ)^1.5`` fitted through both anchors (a ≈ 25.3 points), which gives
≈ 77.0 % at 0.8, ≈ 75.1 % at 0.7, ≈ 70.4 % at 0.5: an assumption (losses grow as more low-confidence
tokens are committed together), documented in docs/simulator.md. A measured curve (e.g. from the small
model's ``dilaserve eval``) replaces it: ``QualityModel.from_points({τ: accuracy})``.
"""

from __future__ import annotations

ACC_ONE_TOKEN = 0.793
ACC_TAU_09 = 0.785
EXPONENT = 1.5


class QualityModel:
    def __init__(self, points: dict[float, float] | None = None):
        self.points = dict(sorted(points.items())) if points else None
        self._a = (ACC_ONE_TOKEN - ACC_TAU_09) / (0.1 ** EXPONENT)

    def accuracy(self, tau: float) -> float:
        if self.points is None:
            return ACC_ONE_TOKEN - self._a * max(0.0, 1.0 - min(tau, 1.0)) ** EXPONENT
        taus = list(self.points)
        if tau <= taus[0]:
            return self.points[taus[0]]
        if tau >= taus[-1]:
            return self.points[taus[-1]]
        for lo, hi in zip(taus, taus[1:]):
            if lo <= tau <= hi:
                w = (tau - lo) / (hi - lo)
                return self.points[lo] + w * (self.points[hi] - self.points[lo])
        return self.points[taus[-1]]

    @classmethod
    def from_points(cls, points: dict[float, float]) -> "QualityModel":
        return cls({float(k): float(v) for k, v in points.items()})

    @classmethod
    def from_data(cls, data: dict) -> "QualityModel":
        """``{"points": [{"threshold": τ, "accuracy": a}, ...]}`` or a plain ``{τ: a}`` mapping (parsed JSON:
        shared/profiles.py reads the file)."""
        if isinstance(data, dict) and "points" in data:
            return cls.from_points({p["threshold"]: p["accuracy"] for p in data["points"]})
        return cls.from_points({float(k): v for k, v in data.items()})
