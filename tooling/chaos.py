"""`dilaserve chaos`: one fault under load on a local cluster; every accepted request must still complete
exactly once, with the output it would have had without the fault.

    dilaserve chaos --scenario kill-worker --requests 16 --json out.json [--workers 2]

1. Reference outputs: the same prompts through the in-process engine (the workers' block length and
   cache mode, τ = 1: every request is sent with ``min_threshold`` 1.0, so its τ is 1 whatever cap the
   scheduler applies; greedy decoding is batch-invariant, so the served output must be bit-identical).
2. A local cluster (``tooling.local_cluster.LocalCluster``: nats-server with JetStream file storage
   and redis-server with AOF, both under the run folder, then every service as its own process).
3. N streaming completions submitted at ``--rps``; when half are submitted and a worker holds a
   request that has committed a block, the fault is injected:
   - ``kill-worker``: SIGKILL the worker holding the most requests, then start it again (same id);
   - ``restart-scheduler``: SIGKILL the scheduler, restart it after ``--downtime`` s;
   - ``restart-redis``: SIGKILL redis-server, restart it on the same port and AOF folder;
   - ``nats-blip``: SIGKILL nats-server, restart it (same port, same JetStream store) after ``--downtime`` s;
   - ``stop-worker`` / ``stop-scheduler``: the graceful variants (SIGTERM, wait for the exit, restart);
   - ``pause-worker``: SIGSTOP a worker for longer than the heartbeat timeout, then SIGCONT: it is
     declared dead, its requests run again elsewhere, and then it wakes up and finishes them too — the
     case that needs exactly-once completion.
4. Every request is awaited; the JSON counts ``accepted`` (HTTP 200: the gateway stored it in Redis
   and JetStream), ``rejected``, ``completed``, ``lost`` (accepted, never completed), ``duplicates``
   (requests whose RequestFinished was published more than once: counted by a JetStream stream that
   records the completion subject, so a completion published while this observer was disconnected is
   counted too) and ``mismatched_outputs`` (completed text ≠ reference), plus timings.

Progress goes to stderr. The exit status is 0 only if nothing was lost, duplicated or changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from services.common.processes import REPO, Proc, free_port, start_nats, start_redis, start_service, wait_port, wait_ready
from tooling.local_cluster import LocalCluster

SCENARIOS = ("kill-worker", "restart-scheduler", "restart-redis", "nats-blip", "stop-worker", "stop-scheduler",
             "pause-worker")
CHAOS_ENV = {
    # Dead workers are noticed after 2 s (the default is 3 s); everything else is the shipped default.
    "DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S": "2.0",
}


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- workload and reference outputs ----------------------------------------------------------------
def make_prompts(n: int, seed: int = 7) -> list[str]:
    from lab.tasks import make_problems

    return [p.prompt for p in make_problems(n, seed=seed)]


def reference_outputs(prompts: list[str], max_tokens: int) -> list[str]:
    """What an uninterrupted run returns: the in-process engine with the workers' settings at τ = 1."""
    import torch

    from services.gateway.tokenizer import ModelTokenizer
    from services.worker.engine import DenoisingEngine, new_state, output_ids, run_to_completion
    from services.worker.model import default_model_dir, load_model
    from shared.config import load_config

    torch.set_num_threads(1)
    wcfg = load_config().worker
    model_dir = Path(wcfg.model_dir) if wcfg.model_dir else default_model_dir()
    tok = ModelTokenizer(model_dir)
    model = load_model(model_dir, device="cpu")
    engine = DenoisingEngine(model, cache_mode=wcfg.cache_mode)  # type: ignore[arg-type]
    states = [new_state(f"ref{i}", tok.encode(p), max_tokens, model.config.mask_token_id, wcfg.block_length, threshold=1.0)
              for i, p in enumerate(prompts)]
    done = run_to_completion(engine, states, max_batch=wcfg.max_batch).finished
    return [tok.decode(output_ids(done[f"ref{i}"], model.config.eos_token_id)) for i in range(len(prompts))]


# -- one request, as a streaming client sees it ----------------------------------------------------
@dataclass
class Outcome:
    index: int
    request_id: str = ""
    http_status: int = 0
    accepted: bool = False
    completed: bool = False
    finish_reason: str = ""
    text: str = ""
    worker_id: str = ""
    error: str = ""
    sent_s: float = 0.0  # relative to the start of the submission window
    latency_s: float = 0.0


async def _one(client, url: str, i: int, prompt: str, max_tokens: int, t0: float, timeout_s: float) -> Outcome:
    out = Outcome(i, sent_s=time.monotonic() - t0)
    body = {"prompt": prompt, "max_tokens": max_tokens, "min_threshold": 1.0, "stream": True}
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url + "/v1/completions", json=body) as resp:
                out.http_status = resp.status_code
                if resp.status_code != 200:
                    out.error = (await resp.aread()).decode(errors="replace")[:300]
                    return out
                out.accepted = True
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    evt = json.loads(line[6:])
                    if "error" in evt:
                        out.error = json.dumps(evt["error"])[:300]
                        continue
                    out.request_id = evt.get("id", out.request_id)
                    choice = evt["choices"][0]
                    out.text += choice.get("text") or ""
                    if choice.get("finish_reason"):
                        out.finish_reason = choice["finish_reason"]
                        out.worker_id = (evt.get("dlm") or {}).get("worker_id", "")
                out.completed = out.finish_reason in ("stop", "length")
    except TimeoutError:
        out.error = out.error or f"no result within {timeout_s:.0f}s"
    except Exception as exc:  # connection refused / reset: rejected if no status yet, else lost
        out.error = out.error or f"{type(exc).__name__}: {exc}"
    out.latency_s = time.monotonic() - start
    return out


# -- process control (by PID, only what this cluster started) ---------------------------------------
def _find(cluster: LocalCluster, name: str) -> Proc:
    return next(p for p in cluster.services + cluster.infra if p.name == name)


def _sigkill(proc: Proc) -> None:
    if proc.popen.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait()


def _sigterm(proc: Proc, grace_s: float = 30.0) -> None:
    if proc.popen.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace_s)
        except Exception:
            say(f"{proc.name} ignored SIGTERM for {grace_s:.0f}s: SIGKILL")
    _sigkill(proc)


def _replace(cluster: LocalCluster, old: Proc, new: Proc) -> None:
    for procs in (cluster.services, cluster.infra):
        for k, p in enumerate(procs):
            if p is old:
                procs[k] = new


def _port(url: str) -> int:
    return int(urlparse(url).port)


def _wait_port_free(port: int, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.05)


async def _restart_infra(cluster: LocalCluster, name: str, downtime_s: float) -> float:
    """SIGKILL nats-server / redis-server, wait, start it again on the same port and data folder."""
    old = _find(cluster, name)
    port = _port(cluster.nats_url if name == "nats" else cluster.redis_url)
    t_kill = time.monotonic()
    _sigkill(old)
    await asyncio.sleep(downtime_s)
    await asyncio.to_thread(_wait_port_free, port)
    new = (start_nats if name == "nats" else start_redis)(cluster.run_dir, port)
    _replace(cluster, old, new)
    await asyncio.to_thread(wait_port, port, 30, new)
    return time.monotonic() - t_kill


async def _restart_service(cluster: LocalCluster, name: str, args: list[str], downtime_s: float,
                           graceful: bool = False) -> float:
    old = _find(cluster, name)
    t_kill = time.monotonic()
    if graceful:
        await asyncio.to_thread(_sigterm, old)
    else:
        _sigkill(old)
    await asyncio.sleep(downtime_s)
    _replace(cluster, old, start_service(name, args, cluster.run_dir, cluster.env))
    return time.monotonic() - t_kill


# -- the fault ----------------------------------------------------------------------------------------
async def _wait_for_trigger(store, submitted: list[int], half: int, scenario: str, deadline_s: float) -> dict:
    """Half the requests submitted and a worker holding one with a committed block (a checkpoint)."""
    view: dict = {}
    while time.monotonic() < deadline_s:
        if submitted[0] >= half:
            try:
                recs = [r for r in await store.active_requests() if r.state in ("assigned", "running") and r.worker_id]
                ckpt = {r.request_id for r in recs if await store.load_checkpoint(r.request_id) is not None}
            except Exception:
                recs, ckpt = [], set()
            by_worker: dict[str, list[str]] = {}
            for r in recs:
                by_worker.setdefault(r.worker_id, []).append(r.request_id)
            view = {"by_worker": by_worker, "with_checkpoint": sorted(ckpt)}
            if ckpt or (recs and scenario not in ("kill-worker", "stop-worker", "pause-worker")):
                return view
        await asyncio.sleep(0.05)
    return view


async def _inject(cluster: LocalCluster, scenario: str, view: dict, downtime_s: float) -> dict:
    fault: dict = {"scenario": scenario}
    if scenario in ("kill-worker", "stop-worker", "pause-worker"):
        by_worker = view.get("by_worker") or {}
        ckpt = set(view.get("with_checkpoint") or [])
        workers = [p.name for p in cluster.services if p.name.startswith("worker-")]
        victim = max(workers, key=lambda w: (len(ckpt & set(by_worker.get(w, []))), len(by_worker.get(w, []))))
        held = sorted(by_worker.get(victim, []))
        fault.update(target=victim, held_requests=held, held_with_checkpoint=sorted(ckpt & set(held)))
        what = f"{victim} (holding {len(held)} requests, {len(fault['held_with_checkpoint'])} with a checkpoint)"
        if scenario == "pause-worker":
            proc = _find(cluster, victim)
            say(f"SIGSTOP {what} for {downtime_s:.1f}s, then SIGCONT")
            t = time.monotonic()
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(downtime_s)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            fault["downtime_s"] = time.monotonic() - t
        else:
            say(f"{'SIGKILL' if scenario == 'kill-worker' else 'SIGTERM'} {what}; restarting it")
            fault["downtime_s"] = await _restart_service(cluster, victim, ["worker", "--worker-id", victim], 0.0,
                                                         graceful=scenario == "stop-worker")
    elif scenario in ("restart-scheduler", "stop-scheduler"):
        say(f"{'SIGKILL' if scenario == 'restart-scheduler' else 'SIGTERM'} scheduler; restart in {downtime_s:.1f}s")
        fault["target"] = "scheduler"
        fault["downtime_s"] = await _restart_service(cluster, "scheduler", ["scheduler"], downtime_s,
                                                     graceful=scenario == "stop-scheduler")
    elif scenario == "restart-redis":
        say(f"SIGKILL redis-server; restart on the same port and AOF folder in {downtime_s:.1f}s")
        fault["target"] = "redis"
        fault["downtime_s"] = await _restart_infra(cluster, "redis", downtime_s)
    elif scenario == "nats-blip":
        say(f"SIGKILL nats-server; restart on the same port and JetStream store in {downtime_s:.1f}s")
        fault["target"] = "nats"
        fault["downtime_s"] = await _restart_infra(cluster, "nats", downtime_s)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    say(f"fault injected: {fault['target']} back after {fault['downtime_s']:.2f}s")
    return fault


# -- completion audit ---------------------------------------------------------------------------------
async def _audit_stream(bus, reset: bool) -> None:
    """File-backed stream capturing every RequestFinished (core publishes are stored, no reply needed)."""
    from nats.js import api

    from shared import subjects

    cfg = api.StreamConfig(name=subjects.DONE_AUDIT_STREAM, subjects=[subjects.request_done()],
                           storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, max_age=3600.0)
    try:
        await bus.js.add_stream(cfg)
    except Exception:
        await bus.js.update_stream(cfg)
    if reset:
        await bus.js.purge_stream(subjects.DONE_AUDIT_STREAM)


async def _audit_counts(bus) -> dict[str, int]:
    from shared import subjects

    info = await bus.js.stream_info(subjects.DONE_AUDIT_STREAM, subjects_filter=subjects.request_done())
    prefix = subjects.request_done("x")[:-1]
    return {subj[len(prefix):]: int(n) for subj, n in (info.state.subjects or {}).items()}


async def run_scenario(cluster: LocalCluster, scenario: str, prompts: list[str], references: list[str], *,
                       max_tokens: int = 32, rps: float = 8.0, downtime_s: float | None = None,
                       timeout_s: float = 120.0) -> dict:
    """Run one scenario against a started cluster; returns the report (see the module docstring)."""
    import httpx

    from shared import subjects
    from shared.schemas.requests import RequestFinished
    from shared.transport import Bus, Store

    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    if downtime_s is None:
        downtime_s = {"nats-blip": 3.0, "restart-scheduler": 1.0, "stop-scheduler": 1.0, "restart-redis": 0.5,
                      "pause-worker": float(CHAOS_ENV["DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S"]) + 1.5}.get(scenario, 0.0)
    n = len(prompts)
    store = await Store.connect(cluster.redis_url)
    bus = await Bus.connect(cluster.nats_url, name="chaos-observer")
    live: dict[str, int] = {}

    async def on_done(fin: RequestFinished, headers: dict) -> None:
        live[fin.request_id] = live.get(fin.request_id, 0) + 1

    await _audit_stream(bus, reset=True)
    await bus.subscribe(subjects.request_done(), RequestFinished, on_done)
    await bus.flush()

    submitted = [0]
    t0 = time.monotonic()
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:

        async def submit_all() -> list[Outcome]:
            tasks = []
            for i, p in enumerate(prompts):
                delay = t0 + i / rps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_one(client, cluster.url, i, p, max_tokens, t0, timeout_s)))
                submitted[0] += 1
            return list(await asyncio.gather(*tasks))

        runner = asyncio.create_task(submit_all())
        say(f"{scenario}: submitting {n} requests at {rps:g}/s (max_tokens {max_tokens}, min_threshold 1.0)")
        view = await _wait_for_trigger(store, submitted, max(1, n // 2), scenario, time.monotonic() + timeout_s)
        t_fault = time.monotonic() - t0
        submitted_before = submitted[0]
        fault = await _inject(cluster, scenario, view, downtime_s)
        fault["injected_at_s"] = round(t_fault, 3)
        fault["submitted_before"] = submitted_before
        outcomes = await runner
    t_end = time.monotonic() - t0
    # A completion announced near the end may still be on its way to the audit stream; a paused worker
    # that woke up is still finishing the requests that were re-run elsewhere (its would-be duplicates).
    await asyncio.sleep(4.0 if scenario == "pause-worker" else 1.0)
    try:
        audit = await _audit_counts(bus)
    except Exception as exc:
        say(f"audit stream unreadable ({exc}); falling back to live counts")
        audit = dict(live)
    states: dict[str, str] = {}
    ids = [o.request_id for o in outcomes if o.request_id]
    for rid, st in zip(ids, await store.get_states(ids)):
        states[rid] = st
    await bus.close()
    await store.close()
    resumed, suppressed = _worker_log_evidence(cluster, ids)
    if "held_requests" in fault:
        fault["resumed_from_checkpoint"] = {rid: b for rid, b in resumed.items() if rid in fault["held_requests"]}
        # Held when the fault was chosen, yet finished by the victim itself: its last step landed before
        # the SIGKILL, or within a graceful stop's final step, or (pause-worker) the same process woke up
        # and finished it before it was re-placed. Nothing to resume for those. After a kill or stop only
        # within 1 s of the fault, so that a re-run from scratch on the restarted victim (same id, up
        # after seconds) does not count.
        window_s = math.inf if scenario == "pause-worker" else 1.0
        fault["held_finished_by_victim"] = sorted(
            o.request_id for o in outcomes if o.request_id in fault["held_requests"] and o.worker_id == fault["target"]
            and o.request_id not in resumed and o.sent_s + o.latency_s <= fault["injected_at_s"] + window_s)

    accepted = [o for o in outcomes if o.accepted]
    completed = [o for o in accepted if o.completed]
    mismatched = [o for o in completed if o.text != references[o.index]]
    dup_ids = sorted(rid for rid, c in audit.items() if c > 1)
    latencies = sorted(o.latency_s for o in completed)
    report = {
        "scenario": scenario,
        "requests": n,
        "accepted": len(accepted),
        "rejected": n - len(accepted),
        "completed": len(completed),
        "lost": len(accepted) - len(completed),
        "duplicates": len(dup_ids),
        "mismatched_outputs": len(mismatched),
        "completion_events": sum(audit.get(o.request_id, 0) for o in accepted if o.request_id),
        "completion_events_seen_live": sum(live.get(o.request_id, 0) for o in accepted if o.request_id),
        # computed twice, recorded and announced once (worker logs): the exactly-once guard at work
        "second_results_not_announced": len(suppressed),
        "resumed_from_checkpoint": len(resumed),
        "redis_states": _count(states.values()),
        "fault": fault,
        "timings": {
            "fault_injected_at_s": fault["injected_at_s"],
            "fault_downtime_s": round(fault["downtime_s"], 3),
            "last_completion_s": round(max((o.sent_s + o.latency_s for o in completed), default=0.0), 3),
            "recovered_after_fault_s": round(max((o.sent_s + o.latency_s for o in completed), default=t_fault) - t_fault, 3),
            "total_s": round(t_end, 3),
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_max_s": round(latencies[-1], 3) if latencies else None,
        },
        "finished_by": _count(o.worker_id for o in completed),
        "problems": [
            {"index": o.index, "request_id": o.request_id, "http_status": o.http_status, "error": o.error,
             "finish_reason": o.finish_reason, "text": o.text, "reference": references[o.index],
             "completion_events": audit.get(o.request_id, 0)}
            for o in outcomes
            if (o.accepted and not o.completed) or o in mismatched or audit.get(o.request_id, 0) > 1
        ][:20],
        "rejections": [{"index": o.index, "http_status": o.http_status, "error": o.error} for o in outcomes if not o.accepted][:10],
    }
    say(f"{scenario}: accepted {report['accepted']}/{n}, completed {report['completed']}, lost {report['lost']}, "
        f"duplicates {report['duplicates']}, mismatched {report['mismatched_outputs']} "
        f"(fault at {t_fault:.2f}s, all done at {t_end:.2f}s)")
    return report


def _worker_log_evidence(cluster: LocalCluster, request_ids: list[str]) -> tuple[dict[str, int], list[str]]:
    """From the workers' logs, for these requests: which were resumed from a checkpoint (at which block),
    and which results were computed a second time but not announced (already finished elsewhere)."""
    resumed: dict[str, int] = {}
    suppressed: list[str] = []
    wanted = set(request_ids)
    for log_path in sorted((cluster.run_dir / "logs").glob("worker-*.log")):
        for line in log_path.read_text(errors="replace").splitlines():
            if "resuming " in line and " from its checkpoint at block " in line:
                rid = line.split("resuming ", 1)[1].split(" ", 1)[0]
                if rid in wanted:
                    resumed[rid] = int(line.rsplit("block ", 1)[1].split("/", 1)[0])
            elif " already finished elsewhere: result not announced again" in line:
                rid = line.split(" already finished elsewhere", 1)[0].rsplit(" ", 1)[-1]
                if rid in wanted:
                    suppressed.append(rid)
    return resumed, sorted(suppressed)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "?"] = out.get(v or "?", 0) + 1
    return out


def wait_cluster_ready(cluster: LocalCluster, timeout_s: float = 240.0) -> None:
    """All workers (restarted ones included) registered again: the next scenario starts from a full cluster."""
    wait_ready(cluster.url, cluster.num_workers, cluster.services + cluster.infra, timeout_s, progress=False)


def start_cluster(run_dir: Path, num_workers: int, timeout_s: float = 300.0) -> LocalCluster:
    cluster = LocalCluster(run_dir, num_workers=num_workers, port=free_port(), extra_env=dict(CHAOS_ENV))
    say(f"starting a local cluster ({num_workers} workers) in {run_dir}")
    try:
        cluster.start(timeout_s=timeout_s, progress=False)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- CLI ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", required=True,
                   help=f"one of {', '.join(SCENARIOS)}, a comma list, or 'all' (one cluster, one after the other)")
    p.add_argument("--requests", type=int, default=16, help="requests per scenario (default 16)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    p.add_argument("--rps", type=float, default=8.0, help="submission rate (default 8/s)")
    p.add_argument("--downtime", type=float, default=None,
                   help="seconds the killed process stays down (default: nats 3, scheduler 1, redis 0.5, worker 0, "
                        "paused worker 3.5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a client waits for one request")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/chaos-<timestamp>)")
    p.add_argument("--seed", type=int, default=7, help="prompt sample seed")


def main(args: argparse.Namespace) -> int:
    scenarios = list(SCENARIOS) if args.scenario == "all" else [s.strip() for s in args.scenario.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        print(f"error: unknown scenario {bad[0]!r} (one of {', '.join(SCENARIOS)}, or 'all')", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or REPO / "runs" / time.strftime("chaos-%Y%m%d-%H%M%S")).resolve()
    prompts = make_prompts(args.requests, args.seed)
    t = time.monotonic()
    say(f"reference outputs for {len(prompts)} prompts (in-process engine, τ = 1)")
    refs = reference_outputs(prompts, args.max_tokens)
    reference_s = time.monotonic() - t
    t = time.monotonic()
    cluster = start_cluster(run_dir, args.workers)
    start_s = time.monotonic() - t
    reports = []
    try:
        for k, scenario in enumerate(scenarios):
            if k:
                wait_cluster_ready(cluster)
            rep = asyncio.run(run_scenario(cluster, scenario, prompts, refs, max_tokens=args.max_tokens, rps=args.rps,
                                           downtime_s=args.downtime, timeout_s=args.timeout))
            rep["timings"]["reference_s"] = round(reference_s, 3)
            rep["timings"]["cluster_start_s"] = round(start_s, 3)
            rep["workers"] = args.workers
            rep["run_dir"] = str(run_dir)
            reports.append(rep)
    finally:
        say("stopping the cluster")
        cluster.stop()
    out = reports[0] if len(reports) == 1 else {"scenarios": reports}
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
        say(f"report written to {args.json}")
    else:
        print(text)
    ok = all(r["lost"] == 0 and r["duplicates"] == 0 and r["mismatched_outputs"] == 0 for r in reports)
    return 0 if ok else 1


__all__ = ["SCENARIOS", "run_scenario", "reference_outputs", "make_prompts", "start_cluster", "wait_cluster_ready"]
