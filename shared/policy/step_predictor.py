"""Steps left at each threshold τ (docs/design.md §4.1): masked_left / tokens_per_step(τ), learned online."""

from __future__ import annotations

# LLaDA, dual cache, 256-token outputs (docs/design.md §5): committed tokens per step at each τ.
LLADA_TPS_PRIOR = {0.9: 3.02, 0.8: 3.89, 0.7: 4.77, 0.6: 5.65, 0.5: 6.58}
ONE_TOKEN_THRESHOLD = 1.0  # τ = 1.0 means one token per step


class StepPredictor:
    """Tokens per step per τ: a prior table refined by an exponentially weighted mean of worker stats."""

    def __init__(self, prior: dict[float, float] | None = None, learning_rate: float = 0.02):
        table = dict(LLADA_TPS_PRIOR if prior is None else prior)
        table.setdefault(ONE_TOKEN_THRESHOLD, 1.0)
        self.tps = {round(t, 4): float(v) for t, v in sorted(table.items())}
        self.learning_rate = learning_rate

    def tokens_per_step(self, tau: float) -> float:
        """Table lookup; linear interpolation between known thresholds (clamped at the ends)."""
        key = round(tau, 4)
        v = self.tps.get(key)
        if v is not None:
            return v
        taus = list(self.tps)
        if key <= taus[0]:
            return self.tps[taus[0]]
        if key >= taus[-1]:
            return self.tps[taus[-1]]
        for lo, hi in zip(taus, taus[1:]):
            if lo <= key <= hi:
                w = (key - lo) / (hi - lo)
                return self.tps[lo] + w * (self.tps[hi] - self.tps[lo])
        return 1.0

    def steps_left(self, masked_left: int, tau: float) -> float:
        return masked_left / self.tokens_per_step(tau) if masked_left > 0 else 0.0

    def observe(self, tau: float, tokens: int, steps: int) -> None:
        """Fold in ``tokens`` committed over ``steps`` steps at threshold ``tau`` (weight grows with steps)."""
        if steps <= 0:
            return
        key = round(tau, 4)
        rate = min(1.0, self.learning_rate * steps)
        old = self.tps.get(key, self.tokens_per_step(key))
        self.tps[key] = max(1.0, old + rate * (tokens / steps - old))
        if len(self.tps) > 1 and list(self.tps) != sorted(self.tps):
            self.tps = dict(sorted(self.tps.items()))

    def copy(self) -> "StepPredictor":
        p = StepPredictor(self.tps, self.learning_rate)
        return p
