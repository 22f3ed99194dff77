"""Submit lanes: in a NATS cluster the submit path is two JetStream streams led by different nodes.

A replicated stream takes no writes from its leader's death until its peers elect another one, which
nats-server's raft does after 4-9 s (compiled in, not configurable). With two streams whose leaders sit
on different nodes, the death of one node leaves a lane that answers at once: the gateway publishes to
its preferred lane and moves to the other when a publish goes unanswered for ``LANE_ATTEMPT_S``; the
scheduler consumes every lane and de-duplicates by request id, as it does for redeliveries. The
leading scheduler calls ``spread_leaders`` every ``LANE_SPREAD_S`` so that the lanes' stream leaders
stay on different nodes and each lane's consumer is led by its stream's leader: one dead node then
stops at most one lane. On a single server there is one lane (a second stream there dies with the first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

import nats

from shared import subjects
from shared.config import NatsConfig
from shared.schemas.base import Message
from shared.transport.bus import JS_RETRY_PAUSE_S, JS_UNANSWERED, Bus, Headers

log = logging.getLogger(__name__)
LANE_ATTEMPT_S = 0.5  # a publish unanswered this long: the lane's leader is gone, try the next lane
LANE_HOLD_S = 30.0  # after moving off lane 0, keep to the lane that answered this long before trying lane 0 again
LANE_SPREAD_S = 0.5  # how often the leading scheduler checks where the lanes' leaders are (4 API requests)


def lane_count(stream_replicas: int) -> int:
    """Two lanes when the submit streams are replicated over a cluster, one on a single server."""
    return len(subjects.SUBMIT_STREAMS) if stream_replicas > 1 else 1


async def ensure_lanes(bus: Bus, cfg: NatsConfig) -> int:
    """Create (or keep) every lane's stream; returns the number of lanes."""
    lanes = lane_count(cfg.stream_replicas)
    for lane in range(lanes):
        await bus.ensure_stream(subjects.SUBMIT_STREAMS[lane], [subjects.request_submit(lane)],
                                cfg.submit_max_age_s, cfg.stream_replicas)
    return lanes


class LanePublisher:
    """The gateway's side: publish a submission to the first lane that stores it."""

    def __init__(self, bus: Bus, lanes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.lanes = lanes
        self.clock = clock
        self.preferred = 0
        self.hold_until = -float("inf")

    def order(self) -> list[int]:
        first = self.preferred if self.clock() < self.hold_until else 0
        return [first] + [lane for lane in range(self.lanes) if lane != first]

    async def publish(self, msg: Message, headers: Headers, timeout_s: float) -> int:
        """Returns the lane that stored ``msg``. ``headers`` carry its Nats-Msg-Id, so a retry on the same
        lane is de-duplicated by JetStream and a copy on two lanes by the scheduler."""
        if self.lanes == 1:
            await self.bus.js_publish(subjects.request_submit(0), msg, headers, timeout_s)
            return 0
        end = self.clock() + timeout_s
        while True:
            for lane in self.order():
                left_s = end - self.clock()
                if left_s <= 0:
                    raise nats.errors.TimeoutError
                try:
                    await self.bus.js_publish_once(subjects.request_submit(lane), msg, headers,
                                                   min(LANE_ATTEMPT_S, left_s))
                except JS_UNANSWERED:
                    continue
                self._answered(lane)
                return lane
            await asyncio.sleep(JS_RETRY_PAUSE_S)

    def _answered(self, lane: int) -> None:
        """A switch: keep to ``lane`` for LANE_HOLD_S (lane 0 for good), so that requests do not each
        wait out an attempt on a dead lane; then lane 0 is tried first again."""
        first = self.order()[0]
        if lane == first:
            return
        log.warning("submit lane %d unanswered; submitting to lane %d (%s)%s", first, lane,
                    subjects.SUBMIT_STREAMS[lane], f" for {LANE_HOLD_S:g}s" if lane else "")
        self.preferred, self.hold_until = lane, (self.clock() + LANE_HOLD_S if lane else -float("inf"))


@dataclass(frozen=True)
class LaneView:
    """Where one lane is led: stream and consumer leader ("" while electing / not bound) and the stream's
    servers that are up to date (the leader included)."""

    stream_leader: str
    consumer_leader: str
    current_peers: tuple[str, ...]


def leader_moves(views: list[LaneView]) -> list[tuple[str, int, str]]:
    """The stepdowns, as (``"stream"`` | ``"consumer"``, lane, preferred server), that give every lane a
    stream leader of its own and its consumer the same leader. A leaderless lane is left to its election."""
    moves: list[tuple[str, int, str]] = []
    taken: set[str] = set()
    for lane, v in enumerate(views):
        if not v.stream_leader:
            continue
        if v.stream_leader in taken:
            free = [p for p in v.current_peers if p not in taken]
            if free:  # its consumer follows at a later check, once the stream has moved
                moves.append(("stream", lane, free[0]))
                taken.add(free[0])
                continue
        taken.add(v.stream_leader)
        if v.consumer_leader and v.consumer_leader != v.stream_leader:
            moves.append(("consumer", lane, v.stream_leader))
    return moves


async def lane_view(bus: Bus, lane: int, durable: str, timeout_s: float = 1.0) -> LaneView:
    js = bus.nc.jetstream(timeout=timeout_s)
    stream = subjects.SUBMIT_STREAMS[lane]
    info = await js.stream_info(stream)
    cl = info.cluster
    leader = (cl.leader or "") if cl else ""
    peers = tuple([leader] * bool(leader) + [p.name for p in (cl.replicas or []) if p.current and not p.offline]) if cl else ()
    try:
        cinfo = await js.consumer_info(stream, durable)
        consumer_leader = (cinfo.cluster.leader or "") if cinfo.cluster else ""
    except nats.js.errors.NotFoundError:
        consumer_leader = ""
    return LaneView(leader, consumer_leader, peers)


async def spread_leaders(bus: Bus, lanes: int, durable: str) -> list[str]:
    """One check (see the module docstring); returns the stepdowns it asked for."""
    views = [await lane_view(bus, lane, durable) for lane in range(lanes)]
    asked = []
    for kind, lane, server in leader_moves(views):
        stream = subjects.SUBMIT_STREAMS[lane]
        subject = (subjects.js_stream_leader_stepdown(stream) if kind == "stream"
                   else subjects.js_consumer_leader_stepdown(stream, durable))
        await bus.js_api(subject, {"placement": {"preferred": server}})
        asked.append(f"{kind} {stream} → {server}")
    if asked:
        log.info("submit lanes: moved leaders (%s)", ", ".join(asked))
    return asked

