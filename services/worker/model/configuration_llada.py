"""LLaDA configuration, key-compatible with LLaDA's published ``configuration_llada.py`` / ``config.json``.

The keys are OLMo-style (``d_model``, ``n_layers`` ...). Two sets of defaults, on purpose:
- a ``config.json`` read through ``from_pretrained``/``from_dict`` gets LLaDA's own ``ModelConfig``
  defaults for every key it leaves out (``LLADA_DEFAULTS``), so an absent key means what it means to
  LLaDA's code (``rope_theta`` 10000, ``mlp_hidden_size`` = ``mlp_ratio`` × ``d_model``, ``weight_tying``
  true ...);
- ``LLaDAConfig(...)`` in code defaults to LLaDA-8B's published shape.
Variants this implementation does not compute are refused with a ValueError naming the key.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# LLaDA's ModelConfig defaults (its configuration_llada.py) for the keys that change the computation.
LLADA_DEFAULTS: dict[str, Any] = {
    "d_model": 768,
    "n_heads": 12,
    "n_kv_heads": None,
    "n_layers": 12,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "block_type": "sequential",
    "block_group_size": 1,
    "alibi": False,
    "rope": False,
    "multi_query_attention": None,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "layer_norm_type": "default",
    "layer_norm_with_affine": True,
    "rms_norm_eps": 1e-5,
    "max_sequence_length": 1024,
    "rope_theta": 10000.0,
    "include_qkv_bias": False,
    "include_bias": False,
    "bias_for_layer_norm": None,
    "scale_logits": False,
    "vocab_size": 50257,
    "embedding_size": 50304,
    "weight_tying": True,
    "eos_token_id": 50256,
    "pad_token_id": 50256,
    "mask_token_id": 50256,
}
# LLaDA's default activation is "swiglu", which its llama block cannot run (SwiGLU halves ff_proj's
# output, which then fails to multiply with up_proj's); no working llama-block checkpoint relies on that
# default, and the configs this project shipped before the key was saved leave it out, so an absent
# activation_type means "silu", the one LLaDA-8B names.
ABSENT_ACTIVATION = "silu"

# Keys whose true value selects a computation this implementation does not have.
_REFUSED_WHEN_TRUE: dict[str, str] = {
    "weight_tying": "the output head is a separate matrix (model.transformer.ff_out); tied weights are not implemented",
    "include_bias": "linear layers have no bias parameters",
    "include_qkv_bias": "q/k/v projections have no bias parameters",
    "attention_layer_norm": "there is no q/k layer norm",
    "scale_logits": "logits are not scaled by 1/sqrt(d_model)",
    "input_emb_norm": "there is no input-embedding norm",
    "alibi": "positions are rotary (rope), not ALiBi",
    "bias_for_layer_norm": "RMS norms have a weight and no bias",
}


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_ratio: int = 4,
        mlp_hidden_size: int | None = 12288,
        activation_type: str = ABSENT_ACTIVATION,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope: bool = True,
        rope_theta: float = 500000.0,
        block_type: str = "llama",
        block_group_size: int = 1,
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        include_qkv_bias: bool | None = False,
        bias_for_layer_norm: bool | None = None,
        attention_layer_norm: bool = False,
        scale_logits: bool = False,
        input_emb_norm: bool = False,
        alibi: bool = False,
        multi_query_attention: bool | None = None,
        weight_tying: bool = False,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        **kwargs,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = _effective_kv_heads(n_heads, n_kv_heads, multi_query_attention)
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size if mlp_hidden_size is not None else mlp_ratio * d_model
        self.activation_type = str(activation_type)
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size if embedding_size is not None else vocab_size
        self.max_sequence_length = max_sequence_length
        self.rope = rope
        self.rope_theta = rope_theta
        self.block_type = str(block_type)
        self.block_group_size = block_group_size
        self.layer_norm_type = str(layer_norm_type)
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.include_qkv_bias = bool(include_qkv_bias)
        # LLaDA: bias_for_layer_norm None inherits include_bias
        self.bias_for_layer_norm = include_bias if bias_for_layer_norm is None else bias_for_layer_norm
        self.attention_layer_norm = attention_layer_norm
        self.scale_logits = scale_logits
        self.input_emb_norm = input_emb_norm
        self.alibi = alibi
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id
        kwargs.pop("tie_word_embeddings", None)  # LLaDA ties through weight_tying only
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=False, **kwargs)
        self.validate_supported()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """A checkpoint's config: keys it leaves out take LLaDA's own defaults, not this class's."""
        filled = {**LLADA_DEFAULTS, **config_dict}
        if filled.get("activation_type") is None:
            filled["activation_type"] = ABSENT_ACTIVATION
        return super().from_dict(filled, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate_supported(self) -> None:
        """Fail loudly, naming the key, on checkpoint variants this implementation does not compute."""
        for key, why in _REFUSED_WHEN_TRUE.items():
            if getattr(self, key):
                raise ValueError(f"unsupported LLaDA config {key}: true ({why})")
        if self.activation_type != "silu":
            raise ValueError(
                f"unsupported LLaDA config activation_type: {self.activation_type!r}; only 'silu' "
                "(the SiLU-gated MLP of LLaDA's llama block) is implemented"
            )
        if self.block_type != "llama":
            raise ValueError(f"unsupported LLaDA config block_type: {self.block_type!r}; only 'llama' is implemented")
        if self.layer_norm_type not in ("rms", "rms_norm"):
            raise ValueError(
                f"unsupported LLaDA config layer_norm_type: {self.layer_norm_type!r}; only 'rms' is implemented"
            )
        if not self.layer_norm_with_affine:
            raise ValueError("unsupported LLaDA config layer_norm_with_affine: false; RMS norms have a weight")
        if not self.rope:
            raise ValueError("unsupported LLaDA config rope: false; only rotary position embeddings are implemented")
        if self.block_group_size != 1:
            raise ValueError(
                f"unsupported LLaDA config block_group_size: {self.block_group_size}; "
                "grouped blocks (transformer.block_groups.*) are not implemented"
            )
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must divide by n_heads and n_heads by n_kv_heads")
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"embedding_size {self.embedding_size} is smaller than vocab_size {self.vocab_size}")


def _effective_kv_heads(n_heads: int, n_kv_heads: int | None, multi_query: bool | None) -> int:
    """LLaDA's rule: n_kv_heads if set, else 1 for multi-query attention, else n_heads."""
    if n_kv_heads is None:
        return 1 if multi_query else n_heads
    if multi_query is not None and n_kv_heads != (1 if multi_query else n_heads):
        raise ValueError("LLaDA config sets both multi_query_attention and a contradicting n_kv_heads")
    return n_kv_heads
