"""The schedulers' leader lease and its fence, against a real redis-server on a random loopback port
(started here, stopped by PID)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.processes import free_port, start_redis, stop_all, wait_port
from services.scheduler.leader import Election
from shared.schemas.requests import SubmitRequest
from shared.transport import Store
from shared.transport.lease import Lease
from shared.transport.store import FENCED


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("lease-redis"), port)
    try:
        wait_port(port, 30, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_all([proc])


@pytest.fixture
async def store(redis_url):
    s = await Store.connect(redis_url)
    await s.r.flushdb()
    yield s
    await s.close()


async def _request(store: Store, rid: str) -> None:
    submit = SubmitRequest(request_id=rid, model="m", prompt_ids=[1, 2], max_tokens=8, arrival_s=time.time(),
                           gateway_id="g")
    await store.create_request(submit, time.time())


async def test_one_holder_at_a_time_and_tokens_grow(store):
    a, b = Lease(store, "sched-a", ttl_s=0.4), Lease(store, "sched-b", ttl_s=0.4)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert await a.current() == a.value == f"sched-a {a.token}"
    first = a.token
    await asyncio.sleep(0.25)
    assert await a.renew()  # renewed before the TTL ran out: still A's
    await asyncio.sleep(0.25)
    assert not await b.try_acquire()
    await asyncio.sleep(0.5)  # A stopped renewing: the key expires
    assert await b.try_acquire()
    assert b.token > first
    assert not await a.renew() and not a.held  # A finds out at its next renewal
    await b.release()
    assert await b.current() == ""
    assert await a.try_acquire() and a.token > b.token


async def test_a_deposed_holder_cannot_place(store):
    """The fence: a transition passes only while the lease holds the caller's value."""
    a, b = Lease(store, "sched-a", ttl_s=0.3), Lease(store, "sched-b", ttl_s=5.0)
    await _request(store, "r1")
    await _request(store, "r2")
    assert await store.transition("r1", "assigned", ("queued",), time.time(), "w0", fence=a.fence) == (False, FENCED)
    assert await a.try_acquire()
    assert await store.transition("r1", "assigned", ("queued",), time.time(), "w0", fence=a.fence) == (True, "queued")
    await asyncio.sleep(0.45)
    assert await b.try_acquire()
    # A stalled past its TTL and still believes it leads: its placement changes nothing.
    assert a.held
    assert await store.transition("r2", "assigned", ("queued",), time.time(), "w0", fence=a.fence) == (False, FENCED)
    assert await store.get_state("r2") == "queued"
    assert await store.transition("r2", "assigned", ("queued",), time.time(), "w1", fence=b.fence) == (True, "queued")
    assert (await store.get_record("r2")).worker_id == "w1"


async def test_the_same_holder_restarted_takes_over_at_once(store):
    """A restarted instance (same name, e.g. the same pod) need not wait out its predecessor's TTL; it
    gets a new token, so the predecessor's fence no longer holds."""
    old, other = Lease(store, "sched-a", ttl_s=30.0), Lease(store, "sched-b", ttl_s=30.0)
    assert await old.try_acquire()
    new = Lease(store, "sched-a", ttl_s=30.0)
    assert await new.try_acquire() and new.token > old.token
    assert not await old.renew()
    assert not await other.try_acquire()


async def test_election_fails_over_within_ttl(store):
    ttl, renew = 1.0, 0.1
    a = Election(Lease(store, "sched-a", ttl), ttl, renew)
    b = Election(Lease(store, "sched-b", ttl), ttl, renew)
    await asyncio.wait_for(a.campaign(), 2.0)
    holding = asyncio.create_task(a.hold())
    standby = asyncio.create_task(b.campaign())
    await asyncio.sleep(1.5)  # renewed all along: B still waits
    assert not standby.done() and not holding.done()
    holding.cancel()  # A dies (no release)
    t = time.monotonic()
    await asyncio.wait_for(standby, 3.0)
    took = time.monotonic() - t
    assert took <= ttl + 3 * renew + 0.5, took
    lost = await asyncio.wait_for(a.hold(), 2.0)  # A comes back believing it leads: it learns it does not
    assert "sched-b" in lost


async def test_a_leader_cut_off_from_redis_steps_down(tmp_path):
    """No renewal for a whole TTL (Redis gone): hold() returns, the leader stops leading."""
    port = free_port()
    proc = start_redis(tmp_path, port)
    try:
        wait_port(port, 30, proc)
        s = await Store.connect(f"redis://127.0.0.1:{port}/0")
        election = Election(Lease(s, "sched-a", 1.0), 1.0, 0.2)
        await election.campaign()
        stop_all([proc])
        t = time.monotonic()
        reason = await asyncio.wait_for(election.hold(), 10.0)
        assert "not renewed" in reason and time.monotonic() - t < 1.0 + 3 * 0.25 + 0.5, reason
        await s.close()
    finally:
        stop_all([proc])
