"""The workload of ``dilaserve experiment``: one list of requests that both drivers replay.

Arrivals come from the simulator's own workload code (a trace's arrival pattern rescaled to the rate,
or a generator), SLO classes from its ``--slo-mix`` parser and draw; the prompts are task-suite problems
with exact answers, tokenized as the gateway does, so the live run can check every answer and the
simulator gets each request's real prompt and canvas length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from lab import tasks as task_suite
from shared.profiles import model_block_length
from shared.sim.runner import GENERATORS, SimSpec, workload_rows
from shared.sim.workload import (LengthScaling, SimRequest, SloClass, TraceRow, build_requests, load_trace,
                                 native_rps, parse_slo_mix, rescale_arrivals)
from tooling.loadgen import Shot


@dataclass(frozen=True, slots=True)
class ModelShape:
    block_len: int
    max_positions: int  # prompt + canvas
    canvas: int  # the largest canvas the model was trained on (the default max_tokens)


def model_shape(model_dir: Path, default_canvas: int = 32) -> ModelShape:
    """Block length as the services resolve it (shared/profiles.model_block_length), context from the
    model's config.json, canvas from its training.json."""
    cfg = json.loads((model_dir / "config.json").read_text())
    block = model_block_length(str(model_dir))
    positions = int(cfg.get("max_sequence_length") or cfg.get("max_position_embeddings"))
    training = model_dir / "training.json"
    canvas = default_canvas
    if training.exists():
        canvas = int(json.loads(training.read_text()).get("max_canvas") or default_canvas)
    return ModelShape(block, positions, canvas)


def default_tasks() -> tuple[str, ...]:
    return tuple(getattr(task_suite, "EVAL_TASKS", task_suite.TASKS))


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    trace: str  # azure_conv | azure_code | poisson | gamma | a trace file simulate reads
    duration_s: float
    seed: int
    slo_ms: float  # the single SLO, or the unit the classes' multipliers scale
    classes: tuple[SloClass, ...]
    max_tokens: int
    block_len: int
    max_positions: int
    tasks: tuple[str, ...]
    keep_output: bool = False  # trace output lengths (in whole blocks, ≤ max_tokens) instead of max_tokens
    burst_cv: float = 4.0
    # "window": the replayed window itself holds rate × duration arrivals (a short window of a trace is
    # not at the trace's mean rate: azure_conv's first minute runs at 0.6 of it); "trace": `simulate`'s
    # rescaling, the whole trace's mean rate is the rate
    rate_basis: str = "window"

    def slo_ms_of(self, c: SloClass) -> float:
        return c.multiplier * self.slo_ms

    def mean_slo_s(self) -> float:
        """tedi's one deployment-wide SLO: the traffic-weighted mean (as ``simulate --tedi-slo mean``)."""
        return sum(c.fraction * self.slo_ms_of(c) for c in self.classes) / 1000.0


@dataclass(frozen=True, slots=True)
class Request:
    shot: Shot  # what the live run sends
    sim: SimRequest  # what the simulator replays: same arrival, lengths, SLO class


def slo_classes(spec: str | None) -> tuple[SloClass, ...]:
    return tuple(parse_slo_mix(spec))


def problems(n: int, seed: int, tasks: tuple[str, ...]) -> list[task_suite.Problem]:
    """``n`` eval problems; when the tasks have fewer distinct ones, the largest set found, repeated."""
    k = max(1, n)
    while True:
        try:
            found = task_suite.make_problems(k, seed=seed, tasks=tasks)
            return [found[i % len(found)] for i in range(n)]
        except ValueError:
            if k == 1:
                raise
            k //= 2


def window_rows(trace: str, rps: float, duration_s: float) -> list[TraceRow]:
    """The first round(rps × duration) arrivals of the trace (tiled if it is shorter), time scaled by
    one factor so that the next one would fall at ``duration_s``: the window's rate is ``rps``, its
    burst shape the trace's."""
    n = max(1, round(rps * duration_s))
    base = load_trace(trace)
    span = (n + 1) / native_rps(base)
    rows = rescale_arrivals(base, None, span)
    while len(rows) <= n:
        span *= 2
        rows = rescale_arrivals(base, None, span)
    if rows[n].t <= 0:
        raise ValueError(f"{trace}: its first {n + 1} arrivals share one timestamp; cannot set a rate")
    factor = duration_s / rows[n].t
    return [TraceRow(r.t * factor, r.prompt, r.output) for r in rows[:n]]


def arrival_rows(spec: WorkloadSpec, rps: float) -> list[TraceRow]:
    if spec.rate_basis == "window" and spec.trace not in GENERATORS and "," not in spec.trace:
        return window_rows(spec.trace, rps, spec.duration_s)
    if spec.rate_basis not in ("window", "trace"):
        raise ValueError(f"rate basis {spec.rate_basis!r}: want window or trace")
    sim_spec = SimSpec(trace=spec.trace, duration_s=spec.duration_s, seed=spec.seed, burst_cv=spec.burst_cv)
    return workload_rows(sim_spec, rps)


def build_workload(spec: WorkloadSpec, rps: float, encode: Callable[[str], list[int]]) -> list[Request]:
    rows = arrival_rows(spec, rps)
    scaling = LengthScaling(output_len=spec.max_tokens, block_len=spec.block_len, keep_output=spec.keep_output)
    drawn = build_requests(rows, scaling, list(spec.classes), 1.0, spec.slo_ms / 1000.0, spec.seed)
    out = []
    for req, prob in zip(drawn, problems(len(drawn), spec.seed, spec.tasks)):
        prompt_len = len(encode(prob.prompt))
        canvas = min(req.output_len, spec.max_positions - prompt_len)
        if canvas < 1:
            raise ValueError(f"prompt {prob.prompt!r} leaves no room in {spec.max_positions} positions")
        dlm: dict = {"slo_ms": round(req.slo_s * 1000.0, 3), "priority": req.priority}
        if req.min_threshold > 0:
            dlm["min_threshold"] = req.min_threshold
        shot = Shot(req.arrival_s, prob.prompt, prob.answer, prob.task, canvas, dlm)
        out.append(Request(shot, replace(req, prompt_len=prompt_len, output_len=canvas)))
    return out


def warmup_shots(spec: WorkloadSpec, n: int, encode: Callable[[str], list[int]]) -> list[Shot]:
    """Requests without an SLO (never refused), other problems than the measured ones."""
    out = []
    for p in problems(n, spec.seed + 10_007, spec.tasks):
        canvas = min(spec.max_tokens, spec.max_positions - len(encode(p.prompt)))
        out.append(Shot(0.0, p.prompt, p.answer, p.task, max(1, canvas)))
    return out
