"""Commit rules (docs/design.md §3.2): which masked positions of the current block to unmask this step.

Greedy (temperature 0): the candidate token at a position is argmax(logits), its confidence the softmax
probability of that token. Sampled (temperature > 0, as Dream's generation code): the candidate is drawn
from softmax(logits / temperature) restricted to the top-p nucleus and renormalised, its confidence the
probability of the drawn token under that distribution; the rules below then choose among candidates
by that confidence exactly as in the greedy case.
"""

from __future__ import annotations

import torch

from shared.schemas.engine import DecodeState


def candidate_tokens(logits: torch.Tensor, mask_token_id: int, temperature: float = 0.0, top_p: float = 1.0,
                     uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] -> (token ids [n], confidences [n]). The mask token itself is never a candidate.

    With ``temperature`` > 0, ``uniforms`` [n] in [0, 1) are the draws for the n positions."""
    logits = logits.float().clone()
    if 0 <= mask_token_id < logits.shape[-1]:
        logits[:, mask_token_id] = float("-inf")
    if temperature <= 0:
        conf, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
        return tokens, conf
    if uniforms is None or uniforms.numel() != logits.shape[0]:
        raise ValueError("sampled candidates need one uniform draw per position")
    return sample_tokens(torch.softmax(logits / temperature, dim=-1), top_p, uniforms)


def sample_tokens(probs: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw from the top-p nucleus of each row of ``probs`` [n, V].

    The order is by probability (ties by token id: a stable sort), so a draw depends only on the row's
    probabilities and its uniform, not on anything else in the batch."""
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    # keep a token while the mass before it is below top_p: the smallest set reaching top_p (never empty)
    keep = (sorted_p.cumsum(dim=-1) - sorted_p) < top_p
    keep[:, 0] = True
    kept = sorted_p * keep
    kept = kept / kept.sum(dim=-1, keepdim=True)
    cdf = kept.cumsum(dim=-1)
    u = uniforms.to(device=cdf.device, dtype=cdf.dtype).reshape(-1, 1)
    idx = torch.searchsorted(cdf, u, right=True)
    idx = torch.minimum(idx, keep.sum(dim=-1, keepdim=True) - 1)  # rounding never picks outside the nucleus
    return order.gather(-1, idx).squeeze(-1), kept.gather(-1, idx).squeeze(-1)


_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_uniforms(seed: int, block_index: int, block_step: int, block_length: int) -> torch.Tensor:
    """The draws of one request's step: one uniform per position of its block (CPU, float64).

    A function of (seed, block, step within the block) only: the same in any batch, on any worker,
    and again after a resume from the block's checkpoint (which restarts the block at step 0)."""
    h = _splitmix64(seed & _MASK64)
    for c in (block_index, block_step):
        h = _splitmix64(h ^ c)
    g = torch.Generator(device="cpu")
    g.manual_seed(h)
    return torch.rand(block_length, generator=g, dtype=torch.float64)


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
