"""Denoising engine: the batch API the worker's step loop drives (see docs/engine.md)."""

from services.worker.engine.batch_engine import (
    CACHE_MODES,
    DenoisingEngine,
    RequestStepOutput,
    StepOutput,
    new_state,
    output_ids,
    rewind_to_block_start,
)
from services.worker.engine.runner import RunStats, run_to_completion

__all__ = [
    "CACHE_MODES",
    "DenoisingEngine",
    "RequestStepOutput",
    "StepOutput",
    "new_state",
    "output_ids",
    "rewind_to_block_start",
    "RunStats",
    "run_to_completion",
]
