"""Redis-side records (same codec as the wire): a request's lifecycle view."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message
from shared.schemas.requests import RequestFinished, SubmitRequest

RequestState = Literal["queued", "assigned", "running", "completed", "cancelled", "failed", "rejected"]
# A record in one of these holds its RequestFinished (state = RequestFinished.status).
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "cancelled", "failed", "rejected"})


class RequestRecord(Message, tag="request_record"):
    request_id: str
    state: RequestState
    submit: SubmitRequest
    worker_id: str = ""
    updated_s: float = 0.0
    result: RequestFinished | None = None
