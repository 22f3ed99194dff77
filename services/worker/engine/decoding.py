"""Commit rules (docs/design.md §3.2): which masked positions of the current block to unmask this step.

All rules are greedy: the candidate token at a position is argmax(logits), its confidence the softmax
probability of that token.
"""

from __future__ import annotations

import torch

from shared.schemas.engine import DecodeState


def candidate_tokens(logits: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] -> (token ids [n], confidences [n]). The mask token itself is never a candidate."""
    logits = logits.float().clone()
    if 0 <= mask_token_id < logits.shape[-1]:
        logits[:, mask_token_id] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    conf, tokens = probs.max(dim=-1)
    return tokens, conf


def fixed_schedule_count(num_masked_at_block_start: int, steps_per_block: int, block_step: int) -> int:
    """LLaDA's schedule: spread a block's masks evenly over its step budget, remainder first."""
    base, rem = divmod(num_masked_at_block_start, steps_per_block)
    return base + (1 if block_step < rem else 0)


def select_commits(state: DecodeState, conf: torch.Tensor, num_masked_at_block_start: int) -> torch.Tensor:
    """Indices (into the candidate list) to commit this step; never empty while candidates remain."""
    n = conf.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    if state.decoding == "threshold":
        chosen = torch.nonzero(conf >= state.threshold).flatten()
        if chosen.numel() == 0:
            chosen = conf.argmax().reshape(1)
        return chosen
    if state.decoding == "strict":
        k = 1
    else:
        k = fixed_schedule_count(num_masked_at_block_start, state.steps_per_block, state.block_step)
        k = max(1, min(k, n))
    return torch.topk(conf, k).indices
