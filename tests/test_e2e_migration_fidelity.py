"""The live scheduler does what the simulator's core decides (real nats-server, redis-server, scheduler,
gateway and two workers, in a cluster of this module's own).

- **Block-boundary migration, live**: worker-1 is stopped (SIGSTOP) until the scheduler declares it dead;
  a burst then lands on worker-0 and in the queue; worker-1 comes back (SIGCONT) and the ``balance``
  policy moves requests between the workers at their block boundaries (off the overloaded worker-0,
  and on a fast machine back off worker-1 when worker-0 empties first). A moved request leaves its
  worker (``RequestReleased``), resumes from its checkpoint on the other and finishes with the output
  the same prompt has without migration (and the right answer).
- **Fidelity, for each of fcfs, balance, tedi, dilaserve**: the scheduler records every input its core
  sees and every decision (``scheduler.record_path``); replaying the inputs through a fresh core built by
  shared/sim/recorded.py gives identical decisions (placements with caps and deadlines, migrations, caps,
  drops), and each decision was carried out (dispatched, migration sent, caps forwarded, refusal answered).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest

from private_cluster import PrivateCluster, stop
from shared import subjects
from shared.schemas.migration import RequestReleased
from shared.sim.recorded import applied_mismatches, replay
from shared.profiles import model_block_length
from shared.transport import Bus

LETTERS = "abcdefghijklmnopqrstuvwxyz"
BLOCK = model_block_length("")  # the shipped model's (16)
MAX_TOKENS = 96  # 6 blocks of 16: several boundaries; prompt 29 tokens + 96 fits the model's 160 positions


def _prompt(i: int) -> str:
    word = (LETTERS[i % 26:] + LETTERS[: i % 26])[:24]
    return f"rev:{word}="


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = PrivateCluster(tmp_path_factory.mktemp("migration"))
    try:
        c.scheduler("balance", c.run_dir / "warmup.jsonl")
        c.start_workers_and_gateway(2)
        yield c
    finally:
        c.close()


async def _post_all(c: PrivateCluster, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=c.url, timeout=180) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))


SLACK_MS = 600_000  # a deadline far away: it only tells the test each request's arrival


def test_live_block_boundary_migration_keeps_the_output(cl):
    cl.scheduler("balance", cl.run_dir / "migration.jsonl")
    cl.wait_workers(2)
    w1 = cl.procs["worker-1"]
    os.kill(w1.pid, signal.SIGSTOP)  # silent: the scheduler declares it dead, then it comes back
    cl.wait_workers(1)
    released: list[RequestReleased] = []
    n = 20

    async def run() -> list[httpx.Response]:
        bus = await Bus.connect(cl.nats_url, name="test-migration")

        async def on_released(evt: RequestReleased, headers) -> None:
            released.append(evt)

        await bus.subscribe(subjects.request_released(), RequestReleased, on_released)
        await bus.flush()
        task = asyncio.ensure_future(_post_all(cl, [{"prompt": _prompt(i), "max_tokens": MAX_TOKENS,
                                                     "dlm": {"slo_ms": SLACK_MS}} for i in range(n)]))
        await asyncio.sleep(1.0)  # the burst is on worker-0 and in the queue
        os.kill(w1.pid, signal.SIGCONT)
        resps = await task
        await bus.close()
        return resps

    resps = asyncio.run(run())
    assert all(r.status_code == 200 for r in resps), [r.text for r in resps if r.status_code != 200][:2]
    bodies = {r.json()["id"]: r.json() for r in resps}
    moved = {e.request_id for e in released}
    print(f"\n{len(moved)} of {n} requests migrated; released at blocks {sorted(e.block_index for e in released)}")
    assert moved, "no request left worker-0 at a block boundary"
    assert all(0 < e.block_index < MAX_TOKENS // BLOCK for e in released), [(e.worker_id, e.block_index) for e in released]
    # Which way requests move depends on how fast each worker drains: first off the overloaded worker-0,
    # on a fast machine also back off worker-1 once worker-0 has emptied. Either way it is a migration.
    # the same prompts again, one at a time on an idle cluster: no migration, the reference output
    prompts = {rid: next(i for i, r in enumerate(resps) if r.json()["id"] == rid) for rid in moved}
    last_src = {e.request_id: e.worker_id for e in released}  # a request may move more than once
    for rid, i in prompts.items():
        body = bodies[rid]
        assert body["dlm"]["worker_id"] != last_src[rid], body["dlm"]  # it finished where it moved to
        # its timings cover its whole life: the first assignment and receipt, the workers' time summed
        dlm, t = body["dlm"], body["dlm"]["timings"]
        assert dlm["migrations"] == sum(e.request_id == rid for e in released), dlm
        arrival_s = dlm["deadline_s"] - SLACK_MS / 1000
        first_release_s = min(e.released_s for e in released if e.request_id == rid)
        assert arrival_s + (t["to_scheduler_ms"] + t["to_worker_ms"]) / 1000 < first_release_s, (t, first_release_s)
        ref = httpx.post(cl.url + "/v1/completions", json={"prompt": _prompt(i), "max_tokens": MAX_TOKENS},
                         timeout=60).json()
        assert body["choices"][0]["text"] == ref["choices"][0]["text"], (rid, body["choices"][0], ref["choices"][0])


@pytest.mark.parametrize("policy", ["fcfs", "balance", "tedi", "dilaserve"])
def test_live_decisions_replay_identically(cl, policy):
    record = cl.run_dir / f"fidelity-{policy}.jsonl"
    cl.scheduler(policy, record)
    cl.wait_workers(2)
    # a burst with mixed SLOs (some too tight to make), priorities and quality floors
    bodies = [{"prompt": _prompt(i), "max_tokens": MAX_TOKENS if i % 3 else 48,
               "dlm": {"slo_ms": (400, 2500, 8000)[i % 3], "priority": i % 2,
                       **({"min_threshold": 0.8} if i % 4 == 0 else {})}} for i in range(24)]
    resps = asyncio.run(_post_all(cl, bodies))
    codes = sorted({r.status_code for r in resps})
    assert set(codes) <= {200, 503}, [r.text for r in resps if r.status_code not in (200, 503)][:2]
    stop(cl.procs.pop("scheduler"))  # closes the record
    records = [json.loads(line) for line in record.read_text().splitlines()]
    report = replay(records)
    print(f"\n{policy}: {len(records)} records, {report.schedules} decisions replayed: {report.decisions}, "
          f"HTTP {codes}")
    assert report.schedules > 0 and report.decisions["placements"] >= len(bodies) - report.decisions["dropped"]
    assert report.mismatches == [], [{k: (m["live"][k], m["replay"][k]) for k in m["live"] if m["live"][k] != m["replay"][k]}
                                     for m in report.mismatches[:2]]
    assert applied_mismatches(records) == []
