"""LLaDA configuration, key-compatible with LLaDA-8B's published ``config.json``.

The keys are OLMo-style (``d_model``, ``n_layers`` ...). Extra keys found in a real
checkpoint's config (``mlp_ratio``, ``activation_type`` ...) are accepted and kept.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        max_sequence_length: int = 4096,
        rope: bool = True,
        rope_theta: float = 500000.0,
        block_type: str = "llama",
        layer_norm_type: str = "rms",
        rms_norm_eps: float = 1e-5,
        include_bias: bool = False,
        weight_tying: bool = False,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        **kwargs,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads if n_kv_heads is not None else n_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size if embedding_size is not None else vocab_size
        self.max_sequence_length = max_sequence_length
        self.rope = rope
        self.rope_theta = rope_theta
        self.block_type = block_type
        self.layer_norm_type = layer_norm_type
        self.rms_norm_eps = rms_norm_eps
        self.include_bias = include_bias
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=weight_tying,
            **kwargs,
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate_supported(self) -> None:
        """Fail loudly on checkpoint variants this implementation does not cover."""
        if self.block_type != "llama":
            raise ValueError(f"unsupported block_type {self.block_type!r}; only 'llama' is implemented")
        if self.layer_norm_type not in ("rms", "rms_norm"):
            raise ValueError(f"unsupported layer_norm_type {self.layer_norm_type!r}; only RMS is implemented")
        if not self.rope:
            raise ValueError("only rotary position embeddings (rope: true) are implemented")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must divide by n_heads and n_heads by n_kv_heads")
