"""LLaDA model: bidirectional llama-style transformer with LLaDA-8B's parameter names.

Two entry points:
- ``forward(input_ids, attention_mask)``: plain batched forward for training (logits for all positions).
- ``forward_segments(segments)``: the serving forward. Each segment is one request's slice of a
  heterogeneous denoising step (full refresh, dual-cache block, or prefix-cache block-to-end). Linear
  layers run on all segments' tokens packed together; attention runs per segment, so a request's
  result does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from services.worker.model.configuration_llada import LLaDAConfig

SegmentKind = Literal["full", "dual", "prefix"]


@dataclass
class KVCache:
    """Per-request K/V for every layer: ``keys``/``values`` are [n_layers, n_kv_heads, S, head_dim]."""

    keys: torch.Tensor
    values: torch.Tensor

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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32.to(dtype)) * self.weight.to(dtype)


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


class LLaDABlock(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        d, hd = config.d_model, config.head_dim
        bias = config.include_bias
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=bias)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=bias)

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        x = self.attn_norm(h)
        lead = x.shape[:-1]
        q = self.q_proj(x).view(*lead, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(*lead, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(*lead, self.n_kv_heads, self.head_dim)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        x = self.ff_norm(h)
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q: [B, H, T, D]; k, v: [B, Hkv, S, D]. Bidirectional attention."""
        gqa = self.n_kv_heads != self.n_heads
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class LLaDAModel(nn.Module):
    """Holds ``transformer`` so that parameter names read ``model.transformer.*`` as in LLaDA-8B."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.embedding_size, config.d_model),
                blocks=nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
                ff_out=nn.Linear(config.d_model, config.embedding_size, bias=False),
            )
        )


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig) -> None:
        config.validate_supported()
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        t = self.model.transformer
        logits = t.ff_out(t.ln_f(h))
        return logits[..., : self.config.vocab_size]

    # -- training / reference forward ---------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> MaskedLMOutput:
        """Full bidirectional forward. ``attention_mask`` [B, T]: 1 = real token, 0 = padding."""
        bsz, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device)
        cos, sin = rotary_tables(positions, self.config.head_dim, self.config.rope_theta)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]
        h = self.model.transformer.wte(input_ids)
        for block in self.blocks:
            q, k, v = block.qkv(h, cos, sin)
            o = block.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
            h = h + block.attn_out(o.transpose(1, 2).reshape(bsz, seq, -1))
            h = h + block.mlp(h)
        return MaskedLMOutput(logits=self._head(h))

    # -- serving forward ------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_segments(self, segments: list[Segment]) -> list[torch.Tensor]:
        """Run one heterogeneous step. Returns per segment the logits [len(logit_rows), vocab]."""
        cfg = self.config
        ids = torch.cat([s.token_ids for s in segments])
        positions = torch.cat([s.positions for s in segments])
        cos, sin = rotary_tables(positions, cfg.head_dim, cfg.rope_theta)
        lengths = [int(s.token_ids.numel()) for s in segments]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        h = self.model.transformer.wte(ids)
        new_k: list[list[torch.Tensor]] = [[] for _ in segments]
        new_v: list[list[torch.Tensor]] = [[] for _ in segments]
        for li, block in enumerate(self.blocks):
            q, k, v = block.qkv(h, cos, sin)  # [N, H, D]
            outs = []
            for si, seg in enumerate(segments):
                lo, hi = offsets[si], offsets[si + 1]
                qs, ks, vs = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
                keys, vals = self._segment_kv(seg, li, ks, vs)
                if seg.kind == "full" and seg.keep_cache:
                    new_k[si].append(ks[:, : seg.keep_cache])
                    new_v[si].append(vs[:, : seg.keep_cache])
                o = block.attend(qs[None], keys[None], vals[None], None)[0]
                outs.append(o.transpose(0, 1).reshape(hi - lo, -1))
            h = h + block.attn_out(torch.cat(outs))
            h = h + block.mlp(h)
        for si, seg in enumerate(segments):
            if seg.kind == "full" and seg.keep_cache:
                seg.new_cache = KVCache(torch.stack(new_k[si]), torch.stack(new_v[si]))
        rows = torch.cat([s.logit_rows + offsets[i] for i, s in enumerate(segments)])
        logits = self._head(h[rows]).float()
        return list(torch.split(logits, [int(s.logit_rows.numel()) for s in segments]))

    @staticmethod
    def _segment_kv(seg: Segment, layer: int, ks: torch.Tensor, vs: torch.Tensor):
        if seg.kind == "full":
            return ks, vs
        assert seg.cache is not None, f"{seg.kind} segment needs a cache"
        if seg.kind == "dual":
            start = int(seg.positions[0])
            end = start + ks.shape[1]
            seg.cache.keys[layer, :, start:end] = ks
            seg.cache.values[layer, :, start:end] = vs
            return seg.cache.keys[layer], seg.cache.values[layer]
        keys = torch.cat([seg.cache.keys[layer], ks], dim=1)
        vals = torch.cat([seg.cache.values[layer], vs], dim=1)
        return keys, vals
