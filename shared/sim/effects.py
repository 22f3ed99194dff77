"""What a live cluster adds to the policy's own timing, as explicit simulator parameters.

Every field defaults to the simulator's idealised cluster (one device per instance, a control plane
that costs nothing, 1-s heartbeats and load control), which keeps runs without them byte-identical.
``dilaserve experiment`` sets them from what it measured on the running cluster (docs/simulator.md,
"Live-cluster effects").
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class ClusterEffects:
    # Control-plane delays on a request's path (gateway, JetStream, scheduler, Redis, NATS hops):
    arrival_delay_s: float = 0.0  # arrival at the gateway → the scheduler's core sees it
    dispatch_delay_s: float = 0.0  # placement → the worker has it and can step it
    result_delay_s: float = 0.0  # its last step → the client has the answer
    heartbeat_s: float = 1.0  # an instance reports its measured steps this often (refits)
    tick_s: float = 1.0  # the scheduler calls schedule() at least this often (load control, shedding)
    # CPU shared by the workers and the services: 0 = every instance on a device of its own. Otherwise a
    # step's latency is stretched by (instances stepping at its start + service_cores) / cpu_cores
    # whenever that exceeds 1.
    cpu_cores: float = 0.0
    service_cores: float = 0.0  # cores the control plane and the load generator keep busy on average
    cost_quantile: float = 0.0  # the core's cost model refits toward this quantile of measured steps (live 0.9)
    # every step takes this many times the profile's latency, whatever the cluster does: load on the
    # machine from outside the cluster, or a profile measured on another machine
    step_scale: float = 1.0
    # worker time per step outside the forward (the step loop's τ choice, commits, events, the hand-offs
    # to the forward thread): this much plus ``step_overhead_per_request_s`` × the requests in the step;
    # the heartbeat's step samples, like the live worker's, time the forward only
    step_overhead_s: float = 0.0
    # live steps of one size vary (a shared CPU): each step × a lognormal factor of mean 1 and this
    # coefficient of variation. The cost models refit toward a quantile of the steps they measure, so
    # the spread sets how slow the policy thinks the steps are, and so its budgets and admission.
    step_cv: float = 0.0
    step_overhead_per_request_s: float = 0.0
    # (tokens, factor) knots, tokens ascending: a step of t tokens takes step_scale × the factor
    # interpolated linearly in log t, clamped at the ends (none: 1). The profile's shape as this machine
    # ran it under the load: big steps slowed more than small ones by the services' CPU, or a profile
    # measured on another machine
    step_scale_by_tokens: tuple[tuple[float, float], ...] = ()
    # (from s, factor) knots, times ascending: a step that starts at or after ``from`` (and before the
    # next knot) takes that factor more, before the first knot none. The machine's speed over one run as
    # measured (a shared VM has slow spells of seconds, which queue requests at the edge of capacity)
    step_scale_over_time: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("arrival_delay_s", "dispatch_delay_s", "result_delay_s", "cpu_cores", "service_cores",
                     "step_overhead_s", "step_cv", "step_overhead_per_request_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.heartbeat_s <= 0 or self.tick_s <= 0 or self.step_scale <= 0:
            raise ValueError("heartbeat_s, tick_s and step_scale must be > 0")
        knots = self.step_scale_by_tokens
        if any(t <= 0 or f <= 0 for t, f in knots) or any(a[0] >= b[0] for a, b in zip(knots, knots[1:])):
            raise ValueError(f"step_scale_by_tokens wants (tokens, factor) > 0 with tokens ascending, got {knots}")
        spells = self.step_scale_over_time
        if any(f <= 0 for _, f in spells) or any(a[0] >= b[0] for a, b in zip(spells, spells[1:])):
            raise ValueError(f"step_scale_over_time wants (from s, factor > 0) with times ascending, got {spells}")
        if not 0.0 <= self.cost_quantile < 1.0:
            raise ValueError(f"cost_quantile must be in [0, 1), got {self.cost_quantile}")

    def latency_scale(self, stepping: int) -> float:
        """How much slower a step runs with ``stepping`` instances (itself included) on the shared CPU."""
        if self.cpu_cores <= 0:
            return self.step_scale
        return self.step_scale * max(1.0, (stepping + self.service_cores) / self.cpu_cores)

    def size_scale(self, tokens: int) -> float:
        """The factor ``step_scale_by_tokens`` puts on a step of ``tokens`` tokens."""
        knots = self.step_scale_by_tokens
        if not knots or tokens <= knots[0][0]:
            return knots[0][1] if knots else 1.0
        for (t0, f0), (t1, f1) in zip(knots, knots[1:]):
            if tokens <= t1:
                w = math.log(tokens / t0) / math.log(t1 / t0)
                return f0 + w * (f1 - f0)
        return knots[-1][1]

    def time_scale(self, now_s: float) -> float:
        """The factor ``step_scale_over_time`` puts on a step that starts at ``now_s``."""
        i = bisect.bisect_right(self.step_scale_over_time, now_s, key=lambda k: k[0])
        return self.step_scale_over_time[i - 1][1] if i else 1.0

    def step_loop_s(self, num_requests: int) -> float:
        """The worker's time around one step of ``num_requests`` requests, outside its forward."""
        return self.step_overhead_s + self.step_overhead_per_request_s * num_requests

    def step_factor(self, rng: random.Random) -> float:
        """One step's lognormal factor (mean 1, coefficient of variation ``step_cv``)."""
        s2 = math.log1p(self.step_cv * self.step_cv)
        return math.exp(rng.gauss(-s2 / 2, math.sqrt(s2)))

    def is_default(self) -> bool:
        return self == ClusterEffects()

    def as_dict(self) -> dict:
        return asdict(self)
