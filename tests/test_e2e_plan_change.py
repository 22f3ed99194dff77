"""Live reconfiguration with real processes: a plan change drains a worker while requests are in flight
and then restarts it; every request completes with exactly the output it has without the change."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import queue
import time

import httpx

from services.supervisor.service import Supervisor
from shared.schemas.cluster import InstanceCount, NodePlan, Plan

PROMPTS = [f"rev:{w}=" for w in ("abcdefghijklmnopqrstuvwx", "zyxwvutsrqponmlkjihgfedc", "thequickbrownfoxjumpsove",
                                  "lazydogpackmyboxwithfive", "dozenliquorjugsnowandthe", "spherexyzquartzglyphvex")]
MAX_TOKENS = 96  # 6 blocks of 16: long enough to be mid-flight when the plan lands


def _plan(plan_id: str, workers: int) -> Plan:
    ic = [InstanceCount(config="tp1-dual", count=workers)]
    return Plan(plan_id=plan_id, created_s=time.time(), instances=ic, reason="test",
                nodes=[NodePlan(node=0, instances=ic)])


def _stream(url: str, prompt: str, ids: queue.Queue) -> str:
    """Stream one request (min_threshold 1.0: one most-confident token per step, deterministic)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "min_threshold": 1.0,
            "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=180) as resp:
        rid = None
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and rid is None:
                rid = json.loads(line[6:])["id"]
                ids.put((prompt, rid))
        return rid


def _status(url: str, rid: str) -> dict:
    return httpx.get(f"{url}/v1/requests/{rid}", timeout=10).json()


def _run(cluster, during=None) -> dict[str, dict]:
    """All prompts concurrently; ``during(rids)`` runs once every request has an id. → prompt: status."""
    ids: queue.Queue = queue.Queue()
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        futs = [pool.submit(_stream, cluster.url, p, ids) for p in PROMPTS]
        rids = dict(ids.get(timeout=120) for _ in PROMPTS)
        if during is not None:
            during(rids)
        for f in futs:
            f.result(timeout=180)
    return {p: _status(cluster.url, rid) for p, rid in rids.items()}


def test_plan_change_drains_and_restarts_a_worker_without_changing_outputs(cluster):
    baseline = _run(cluster)
    assert all(s["status"] == "completed" for s in baseline.values()), baseline

    sup = Supervisor(node=0, slots=2, worker_ids=["worker-0", "worker-1"],
                     spawn=lambda wid, cfg: cluster.start(wid, ["worker", "--worker-id", wid]))
    for wid in ("worker-0", "worker-1"):
        sup.adopt(wid, "tp1-dual", cluster.procs[wid])
    moved: list[str] = []
    applied = []

    def change_plan(rids: dict[str, str]) -> None:
        # Wait until the victim (the supervisor drains the most recently added tp1-dual: worker-1)
        # holds a running request, then drain it (plan: 1 worker) and start it again (plan: 2 workers).
        end = time.monotonic() + 60
        while time.monotonic() < end and not moved:
            for rid in rids.values():
                st = _status(cluster.url, rid)
                if st["status"] == "running" and st["worker_id"] == "worker-1":
                    moved.append(rid)
            time.sleep(0.05)
        assert moved, "no request ever ran on worker-1"
        applied.append(asyncio.run(sup.apply(_plan("shrink", 1))))
        applied.append(asyncio.run(sup.apply(_plan("grow", 2))))

    changed = _run(cluster, change_plan)
    shrink, grow = applied
    assert shrink.drained == ["worker-1"] and not shrink.killed and not shrink.started
    assert grow.started == ["worker-1"] and not grow.drained
    assert sup.running() == {"tp1-dual": 2}
    for p in PROMPTS:  # including the ones running on worker-1 when it was drained (`moved`)
        assert changed[p]["status"] == "completed", changed[p]
        assert changed[p]["result"]["text"] == baseline[p]["result"]["text"], p
    cluster.wait_ready()
