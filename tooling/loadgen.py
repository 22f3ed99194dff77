"""`dilaserve bench`: open-loop load generator against a running gateway.

Arrivals are Poisson at ``--rps`` (or the inter-arrival times of ``--trace``, rescaled to ``--rps``);
each request is sent when its time comes, whether or not earlier ones finished. Prompts are task-suite
problems (so the answers can be checked). The control-plane overhead of a request is the gateway's
latency minus the time the request spent on its worker, both read from the response's ``dlm.timings``.

Every request ends as one kind of outcome: served (a 200 with a completion; met its SLO or not),
refused (503 ``deadline_unmeetable``: the scheduler saw its deadline cannot be met and did not run
it), an HTTP error (any other status, counted by status code; a 200 whose body is not a completion
counts under 200), or a connection error (connect/read failure, timeout). SLO attainment is reported
over all requests (every refusal or error is a miss) and over served requests only.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.tasks import Problem, check_answer, make_problems
from shared.schemas.requests import DEADLINE_UNMEETABLE

SERVED, REFUSED, HTTP_ERROR, CONNECTION_ERROR = "served", "refused", "http_error", "connection_error"


@dataclass
class Shot:
    at_s: float  # offset from the start
    prompt: str
    answer: str
    task: str
    max_tokens: int
    dlm: dict[str, Any] | None = None  # per-request DLM fields (slo_ms, priority, min_threshold)


@dataclass
class Outcome:
    ok: bool  # served
    latency_s: float = 0.0
    overhead_ms: float | None = None
    timings_ms: dict[str, float] | None = None  # the response's dlm.timings (overhead breakdown)
    slo_met: bool | None = None
    correct: bool | None = None
    error: str = ""
    kind: str = ""  # SERVED, REFUSED, HTTP_ERROR or CONNECTION_ERROR; derived from ok/http_status if not given
    http_status: int | None = None  # None: no HTTP answer
    threshold_mean: float | None = None  # the response's dlm.threshold_mean (mean τ the worker used)
    steps: int | None = None  # the response's dlm.steps (denoising steps the request took)
    send_lag_s: float = 0.0  # how late the generator sent it against its planned time (an open loop's own lag)

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = SERVED if self.ok else HTTP_ERROR if self.http_status is not None else CONNECTION_ERROR


def poisson_arrivals(rps: float, duration_s: float, rng: random.Random) -> list[float]:
    t, out = 0.0, []
    while True:
        t += rng.expovariate(rps)
        if t >= duration_s:
            return out
        out.append(t)


def trace_arrivals(path: Path, rps: float, duration_s: float) -> tuple[list[float], list[int]]:
    """Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens): keep its burstiness, rescale its rate."""
    from datetime import datetime

    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise ValueError(f"{path} has no rows")
    key = next(k for k in rows[0] if k.lower().startswith("timestamp"))
    gen_key = next((k for k in rows[0] if k.lower().startswith("generated")), None)

    def ts(v: str) -> float:
        try:
            return float(v)
        except ValueError:
            return datetime.fromisoformat(v.strip()[:26]).timestamp()

    times = [ts(r[key]) for r in rows]
    t0 = times[0]
    rel = [t - t0 for t in times]
    native_rps = len(rel) / max(rel[-1], 1e-9)
    scale = native_rps / rps
    arrivals, lengths = [], []
    for r, t in zip(rows, rel):
        if t * scale >= duration_s:
            break
        arrivals.append(t * scale)
        lengths.append(int(r[gen_key]) if gen_key else 0)
    return arrivals, lengths


def make_shots(args: argparse.Namespace) -> list[Shot]:
    rng = random.Random(args.seed)
    if args.trace:
        arrivals, lengths = trace_arrivals(Path(args.trace), args.rps, args.duration)
    else:
        arrivals = poisson_arrivals(args.rps, args.duration, rng)
        lengths = [0] * len(arrivals)
    problems = make_problems(max(1, len(arrivals)), seed=args.seed)
    shots = []
    for t, p, n in zip(arrivals, problems, lengths):
        # Trace output lengths are for a large model; clip into the tiny model's canvas.
        max_tokens = args.max_tokens if not n else max(8, min(args.max_tokens, n))
        shots.append(Shot(t, p.prompt, p.answer, p.task, max_tokens))
    return shots


async def fire(session, url: str, shot: Shot, slo_ms: float | None) -> Outcome:
    body: dict = {"model": "dilaserve-tiny", "prompt": shot.prompt, "max_tokens": shot.max_tokens}
    if slo_ms:
        body["slo_ms"] = slo_ms
    if shot.dlm:
        body["dlm"] = shot.dlm
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            status, text = r.status, await r.text()
    except Exception as exc:  # transport errors: connect, read, timeouts, protocol
        return Outcome(False, time.perf_counter() - t0, error=repr(exc), kind=CONNECTION_ERROR)
    return response_outcome(status, text, time.perf_counter() - t0, shot, slo_ms)


def error_code(body_text: str) -> str:
    """The OpenAI-style ``error.code`` of an error body ('' when there is none)."""
    try:
        err = json.loads(body_text).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(err.get("code") or "") if isinstance(err, dict) else ""


def response_outcome(status: int, body_text: str, latency_s: float, shot: Shot, slo_ms: float | None) -> Outcome:
    """Classify one HTTP answer (see the module doc)."""
    if status != 200:
        code = error_code(body_text)
        kind = REFUSED if status == 503 and code == DEADLINE_UNMEETABLE else HTTP_ERROR
        return Outcome(False, latency_s, error=f"HTTP {status}: {body_text[:200]}", kind=kind, http_status=status)
    try:
        data = json.loads(body_text)
        text = data["choices"][0]["text"]
        dlm = data.get("dlm") or {}
        timings = dlm.get("timings") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Outcome(False, latency_s, error=f"HTTP 200 without a completion: {body_text[:200]}",
                       kind=HTTP_ERROR, http_status=200)
    return Outcome(True, latency_s, overhead_ms=timings.get("overhead_ms"), timings_ms=timings,
                   slo_met=None if slo_ms is None else latency_s * 1000 <= slo_ms,
                   correct=check_answer(Problem(shot.task, shot.prompt, shot.answer), text), kind=SERVED,
                   http_status=200, threshold_mean=dlm.get("threshold_mean"), steps=dlm.get("steps"))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def run(args: argparse.Namespace) -> dict:
    # aiohttp, not httpx: the generator shares the CPU with the cluster it measures, and at 120 req/s
    # httpx took 0.8 of this machine's 2 cores (its own queueing then counts as server latency)
    import aiohttp
    from tqdm import tqdm

    shots = make_shots(args)
    url = args.url.rstrip("/")
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(shots), desc=f"bench {args.rps:g} req/s", unit="req", file=sys.stderr, mininterval=0.5)
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never wait for a free connection
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=args.timeout)) as client:
        start = time.perf_counter()

        async def one(shot: Shot) -> None:
            delay = start + shot.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcomes.append(await fire(client, url, shot, args.slo_ms))
            bar.update(1)

        await asyncio.gather(*(one(s) for s in shots))
        wall = time.perf_counter() - start
    bar.close()
    return summarize(args, outcomes, wall)


def outcome_counts(outcomes: list[Outcome]) -> dict[str, Any]:
    """How many requests ended each way; ``served_slo_*`` only count requests that carried an SLO."""
    served = [o for o in outcomes if o.kind == SERVED]
    http = Counter(o.http_status for o in outcomes if o.kind == HTTP_ERROR)
    return {
        "served": len(served),
        "served_slo_met": sum(1 for o in served if o.slo_met is True),
        "served_slo_missed": sum(1 for o in served if o.slo_met is False),
        "refused_deadline_unmeetable": sum(1 for o in outcomes if o.kind == REFUSED),
        "http_errors_by_status": {str(k): v for k, v in sorted(http.items(), key=lambda kv: kv[0] or 0)},
        "connection_errors": sum(1 for o in outcomes if o.kind == CONNECTION_ERROR),
    }


def summarize(args: argparse.Namespace, outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o for o in outcomes if o.kind == SERVED]
    lat = [o.latency_s for o in ok]
    over = [o.overhead_ms for o in ok if o.overhead_ms is not None]
    met = sum(1 for o in ok if o.slo_met is True)
    correct = [o.correct for o in ok if o.correct is not None]
    errors = [o.error for o in outcomes if o.kind in (HTTP_ERROR, CONNECTION_ERROR)]
    counts = outcome_counts(outcomes)
    r = lambda v, n=4: None if v is None else round(v, n)  # noqa: E731
    return {
        "url": args.url, "rps": args.rps, "duration_s": args.duration, "trace": args.trace, "slo_ms": args.slo_ms,
        # completed: served; errors: HTTP and connection errors (a deadline refusal is neither).
        "sent": len(outcomes), "completed": len(ok), "refused": counts["refused_deadline_unmeetable"],
        "errors": len(errors), "outcomes": counts,
        # Over all requests: refused and failed requests count as missed deadlines.
        "slo_attainment": r(met / len(outcomes)) if args.slo_ms and outcomes else None,
        # Over served requests only: whether what was served met its deadline.
        "slo_attainment_served": r(met / len(ok)) if args.slo_ms and ok else None,
        "latency_p50_s": r(percentile(lat, 50)), "latency_p99_s": r(percentile(lat, 99)),
        "latency_mean_s": r(sum(lat) / len(lat) if lat else None),
        "throughput_rps": r(len(ok) / wall_s if wall_s else 0.0, 3),
        "overhead_p50_ms": r(percentile(over, 50), 3), "overhead_p99_ms": r(percentile(over, 99), 3),
        "overhead_parts_p50_ms": overhead_parts(ok),
        "accuracy": r(sum(correct) / len(correct)) if correct else None,
        "first_errors": errors[:5],
    }


OVERHEAD_PARTS = ("to_scheduler_ms", "to_worker_ms", "result_return_ms", "queue_ms")


def overhead_parts(ok: list[Outcome]) -> dict[str, float | None]:
    """Median of each hop of the overhead (gateway → scheduler, scheduler → worker, result → gateway),
    so that a regression names its hop."""
    parts = {}
    for key in OVERHEAD_PARTS:
        vals = [o.timings_ms[key] for o in ok if o.timings_ms and o.timings_ms.get(key) is not None]
        p50 = percentile(vals, 50)
        parts[key] = None if p50 is None else round(p50, 3)
    return parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    p.add_argument("--rps", type=float, default=10.0, help="mean arrival rate (requests/s)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    p.add_argument("--trace", default=None, help="Azure-format CSV whose arrival pattern to replay (rescaled to --rps)")
    p.add_argument("--slo-ms", type=float, default=None, help="end-to-end deadline sent with every request")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="per-request HTTP timeout (s)")
    p.add_argument("--json", default=None, help="write the summary here")


def main(args: argparse.Namespace) -> int:
    if args.rps <= 0 or args.duration <= 0:
        print("error: --rps and --duration must be > 0", file=sys.stderr)
        return 2
    summary = asyncio.run(run(args))
    print_summary(summary, args.json)
    print("\n".join(outcome_lines(summary)), file=sys.stderr)
    return 0 if summary["errors"] == 0 else 1


def outcome_lines(summary: dict) -> list[str]:
    """The outcome counts and both attainments, for a person (stdout stays JSON)."""
    c = summary["outcomes"]
    http = ", ".join(f"{k}: {v}" for k, v in c["http_errors_by_status"].items()) or "none"
    lines = [(f"sent {summary['sent']}: served {c['served']} (SLO met {c['served_slo_met']}, missed "
              f"{c['served_slo_missed']}), refused 503 {DEADLINE_UNMEETABLE} {c['refused_deadline_unmeetable']}, "
              f"HTTP errors by status {http}, connection errors {c['connection_errors']}")]
    if summary["slo_attainment"] is not None:
        served = summary["slo_attainment_served"]
        lines.append(f"SLO attainment {summary['slo_attainment']:.4f} over all requests, "
                     f"{'n/a' if served is None else f'{served:.4f}'} over served requests (served meet their deadline)")
    return lines


def print_summary(summary: dict, json_path: str | None) -> None:
    """A load command's result: JSON on stdout, and in ``json_path`` when given."""
    text = json.dumps(summary, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
