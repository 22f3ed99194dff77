"""The serving forward shared by every model family: one heterogeneous step over request segments.

Each segment is one request's slice of a denoising step (full refresh, dual-cache block, or
prefix-cache block-to-end). Linear layers run on all segments' tokens packed together; attention runs
per segment, so a request's result does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F

SegmentKind = Literal["full", "dual", "prefix"]


@dataclass
class KVCache:
    """Per-request K/V for every layer: ``keys``/``values`` are [n_layers, n_kv_heads, S, head_dim].

    ``token_ids`` are the tokens of the cached positions as they were when cached (a model that reads
    the token before a block, as Dream does, takes it from here).
    """

    keys: torch.Tensor
    values: torch.Tensor
    token_ids: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


@dataclass
class Segment:
    """One request's part of a serving step.

    kind "full": ``token_ids`` is the whole sequence starting at position 0; when ``keep_cache`` is
        set, the K/V of the first ``keep_cache`` positions is returned as a new cache.
    kind "dual": ``token_ids`` are the block tokens at ``positions``; their K/V overwrite the matching
        slots of ``cache`` (full length) and attention runs over the whole cache.
    kind "prefix": ``token_ids`` run from block start to the end; ``cache`` holds the prefix K/V only.
    ``logit_rows`` index into ``token_ids``: the rows whose logits are wanted.
    """

    kind: SegmentKind
    token_ids: torch.Tensor
    positions: torch.Tensor
    logit_rows: torch.Tensor
    cache: KVCache | None = None
    keep_cache: int = 0
    new_cache: KVCache | None = field(default=None, init=False)


class SegmentLayer(Protocol):
    """What a transformer layer offers the segment runner."""

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def project_out(self, o: torch.Tensor) -> torch.Tensor: ...

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor: ...


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., N, H, D]; cos/sin: [N, D]."""
    dtype = x.dtype
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    out = x32 * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [H, T, D]; k, v: [Hkv, S, D]. Bidirectional (no mask)."""
    gqa = k.shape[0] != q.shape[0]
    return F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=gqa)[0]


def run_segments(
    segments: Sequence[Segment],
    embed: Callable[[torch.Tensor], torch.Tensor],
    layers: Sequence[SegmentLayer],
    head: Callable[[torch.Tensor], torch.Tensor],
    head_dim: int,
    rope_theta: float,
) -> list[torch.Tensor]:
    """Run one heterogeneous step. Returns per segment the logits [len(logit_rows), vocab] in fp32."""
    ids = torch.cat([s.token_ids for s in segments])
    positions = torch.cat([s.positions for s in segments])
    cos, sin = rotary_tables(positions, head_dim, rope_theta)
    offsets = [0]
    for s in segments:
        offsets.append(offsets[-1] + int(s.token_ids.numel()))
    h = embed(ids)
    new_k: list[list[torch.Tensor]] = [[] for _ in segments]
    new_v: list[list[torch.Tensor]] = [[] for _ in segments]
    for li, layer in enumerate(layers):
        q, k, v = layer.qkv(h, cos, sin)  # [N, H, D]
        outs = []
        for si, seg in enumerate(segments):
            lo, hi = offsets[si], offsets[si + 1]
            qs, ks, vs = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
            keys, vals = _segment_kv(seg, li, ks, vs)
            if seg.kind == "full" and seg.keep_cache:
                new_k[si].append(ks[:, : seg.keep_cache])
                new_v[si].append(vs[:, : seg.keep_cache])
            outs.append(attend(qs, keys, vals).transpose(0, 1).reshape(hi - lo, -1))
        h = h + layer.project_out(torch.cat(outs))
        h = h + layer.feed_forward(h)
    for si, seg in enumerate(segments):
        if seg.kind == "full" and seg.keep_cache:
            seg.new_cache = KVCache(torch.stack(new_k[si]), torch.stack(new_v[si]), seg.token_ids[: seg.keep_cache])
    rows = torch.cat([s.logit_rows + offsets[i] for i, s in enumerate(segments)])
    logits = head(h[rows]).float()
    return list(torch.split(logits, [int(s.logit_rows.numel()) for s in segments]))


def _segment_kv(seg: Segment, layer: int, ks: torch.Tensor, vs: torch.Tensor):
    if seg.kind == "full":
        return ks, vs
    assert seg.cache is not None, f"{seg.kind} segment needs a cache"
    if seg.kind == "dual":  # index_copy_ by the positions tensor: no read-back to the host
        seg.cache.keys[layer].index_copy_(1, seg.positions, ks)
        seg.cache.values[layer].index_copy_(1, seg.positions, vs)
        return seg.cache.keys[layer], seg.cache.values[layer]
    keys = torch.cat([seg.cache.keys[layer], ks], dim=1)
    vals = torch.cat([seg.cache.values[layer], vs], dim=1)
    return keys, vals
