"""Step-latency cost model (docs/design.md §4.1): piecewise-linear in tokens executed, per configuration."""

from __future__ import annotations

from bisect import bisect_right

from shared.instance_config import InstanceConfig

# LLaDA-8B-Base, block 32, dual cache, one GH200 (docs/design.md §5): tokens -> step latency in ms.
LLADA8B_GH200_TOKENS = (32, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
LLADA8B_GH200_MS = {
    "tp1": (26.8, 25.2, 24.5, 27.7, 32.9, 48.3, 62.0, 92.7, 121.4, 177.8, 235.9),
    "tp2": (37.0, 39.3, 40.2, 41.3, 47.0, 47.2, 46.1, 65.2, 85.0, 124.2, 162.7),
    "tp4": (24.2, 26.5, 25.9, 26.8, 32.7, 32.6, 33.3, 38.3, 49.6, 71.7, 95.2),
}
# The conservative prior of the live cost model (docs/scheduler.md, "Cost model"): the shipped tiny model
# (services/worker/model, block 8) on one CPU thread while a training run held both cores of the 2-core
# development machine (`dilaserve profile --repeats 3 --threads 1`, refresh and reuse merged, ms). Slower
# than any unloaded CPU or GPU run of that model, so budgets start small; heartbeats refit it.
TINY_CPU_TOKENS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TINY_CPU_MS = (16.5, 17.3, 31.4, 32.8, 53.6, 104.1, 198.1, 447.2, 1008.5, 1834.8)
# A step measured slower or faster than predicted mostly says how fast this machine is against the
# profile (another CPU, a shared one, its clocks), and that holds for every step size alike; so most of
# each refit step scales the whole curve and the rest corrects the two points around the measured size
# (the curve's shape). Refitting only those two points left the sizes not yet seen at the profile's
# speed: a scheduler on a machine 2× slower than its profile, seeing small steps, kept the profile's
# 1024-token budget where 512 tokens already take 0.1 s, and priced a large batch at half its cost.
GLOBAL_SHARE = 0.8


class PiecewiseLinear:
    """y(x) through sorted points; flat below the first point, last slope beyond the last."""

    __slots__ = ("xs", "ys")

    def __init__(self, points: list[tuple[float, float]]):
        pts = sorted(points)
        if not pts:
            raise ValueError("need at least one point")
        self.xs = [float(x) for x, _ in pts]
        self.ys = [float(y) for _, y in pts]

    def segment(self, x: float) -> tuple[int, float]:
        """Index i of the segment [x_i, x_i+1] holding x and the weight of x_i+1 (clamped >= 0)."""
        xs = self.xs
        if len(xs) == 1 or x <= xs[0]:
            return 0, 0.0
        i = min(bisect_right(xs, x) - 1, len(xs) - 2)
        return i, (x - xs[i]) / (xs[i + 1] - xs[i])

    def __call__(self, x: float) -> float:
        if len(self.xs) == 1:
            return self.ys[0]
        i, w = self.segment(x)
        return self.ys[i] + w * (self.ys[i + 1] - self.ys[i])


class CostModel:
    """``latency(config, tokens)`` in seconds; refits online from measured steps (``observe``)."""

    def __init__(self, curves: dict[str, list[tuple[float, float]]], learning_rate: float = 0.05,
                 quantile: float | None = None, global_share: float = GLOBAL_SHARE):
        if not 0.0 <= global_share <= 1.0:
            raise ValueError(f"global_share must be in [0, 1], got {global_share}")
        self.curves = {name: PiecewiseLinear(pts) for name, pts in curves.items()}
        self.learning_rate = learning_rate
        # None: refit toward the mean step latency; q in (0, 1): toward its q-quantile (see _nudge)
        self.quantile = quantile
        self.global_share = global_share  # of each refit step, the part that scales the whole curve

    @property
    def configs(self) -> list[str]:
        return list(self.curves)

    def latency(self, config: str, tokens: float) -> float:
        return max(1e-6, self.curves[config](tokens))

    def latency_envelope(self, config: str, tokens: float) -> float:
        """Monotone upper envelope of ``latency``: adding tokens never looks cheaper (placement uses it)."""
        curve = self.curves[config]
        i, _ = curve.segment(tokens)
        prefix = max(curve.ys[: i + 1]) if tokens >= curve.xs[0] else curve.ys[0]
        return max(prefix, self.latency(config, tokens))

    def observe(self, config: str, tokens: float, latency_s: float) -> None:
        """Move the prediction at ``tokens`` toward a measured step: ``global_share`` of the step scales
        the whole curve, the rest nudges the two points bracketing ``tokens`` (weighted by position)."""
        curve = self.curves.get(config)
        if curve is None:
            self.curves[config] = PiecewiseLinear([(tokens, latency_s)])
            return
        predicted = curve(tokens)
        step = self._nudge(predicted, latency_s)
        if len(curve.xs) == 1:
            curve.ys[0] += step
            return
        factor = 1.0 + self.global_share * step / max(predicted, 1e-9)
        curve.ys = [y * factor for y in curve.ys]  # the prediction at tokens has moved global_share × step
        local = (1.0 - self.global_share) * step
        i, w = curve.segment(tokens)
        w = min(w, 1.0)
        curve.ys[i] += (1.0 - w) * local
        curve.ys[i + 1] += w * local

    def _nudge(self, predicted_s: float, measured_s: float) -> float:
        """Least squares toward the measurement; with ``quantile`` q, a pinball-loss step instead (up by
        q, down by 1 − q, relative to the prediction), which settles where a fraction q of the steps are
        faster: steps on a shared CPU vary ~2× around their mean, and a deadline planned on the mean
        step is missed half the time."""
        err = measured_s - predicted_s
        if self.quantile is None:
            return self.learning_rate * err
        g = self.quantile if err > 0 else self.quantile - 1.0
        return self.learning_rate * g * max(predicted_s, 1e-6)

    def throughput(self, config: str, tokens: float) -> float:
        """Executed tokens per second when every step carries ``tokens``."""
        return tokens / self.latency(config, tokens)

    def budget_for(self, config: str, max_step_s: float) -> int:
        """Largest token count, up to the last profiled one, whose interpolated step latency stays within
        ``max_step_s`` (at least the first point). Interpolated, not snapped to a profiled count: with
        profile points at 512 and 896 a refit nudging the 896-token step past ``max_step_s`` would
        otherwise halve the budget at once, and which side of it a busy cluster sits on would decide
        whether it keeps up."""
        curve = self.curves[config]
        best = curve.xs[0]
        points = list(zip(curve.xs, curve.ys))
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            if y1 <= max_step_s:
                best = x1
            elif y0 <= max_step_s:
                best = max(best, x0 + (max_step_s - y0) / (y1 - y0) * (x1 - x0))
        return int(best)

    def ensure(self, config: str, like: str | None = None) -> None:
        """Make ``config`` known: a copy of ``like``'s curve (default: one of the same model and device
        kind, else the first configuration's)."""
        if config not in self.curves and self.curves:
            src = self.curves[like if like in self.curves else self._kin(config)]
            self.curves[config] = PiecewiseLinear(list(zip(src.xs, src.ys)))

    def _kin(self, config: str) -> str:
        """A known configuration on the same model and device kind as ``config`` (else the first)."""
        me = InstanceConfig.parse_or_none(config)
        for name in self.curves:
            other = InstanceConfig.parse_or_none(name)
            if me is not None and other is not None and (other.model, other.device) == (me.model, me.device):
                return name
        return next(iter(self.curves))

    def copy(self) -> "CostModel":
        return CostModel({n: list(zip(c.xs, c.ys)) for n, c in self.curves.items()}, self.learning_rate,
                         self.quantile, self.global_share)

    # --- constructors -------------------------------------------------------------------------------
    @classmethod
    def llada8b_gh200(cls) -> "CostModel":
        return cls({cfg: [(t, ms / 1000.0) for t, ms in zip(LLADA8B_GH200_TOKENS, row)]
                    for cfg, row in LLADA8B_GH200_MS.items()})

    @classmethod
    def tiny_cpu(cls, config: str = "tp1") -> "CostModel":
        """The conservative prior for the shipped tiny model (see ``TINY_CPU_MS``)."""
        return cls({config: tiny_cpu_points()})

    @classmethod
    def from_profile(cls, data: dict, config: str = "tp1") -> "CostModel":
        """From ``dilaserve profile`` data (shared/profiles.py reads the file)."""
        return cls({config: profile_points(data)})

    BUILT_IN = ("llada8b-gh200", "llada8b_gh200", "tiny-cpu", "tiny_cpu")

    @classmethod
    def named(cls, name: str, config: str = "tp1") -> "CostModel":
        """``llada8b-gh200`` (its own configurations) or ``tiny-cpu`` (the prior, keyed ``config``)."""
        if name in ("llada8b-gh200", "llada8b_gh200"):
            return cls.llada8b_gh200()
        if name in ("tiny-cpu", "tiny_cpu"):
            return cls.tiny_cpu(config)
        raise ValueError(f"unknown cost model {name!r} (built in: {', '.join(cls.BUILT_IN)})")


def tiny_cpu_points() -> list[tuple[float, float]]:
    return [(t, ms / 1000.0) for t, ms in zip(TINY_CPU_TOKENS, TINY_CPU_MS)]


def profile_points(data: dict) -> list[tuple[float, float]]:
    """``dilaserve profile`` points as a curve: refresh and reuse merged, averaged per token count."""
    sums: dict[int, list[float]] = {}
    for p in data.get("points", []):
        sums.setdefault(int(p["tokens"]), []).append(float(p["latency_s"]))
    if not sums:
        raise ValueError("profile has no points")
    return [(t, sum(v) / len(v)) for t, v in sorted(sums.items())]

