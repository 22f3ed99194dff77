"""Request-plane wire messages: submission, assignment, cancellation, commit/finish events."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message

# "rejected": never run, because the scheduler refused it (or shed it from its queue): its deadline
# cannot be met. A deliberate refusal, apart from "failed" (something broke).
FinishStatus = Literal["completed", "cancelled", "failed", "rejected"]
FinishReason = Literal["stop", "length", "cancelled", "error", "rejected"]

# RequestFinished.error_code of a deadline refusal (also the gateway's HTTP error code for it).
DEADLINE_UNMEETABLE = "deadline_unmeetable"


# Bounds of Sampling (the gateway refuses anything outside them with a 400).
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
TEMPERATURE_MAX = 2.0
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class Sampling(Message, tag="sampling"):
    """Per-request OpenAI decoding parameters. ``temperature`` 0 is greedy (``top_p``, ``seed`` unused);
    ``seed`` is always set (drawn by the gateway when the client gave none). ``stop``: the request
    ends when the committed text contains one; the text is cut at the earliest match (``stop_cut``)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    seed_drawn: bool = False  # the gateway drew ``seed`` (the client gave none)
    stop: list[str] = []


def stop_cut(text: str, stops: list[str]) -> int | None:
    """Where ``text`` is cut for ``stops``: the start of the earliest match, None without one.
    The one rule for the worker (when to stop) and the gateway (what text to return)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


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
    sampling: Sampling | None = None  # None: greedy, no stop strings


class WorkSoFar(Message, tag="work_so_far"):
    """A request's time on the workers that held it before a block-boundary migration, so that its
    final timings cover its whole life: the first assignment and receipt, and durations (s) summed."""

    assigned_at_s: float = 0.0  # unix time of its first persisted assignment
    received_at_s: float = 0.0  # unix time its first worker received it
    worker_s: float = 0.0  # on the workers it left (received → released)
    forward_s: float = 0.0  # the forward steps it took part in there
    num_migrations: int = 0  # block-boundary moves between workers so far


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
    sampling: Sampling | None = None
    prior: WorkSoFar | None = None  # a migrated request: what the workers it left did


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
    queue_s: float = 0.0  # gateway arrival → its first worker received the assignment (clock of both hosts)
    # its time on the model instances, received → finished, summed over the workers that held it (a
    # migration's transit between two of them is not in it: that is the control plane's)
    worker_s: float = 0.0
    worker_forward_s: float = 0.0  # sum of the forward steps it took part in, on every worker
    assigned_at_s: float = 0.0  # unix time the scheduler persisted its first assignment
    received_at_s: float = 0.0  # unix time its first worker received it
    num_migrations: int = 0  # block-boundary moves between workers


class RequestFinished(Message, tag="request_finished"):
    """Final event of a request (any publisher: worker, scheduler, gateway)."""

    request_id: str
    status: FinishStatus
    finish_reason: FinishReason
    output_ids: list[int] = []
    num_prompt_tokens: int = 0
    stats: RequestStats | None = None
    error: str = ""
    error_code: str = ""  # machine-readable cause when not completed, e.g. DEADLINE_UNMEETABLE
    finished_s: float = 0.0


def deadline_refusal(request_id: str, num_prompt_tokens: int, finished_s: float, shed: bool) -> RequestFinished:
    """The scheduler's result for a request whose deadline cannot be met: refused on arrival
    (``shed=False``) or shed later from the queue (``shed=True``). It never reached a worker."""
    how = "shed from the scheduler's queue" if shed else "refused by the scheduler on arrival"
    return RequestFinished(request_id=request_id, status="rejected", finish_reason="rejected",
                           num_prompt_tokens=num_prompt_tokens, error=f"the deadline cannot be met: {how}",
                           error_code=DEADLINE_UNMEETABLE, finished_s=finished_s)
