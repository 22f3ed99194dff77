"""One live run of ``dilaserve experiment``: a fresh local cluster with one policy, a warm-up, the
workload replayed open loop, every outcome from the gateway's responses, and the CPU the processes used."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.processes import free_port
from tooling.experiment_workload import Request
from tooling.local_cluster import LocalCluster
from tooling.loadgen import Outcome, Shot, fire

if TYPE_CHECKING:
    from shared.schemas.cluster import WorkerHeartbeat

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LiveRun:
    outcomes: list[Outcome]
    warmup: list[Outcome]
    wall_s: float  # first arrival → last answer
    cpu_s: dict[str, float] = field(default_factory=dict)  # process group → CPU seconds during the replay
    run_dir: str = ""
    phases_s: dict[str, float] = field(default_factory=dict)  # wall time of start, warm-up, replay, stop
    steps: list[tuple[int, float]] = field(default_factory=list)  # (tokens, latency s) of the workers' steps
    gaps: list[tuple[int, float]] = field(default_factory=list)  # (requests, step-loop s outside the forward)
    # (start s after the replay began, tokens, latency s) of the same steps
    step_times: list[tuple[float, int, float]] = field(default_factory=list)


def policy_env(policy: str, global_slo_s: float, block_len: int) -> dict[str, str]:
    """The services' settings for one policy (tedi needs its deployment-wide SLO; the workers use the
    model's block length)."""
    env = {"DILASERVE_SCHEDULER_POLICY": policy, "DILASERVE_WORKER_BLOCK_LENGTH": str(block_len)}
    if policy == "tedi":
        env["DILASERVE_SCHEDULER_GLOBAL_SLO_S"] = f"{global_slo_s:.6f}"
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_by_group(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds so far of the workers, and of everything else this run adds to the machine: the
    services, NATS, Redis and this process (the load generator)."""
    procs = cluster.services + cluster.infra
    workers = sum(cpu_seconds(p.pid) for p in procs if p.name.startswith("worker"))
    rest = sum(cpu_seconds(p.pid) for p in procs if not p.name.startswith("worker"))
    return {"workers": workers, "services": rest + time.process_time()}


async def replay(url: str, shots: list[Shot], timeout_s: float) -> tuple[list[Outcome], float]:
    """Open loop: each request is sent at its time whatever the others do; outcomes in shot order."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as client:
        start = time.perf_counter()

        async def one(shot: Shot) -> Outcome:
            delay = start + shot.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_s = max(0.0, time.perf_counter() - start - shot.at_s)
            out = await fire(client, url, shot, shot.dlm.get("slo_ms") if shot.dlm else None)
            out.send_lag_s = lag_s
            return out

        outcomes = await asyncio.gather(*(one(s) for s in shots))
        return list(outcomes), time.perf_counter() - start


def step_starts(hb: WorkerHeartbeat, origin_s: float) -> list[float]:
    """When each step of a heartbeat began, in s after ``origin_s`` (wall clock; the workers run on this
    machine): walked back from the heartbeat's send time through each step's latency and the step loop's
    time before it. The last step is taken to end at the send, and an idle wait (no gap) as no time, so
    a start is late by at most the heartbeat period."""
    end, out = hb.sent_s - origin_s, []
    for s in reversed(hb.step_samples):
        start = end - s.latency_s
        out.append(start)
        end = start - (s.gap_before_s or 0.0)
    return out[::-1]


@dataclass
class HeardSteps:
    """What the workers' heartbeats reported during a replay."""
    gaps: list[tuple[int, float]] = field(default_factory=list)
    times: list[tuple[float, int, float]] = field(default_factory=list)

    @property
    def steps(self) -> list[tuple[int, float]]:
        return [(n, lat) for _, n, lat in self.times]


async def replay_with_steps(url: str, nats_url: str, shots: list[Shot],
                            timeout_s: float) -> tuple[list[Outcome], float, HeardSteps]:
    """``replay``, while the workers' heartbeats are heard: the steps they report (tokens, latency), the
    step loop's time outside each forward (requests in the step, seconds) and when each step began."""
    from shared import subjects
    from shared.schemas.cluster import WorkerHeartbeat
    from shared.transport.bus import Bus

    heard = HeardSteps()
    origin_s = time.time()  # set again right before the replay: shot times count from there

    async def on_heartbeat(hb: WorkerHeartbeat, headers: dict[str, str]) -> None:
        heard.gaps.extend((s.num_requests, s.gap_before_s) for s in hb.step_samples if s.gap_before_s is not None)
        heard.times.extend((round(t, 4), s.tokens, s.latency_s)
                           for t, s in zip(step_starts(hb, origin_s), hb.step_samples))

    bus = await Bus.connect(nats_url, "experiment")
    sub = await bus.subscribe(subjects.worker_heartbeat(), WorkerHeartbeat, on_heartbeat)
    try:
        origin_s = time.time()
        outcomes, wall = await replay(url, shots, timeout_s)
    finally:
        await sub.unsubscribe()
        await bus.close()
    return outcomes, wall, heard


async def warm_up(url: str, shots: list[Shot], concurrency: int, duration_s: float,
                  timeout_s: float) -> list[Outcome]:
    """Closed loop, ``concurrency`` clients, for ``duration_s``: the workers' first forwards, and the
    cost model's and step predictor's refits from heartbeats, happen before the measurement."""
    import aiohttp

    if duration_s <= 0 or not shots:
        return []
    out: list[Outcome] = []
    end = time.perf_counter() + duration_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as client:
        async def client_loop(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                out.append(await fire(client, url, shots[i % len(shots)], None))
                i += concurrency

        await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    return out


def run_live(run_dir: Path, policy: str, workload: list[Request], warmup: list[Shot], *, workers: int,
             env: dict[str, str], warmup_s: float, timeout_s: float, start_timeout_s: float = 300.0) -> LiveRun:
    cluster = LocalCluster(run_dir, num_workers=workers, port=free_port(), extra_env=env)
    marks = [time.perf_counter()]
    try:
        cluster.start(timeout_s=start_timeout_s, progress=False)
        marks.append(time.perf_counter())
        warm = asyncio.run(warm_up(cluster.url, warmup, workers, warmup_s, timeout_s))
        marks.append(time.perf_counter())
        before = cpu_by_group(cluster)
        outcomes, wall, heard = asyncio.run(replay_with_steps(cluster.url, cluster.nats_url,
                                                              [r.shot for r in workload], timeout_s))
        after = cpu_by_group(cluster)
        marks.append(time.perf_counter())
    finally:
        cluster.stop()
    marks.append(time.perf_counter())
    phases = {k: round(b - a, 3) for k, a, b in zip(("start", "warmup", "replay", "stop"), marks, marks[1:])}
    return LiveRun(outcomes, warm, wall, {k: after[k] - before[k] for k in after}, str(run_dir), phases,
                   heard.steps, heard.gaps, heard.times)
