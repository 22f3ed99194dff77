"""Submissions offered over core NATS as well as JetStream (`gateway.offer_submissions`): each request is
still placed once, completed once, and its JetStream copy acked; a stale offer re-runs nothing."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from services.common.processes import free_port, start_service, wait_ready
from shared import subjects
from shared.schemas.requests import Assignment, RequestFinished, SubmitRequest
from shared.transport import Bus, Store

from conftest import NUM_WORKERS, _stop

NUM_REQUESTS = 12


@pytest.fixture
def offer_gateway(cluster):
    """A second gateway on the shared cluster, with offers on."""
    port = free_port()
    env = {**cluster.env, "DILASERVE_GATEWAY_PORT": str(port), "DILASERVE_GATEWAY_OFFER_SUBMISSIONS": "1"}
    proc = start_service("gateway-offer", ["gateway"], cluster.run_dir, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, NUM_WORKERS, [proc], 120, progress=False)
        yield url
    finally:
        _stop(proc)


async def _ack_pending(bus: Bus) -> int:
    info = await bus.js.consumer_info(subjects.SUBMIT_STREAM, subjects.SCHEDULER_DURABLE)
    return info.num_ack_pending + info.num_pending


async def _run(cluster, url: str) -> tuple[Counter, Counter, list[str], int, int]:
    bus = await Bus.connect(cluster.nats_url, "offer-test")
    store = await Store.connect(cluster.redis_url + "/0")
    assigned: Counter = Counter()
    done: Counter = Counter()

    async def on_assign(a: Assignment, headers) -> None:
        assigned[a.request_id] += 1

    async def on_done(f: RequestFinished, headers) -> None:
        done[f.request_id] += 1

    try:
        await bus.subscribe(subjects.worker_assign(), Assignment, on_assign)  # observes, never replies
        await bus.subscribe(subjects.request_done(), RequestFinished, on_done)
        before = await _ack_pending(bus)
        async with httpx.AsyncClient(timeout=120) as client:
            rs = await asyncio.gather(*(client.post(url + "/v1/completions",
                                                    json={"prompt": f"{100 + i:03d}+{i:03d}=", "max_tokens": 8})
                                        for i in range(NUM_REQUESTS)))
        ids = [r.json()["id"] for r in rs]
        # Stale offers (as a NATS reconnect could flush late): the requests are finished, nothing re-runs.
        for rid in ids:
            rec = await store.get_record(rid)
            assert isinstance(rec.submit, SubmitRequest)
            await bus.publish(subjects.request_offer(), rec.submit)
        await asyncio.sleep(1.0)  # late assignments or completions would show up as counts > 1
        after = before + 1
        for _ in range(50):  # acks are published right after the assignment is persisted
            after = await _ack_pending(bus)
            if after <= before:
                break
            await asyncio.sleep(0.1)
        return assigned, done, ids, before, after
    finally:
        await bus.close()
        await store.close()


def test_offered_and_durable_copies_place_each_request_once(cluster, offer_gateway):
    assigned, done, ids, before, after = asyncio.run(_run(cluster, offer_gateway))
    assert len(set(ids)) == NUM_REQUESTS
    assert all(assigned[i] == 1 for i in ids), {i: assigned[i] for i in ids}
    assert all(done[i] == 1 for i in ids), {i: done[i] for i in ids}
    assert after <= before, (before, after)  # every JetStream copy was acked
