"""Per-request decoding state: plain data, so a request can be checkpointed and resumed elsewhere."""

from __future__ import annotations

from typing import Literal

from shared.schemas.base import Message

Decoding = Literal["threshold", "strict", "fixed"]


class DecodeState(Message, tag="decode_state"):
    """Everything needed to continue a request's generation on any worker.

    ``canvas_ids`` has the fixed output length; uncommitted positions hold ``mask_token_id``.
    ``block_index`` is the current block; blocks before it are fully committed. K/V caches are not
    part of the state: a resumed request simply starts with a refresh step.
    """

    request_id: str
    prompt_ids: list[int]
    canvas_ids: list[int]
    mask_token_id: int
    block_length: int
    block_index: int = 0
    threshold: float = 0.9
    decoding: Decoding = "threshold"
    steps_per_block: int = 0
    block_step: int = 0
    num_steps: int = 0
    num_refresh_steps: int = 0
    num_reuse_steps: int = 0
    # Sampled commits (docs/api.md): temperature 0 is greedy. ``seed`` with the block index and the
    # step within the block seeds the draws, so a request resumed at a block start redraws the same.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def num_blocks(self) -> int:
        return -(-len(self.canvas_ids) // self.block_length)

    @property
    def num_masked(self) -> int:
        return sum(1 for t in self.canvas_ids if t == self.mask_token_id)

    @property
    def finished(self) -> bool:
        return self.block_index >= self.num_blocks
