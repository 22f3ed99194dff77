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
   With ``--ha`` the cluster is `dilaserve up --ha` and heals itself: the harness only kills (the old
   scenarios then hit the leading scheduler, the Redis master, one NATS node), and four more apply:
   - ``kill-leader-scheduler``: SIGKILL the lease holder; failover = until another lease value is held;
   - ``kill-nats-node``: SIGKILL the node leading the submit lane in use (the stream that stored this
     run's submissions); failover = until a gateway accepts a new submission (on the other lane, whose
     leader lives on); ``lane_reelected_s``: until the victim's lane has a leader again (raft, 4-9 s);
   - ``kill-redis-master``: SIGKILL the master; failover = until Sentinel names the other node and a
     write through Sentinel lands;
   - ``kill-gateway``: SIGKILL one gateway; clients use the other one, and a client whose stream was cut
     reads its result there by id (``X-Request-Id``).
   ``--runs N`` repeats each scenario; the report's ``summary`` has failover p50/max per scenario.
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

import httpx

from services.common.processes import (
    REPO, Proc, free_port, start_nats, start_redis, start_service, wait_port, wait_ready, wait_sentinels, sentinel_master,
)
from tooling.local_cluster import LocalCluster

# Under --ha: one instance of a replicated part dies and is not restarted by the harness (the cluster
# heals itself); the survivors take over (failover_s in the report).
HA_SCENARIOS = ("kill-leader-scheduler", "kill-nats-node", "kill-redis-master", "kill-gateway")
BASE_SCENARIOS = ("kill-worker", "restart-scheduler", "restart-redis", "nats-blip", "stop-worker", "stop-scheduler",
                  "pause-worker")
SCENARIOS = (*BASE_SCENARIOS, *HA_SCENARIOS)
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
    followed: bool = False  # its stream was cut (gateway died); the result was read from another gateway


async def _one(client, urls: list[str], i: int, prompt: str, max_tokens: int, t0: float, timeout_s: float) -> Outcome:
    """One streaming completion on gateway ``urls[i % n]``, following a failover as a client behind a load
    balancer would: a gateway that refuses connections → the next one; a stream cut after its 200 → the
    result read by id (X-Request-Id) from another gateway."""
    out = Outcome(i, sent_s=time.monotonic() - t0)
    body = {"prompt": prompt, "max_tokens": max_tokens, "min_threshold": 1.0, "stream": True}
    start = time.monotonic()
    order = urls[i % len(urls):] + urls[:i % len(urls)]
    try:
        async with asyncio.timeout(timeout_s):
            for k, url in enumerate(order):
                try:
                    await _stream_once(client, url, body, out)
                    break
                except httpx.ConnectError as exc:  # nothing reached this gateway: try the next one
                    out.error = f"{type(exc).__name__}: {exc}"
                    if k == len(order) - 1:
                        raise
            if out.accepted and not out.finish_reason and out.request_id and len(urls) > 1:
                await _follow(client, order[1:] + order[:1], out)
            out.completed = out.finish_reason in ("stop", "length")
    except TimeoutError:
        out.error = out.error or f"no result within {timeout_s:.0f}s"
    except Exception as exc:  # connection refused / reset: rejected if no status yet, else lost
        out.error = out.error or f"{type(exc).__name__}: {exc}"
    out.latency_s = time.monotonic() - start
    return out


async def _stream_once(client, url: str, body: dict, out: Outcome) -> None:
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            out.http_status = resp.status_code
            if resp.status_code != 200:
                out.error = (await resp.aread()).decode(errors="replace")[:300]
                return
            out.accepted = True
            out.request_id = resp.headers.get("x-request-id", "")
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
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        if not out.accepted:
            raise httpx.ConnectError(str(exc)) from None  # cut before the 200: as if never reached
        out.error = f"stream cut: {type(exc).__name__}"


async def _follow(client, urls: list[str], out: Outcome) -> None:
    """The stream was cut (its gateway died): poll GET /v1/requests/{id} on the others for the result."""
    while True:
        for url in urls:
            try:
                r = await client.get(f"{url}/v1/requests/{out.request_id}")
            except httpx.HTTPError:
                continue
            result = r.json().get("result") if r.status_code == 200 else None
            if result is not None:
                out.text, out.finish_reason = result["text"] or "", result["finish_reason"] or ""
                out.worker_id = r.json().get("worker_id") or ""
                out.followed = True
                return
        await asyncio.sleep(0.2)


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


async def _healed(cluster: LocalCluster, old: Proc, timeout_s: float = 120.0) -> None:
    """Until the cluster's own healer has started ``old`` again (the harness restarts nothing then)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        p = _find(cluster, old.name)
        if p is not old and p.alive():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{old.name} not restarted by the cluster within {timeout_s:.0f}s")


async def _restart_infra(cluster: LocalCluster, name: str, downtime_s: float) -> float:
    """SIGKILL nats-server / redis-server, wait, start it again on the same port and data folder (or, on
    a self-healing cluster, wait for it to be started again)."""
    old = _find(cluster, name)
    t_kill = time.monotonic()
    _sigkill(old)
    if cluster.healer is not None:
        await _healed(cluster, old)
        return time.monotonic() - t_kill
    port = _port(cluster.nats_url if name == "nats" else cluster.redis_url)
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
    if cluster.healer is not None:
        await _healed(cluster, old)
        return time.monotonic() - t_kill
    await asyncio.sleep(downtime_s)
    _replace(cluster, old, start_service(name, args, cluster.run_dir, cluster.env))
    return time.monotonic() - t_kill


# -- who holds what under --ha ------------------------------------------------------------------------
async def _lease_value(store) -> str:
    from shared.transport.lease import LEADER_KEY

    v = await store.r.get(LEADER_KEY)
    return v.decode() if v else ""


async def _leader_name(store, cluster: LocalCluster) -> str:
    """The scheduler process holding the lease (its holder name is its process name under --ha)."""
    holder = (await _lease_value(store)).rsplit(" ", 1)[0]
    names = [p.name for p in cluster.services if p.name.startswith("scheduler")]
    return holder if holder in names else names[0]


def _redis_master_port(cluster: LocalCluster) -> int:
    view = sentinel_master(cluster.sentinel_ports[0])
    return int(view.get("port", 0))


def _redis_name(cluster: LocalCluster, port: int) -> str:
    return f"redis-{cluster.redis_ports.index(port)}"


async def _stream_leader(bus, lane: int = 0) -> str:
    from shared import subjects

    info = await bus.nc.jetstream(timeout=0.5).stream_info(subjects.SUBMIT_STREAMS[lane])  # a short probe
    return (info.cluster.leader if info.cluster else "") or ""


async def _lane_seqs(bus, cluster: LocalCluster) -> list[int]:
    """Each submit lane's last stream sequence (how many submissions it has stored)."""
    from shared import subjects
    from shared.transport.lanes import lane_count

    js = bus.nc.jetstream(timeout=2.0)
    return [(await js.stream_info(subjects.SUBMIT_STREAMS[lane])).state.last_seq
            for lane in range(lane_count(len(cluster.nats_ports)))]


async def _lane_leaders(bus, cluster: LocalCluster) -> list[str]:
    """Each submit lane's stream leader ("" while it elects one or does not answer)."""
    from shared.transport.lanes import lane_count

    leaders = []
    for lane in range(lane_count(len(cluster.nats_ports))):
        try:
            leaders.append(await _stream_leader(bus, lane))
        except Exception:
            leaders.append("")
    return leaders


async def _lanes_apart(bus, cluster: LocalCluster) -> bool:
    leaders = await _lane_leaders(bus, cluster)
    return all(leaders) and len(set(leaders)) == len(leaders)


async def _lane_in_use(bus, cluster: LocalCluster, before: list[int]) -> int:
    """The lane that stored most of this run's submissions so far (the one the gateways publish to)."""
    now = await _lane_seqs(bus, cluster)
    return max(range(len(now)), key=lambda lane: (now[lane] - (before[lane] if lane < len(before) else 0), -lane))


async def _submission_accepted(cluster: LocalCluster, timeout_s: float = 20.0) -> bool:
    """A new streaming completion is accepted (HTTP 200) by a gateway; the stream is closed at once."""
    body = {"prompt": "add:12+34=", "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=2.0)) as c:
        for url in cluster.urls:
            try:
                async with c.stream("POST", url + "/v1/completions", json=body) as resp:
                    if resp.status_code == 200:
                        return True
            except httpx.HTTPError:
                continue
    return False


async def _until(probe, timeout_s: float = 60.0, period_s: float = 0.05) -> float:
    """Seconds until ``await probe()`` is true (probe errors count as not yet)."""
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        try:
            if await probe():
                return time.monotonic() - t
        except Exception:
            pass
        await asyncio.sleep(period_s)
    say(f"no failover seen within {timeout_s:.0f}s")
    return math.inf


async def _inject_ha(cluster: LocalCluster, scenario: str, store, bus, view: dict) -> dict:
    """The --ha faults: SIGKILL one instance of a replicated part; the rest of the cluster takes over
    and the healer starts the victim again. ``failover_s``: death → the survivors serve that part."""
    fault: dict = {"scenario": scenario}
    t = time.monotonic()
    if scenario == "kill-leader-scheduler":
        old_value = await _lease_value(store)
        victim = _find(cluster, await _leader_name(store, cluster))
        say(f"SIGKILL the leading scheduler {victim.name} (lease {old_value!r})")
        _sigkill(victim)
        t = time.monotonic()
        fault["failover_s"] = await _until(lambda: _lease_changed(store, old_value))
        fault["new_leader"] = await _lease_value(store)
    elif scenario == "kill-nats-node":
        lane = await _lane_in_use(bus, cluster, view.get("lane_seqs", []))
        fault["lanes_apart_wait_s"] = view.get("lanes_apart_wait_s")
        fault["lane_leaders_before"] = await _lane_leaders(bus, cluster)
        leader = await _stream_leader(bus, lane)
        victim = _find(cluster, leader if leader.startswith("nats-") else "nats-0")
        say(f"SIGKILL {victim.name} (leader of submit lane {lane}, the one in use)")
        _sigkill(victim)
        t = time.monotonic()
        fault["failover_s"] = await _until(lambda: _submission_accepted(cluster))
        fault["lane"] = lane
        reelected_s = await _until(lambda: _stream_led_again(bus, cluster, victim, lane)) + fault["failover_s"]
        fault["lane_reelected_s"] = round(reelected_s, 3) if math.isfinite(reelected_s) else None
        fault["lane_leaders"] = await _lane_leaders(bus, cluster)
    elif scenario == "kill-redis-master":
        port = _redis_master_port(cluster)
        victim = _find(cluster, _redis_name(cluster, port))
        say(f"SIGKILL the Redis master {victim.name} (port {port}); Sentinel fails over")
        _sigkill(victim)
        t = time.monotonic()
        fault["failover_s"] = await _until(lambda: _redis_moved(cluster, store, port))
        fault["new_master_port"] = _redis_master_port(cluster)
    elif scenario == "kill-gateway":
        victim = _find(cluster, "gateway")
        say(f"SIGKILL {victim.name} (its streams are cut; clients read their results from the other gateway)")
        _sigkill(victim)
        t = time.monotonic()
        fault["failover_s"] = 0.0  # the other gateway serves throughout; below: until the victim is back
        await _healed(cluster, victim)
        await _until(lambda: _ready(cluster.url), timeout_s=120)
        fault["victim_back_s"] = round(time.monotonic() - t, 3)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    fault["target"] = victim.name
    fault["failover_s"] = round(fault["failover_s"], 3) if math.isfinite(fault["failover_s"]) else None
    fault["downtime_s"] = time.monotonic() - t
    say(f"{scenario}: failover after {fault['failover_s']}s ({victim.name} is restarted by the cluster)")
    return fault


async def _lease_changed(store, old_value: str) -> bool:
    v = await _lease_value(store)
    return bool(v) and v != old_value


async def _stream_led_again(bus, cluster: LocalCluster, victim: Proc, lane: int) -> bool:
    """The lane's stream answers (stream info comes from its leader) under a live leader: another node,
    or the victim itself once restarted and re-elected."""
    leader = await _stream_leader(bus, lane)
    return bool(leader) and (leader != victim.name or _find(cluster, victim.name) is not victim)


async def _redis_moved(cluster: LocalCluster, store, old_port: int) -> bool:
    port = await asyncio.to_thread(_redis_master_port, cluster)
    if port in (0, old_port):
        return False
    await asyncio.wait_for(store.r.set("dlm:chaos:probe", str(time.time()), ex=60), 2.0)  # a write lands there
    return True


async def _ready(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as c:
        return (await c.get(url + "/readyz")).status_code == 200


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


async def _inject(cluster: LocalCluster, scenario: str, view: dict, downtime_s: float, store, bus) -> dict:
    if scenario in HA_SCENARIOS:
        return await _inject_ha(cluster, scenario, store, bus, view)
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
        name = await _leader_name(store, cluster) if cluster.ha else "scheduler"
        say(f"{'SIGKILL' if scenario == 'restart-scheduler' else 'SIGTERM'} {name}; restart in {downtime_s:.1f}s")
        fault["target"] = name
        fault["downtime_s"] = await _restart_service(cluster, name, ["scheduler"], downtime_s,
                                                     graceful=scenario == "stop-scheduler")
    elif scenario == "restart-redis":
        say(f"SIGKILL redis-server; restart on the same port and AOF folder in {downtime_s:.1f}s")
        fault["target"] = _redis_name(cluster, _redis_master_port(cluster)) if cluster.ha else "redis"
        fault["downtime_s"] = await _restart_infra(cluster, fault["target"], downtime_s)
    elif scenario == "nats-blip":
        say(f"SIGKILL nats-server; restart on the same port and JetStream store in {downtime_s:.1f}s")
        fault["target"] = "nats-0" if cluster.ha else "nats"
        fault["downtime_s"] = await _restart_infra(cluster, fault["target"], downtime_s)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    say(f"fault injected: {fault['target']} back after {fault['downtime_s']:.2f}s")
    return fault


# -- completion audit ---------------------------------------------------------------------------------
async def _audit_stream(bus, reset: bool, replicas: int = 1) -> None:
    """File-backed stream capturing every RequestFinished (core publishes are stored, no reply needed)."""
    from nats.js import api

    from shared import subjects

    cfg = api.StreamConfig(name=subjects.DONE_AUDIT_STREAM, subjects=[subjects.request_done()],
                           storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, max_age=3600.0,
                           num_replicas=replicas)
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
    if scenario in HA_SCENARIOS and not cluster.ha:
        raise ValueError(f"scenario {scenario} needs an --ha cluster")
    if downtime_s is None:
        downtime_s = {"nats-blip": 3.0, "restart-scheduler": 1.0, "stop-scheduler": 1.0, "restart-redis": 0.5,
                      "pause-worker": float(CHAOS_ENV["DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S"]) + 1.5}.get(scenario, 0.0)
    n = len(prompts)
    store = await Store.connect(cluster.redis_url)
    bus = await Bus.connect(cluster.nats_url, name="chaos-observer")
    live: dict[str, int] = {}

    async def on_done(fin: RequestFinished, headers: dict) -> None:
        live[fin.request_id] = live.get(fin.request_id, 0) + 1

    await _audit_stream(bus, reset=True, replicas=len(cluster.nats_ports))
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
                tasks.append(asyncio.create_task(_one(client, cluster.urls, i, p, max_tokens, t0, timeout_s)))
                submitted[0] += 1
            return list(await asyncio.gather(*tasks))

        lane_seqs, apart_wait_s = [], None
        if scenario == "kill-nats-node":
            # A node that dies within seconds of the previous fault may find both lanes on one node: the
            # dead lane's new leader is elected at random and moved apart at the leading scheduler's
            # next check. One fault at a time: wait for that (reported as lanes_apart_wait_s).
            apart_wait_s = await _until(lambda: _lanes_apart(bus, cluster), timeout_s=30.0)
            lane_seqs = await _lane_seqs(bus, cluster)
        runner = asyncio.create_task(submit_all())
        say(f"{scenario}: submitting {n} requests at {rps:g}/s (max_tokens {max_tokens}, min_threshold 1.0)")
        view = await _wait_for_trigger(store, submitted, max(1, n // 2), scenario, time.monotonic() + timeout_s)
        view["lane_seqs"] = lane_seqs
        view["lanes_apart_wait_s"] = round(apart_wait_s, 3) if apart_wait_s is not None and math.isfinite(apart_wait_s) else None
        t_fault = time.monotonic() - t0
        submitted_before = submitted[0]
        fault = await _inject(cluster, scenario, view, downtime_s, store, bus)
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
            "failover_s": fault.get("failover_s"),
            "last_completion_s": round(max((o.sent_s + o.latency_s for o in completed), default=0.0), 3),
            "recovered_after_fault_s": round(max((o.sent_s + o.latency_s for o in completed), default=t_fault) - t_fault, 3),
            "total_s": round(t_end, 3),
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_max_s": round(latencies[-1], 3) if latencies else None,
        },
        "finished_by": _count(o.worker_id for o in completed),
        "followed_to_another_gateway": sum(o.followed for o in accepted),
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
    """All workers (restarted ones included) registered again at every gateway, and under --ha the
    Sentinels see a replica again: the next scenario starts from a full cluster."""
    # A self-healing cluster may have a process down for its restart delay: only the harness's own
    # restarts must be alive.
    procs = [] if cluster.healer is not None else cluster.services + cluster.infra
    for url in cluster.urls:
        wait_ready(url, cluster.num_workers, procs, timeout_s, progress=False)
    if cluster.ha:
        wait_sentinels(cluster.sentinel_ports, timeout_s)


def start_cluster(run_dir: Path, num_workers: int, timeout_s: float = 300.0, ha: bool = False) -> LocalCluster:
    """A local cluster; under ``ha`` the --ha topology, healing itself (the harness then restarts nothing)."""
    cluster = LocalCluster(run_dir, num_workers=num_workers, port=_free_port_pair() if ha else free_port(),
                           extra_env=dict(CHAOS_ENV), ha=ha, heal=ha, say=say)
    say(f"starting a local cluster ({num_workers} workers{', --ha' if ha else ''}) in {run_dir}")
    try:
        cluster.start(timeout_s=timeout_s, progress=False)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _free_port_pair() -> int:
    """A port whose successor is free too (the second gateway's)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def summarize(reports: list[dict]) -> list[dict]:
    """Per scenario over its runs: totals and failover p50/max."""
    rows = []
    for scenario in dict.fromkeys(r["scenario"] for r in reports):
        runs = [r for r in reports if r["scenario"] == scenario]
        fo = sorted(r["timings"]["failover_s"] for r in runs if r["timings"].get("failover_s") is not None)
        rows.append({
            "scenario": scenario, "runs": len(runs),
            **{k: sum(r[k] for r in runs) for k in ("accepted", "rejected", "completed", "lost", "duplicates",
                                                     "mismatched_outputs")},
            "failover_p50_s": round(statistics.median(fo), 3) if fo else None,
            "failover_max_s": fo[-1] if fo else None,
            "recovered_after_fault_max_s": max(r["timings"]["recovered_after_fault_s"] for r in runs),
        })
    return rows


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
    p.add_argument("--ha", action="store_true",
                   help="run on a `dilaserve up --ha` cluster that heals itself (needed by the kill-leader-scheduler, "
                        "kill-nats-node, kill-redis-master and kill-gateway scenarios)")
    p.add_argument("--runs", type=int, default=1, help="runs of each scenario (failover p50/max over them)")


def _write_report(reports: list[dict], path: str | None) -> None:
    """Also after a failed scenario: the runs that finished are reported."""
    out = reports[0] if len(reports) == 1 else {"summary": summarize(reports), "scenarios": reports}
    text = json.dumps(out, indent=2)
    if path:
        Path(path).write_text(text + "\n")
        say(f"report written to {path}")
    else:
        print(text)


def main(args: argparse.Namespace) -> int:
    every = SCENARIOS if args.ha else BASE_SCENARIOS
    scenarios = list(every) if args.scenario == "all" else [s.strip() for s in args.scenario.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in every]
    if bad:
        hint = " (needs --ha)" if bad[0] in HA_SCENARIOS else ""
        print(f"error: unknown scenario {bad[0]!r}{hint} (one of {', '.join(every)}, or 'all')", file=sys.stderr)
        return 2
    scenarios = [sc for sc in scenarios for _ in range(max(1, args.runs))]
    run_dir = Path(args.run_dir or REPO / "runs" / time.strftime("chaos-%Y%m%d-%H%M%S")).resolve()
    prompts = make_prompts(args.requests, args.seed)
    t = time.monotonic()
    say(f"reference outputs for {len(prompts)} prompts (in-process engine, τ = 1)")
    refs = reference_outputs(prompts, args.max_tokens)
    reference_s = time.monotonic() - t
    t = time.monotonic()
    cluster = start_cluster(run_dir, args.workers, ha=args.ha)
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
        _write_report(reports, args.json)
    ok = all(r["lost"] == 0 and r["duplicates"] == 0 and r["mismatched_outputs"] == 0 for r in reports)
    return 0 if ok else 1


__all__ = ["SCENARIOS", "BASE_SCENARIOS", "HA_SCENARIOS", "summarize", "run_scenario", "reference_outputs", "make_prompts", "start_cluster", "wait_cluster_ready"]
