"""Submit lanes (shared/transport/lanes.py): the placement rule, the gateway's lane choice, and on a real
3-node nats-server cluster (random loopback ports, stopped by PID) that a submission is stored within a
second of the SIGKILL of the node leading the lane in use, while that lane's stream waits out its raft
election (4-9 s in nats-server)."""

from __future__ import annotations

import asyncio
import signal
import time

import nats
import pytest

from services.common.processes import free_port, start_nats, stop_all, wait_port
from shared import subjects
from shared.config import NatsConfig
from shared.schemas.requests import SubmitRequest
from shared.transport import Bus
from shared.transport.bus import MSG_ID
from shared.transport.lanes import (
    LANE_ATTEMPT_S, LANE_HOLD_S, LanePublisher, LaneView, ensure_lanes, lane_count, lane_view, leader_moves,
    spread_leaders,
)
from tooling.local_cluster import _wait_jetstream

PEERS = ("n0", "n1", "n2")


def _msg(request_id: str) -> SubmitRequest:
    return SubmitRequest(request_id=request_id, model="m", prompt_ids=[1], max_tokens=4, arrival_s=0.0,
                         gateway_id="test")


def test_lane_count_follows_replication():
    assert lane_count(1) == 1 and lane_count(3) == 2 and len(subjects.SUBMIT_STREAMS) == 2
    assert subjects.request_submit(0) == "dlm.v1.gateway.request.submit"
    assert subjects.request_submit(1) != subjects.request_submit(0)
    with pytest.raises(ValueError):
        subjects.request_submit(2)


def test_leader_moves_spreads_streams_then_consumers():
    # both lanes led by n0: lane 1's stream moves to a peer lane 0 does not use
    assert leader_moves([LaneView("n0", "n0", PEERS), LaneView("n0", "n0", PEERS)]) == [("stream", 1, "n1")]
    # apart, but a consumer led elsewhere than its stream: it follows its stream's leader
    assert leader_moves([LaneView("n0", "n2", PEERS), LaneView("n1", "n1", PEERS)]) == [("consumer", 0, "n0")]
    assert leader_moves([LaneView("n0", "n0", PEERS), LaneView("n1", "n1", PEERS)]) == []
    # an electing lane (no leader) and an unbound consumer are left alone
    assert leader_moves([LaneView("", "", ()), LaneView("n1", "", PEERS)]) == []
    # only the shared leader is current: nowhere to move to
    assert leader_moves([LaneView("n0", "n0", ("n0",)), LaneView("n0", "n0", ("n0",))]) == []


class _FakeBus:
    def __init__(self, dead: set[int]) -> None:
        self.dead = dead
        self.calls: list[int] = []

    async def js_publish_once(self, subject, msg, headers, timeout_s):
        lane = 1 if subject == subjects.request_submit(1) else 0
        self.calls.append(lane)
        if lane in self.dead:
            raise nats.errors.TimeoutError
        return 1


def test_publisher_moves_to_the_live_lane_and_back_after_the_hold():
    now = [0.0]
    bus = _FakeBus(dead={0})
    pub = LanePublisher(bus, 2, clock=lambda: now[0])
    msg = _msg("r1")
    assert asyncio.run(pub.publish(msg, {MSG_ID: "r1"}, 5.0)) == 1
    assert bus.calls == [0, 1]
    asyncio.run(pub.publish(msg, {MSG_ID: "r1"}, 5.0))
    assert bus.calls == [0, 1, 1], "the lane that answered is kept: no wait on the dead lane"
    bus.dead.clear()
    now[0] += LANE_HOLD_S + 1
    asyncio.run(pub.publish(msg, {MSG_ID: "r1"}, 5.0))
    assert bus.calls[-1] == 0 and pub.order() == [0, 1]


def _proc_named(procs, name: str):
    return next(p for p in procs if p.name == name)


@pytest.fixture
def nats_cluster(tmp_path):
    ports, routes = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    procs = [start_nats(tmp_path, ports[i], f"nats-{i}", routes[i], [r for j, r in enumerate(routes) if j != i])
             for i in range(3)]
    try:
        for p, port in zip(procs, ports):
            wait_port(port, 30, p)
        url = ",".join(f"nats://127.0.0.1:{p}" for p in ports)
        asyncio.run(_wait_jetstream(url))
        yield url, procs
    finally:
        stop_all(procs)


def test_a_dead_lane_leader_costs_a_lane_switch_not_an_election(nats_cluster):
    url, procs = nats_cluster

    async def run() -> dict:
        cfg = NatsConfig(url=url, stream_replicas=3)
        bus = await Bus.connect(url, name="test-lanes")
        got: list[tuple[int, str]] = []
        try:
            assert await ensure_lanes(bus, cfg) == 2
            for lane in range(2):
                async def handler(d, lane=lane):
                    got.append((lane, d.message.request_id))
                    await d.ack()
                await bus.js_consume(subjects.request_submit(lane), subjects.SUBMIT_STREAMS[lane],
                                     subjects.SCHEDULER_DURABLE, SubmitRequest, handler, 30.0)
            end = time.monotonic() + 30
            while True:  # the leading scheduler's periodic check, run here until nothing is left to move
                views = [await lane_view(bus, lane, subjects.SCHEDULER_DURABLE) for lane in range(2)]
                if all(v.stream_leader for v in views) and not leader_moves(views):
                    break
                assert time.monotonic() < end, views
                try:
                    await spread_leaders(bus, 2, subjects.SCHEDULER_DURABLE)
                except Exception:
                    pass
                await asyncio.sleep(0.3)
            assert views[0].stream_leader != views[1].stream_leader
            pub = LanePublisher(bus, 2)
            msg = _msg("before")
            assert await pub.publish(msg, {MSG_ID: "before"}, 5.0) == 0
            end = time.monotonic() + 5  # delivered by lane 0 before its leader dies (else only after the election)
            while (0, "before") not in got and time.monotonic() < end:
                await asyncio.sleep(0.05)
            victim = _proc_named(procs, views[0].stream_leader)
            victim.popen.send_signal(signal.SIGKILL)
            victim.popen.wait(5)
            t = time.monotonic()
            msg = _msg("after")
            lane = await pub.publish(msg, {MSG_ID: "after"}, 5.0)
            stored_s = time.monotonic() - t
            try:  # lane 0 really is down meanwhile: not a test that cannot fail
                await bus.js_publish_once(subjects.request_submit(0), msg, {MSG_ID: "probe"}, LANE_ATTEMPT_S)
                lane0_down = False
            except Exception:
                lane0_down = True
            end = time.monotonic() + 5
            while (1, "after") not in got and time.monotonic() < end:
                await asyncio.sleep(0.05)
            return {"lane": lane, "stored_s": stored_s, "lane0_down": lane0_down, "got": got}
        finally:
            await bus.close()

    r = asyncio.run(run())
    print(r)
    assert r["lane"] == 1 and r["lane0_down"], r
    assert r["stored_s"] < 2.0, r  # one reconnect (≤ 0.5 s) + one unanswered attempt (LANE_ATTEMPT_S)
    assert (1, "after") in r["got"] and (0, "before") in r["got"], r
