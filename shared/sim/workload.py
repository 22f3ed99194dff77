"""Workloads for the simulator: real traces (rescaled to the model), Poisson and Gamma-burst generators,
SLO classes.

Rescaling (see docs/simulator.md): arrival times are compressed/stretched by one factor so the mean rate
equals ``rps`` (the trace's burst shape is kept; it is tiled if ``duration`` outlasts it); prompt lengths
are multiplied by ``prompt_scale`` and clipped to [min_prompt, max_prompt]; output lengths are fixed to
``output_len`` (the published setup: 256) unless ``keep_output`` (then rounded up to whole blocks).
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "traces"
TRACE_FILES = {"azure_conv": "azure_llm_2023_conv.csv", "azure_code": "azure_llm_2023_code.csv"}
TIME_KEYS = ("timestamp", "time", "arrival", "arrival_s", "arrival_time")
INPUT_KEYS = ("contexttokens", "input", "input_tokens", "input_len", "prompt_tokens", "prompt_len", "context_tokens")
OUTPUT_KEYS = ("generatedtokens", "output", "output_tokens", "output_len", "generated_tokens", "completion_tokens")


@dataclass(slots=True, frozen=True)
class TraceRow:
    t: float  # seconds since the first request
    prompt: int
    output: int


@dataclass(slots=True, frozen=True)
class SloClass:
    name: str
    fraction: float
    multiplier: float  # SLO = multiplier × slo_scale × base latency
    priority: int = 0
    min_threshold: float = 0.0


@dataclass(slots=True, frozen=True)
class SimRequest:
    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    slo_s: float
    priority: int = 0
    min_threshold: float = 0.0
    cls: str = "default"
    # this prompt's tokens per step relative to the workload's mean at the same τ: prompts of one task
    # suite decode at different speeds (a copied digit commits in bulk, an open move one at a time)
    speed: float = 1.0
    # (τ, speed) where this prompt's own speed was measured at that τ: a path prompt's open moves make it
    # slow at τ 0.9 and a lower τ unlocks them, so one speed for every τ misprices it; other τ use ``speed``
    speed_by_tau: tuple[tuple[float, float], ...] = ()


@dataclass(slots=True, frozen=True)
class LengthScaling:
    output_len: int = 256
    block_len: int = 32
    prompt_scale: float = 0.25
    min_prompt: int = 16
    max_prompt: int = 1024
    keep_output: bool = False

    def prompt(self, n: int) -> int:
        return int(min(self.max_prompt, max(self.min_prompt, round(n * self.prompt_scale))))

    def output(self, n: int) -> int:
        if not self.keep_output:
            return self.output_len
        b = self.block_len
        return max(b, min(self.output_len, -(-n // b) * b))


# --- trace loading ---------------------------------------------------------------------------------------
def _parse_time(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return datetime.fromisoformat(v.strip()[:26]).timestamp()


def _pick(row: dict, keys: tuple[str, ...]) -> str:
    low = {k.strip().lower(): v for k, v in row.items() if k}
    for k in keys:
        if k in low:
            return low[k]
    raise KeyError(f"none of {keys} in columns {sorted(low)}")


def trace_path(name: str) -> Path:
    return DATA_DIR / TRACE_FILES[name] if name in TRACE_FILES else Path(name)


def load_trace(name: str) -> list[TraceRow]:
    """``azure_conv``/``azure_code`` (from data/traces) or any CSV/JSONL with time/input/output columns."""
    return list(_load_trace(str(trace_path(name).resolve()), trace_path(name).stat().st_mtime_ns))


@lru_cache(maxsize=8)
def _load_trace(path_str: str, _mtime_ns: int) -> tuple[TraceRow, ...]:
    path = Path(path_str)
    text = path.read_text()
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    parsed = sorted((_parse_time(_pick(r, TIME_KEYS)), int(float(_pick(r, INPUT_KEYS))),
                     int(float(_pick(r, OUTPUT_KEYS)))) for r in rows)
    if not parsed:
        raise ValueError(f"empty trace {path}")
    t0 = parsed[0][0]
    return tuple(TraceRow(t - t0, p, o) for t, p, o in parsed)


def native_rps(rows: list[TraceRow]) -> float:
    span = rows[-1].t - rows[0].t
    return (len(rows) - 1) / span if span > 0 else float(len(rows))


def rescale_arrivals(rows: list[TraceRow], rps: float | None, duration_s: float | None) -> list[TraceRow]:
    """Scale time so the mean rate is ``rps`` (None: native); tile the trace to fill ``duration_s``."""
    if not rows:
        return []
    native = native_rps(rows)
    factor = 1.0 if rps is None else native / rps
    period = (rows[-1].t + 1.0 / native) * factor  # one trace length plus one mean gap
    out: list[TraceRow] = []
    offset = 0.0
    while True:
        for r in rows:
            t = offset + r.t * factor
            if duration_s is not None and t >= duration_s:
                return out
            out.append(TraceRow(t, r.prompt, r.output))
        if duration_s is None:
            return out
        offset += period


def phased_rows(names: list[str], rps: float | None, duration_s: float | None,
                phase_rps: tuple[float, ...] = ()) -> list[TraceRow]:
    """Traces back to back (``--trace azure_code,azure_conv``): phase i replays trace i for
    ``duration_s / len(names)`` seconds. Without ``phase_rps``, one common time factor for all phases,
    so they keep their native rates relative to each other and ``rps`` (None: native) is the mean of the
    phase rates; ``phase_rps`` gives each phase its own mean rate instead (a load shift)."""
    if not duration_s:
        raise ValueError("a phased trace needs --duration > 0")
    traces = [load_trace(n) for n in names]
    natives = [native_rps(t) for t in traces]
    if phase_rps:
        if len(phase_rps) != len(names):
            raise ValueError(f"--phase-rps needs one rate per phase ({len(names)})")
        rates = list(phase_rps)
    else:
        factor = 1.0 if rps is None else rps / (sum(natives) / len(natives))
        rates = [nat * factor for nat in natives]
    span = duration_s / len(names)
    out: list[TraceRow] = []
    for i, (rows, rate) in enumerate(zip(traces, rates)):
        out += [TraceRow(r.t + i * span, r.prompt, r.output) for r in rescale_arrivals(rows, rate, span)]
    return out


# --- generators ------------------------------------------------------------------------------------------
def generate_arrivals(kind: str, rps: float, duration_s: float, rng: random.Random, cv: float = 4.0) -> list[float]:
    """``poisson`` (exponential gaps) or ``gamma`` (Gamma gaps with coefficient of variation ``cv``: bursts)."""
    times, t = [], 0.0
    shape = 1.0 / (cv * cv)
    while True:
        gap = rng.expovariate(rps) if kind == "poisson" else rng.gammavariate(shape, 1.0 / (shape * rps))
        t += gap
        if t >= duration_s:
            return times
        times.append(t)


def synthetic_rows(kind: str, rps: float, duration_s: float, seed: int, cv: float = 4.0,
                   lengths_from: str = "azure_conv") -> list[TraceRow]:
    """Generated arrivals; prompt/output lengths drawn from a real trace's rows (seeded)."""
    rng = random.Random(seed)
    pool = load_trace(lengths_from)
    return [TraceRow(t, (r := pool[rng.randrange(len(pool))]).prompt, r.output)
            for t in generate_arrivals(kind, rps, duration_s, rng, cv)]


# --- SLO classes -----------------------------------------------------------------------------------------
def parse_slo_mix(spec: str | None) -> list[SloClass]:
    """``"interactive:0.3:2:1,batch:0.7:6"`` → classes ``name:fraction:multiplier[:priority[:min_tau]]``."""
    if not spec:
        return [SloClass("default", 1.0, 1.0)]
    classes = []
    for part in spec.split(","):
        f = part.strip().split(":")
        if len(f) < 3:
            raise ValueError(f"bad SLO class {part!r}: want name:fraction:multiplier[:priority[:min_tau]]")
        classes.append(SloClass(f[0], float(f[1]), float(f[2]), int(f[3]) if len(f) > 3 else 0,
                                float(f[4]) if len(f) > 4 else 0.0))
    total = sum(c.fraction for c in classes)
    return [SloClass(c.name, c.fraction / total, c.multiplier, c.priority, c.min_threshold) for c in classes]


def mean_multiplier(classes: list[SloClass]) -> float:
    return sum(c.fraction * c.multiplier for c in classes)


def build_requests(rows: list[TraceRow], scaling: LengthScaling, classes: list[SloClass], slo_scale: float,
                   base_latency_s: float, seed: int) -> list[SimRequest]:
    """Apply length scaling and draw each request's SLO class (seeded, independent of the arrivals)."""
    rng = random.Random(seed * 7919 + 17)
    cum = []
    acc = 0.0
    for c in classes:
        acc += c.fraction
        cum.append(acc)
    out = []
    for i, r in enumerate(rows):
        u = rng.random()
        c = classes[min(len(classes) - 1, next((k for k, v in enumerate(cum) if u < v), len(cum) - 1))]
        out.append(SimRequest(f"r{i:06d}", r.t, scaling.prompt(r.prompt), scaling.output(r.output),
                              c.multiplier * slo_scale * base_latency_s, c.priority, c.min_threshold, c.name))
    return out


def median(values: list[int]) -> float:
    s = sorted(values)
    return float(s[len(s) // 2]) if s else math.nan
