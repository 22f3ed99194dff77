"""Reconfiguration planner MILP (docs/design.md §4.5), solved with HiGHS; see docs/planner.md.

Pure: takes a ``PlannerInput`` and returns a ``Plan``; deterministic (HiGHS, one thread); never reads
the clock (solve time is HiGHS's own run timer). Variables, with the names of docs/planner.md:

    y_j ≥ 0   requests/s of class k(j) served by column j = (k, c, g, b)  (planner_columns)
    v_k ≥ 0   requests/s of class k that cannot be served within its SLO
    x_g ∈ ℤ≥0 instances of configuration g (per node: recovered exactly by planner_placement)

Rows: demand_k (Σ_j y_j + v_k = λ_k, i.e. the class's tokens get produced), cap_g (Σ_j w_j y_j ≤ ρ x_g,
instance-seconds per second), pack_d (GPUs per node, one row per TP level), min_inst. Objectives are
optimised one after another, each earlier optimum kept as a bound row: cover (min unserved tokens),
quality (max Σ O_k c y_j: threshold per committed token), slack (max capped SLO slack), size (min
instances, or GPUs when ``allow_shrink``). Then hysteresis against the current layout, then placement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import highspy
import numpy as np

from shared.policy.cost_model import CostModel
from shared.policy.planner.columns import Column, class_columns, fastest_time, latency_model
from shared.policy.planner.placement import layout_fits, level_capacity, levels, place
from shared.policy.planner.types import (
    CACHE_MODES, DEFAULT_BATCH_SIZES, ArrivalSample, Assignment, ClassTarget, ConfigSpec, Layout,
    Plan, PlannerError, PlannerInput, WorkloadClass,
)
from shared.policy.planner.workload import workload_classes

__all__ = [
    "ArrivalSample", "ConfigSpec", "Layout", "Plan", "PlannerError", "PlannerInput", "WorkloadClass",
    "default_configs", "solve_plan", "workload_classes",
]

STAGES = ("cover", "quality", "slack", "size")
COVER_TOL = 0.01  # a layout serving ≥ 1 % more of the demanded tokens always wins (no hysteresis)
INF = highspy.kHighsInf


def default_configs(tps: tuple[int, ...] = (1, 2, 4), caches: tuple[str, ...] = ("dual",),
                    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
                    cost_model: CostModel | None = None) -> list[ConfigSpec]:
    """Configurations ``tp{d}-{cache}`` from the docs/design.md §5 GH200 LLaDA-8B profile (or ``cost_model``).

    The profile was measured with dual cache; latency is a function of tokens executed, so the same
    curve prices prefix/no-cache steps through their larger token counts (planner_columns.reuse_tokens).
    """
    cm = cost_model or CostModel.llada8b_gh200()
    out = []
    for d in tps:
        key = f"tp{d}"
        if key not in cm.curves:
            raise PlannerError(f"cost model has no curve {key!r} (has {sorted(cm.curves)})")
        curve = cm.curves[key]
        pts = tuple(zip(curve.xs, curve.ys))
        for cache in caches:
            out.append(ConfigSpec(name=f"{key}-{cache}", tp=d, cache=cache, latency=pts,
                                  batch_sizes=batch_sizes))
    return out




# --- validation ------------------------------------------------------------------------------------

def validate(inp: PlannerInput) -> None:
    """Raise PlannerError for caller bugs; hard-but-valid situations become plan reasons instead."""
    if not inp.configs:
        raise PlannerError("no configurations")
    names = [c.name for c in inp.configs]
    if len(set(names)) != len(names):
        raise PlannerError(f"duplicate configuration names: {names}")
    for cfg in inp.configs:
        if cfg.tp < 1 or cfg.tp & (cfg.tp - 1):
            raise PlannerError(f"{cfg.name}: TP degree must be a power of two, got {cfg.tp}")
        if cfg.cache not in CACHE_MODES:
            raise PlannerError(f"{cfg.name}: cache must be one of {CACHE_MODES}, got {cfg.cache!r}")
        if not cfg.latency or not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
            raise PlannerError(f"{cfg.name}: needs latency points and batch sizes >= 1")
    if not inp.thresholds or min(inp.thresholds.values()) <= 0:
        raise PlannerError(f"thresholds need tokens/step > 0: {inp.thresholds}")
    if any(g < 0 for g in inp.gpus_per_node):
        raise PlannerError(f"negative GPU count: {inp.gpus_per_node}")
    if inp.fixed_pool and inp.allow_shrink:
        raise PlannerError("fixed_pool and allow_shrink exclude each other: a fixed pool cannot shrink")
    if inp.time_limit_s <= 0 or not 0 <= inp.mip_gap < 1 or inp.hysteresis < 0 or inp.utilization <= 0:
        raise PlannerError("time_limit_s > 0, 0 <= mip_gap < 1, hysteresis >= 0, utilization > 0 required")
    for cls in inp.classes:
        if cls.rate < 0 or cls.output_len <= 0 or cls.slo_s <= 0 or cls.block_len <= 0:
            raise PlannerError(f"class {cls.class_id}: needs rate >= 0, output_len, slo_s, block_len > 0")


# --- model -----------------------------------------------------------------------------------------

@dataclass(slots=True)
class Model:
    """Column layout: [y_0..y_{J-1}, v_0..v_{K-1}, x_0..x_{G-1}] and the stage objective vectors."""

    inp: PlannerInput
    columns: list[Column]
    n_y: int
    n_k: int
    n_g: int
    costs: dict[str, np.ndarray]
    senses: dict[str, highspy.ObjSense]
    demand_tokens: float

    @property
    def n(self) -> int:
        return self.n_y + self.n_k + self.n_g

    def x_index(self, g: int) -> int:
        return self.n_y + self.n_k + g


def build_columns(inp: PlannerInput, latency: CostModel) -> tuple[list[Column], list[str]]:
    columns: list[Column] = []
    reasons = []
    for k, cls in enumerate(inp.classes):
        cols = class_columns(k, cls, inp, latency)
        if not cols and cls.rate > 0:
            best = fastest_time(cls, inp, latency)
            reasons.append(f"class {cls.class_id}: SLO {cls.slo_s:.3g} s (×{inp.slo_margin:g}) is below the "
                           f"fastest possible {best:.3g} s; it cannot be served")
        columns.extend(cols)
    return columns, reasons


def objective_vectors(inp: PlannerInput, columns: list[Column]) -> dict[str, np.ndarray]:
    n_y, n_k, n_g = len(columns), len(inp.classes), len(inp.configs)
    n = n_y + n_k + n_g
    out_len = np.array([c.output_len for c in inp.classes], dtype=float)
    cover, quality, slack, size = (np.zeros(n) for _ in range(4))
    for j, col in enumerate(columns):
        quality[j] = out_len[col.k] * col.c
        slack[j] = min(col.slack, inp.slack_cap)
    cover[n_y:n_y + n_k] = out_len
    tp = np.array([c.tp for c in inp.configs], dtype=float)
    eps = 1.0 / (sum(inp.gpus_per_node) + 1.0)  # tie-break term stays < 1 unit of the primary one
    if inp.fixed_pool:  # every GPU is used anyway: the most instances = the most throughput per GPU
        size[n_y + n_k:] = -1.0
    else:
        size[n_y + n_k:] = tp + eps if inp.allow_shrink else 1.0 + eps * tp
    return {"cover": cover, "quality": quality, "slack": slack, "size": size}


def build_model(inp: PlannerInput, columns: list[Column]) -> tuple[Model, highspy.Highs]:
    n_y, n_k, n_g = len(columns), len(inp.classes), len(inp.configs)
    n = n_y + n_k + n_g
    lower = np.zeros(n)
    upper = np.full(n, INF)
    upper[n_y:n_y + n_k] = [c.rate for c in inp.classes]
    h = highspy.Highs()
    for opt, val in (("output_flag", False), ("threads", 1), ("mip_rel_gap", inp.mip_gap),
                     ("random_seed", 0), ("presolve", "on")):
        h.setOptionValue(opt, val)
    h.addVars(n, lower, upper)
    x_idx = np.arange(n_y + n_k, n, dtype=np.int32)
    h.changeColsIntegrality(n_g, x_idx, np.array([highspy.HighsVarType.kInteger] * n_g))
    rows = _rows(inp, columns, n_y, n_k, n_g)
    for lo, hi, idx, val in rows:
        h.addRow(lo, hi, len(idx), np.array(idx, dtype=np.int32), np.array(val, dtype=float))
    senses = {"cover": highspy.ObjSense.kMinimize, "quality": highspy.ObjSense.kMaximize,
              "slack": highspy.ObjSense.kMaximize, "size": highspy.ObjSense.kMinimize}
    demand = float(sum(c.rate * c.output_len for c in inp.classes))
    model = Model(inp, columns, n_y, n_k, n_g, objective_vectors(inp, columns), senses, demand)
    return model, h


Row = tuple[float, float, list[int], list[float]]


def _rows(inp: PlannerInput, columns: list[Column], n_y: int, n_k: int, n_g: int) -> list[Row]:
    """demand_k, cap_g, pack_d and min_inst rows (docs/planner.md §Constraints)."""
    by_k: list[list[int]] = [[] for _ in range(n_k)]
    by_g: list[list[int]] = [[] for _ in range(n_g)]
    for j, col in enumerate(columns):
        by_k[col.k].append(j)
        by_g[col.g].append(j)
    rows: list[Row] = []
    for k, cls in enumerate(inp.classes):  # demand_k: every request served or counted as unserved
        rows.append((cls.rate, cls.rate, by_k[k] + [n_y + k], [1.0] * len(by_k[k]) + [1.0]))
    for g in range(n_g):  # cap_g: instance-seconds per second fit in ρ·x_g
        idx = by_g[g] + [n_y + n_k + g]
        rows.append((-INF, 0.0, idx, [columns[j].w for j in by_g[g]] + [-inp.utilization]))
    tps = [c.tp for c in inp.configs]
    for d in levels(tps):  # pack_d: GPUs per node, exact for power-of-two TP degrees
        gs = [g for g in range(n_g) if tps[g] >= d]
        cap = float(level_capacity(inp.gpus_per_node, d))
        # fixed_pool: at the smallest level (all configurations) every usable GPU is taken
        lo = cap if inp.fixed_pool and d == min(tps) else -INF
        rows.append((lo, cap, [n_y + n_k + g for g in gs], [float(tps[g]) for g in gs]))
    m = min_instances(inp)
    if m > 0:
        rows.append((float(m), INF, list(range(n_y + n_k, n_y + n_k + n_g)), [1.0] * n_g))
    return rows


def min_instances(inp: PlannerInput) -> int:
    """``inp.min_instances`` capped at what can run at all (0 when no configuration fits a node)."""
    smallest = min(c.tp for c in inp.configs)
    return min(inp.min_instances, level_capacity(inp.gpus_per_node, smallest) // smallest)


# --- lexicographic solve ---------------------------------------------------------------------------

@dataclass(slots=True)
class StageResult:
    values: dict[str, float]  # raw objective value per solved stage
    solution: np.ndarray | None
    gaps: list[float]
    status: str  # optimal | time_limit | solver_failed
    detail: str


def _stage_scale(model: Model, stage: str) -> float:
    """Magnitude used to turn lex_tol into an absolute give on a stage bound."""
    rate = sum(c.rate for c in model.inp.classes)
    return {"cover": model.demand_tokens, "quality": model.demand_tokens, "slack": rate,
            "size": 1.0}[stage] or 1.0


def _has_solution(h: highspy.Highs) -> bool:
    return h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible


def lexicographic(model: Model, h: highspy.Highs, stages: tuple[str, ...], time_limit_s: float) -> StageResult:
    """Successive solves; after each, its objective is bounded at the optimum (less lex_tol)."""
    values: dict[str, float] = {}
    gaps: list[float] = []
    best: np.ndarray | None = None
    idx = np.arange(model.n, dtype=np.int32)
    status, detail = "optimal", ""
    for stage in stages:
        left = time_limit_s - h.getRunTime()
        if left <= 0:
            status, detail = "time_limit", f"time limit before stage {stage}"
            break
        cost = model.costs[stage]
        h.setOptionValue("time_limit", left)
        h.changeColsCost(model.n, idx, cost)
        h.changeObjectiveSense(model.senses[stage])
        if best is not None:  # the previous optimum is feasible here: a warm incumbent
            sol = highspy.HighsSolution()
            sol.col_value = list(best)
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        ms = h.getModelStatus()
        if not _has_solution(h):
            status, detail = "solver_failed", f"stage {stage}: {h.modelStatusToString(ms)}, no solution"
            break
        best = np.array(h.getSolution().col_value)
        values[stage] = float(cost @ best)
        gaps.append(_gap(h))
        if ms != highspy.HighsModelStatus.kOptimal:
            status, detail = "time_limit", f"stage {stage}: {h.modelStatusToString(ms)}"
            break
        _bound_stage(model, h, stage, values[stage])
    return StageResult(values, best, gaps, status if best is not None else "solver_failed", detail)


def _gap(h: highspy.Highs) -> float:
    info = h.getInfo()
    if info.mip_node_count < 0:  # solved as an LP (no free integers): no gap
        return 0.0
    g = float(info.mip_gap)
    return 0.0 if not np.isfinite(g) and abs(info.objective_function_value) < 1e-9 else g


def _bound_stage(model: Model, h: highspy.Highs, stage: str, value: float) -> None:
    give = model.inp.lex_tol * max(abs(value), _stage_scale(model, stage))
    cost = model.costs[stage]
    nz = np.nonzero(cost)[0].astype(np.int32)
    if len(nz) == 0:
        return
    lo, hi = ((value - give, INF) if model.senses[stage] == highspy.ObjSense.kMaximize
              else (-INF, value + give))
    h.addRow(lo, hi, len(nz), nz, cost[nz])


# --- plan assembly ---------------------------------------------------------------------------------

def counts_of(model: Model, sol: np.ndarray) -> dict[str, int]:
    out = {}
    for g, cfg in enumerate(model.inp.configs):
        c = int(round(sol[model.x_index(g)]))
        if c > 0:
            out[cfg.name] = c
    return dict(sorted(out.items()))


def summary(model: Model, sol: np.ndarray | None, counts: dict[str, int]) -> dict[str, float]:
    """Stage values normalised for people: fractions, means per token/request, integer sizes."""
    tp = {c.name: c.tp for c in model.inp.configs}
    out = {"instances": float(sum(counts.values())), "gpus": float(sum(tp[g] * n for g, n in counts.items())),
           "demand_tokens_per_s": model.demand_tokens}
    if sol is None:
        return {**out, "unserved_frac": 1.0 if model.demand_tokens else 0.0, "quality": 0.0, "slack": 0.0,
                "slack_capped": 0.0, "served_tokens_per_s": 0.0}
    served_tok = model.demand_tokens - float(model.costs["cover"] @ sol)
    y = sol[:model.n_y]
    served_rate = float(y.sum())
    slack_raw = float(sum(col.slack * y[j] for j, col in enumerate(model.columns)))
    return {**out,
            "unserved_frac": (1.0 - served_tok / model.demand_tokens) if model.demand_tokens else 0.0,
            "quality": float(model.costs["quality"] @ sol) / served_tok if served_tok > 1e-12 else 0.0,
            "slack": slack_raw / served_rate if served_rate > 1e-12 else 0.0,
            "slack_capped": float(model.costs["slack"] @ sol) / served_rate if served_rate > 1e-12 else 0.0,
            "served_tokens_per_s": served_tok}


def assignments(model: Model, sol: np.ndarray) -> list[Assignment]:
    out = []
    for j, col in enumerate(model.columns):
        if sol[j] > 1e-9:
            out.append(Assignment(class_id=model.inp.classes[col.k].class_id, threshold=col.c,
                                  config=model.inp.configs[col.g].name, batch=col.b, rate=float(sol[j]),
                                  time_s=col.t))
    return out


def targets(model: Model, sol: np.ndarray | None) -> list[ClassTarget]:
    out = []
    for k, cls in enumerate(model.inp.classes):
        mix: dict[float, float] = {}
        slack = 0.0
        if sol is not None:
            for j, col in enumerate(model.columns):
                if col.k == k and sol[j] > 1e-9:
                    mix[col.c] = mix.get(col.c, 0.0) + float(sol[j])
                    slack += col.slack * float(sol[j])
        served = sum(mix.values())
        tau = sum(c * r for c, r in mix.items()) / served if served > 1e-12 else 0.0
        out.append(ClassTarget(class_id=cls.class_id, threshold=tau,
                               threshold_mix={c: r / served for c, r in sorted(mix.items(), reverse=True)},
                               served_rate=served, unserved_rate=max(0.0, cls.rate - served),
                               slack=slack / served if served > 1e-12 else 0.0))
    return out


def operating_batch(model: Model, sol: np.ndarray) -> dict[str, float]:
    """Per configuration, the operating batch weighted by the instance time each column takes."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for j, col in enumerate(model.columns):
        if sol[j] > 1e-9:
            name = model.inp.configs[col.g].name
            share = col.w * float(sol[j])
            num[name] = num.get(name, 0.0) + share * col.b
            den[name] = den.get(name, 0.0) + share
    return {g: num[g] / den[g] for g in sorted(num)}


# --- hysteresis ------------------------------------------------------------------------------------

def clearly_better(new: dict[str, float], cur: dict[str, float], inp: PlannerInput) -> tuple[bool, str]:
    """Lexicographic comparison with hysteresis (docs/planner.md §Hysteresis).

    Coverage is not a matter of taste: ≥ COVER_TOL more of the demanded tokens served always wins.
    Otherwise the first later stage where the new plan is better by ≥ ``hysteresis`` (relative)
    decides, provided no earlier stage got worse beyond the solver's own tolerance.
    """
    tie = max(inp.mip_gap, inp.lex_tol)
    d_cover = cur["unserved_frac"] - new["unserved_frac"]
    if d_cover >= COVER_TOL:
        return True, f"serves {100 * d_cover:.1f}% more of the demanded tokens"
    if d_cover <= -COVER_TOL:
        return False, "new layout would serve less"
    size = [] if inp.fixed_pool else [("gpus" if inp.allow_shrink else "instances", False)]
    for name, better_if_higher in [("quality", True), ("slack_capped", True)] + size:
        n, c = new[name], cur[name]
        gain = (n - c) if better_if_higher else (c - n)
        rel = gain / max(abs(c), 1e-9)
        if rel >= inp.hysteresis and gain > 1e-9:
            return True, f"{name} {c:.4g} -> {n:.4g} ({100 * rel:+.1f}%)"
        if rel < -tie:
            return False, f"{name} would get worse ({c:.4g} -> {n:.4g})"
    return False, f"improvement below the {100 * inp.hysteresis:.0f}% hysteresis"


def evaluate_current(inp: PlannerInput, columns: list[Column], counts: dict[str, int],
                     time_limit_s: float) -> tuple[Model, StageResult, float]:
    """The current layout's own stage values: same model, x fixed (an LP). Under ``fixed_pool`` a current
    layout that leaves GPUs idle is still evaluated (and then loses on merit)."""
    model, h = build_model(replace(inp, fixed_pool=False), columns)
    for g, cfg in enumerate(inp.configs):
        v = float(counts.get(cfg.name, 0))
        h.changeColBounds(model.x_index(g), v, v)
    h.setOptionValue("mip_rel_gap", 0.0)
    res = lexicographic(model, h, STAGES[:3], time_limit_s)
    return model, res, h.getRunTime()


# --- entry point -----------------------------------------------------------------------------------

def _empty_plan(inp: PlannerInput, reason: str, status: str = "degenerate") -> Plan:
    tgts = [ClassTarget(class_id=c.class_id, threshold=0.0, threshold_mix={}, served_rate=0.0,
                        unserved_rate=c.rate, slack=0.0) for c in inp.classes]
    demand = float(sum(c.rate * c.output_len for c in inp.classes))
    objs = {"unserved_frac": 1.0 if demand else 0.0, "quality": 0.0, "slack": 0.0, "slack_capped": 0.0,
            "instances": 0.0, "gpus": 0.0, "served_tokens_per_s": 0.0, "demand_tokens_per_s": demand}
    changed = inp.current is not None and bool(inp.current.totals())
    return Plan(instances={}, nodes=[{} for _ in inp.gpus_per_node], targets=tgts, assignments=[], batch={},
                objectives=objs, solve_s=0.0, gap=0.0, status=status, reason=reason, changed=changed)


def _kept_plan(inp: PlannerInput, current: Layout, reason: str, status: str, solve_s: float, gap: float,
               model: Model | None = None, res: StageResult | None = None) -> Plan:
    counts = current.totals()
    sol = res.solution if res is not None else None
    nodes = [dict(sorted((g, c) for g, c in n.items() if c)) for n in current.nodes]
    nodes += [{} for _ in range(len(inp.gpus_per_node) - len(nodes))]
    if model is None:
        plan = _empty_plan(inp, reason, status)
        plan.instances, plan.nodes, plan.changed = counts, nodes, False
        tp = {c.name: c.tp for c in inp.configs}
        plan.objectives["instances"] = float(sum(counts.values()))
        plan.objectives["gpus"] = float(sum(tp.get(g, 0) * n for g, n in counts.items()))
        plan.kept_instances = sum(counts.values())
        return plan
    return Plan(instances=counts, nodes=nodes, targets=targets(model, sol),
                assignments=assignments(model, sol) if sol is not None else [],
                batch=operating_batch(model, sol) if sol is not None else {},
                objectives=summary(model, sol, counts), solve_s=solve_s, gap=gap, status=status,
                reason=reason, changed=False, kept_instances=sum(counts.values()),
                stage_gaps=list(res.gaps) if res is not None else [])


def solve_plan(inp: PlannerInput) -> Plan:
    """Lexicographic MILP → hysteresis against ``inp.current`` → placement. Never raises on valid input."""
    validate(inp)
    tp_of = {c.name: c.tp for c in inp.configs}
    current_ok = inp.current is not None and layout_fits(inp.current, tp_of, inp.gpus_per_node)
    if sum(inp.gpus_per_node) == 0:
        return _empty_plan(inp, "no GPUs available: nothing can run")
    if not inp.classes or sum(c.rate for c in inp.classes) == 0:
        if current_ok and inp.current is not None and inp.current.totals():
            return _kept_plan(inp, inp.current, "no arrivals in the window: keeping the current layout",
                              "degenerate", 0.0, 0.0)
    latency = latency_model(inp.configs)
    columns, reasons = build_columns(inp, latency)
    if min_instances(inp) == 0:
        reasons.append("no configuration fits on any node")
    model, h = build_model(inp, columns)
    res = lexicographic(model, h, STAGES, inp.time_limit_s)
    solve_s = h.getRunTime()
    gap = max(res.gaps, default=0.0)
    if res.solution is None:
        msg = "; ".join(reasons + [res.detail])
        if current_ok and inp.current is not None:
            return _kept_plan(inp, inp.current, f"solver failed, keeping the current layout: {msg}",
                              res.status, solve_s, gap)
        return _empty_plan(inp, f"solver failed: {msg}", res.status)
    counts = counts_of(model, res.solution)
    new_vals = summary(model, res.solution, counts)
    if new_vals["unserved_frac"] > 1e-6:
        reasons.append(f"overloaded: {100 * new_vals['unserved_frac']:.1f}% of demanded tokens cannot be "
                       f"served within their SLOs")
    if res.detail:
        reasons.append(res.detail)
    changed, why = True, "no current layout"
    if inp.current is not None and not current_ok:
        why = "current layout does not fit the GPUs (or names unknown configurations)"
    elif inp.current is not None:
        cur_model, cur_res, cur_s = evaluate_current(inp, columns, inp.current.totals(),
                                                     max(1e-3, inp.time_limit_s - solve_s))
        solve_s += cur_s
        cur_vals = summary(cur_model, cur_res.solution, inp.current.totals())
        if counts == inp.current.totals():
            changed, why = False, "same instance counts as the current layout"
        else:
            changed, why = clearly_better(new_vals, cur_vals, inp)
        if not changed:
            return _kept_plan(inp, inp.current, "; ".join(reasons + [f"kept: {why}"]), res.status, solve_s,
                              gap, cur_model, cur_res)
    placed = place(counts, tp_of, inp.gpus_per_node, inp.current if current_ok else None)
    if placed is None:  # unreachable when pack_d rows hold; a guard, never a crash
        return _empty_plan(inp, f"placement failed for {counts}", "solver_failed")
    nodes, kept = placed
    return Plan(instances=counts, nodes=nodes, targets=targets(model, res.solution),
                assignments=assignments(model, res.solution), batch=operating_batch(model, res.solution),
                objectives=new_vals, solve_s=solve_s, gap=gap, status=res.status,
                reason="; ".join(reasons + [f"changed: {why}"]), changed=True, kept_instances=kept,
                stage_gaps=list(res.gaps))
