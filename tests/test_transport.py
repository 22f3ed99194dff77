"""shared.transport against real nats-server / redis-server (database 1, apart from the services)."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.schemas.cluster import PlannerHeartbeat
from shared.schemas.engine import DecodeState
from shared.schemas.codec import decode, encode
from shared.schemas.records import TERMINAL_STATES
from shared.schemas.requests import (
    DEADLINE_UNMEETABLE, AssignmentAck, CancelRequest, RequestFinished, SubmitRequest, deadline_refusal,
)
from shared.transport import Bus, Store


def _submit(rid: str, deadline_s: float | None = None) -> SubmitRequest:
    return SubmitRequest(request_id=rid, model="m", prompt_ids=[4, 5], max_tokens=8, arrival_s=time.time(),
                         gateway_id="g", deadline_s=deadline_s)


@pytest.fixture
async def store(redis_url):
    s = await Store.connect(redis_url + "/1")
    await s.r.flushdb()
    yield s
    await s.close()


@pytest.fixture
async def bus(nats_url):
    b = await Bus.connect(nats_url, "test")
    yield b
    await b.close()


async def test_pubsub_and_request_reply(bus):
    got = asyncio.Queue()

    async def on_msg(m, headers):
        await got.put((m, headers))

    await bus.subscribe("test.pub.x", PlannerHeartbeat, on_msg)

    async def on_req(m: CancelRequest, headers):
        return AssignmentAck(request_id=m.request_id, worker_id="w", accepted=True)

    await bus.serve("test.req.x", CancelRequest, on_req)
    await bus.flush()
    await bus.publish("test.pub.x", PlannerHeartbeat(planner_id="p", plan_id="q", sent_s=1.0), {"traceparent": "00-abc"})
    m, headers = await asyncio.wait_for(got.get(), 5)
    assert m.planner_id == "p" and headers["traceparent"] == "00-abc"
    ack = await bus.request("test.req.x", CancelRequest(request_id="r9"), AssignmentAck, timeout_s=5)
    assert ack.accepted and ack.request_id == "r9"


async def test_jetstream_redelivers_unacked_after_consumer_restart(nats_url):
    bus = await Bus.connect(nats_url, "js-test")
    await bus.ensure_stream("TEST_WQ", ["test.wq.submit"], max_age_s=60)
    await bus.js_publish("test.wq.submit", _submit("a"))
    seen = asyncio.Queue()

    async def no_ack(d):
        await seen.put(d.message.request_id)

    sub = await bus.js_consume("test.wq.submit", "TEST_WQ", "wq", SubmitRequest, no_ack, ack_wait_s=30)
    assert await asyncio.wait_for(seen.get(), 5) == "a"
    await sub.unsubscribe()
    await bus.close()  # "crash" without acking
    bus2 = await Bus.connect(nats_url, "js-test-2")
    again = asyncio.Queue()

    async def ack(d):
        await d.ack()
        await again.put((d.message.request_id, d.num_delivered))

    await bus2.js_consume("test.wq.submit", "TEST_WQ", "wq", SubmitRequest, ack, ack_wait_s=30)
    rid, n = await asyncio.wait_for(again.get(), 40)
    assert rid == "a" and n >= 2
    await bus2.js.delete_stream("TEST_WQ")
    await bus2.close()


async def test_store_lifecycle(store):
    await store.create_request(_submit("r1", deadline_s=50.0), 1.0)
    await store.create_request(_submit("r2"), 1.0)
    assert [r.request_id for r in await store.active_requests()] == ["r1", "r2"]  # by deadline, no SLO last
    assert await store.transition("r1", "assigned", ("queued",), 2.0, "w1") == (True, "queued")
    assert await store.transition("r1", "assigned", ("queued",), 2.0, "w1") == (False, "assigned")
    assert await store.transition("nope", "assigned", ("queued",), 2.0) == (False, "")
    st = DecodeState(request_id="r1", prompt_ids=[4], canvas_ids=[9, 1], mask_token_id=1, block_length=1, block_index=1)
    await store.save_checkpoint(st)
    assert await store.load_checkpoint("r1") == st
    fin = RequestFinished(request_id="r1", status="completed", finish_reason="stop", output_ids=[9])
    assert await store.finish(fin, 3.0) is True
    assert await store.finish(fin, 3.0) is False  # once
    rec = await store.get_record("r1")
    assert rec.state == "completed" and rec.result == fin and rec.worker_id == "w1"
    assert await store.load_checkpoint("r1") is None
    assert [r.request_id for r in await store.active_requests()] == ["r2"]


async def test_store_cancel(store):
    await store.create_request(_submit("c1"), 1.0)
    assert await store.cancel("c1", 2.0) is None
    assert await store.cancel("c1", 2.0) == "cancelled"
    assert await store.cancel("unknown", 2.0) == ""
    assert await store.transition("c1", "assigned", ("queued",), 3.0, "w") == (False, "cancelled")


async def test_store_keeps_a_deadline_refusal_once(store):
    await store.create_request(_submit("d1", deadline_s=50.0), 1.0)
    fin = deadline_refusal("d1", 2, 2.5, shed=True)
    assert await store.finish(fin, 2.5, token="scheduler-a") is True
    assert await store.finish(fin, 2.5, token="scheduler-a") is True  # the same finisher retrying
    late = RequestFinished(request_id="d1", status="failed", finish_reason="error", error="x")
    assert await store.finish(late, 3.0, token="worker-b") is False  # recorded once: the refusal stays
    rec = await store.get_record("d1")
    assert rec.state == "rejected" and rec.state in TERMINAL_STATES and rec.result == fin
    assert rec.result.error_code == DEADLINE_UNMEETABLE and rec.result.finish_reason == "rejected"
    assert await store.get_state("d1") == "rejected" and await store.active_requests() == []
    assert await store.cancel("d1", 4.0) == "rejected"  # terminal: not cancelled over
    assert (await store.get_record("d1")).state == "rejected"


def test_deadline_refusal_round_trips_and_old_results_still_decode():
    for shed in (False, True):
        fin = deadline_refusal("r", 3, 1.5, shed)
        assert decode(encode(fin), RequestFinished) == fin
        assert fin.status == "rejected" and fin.error_code == DEADLINE_UNMEETABLE and fin.num_prompt_tokens == 3
        assert "the deadline cannot be met" in fin.error and fin.output_ids == [] and fin.stats is None
    assert "shed" in deadline_refusal("r", 3, 1.5, True).error
    old = b'{"type":"request_finished","request_id":"x","status":"failed","finish_reason":"error","error":"e"}'
    assert decode(old, RequestFinished).error_code == ""


async def test_store_bursts_beyond_its_pool_wait_instead_of_failing(redis_url):
    """300 concurrent commands through a pool of 4 connections all succeed (redis-py's default pool
    would fail past its limit with "Too many connections", a 503 at the gateway under load)."""
    s = await Store.connect(redis_url + "/1", max_connections=4, pool_timeout_s=10.0)
    try:
        before = len(await s.r.client_list())  # the server's clients, one of them ours
        await asyncio.gather(*(s.create_request(_submit(f"burst-{i}"), 1.0) for i in range(300)))
        states = await s.get_states([f"burst-{i}" for i in range(300)])
        assert states == ["queued"] * 300
        assert len(await s.r.client_list()) <= before + 3  # never more than 4 of ours
    finally:
        await s.r.flushdb()
        await s.close()
