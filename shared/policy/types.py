"""Plain data passed into and out of the policy code (maps 1:1 onto NATS messages)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestView:
    """A request as the scheduler sees it at arrival.

    ``deadline_s`` is absolute (same clock as ``now_s``); ``priority``: higher = more important class.
    ``min_threshold`` is the request's quality floor (τ never goes below it).
    """

    request_id: str
    arrival_s: float
    deadline_s: float
    prompt_len: int
    output_len: int
    block_len: int = 32
    priority: int = 0
    min_threshold: float = 0.0

    @property
    def full_len(self) -> int:
        return self.prompt_len + self.output_len

    @property
    def num_blocks(self) -> int:
        return -(-self.output_len // self.block_len)


@dataclass(slots=True)
class Progress:
    """Decoding progress of one request (from worker step stats / commit events)."""

    committed: int = 0  # output tokens committed so far
    blocks_refreshed: int = 0  # blocks whose refresh step has run (incl. the current one)

    def masked_left(self, output_len: int) -> int:
        return max(0, output_len - self.committed)


@dataclass(slots=True)
class StepSample:
    """One measured step: tokens executed and wall latency (heartbeat payload)."""

    tokens: int
    latency_s: float


@dataclass(slots=True)
class TpsSample:
    """Tokens committed over some steps at one threshold (heartbeat payload)."""

    threshold: float
    tokens: int
    steps: int


@dataclass(slots=True)
class InstanceView:
    """A worker instance as reported by its heartbeat.

    ``config`` names a cost-model configuration (e.g. ``"tp1"``). ``token_budget`` of 0 means
    "use the policy default for this config". ``draining`` instances receive no new work and
    their requests migrate away at block boundaries.
    """

    instance_id: str
    config: str
    token_budget: int = 0
    draining: bool = False
    step_samples: list[StepSample] = field(default_factory=list)
    tps_samples: list[TpsSample] = field(default_factory=list)


@dataclass(slots=True)
class Placement:
    """Run ``request_id`` on ``instance_id``; the worker plans τ against ``deadline_s`` under ``cap``."""

    request_id: str
    instance_id: str
    cap: float
    deadline_s: float


@dataclass(slots=True)
class Migration:
    """Move a request that sits at a block boundary (no K/V transfer: the canvas is token ids)."""

    request_id: str
    src_instance_id: str
    dst_instance_id: str


@dataclass(slots=True)
class SchedulerOutput:
    """What one ``SchedulerCore.schedule(now_s)`` call decided."""

    placements: list[Placement] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)
    caps: dict[str, float] = field(default_factory=dict)  # request_id -> threshold cap (changed only)
    rejected: list[str] = field(default_factory=list)  # refused at arrival (infeasible)
    dropped: list[str] = field(default_factory=list)  # dropped while queued (can no longer make it)
