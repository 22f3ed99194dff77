"""Per-request relay of worker events to the HTTP client: committed blocks in order, then the result."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from shared.schemas.records import TERMINAL_STATES
from shared.schemas.requests import BlockCommitted, RequestFinished

Event = BlockCommitted | RequestFinished


@dataclass
class BlockAssembler:
    """Collects blocks (any order, duplicates after a resume allowed) into the contiguous committed prefix."""

    blocks: dict[int, list[int]] = field(default_factory=dict)
    prefix: list[int] = field(default_factory=list)
    next_block: int = 0

    def add(self, evt: BlockCommitted) -> bool:
        """True when the contiguous prefix grew."""
        if evt.block_index < self.next_block:
            return False
        self.blocks[evt.block_index] = evt.token_ids
        grew = False
        while self.next_block in self.blocks:
            self.prefix.extend(self.blocks.pop(self.next_block))
            self.next_block += 1
            grew = True
        return grew


async def stored_result(store, request_id: str) -> RequestFinished | None:
    """The result recorded in Redis, if the request has finished (one HGET while it has not)."""
    if await store.get_state(request_id) not in TERMINAL_STATES:
        return None
    rec = await store.get_record(request_id)
    return rec.result if rec is not None else None


class Relay:
    """Wraps the queue filled by the per-request NATS subscription.

    Core NATS is at-most-once: a RequestFinished published while this gateway was reconnecting to
    NATS is gone. So after ``poll_after_s`` without any event, ``poll()`` (the Redis record, where the
    result is always written first) is consulted, and again at that interval.
    """

    def __init__(self, sub, queue: asyncio.Queue,
                 poll: Callable[[], Awaitable[RequestFinished | None]] | None = None, poll_after_s: float = 1.0) -> None:
        self.sub = sub
        self.queue = queue
        self.poll = poll
        self.poll_after_s = poll_after_s
        self.blocks = BlockAssembler()
        self.finished: RequestFinished | None = None
        self.finished_seen_s = 0.0  # unix time the result reached this gateway

    async def _get(self, timeout_s: float) -> tuple[Event, dict]:
        if self.poll is None:
            return await asyncio.wait_for(self.queue.get(), timeout=timeout_s)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            left = end - loop.time()
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=max(0.0, min(self.poll_after_s, left)))
            except asyncio.TimeoutError:
                if left <= self.poll_after_s:
                    raise
            try:  # bounded: a hung Redis must not hold the request past its own deadline
                budget = max(0.05, min(self.poll_after_s, end - loop.time()))
                fin = await asyncio.wait_for(self.poll(), timeout=budget)
            except Exception:  # Redis unreachable or slow: keep waiting on NATS
                fin = None
            if fin is not None:
                return fin, {}

    async def next(self, timeout_s: float) -> Event:
        evt, _headers = await self._get(timeout_s)
        if isinstance(evt, RequestFinished):
            if self.finished is None:
                self.finished, self.finished_seen_s = evt, time.time()
        else:
            self.blocks.add(evt)
        return evt

    async def wait_finished(self, timeout_s: float) -> RequestFinished:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.finished is None:
            await self.next(max(0.0, end - loop.time()))
        return self.finished

    async def close(self) -> None:
        try:
            await self.sub.unsubscribe()
        except Exception:  # connection already closed
            pass
