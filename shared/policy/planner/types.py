"""Plain data in and out of the reconfiguration planner (docs/design.md §4.5); see docs/planner.md.

Everything here is a frozen/plain dataclass: the planner takes these and returns these, nothing else.
Names match the MILP in docs/planner.md: class k, threshold c, configuration g, batch b, node n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.policy.step_predictor import LLADA_TPS_PRIOR

CACHE_MODES = ("none", "prefix", "dual")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


class PlannerError(ValueError):
    """The planner's input is malformed (a caller bug), as opposed to a hard but valid situation."""


@dataclass(frozen=True, slots=True)
class ArrivalSample:
    """One request seen in the planning window (lengths in tokens, SLO = end-to-end deadline)."""

    arrival_s: float
    prompt_len: int
    output_len: int
    slo_s: float


@dataclass(frozen=True, slots=True)
class WorkloadClass:
    """Class k: representative lengths, its SLO S_k and arrival rate λ_k (requests per second)."""

    class_id: int
    prompt_len: int
    output_len: int
    slo_s: float
    rate: float
    block_len: int = 32
    count: int = 0  # arrivals binned into the class (diagnostics only)

    @property
    def full_len(self) -> int:
        return self.prompt_len + self.output_len

    @property
    def blocks(self) -> int:
        """n_k: refresh steps per request (one per block) — fixed, not a decision."""
        return max(1, -(-self.output_len // self.block_len))


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """Configuration g: TP degree d_g, cache mode, step latency L_g(tokens) as (tokens, seconds) points.

    ``batch_sizes`` are the candidate operating batch sizes b (concurrent requests) that linearise the
    batch dependence; ``max_tokens`` caps b·full_len for b > 1 (0 = the last profiled point), so the
    model never relies on extrapolating the latency curve far beyond what was measured.
    """

    name: str
    tp: int
    cache: str
    latency: tuple[tuple[float, float], ...]
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Layout:
    """Instances per configuration per node: ``nodes[n][g_name] = count`` (index n as in gpus_per_node)."""

    nodes: tuple[dict[str, int], ...]

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes:
            for name, count in node.items():
                if count:
                    out[name] = out.get(name, 0) + count
        return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class PlannerInput:
    """Everything ``solve_plan`` needs. Defaults are the operator-facing knobs of docs/planner.md."""

    classes: list[WorkloadClass]
    configs: list[ConfigSpec]
    thresholds: dict[float, float] = field(default_factory=lambda: dict(LLADA_TPS_PRIOR))  # c -> T_c
    gpus_per_node: list[int] = field(default_factory=list)
    current: Layout | None = None
    allow_shrink: bool = False
    # The pool is fixed and an idle GPU is waste (the simulator's cluster): every GPU runs an instance,
    # stage 3 prefers more (smaller) instances, and hysteresis does not weigh size. Excludes allow_shrink.
    fixed_pool: bool = False
    time_limit_s: float = 10.0
    mip_gap: float = 0.01
    hysteresis: float = 0.10
    slo_margin: float = 1.0  # plan each class against slo_margin · S_k
    utilization: float = 1.0  # ρ: usable fraction of each instance's time
    slack_cap: float = 0.25  # relative slack beyond this earns nothing (leaves room to shrink)
    lex_tol: float = 1e-6  # relative give on an earlier stage's optimum when bounding it (numerics only)
    min_instances: int = 1  # never plan an empty cluster while GPUs exist


@dataclass(frozen=True, slots=True)
class Assignment:
    """Class k at threshold c on configuration g at operating batch b: ``rate`` requests/s (y_j)."""

    class_id: int
    threshold: float
    config: str
    batch: int
    rate: float
    time_s: float  # t_j: planned end-to-end time of one request


@dataclass(frozen=True, slots=True)
class ClassTarget:
    """Per class: the token-weighted mean threshold and how its rate splits over thresholds."""

    class_id: int
    threshold: float
    threshold_mix: dict[float, float]
    served_rate: float
    unserved_rate: float
    slack: float  # rate-weighted relative SLO slack (S_k − t_j) / S_k of the served part


@dataclass(slots=True)
class Plan:
    """The planner's answer. ``objectives`` holds the stage values (see docs/planner.md §Objective)."""

    instances: dict[str, int]
    nodes: list[dict[str, int]]
    targets: list[ClassTarget]
    assignments: list[Assignment]
    batch: dict[str, float]  # rate-weighted operating batch per configuration
    objectives: dict[str, float]
    solve_s: float  # HiGHS run time summed over every solve this call made
    gap: float  # worst relative MIP gap over the lexicographic stages
    status: str  # optimal | time_limit | degenerate | solver_failed
    reason: str
    changed: bool
    kept_instances: int = 0
    stage_gaps: list[float] = field(default_factory=list)
