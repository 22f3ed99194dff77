"""`dilaserve soak`: many concurrent streaming clients in a closed loop; errors and gateway memory.

Each of ``--clients`` clients sends a streaming completion, reads every SSE chunk up to ``[DONE]``,
and immediately sends the next one, for ``--duration`` seconds. An explicit 429/503 with
``Retry-After`` is the gateway refusing work it cannot take: the client waits as told and counts it
apart; anything else (other status, broken stream, no ``[DONE]``, timeout) is an error.

The gateway's resident memory is sampled from /proc every second. "Flat" is judged after a warm-up
(the first ``--warmup`` seconds fill caches, connection pools and allocator arenas): the growth from
the first post-warm-up sample to the last one, which a leak of per-request state would show.

Without ``--url`` it starts its own local cluster (``dilaserve up`` style) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tooling.loadgen import percentile, print_summary

REFUSALS = (429, 503)


@dataclass
class SoakStats:
    completed: int = 0
    refused: int = 0  # explicit 429/503 with Retry-After
    errors: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def one_stream(client, url: str, prompt: str, max_tokens: int, stats: SoakStats) -> float:
    """One streaming request; returns how long to back off (Retry-After) before the next one."""
    body = {"model": "dilaserve-tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code in REFUSALS and resp.headers.get("retry-after"):
                await resp.aread()
                stats.refused += 1
                return float(resp.headers["retry-after"])
            if resp.status_code != 200:
                stats.errors.append(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                return 0.0
            first, done = None, False
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and first is None:
                    first = time.perf_counter() - t0
                if line == "data: [DONE]":
                    done = True
            if not done:
                stats.errors.append("stream ended without [DONE]")
                return 0.0
    except Exception as exc:  # timeouts, resets: errors, never retried silently
        stats.errors.append(repr(exc)[:200])
        return 0.0
    stats.completed += 1
    stats.ttft_s.append(first if first is not None else 0.0)
    stats.latency_s.append(time.perf_counter() - t0)
    return 0.0


async def client_loop(client, url: str, prompts: list[str], offset: int, max_tokens: int, end_s: float,
                      stats: SoakStats) -> None:
    i = offset
    while time.perf_counter() < end_s:
        back_off = await one_stream(client, url, prompts[i % len(prompts)], max_tokens, stats)
        i += 1
        if back_off:
            await asyncio.sleep(min(back_off, max(0.0, end_s - time.perf_counter())))


async def sample_memory(pid: int | None, end_s: float, out: list[tuple[float, float]]) -> None:
    start = time.perf_counter()
    while pid and time.perf_counter() < end_s:
        mb = rss_mb(pid)
        if mb is not None:
            out.append((round(time.perf_counter() - start, 2), round(mb, 1)))
        await asyncio.sleep(1.0)


async def soak(url: str, clients: int, duration_s: float, max_tokens: int, gateway_pid: int | None,
               timeout_s: float) -> tuple[SoakStats, list[tuple[float, float]], float]:
    import httpx
    from tqdm import tqdm

    from lab.tasks import make_problems

    prompts = [p.prompt for p in make_problems(256, seed=11)]
    stats, memory = SoakStats(), []
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        end = start + duration_s
        loops = [client_loop(client, url, prompts, i, max_tokens, end, stats) for i in range(clients)]

        async def progress() -> None:
            with tqdm(total=int(duration_s), desc=f"soak {clients} streams", unit="s", file=sys.stderr) as bar:
                while time.perf_counter() < end:
                    await asyncio.sleep(1.0)
                    bar.update(1)
                    bar.set_postfix(done=stats.completed, refused=stats.refused, errors=len(stats.errors))

        await asyncio.gather(*loops, sample_memory(gateway_pid, end, memory), progress())
        wall = time.perf_counter() - start
    return stats, memory, wall


def summarize(stats: SoakStats, memory: list[tuple[float, float]], wall_s: float, args: argparse.Namespace) -> dict:
    after = [mb for t, mb in memory if t >= args.warmup]
    r = lambda v, n=3: None if v is None else round(v, n)  # noqa: E731
    growth = (after[-1] - after[0]) / after[0] if len(after) >= 2 else None
    return {
        "clients": args.clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
        "completed": stats.completed, "refused_429_503": stats.refused, "errors": len(stats.errors),
        "throughput_rps": r(stats.completed / wall_s if wall_s else 0.0),
        "ttft_p50_s": r(percentile(stats.ttft_s, 50)), "ttft_p99_s": r(percentile(stats.ttft_s, 99)),
        "latency_p50_s": r(percentile(stats.latency_s, 50)), "latency_p99_s": r(percentile(stats.latency_s, 99)),
        "gateway_rss_mb_after_warmup": r(after[0] if after else None, 1),
        "gateway_rss_mb_end": r(after[-1] if after else None, 1),
        "gateway_rss_mb_max": r(max(after) if after else None, 1),
        "gateway_rss_growth": r(growth, 4),
        "memory_flat": None if growth is None else growth <= args.max_growth,
        "memory_samples": memory,
        "first_errors": stats.errors[:5],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="gateway base URL (default: start a local cluster)")
    p.add_argument("--gateway-pid", type=int, default=None, help="PID of the gateway to sample memory of (with --url)")
    p.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before memory growth is measured")
    p.add_argument("--max-growth", type=float, default=0.10, help="RSS growth after warm-up still called flat")
    p.add_argument("--workers", type=int, default=2, help="workers of the local cluster (without --url)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request HTTP timeout (s)")
    p.add_argument("--json", default=None, help="write the summary here")


def main(args: argparse.Namespace) -> int:
    if args.clients <= 0 or args.duration <= 0:
        print("error: --clients and --duration must be > 0", file=sys.stderr)
        return 2
    cluster = None
    url, pid = args.url, args.gateway_pid
    if url is None:
        from services.common.processes import REPO, free_port
        from tooling.local_cluster import LocalCluster

        run_dir = (REPO / "runs" / time.strftime("soak-%Y%m%d-%H%M%S")).resolve()
        cluster = LocalCluster(run_dir, num_workers=args.workers, port=free_port())
        print(f"starting a local cluster ({args.workers} workers) in {run_dir}", file=sys.stderr, flush=True)
        cluster.start()
        url, pid = cluster.url, next(p.pid for p in cluster.services if p.name == "gateway")
    try:
        stats, memory, wall = asyncio.run(soak(url.rstrip("/"), args.clients, args.duration, args.max_tokens, pid,
                                               args.timeout))
    finally:
        if cluster is not None:
            cluster.stop()
    summary = summarize(stats, memory, wall, args)
    print_summary(summary, args.json)
    return 0 if summary["errors"] == 0 and summary["memory_flat"] is not False else 1
