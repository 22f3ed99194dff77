"""Per-request relay of worker events to the HTTP client: committed blocks in order, then the result."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

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


class Relay:
    """Wraps the queue filled by the per-request NATS subscription."""

    def __init__(self, sub, queue: asyncio.Queue) -> None:
        self.sub = sub
        self.queue = queue
        self.blocks = BlockAssembler()
        self.finished: RequestFinished | None = None
        self.finished_seen_s = 0.0  # unix time the result reached this gateway

    async def next(self, timeout_s: float) -> Event:
        evt, _headers = await asyncio.wait_for(self.queue.get(), timeout=timeout_s)
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
