"""Dream model: a Qwen2-architecture transformer run bidirectionally, with Dream-v0-7B's parameter names.

Layout (as in Dream's checkpoints): ``model.embed_tokens``; per layer ``model.layers.{i}.input_layernorm``,
``self_attn.{q,k,v}_proj`` (weight and bias), ``self_attn.o_proj`` (no bias), ``post_attention_layernorm``,
``mlp.{gate,up,down}_proj``; ``model.norm``; the untied head ``lm_head``.

Dream predicts position i from the hidden state at position i - 1 (its generation code shifts the
logits right by one). ``forward`` returns the unshifted logits, as Dream's own model does;
``forward_segments`` (the serving forward) applies the shift, so the logits the engine receives for a
canvas position are that position's prediction. For cache steps this means the query span of a block
starts one position early: the token before the block is run again (its id comes from the cache) and
its K/V replace its cached slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from services.worker.model.configuration_dream import DreamConfig
from services.worker.model.modeling_llada import RMSNorm
from services.worker.model.kv_arena import model_arena
from services.worker.model.segments import Segment, apply_rotary, rotary_tables, run_segments

__all__ = ["DreamConfig", "DreamModel"]


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(d, config.num_attention_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=True)
        self.o_proj = nn.Linear(config.num_attention_heads * hd, d, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        d, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, m, bias=False)
        self.up_proj = nn.Linear(d, m, bias=False)
        self.down_proj = nn.Linear(m, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        x = self.input_layernorm(h)
        lead, a = x.shape[:-1], self.self_attn
        q = a.q_proj(x).view(*lead, self.n_heads, self.head_dim)
        k = a.k_proj(x).view(*lead, self.n_kv_heads, self.head_dim)
        v = a.v_proj(x).view(*lead, self.n_kv_heads, self.head_dim)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def project_out(self, o: torch.Tensor) -> torch.Tensor:
        return self.self_attn.o_proj(o)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(h))


class DreamBaseModel(nn.Module):
    """``model.*``: embeddings, layers, final norm. ``forward`` gives the final (normed) hidden states."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional; ``attention_mask`` [B, T]: 1 = real token, 0 = padding (masked as a key)."""
        bsz, seq = input_ids.shape
        cos, sin = rotary_tables(torch.arange(seq, device=input_ids.device), self.config.head_dim, self.config.rope_theta)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            q, k, v = (t.transpose(1, 2) for t in layer.qkv(h, cos, sin))
            gqa = layer.n_kv_heads != layer.n_heads
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            h = h + layer.project_out(o.transpose(1, 2).reshape(bsz, seq, -1))
            h = h + layer.feed_forward(h)
        return self.norm(h)


class DreamModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DreamDecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: DreamConfig) -> None:
        config.validate_supported()
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(h))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: object) -> MaskedLMOutput:
        """Unshifted logits for every position (row i predicts position i + 1), as Dream's model returns."""
        return MaskedLMOutput(logits=self.lm_head(self.model(input_ids, attention_mask)))

    # -- serving forward ------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_segments(self, segments: list[Segment]) -> list[torch.Tensor]:
        """One heterogeneous step; per segment the logits for its ``logit_rows``, shifted Dream's way."""
        inner = [_shifted(s) for s in segments]
        m, c = self.model, self.config
        arena = model_arena(self, c.num_hidden_layers, c.num_key_value_heads, c.head_dim)
        logits = run_segments(inner, m.embed_tokens, m.layers, self._head, c.head_dim, c.rope_theta, arena)
        for seg, run in zip(segments, inner):
            seg.new_cache = run.new_cache
        return logits


def _shifted(seg: Segment) -> Segment:
    """The segment the layers run so that logit row r comes from the hidden state of the position before it.

    full: the rows move one to the left (a canvas position is never position 0: the prompt is not empty).
    dual / prefix: the span grows by the position before the block (start - 1), its token taken from the
    cache; row r of the grown span is position start - 1 + r, the predictor of block row r. The prefix
    cache's last slot is that position, so it is dropped and recomputed with the span.
    """
    if seg.kind == "full":
        return Segment("full", seg.token_ids, seg.positions, (seg.logit_rows - 1).clamp(min=0), keep_cache=seg.keep_cache)
    cache = seg.cache
    assert cache is not None and cache.token_ids is not None, f"{seg.kind} segment needs a cache with its token ids"
    before = seg.positions[:1] - 1
    tokens = torch.cat([cache.token_ids.index_select(0, before), seg.token_ids])
    positions = torch.cat([before, seg.positions])
    if seg.kind == "prefix":
        cache = cache.head(cache.length - 1)
    return Segment(seg.kind, tokens, positions, seg.logit_rows, cache=cache)
