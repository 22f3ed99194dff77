"""Block-boundary migration: the scheduler moves a running request to another worker (token ids only:
the new worker resumes from the block-boundary checkpoint, so the output is the one it would have had)."""

from __future__ import annotations

from shared.schemas.base import Message
from shared.schemas.requests import WorkSoFar


class MigrateRequest(Message, tag="migrate_request"):
    """Scheduler → the worker holding ``request_id``: release it at its next block boundary."""

    request_id: str
    dst_worker_id: str
    issued_s: float


class RequestReleased(Message, tag="request_released"):
    """Worker → scheduler: ``request_id`` left this worker at a block boundary; its checkpoint (blocks
    ``< block_index`` committed) is in Redis. The scheduler assigns it to its new worker with ``resume``."""

    request_id: str
    worker_id: str
    block_index: int
    released_s: float
    work: WorkSoFar | None = None  # its time on this worker and those before it, this move counted
