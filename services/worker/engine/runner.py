"""Drive an engine over a list of requests with continuous batching (used by eval, bench and tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.worker.engine.batch_engine import DenoisingEngine
from shared.schemas.engine import DecodeState


@dataclass
class RunStats:
    steps: int = 0
    elapsed_s: float = 0.0
    tokens_executed: int = 0
    refresh_steps: int = 0
    reuse_steps: int = 0
    finished: dict[str, DecodeState] = field(default_factory=dict)


def run_to_completion(engine: DenoisingEngine, states: list[DecodeState], max_batch: int = 32, progress=None) -> RunStats:
    """Keep up to ``max_batch`` requests in flight; new ones join as others finish."""
    pending = list(reversed(states))
    stats = RunStats()
    while pending or engine.num_requests:
        while pending and engine.num_requests < max_batch:
            engine.add(pending.pop())
        out = engine.step()
        stats.steps += 1
        stats.elapsed_s += out.elapsed_s
        stats.tokens_executed += out.num_tokens_executed
        stats.refresh_steps += sum(1 for r in out.requests if r.step_kind == "refresh")
        stats.reuse_steps += sum(1 for r in out.requests if r.step_kind == "reuse")
        for st in out.finished:
            stats.finished[st.request_id] = st
        if progress is not None and out.finished:
            progress.update(len(out.finished))
    return stats
