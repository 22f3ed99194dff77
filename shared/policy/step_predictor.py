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
        self.set_table({round(t, 4): float(v) for t, v in table.items()})
        self.learning_rate = learning_rate

    def set_table(self, table: dict[float, float]) -> None:
        self.tps = dict(sorted(table.items()))
        self._mono: dict[float, float] | None = None

    def tokens_per_step(self, tau: float) -> float:
        """Lookup in the table made non-increasing in τ (each entry at least every higher τ's: a lower
        threshold commits at least as many tokens per step — a model measured only at τ 0.9, 7 tokens
        per step, is not planned at the prior's 4.8 at τ 0.7); linear interpolation between known
        thresholds, clamped at the ends."""
        tab = self._envelope()
        key = round(tau, 4)
        v = tab.get(key)
        if v is not None:
            return v
        taus = list(tab)
        if key <= taus[0]:
            return tab[taus[0]]
        if key >= taus[-1]:
            return tab[taus[-1]]
        for lo, hi in zip(taus, taus[1:]):
            if lo <= key <= hi:
                w = (key - lo) / (hi - lo)
                return tab[lo] + w * (tab[hi] - tab[lo])
        return 1.0

    def _envelope(self) -> dict[float, float]:
        """The monotone table, cached until the next observation (an already monotone one is unchanged)."""
        if self._mono is None:
            best, mono = 0.0, {}
            for t in sorted(self.tps, reverse=True):
                best = max(best, self.tps[t])
                mono[t] = best
            self._mono = dict(sorted(mono.items()))
        return self._mono

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
        self._mono = None

    def copy(self) -> "StepPredictor":
        p = StepPredictor(self.tps, self.learning_rate)
        return p
