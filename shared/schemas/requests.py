"""Request-plane wire messages: submission, assignment, cancellation, commit/finish events."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message

FinishStatus = Literal["completed", "cancelled", "failed"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


class SubmitRequest(Message, tag="submit_request"):
    """Gateway → scheduler (JetStream). Times are unix seconds; ``deadline_s`` is None without an SLO."""

    request_id: str
    model: str
    prompt_ids: list[int]
    max_tokens: int
    arrival_s: float
    gateway_id: str
    slo_ms: float | None = None
    deadline_s: float | None = None
    priority: int = 0
    min_threshold: float | None = None


class Assignment(Message, tag="assignment"):
    """Scheduler → one worker (request/reply). ``threshold_cap`` bounds τ from above, the floor from below."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    arrival_s: float
    assigned_s: float
    threshold_cap: float
    min_threshold: float | None = None
    deadline_s: float | None = None
    priority: int = 0
    resume: bool = False  # it ran before (worker died / restart): continue from the Redis checkpoint


class AssignmentAck(Message, tag="assignment_ack"):
    request_id: str
    worker_id: str
    accepted: bool
    reason: str = ""
    retry: bool = False  # refused for a transient reason (worker stopping): place it elsewhere


class CancelRequest(Message, tag="cancel_request"):
    request_id: str
    reason: str = "cancelled by client"


class ThresholdCaps(Message, tag="threshold_caps"):
    """Scheduler → worker: new per-request upper bounds on τ (load control)."""

    caps: dict[str, float]
    issued_s: float


class BlockCommitted(Message, tag="block_committed"):
    """Worker → gateway: a block became final. ``token_ids`` are the block's tokens (EOS included)."""

    request_id: str
    worker_id: str
    block_index: int
    block_length: int
    token_ids: list[int]
    committed_s: float


class RequestStats(Message, tag="request_stats"):
    """Per-request decoding statistics and worker-side timings (durations in seconds)."""

    worker_id: str = ""
    thresholds_used: list[float] = []
    threshold_mean: float = 0.0
    num_steps: int = 0
    num_refresh_steps: int = 0
    num_reuse_steps: int = 0
    queue_s: float = 0.0  # gateway arrival → worker received the assignment (clock of both hosts)
    worker_s: float = 0.0  # worker received → finished: the request's time on the model instance
    worker_forward_s: float = 0.0  # sum of the forward steps it took part in
    assigned_at_s: float = 0.0  # unix time the scheduler persisted the assignment
    received_at_s: float = 0.0  # unix time the worker received it


class RequestFinished(Message, tag="request_finished"):
    """Final event of a request (any publisher: worker, scheduler, gateway)."""

    request_id: str
    status: FinishStatus
    finish_reason: FinishReason
    output_ids: list[int] = []
    num_prompt_tokens: int = 0
    stats: RequestStats | None = None
    error: str = ""
    finished_s: float = 0.0
