"""LLaDA model: bidirectional llama-style transformer with LLaDA-8B's parameter names.

Two entry points:
- ``forward(input_ids, attention_mask)``: plain batched forward for training (logits for all positions).
- ``forward_segments(segments)``: the serving forward (services/worker/model/segments.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from services.worker.model.configuration_llada import LLaDAConfig
from services.worker.model.kv_arena import model_arena
from services.worker.model.segments import KVCache, Segment, apply_rotary, rotary_tables, run_segments

__all__ = ["LLaDAConfig", "LLaDAModelLM", "KVCache", "Segment", "RMSNorm"]


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

    def project_out(self, o: torch.Tensor) -> torch.Tensor:
        return self.attn_out(o)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        x = self.ff_norm(h)
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h)

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
        t, c = self.model.transformer, self.config
        arena = model_arena(self, c.n_layers, c.n_kv_heads, c.head_dim)
        return run_segments(segments, t.wte, self.blocks, self._head, c.head_dim, c.rope_theta, arena)
