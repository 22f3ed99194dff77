"""`dilaserve bench`: open-loop load generator against a running gateway.

Arrivals are Poisson at ``--rps`` (or the inter-arrival times of ``--trace``, rescaled to ``--rps``);
each request is sent when its time comes, whether or not earlier ones finished. Prompts are task-suite
problems (so the answers can be checked). The control-plane overhead of a request is the gateway's
latency minus the time the request spent on its worker, both read from the response's ``dlm.timings``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab.tasks import check_answer, make_problems


@dataclass
class Shot:
    at_s: float  # offset from the start
    prompt: str
    answer: str
    task: str
    max_tokens: int


@dataclass
class Outcome:
    ok: bool
    latency_s: float = 0.0
    overhead_ms: float | None = None
    timings_ms: dict[str, float] | None = None  # the response's dlm.timings (overhead breakdown)
    slo_met: bool | None = None
    correct: bool | None = None
    error: str = ""


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


async def fire(client, url: str, shot: Shot, slo_ms: float | None) -> Outcome:
    body: dict = {"model": "dilaserve-tiny", "prompt": shot.prompt, "max_tokens": shot.max_tokens}
    if slo_ms:
        body["slo_ms"] = slo_ms
    t0 = time.perf_counter()
    try:
        r = await client.post(url + "/v1/completions", json=body)
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            return Outcome(False, latency, error=f"HTTP {r.status_code}: {r.text[:200]}")
        data = r.json()
    except Exception as exc:
        return Outcome(False, time.perf_counter() - t0, error=repr(exc))
    dlm = data.get("dlm") or {}
    timings = dlm.get("timings") or {}
    text = data["choices"][0]["text"]
    from lab.tasks import Problem

    return Outcome(True, latency, overhead_ms=timings.get("overhead_ms"), timings_ms=timings,
                   slo_met=None if slo_ms is None else latency * 1000 <= slo_ms,
                   correct=check_answer(Problem(shot.task, shot.prompt, shot.answer), text))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def run(args: argparse.Namespace) -> dict:
    import httpx
    from tqdm import tqdm

    shots = make_shots(args)
    url = args.url.rstrip("/")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(shots), desc=f"bench {args.rps:g} req/s", unit="req", file=sys.stderr, mininterval=0.5)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
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


def summarize(args: argparse.Namespace, outcomes: list[Outcome], wall_s: float) -> dict:
    ok = [o for o in outcomes if o.ok]
    lat = [o.latency_s for o in ok]
    over = [o.overhead_ms for o in ok if o.overhead_ms is not None]
    slo = [o.slo_met for o in ok if o.slo_met is not None]
    correct = [o.correct for o in ok if o.correct is not None]
    errors = [o.error for o in outcomes if not o.ok]
    r = lambda v, n=4: None if v is None else round(v, n)  # noqa: E731
    return {
        "url": args.url, "rps": args.rps, "duration_s": args.duration, "trace": args.trace, "slo_ms": args.slo_ms,
        "sent": len(outcomes), "completed": len(ok), "errors": len(errors),
        # Requests that failed count as missed deadlines.
        "slo_attainment": r(sum(slo) / len(outcomes)) if args.slo_ms and outcomes else None,
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
    return 0 if summary["errors"] == 0 else 1


def print_summary(summary: dict, json_path: str | None) -> None:
    """A load command's result: JSON on stdout, and in ``json_path`` when given."""
    text = json.dumps(summary, indent=2)
    print(text)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
