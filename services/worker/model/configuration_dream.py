"""Dream configuration, key-compatible with Dream-v0-7B's published ``config.json``.

Dream (Dream-org/Dream-v0-Base-7B, -Instruct-7B) is a Qwen2-architecture model trained as a masked
diffusion LM: bidirectional attention, q/k/v biases, ``model_type: "Dream"``. Defaults of absent keys
are those of Dream's own ``configuration_dream.py``. Variants this implementation does not compute are
refused with a ValueError naming the key.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        pad_token_id: int = 151643,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        _check_rope_scaling(rope_scaling)  # not kept: transformers turns the attribute into rope_parameters
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, **kwargs)
        self.validate_supported()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """The engine's name for the number of positions."""
        return self.max_position_embeddings

    def validate_supported(self) -> None:
        """Fail loudly, naming the key, on variants this implementation does not compute."""
        if self.hidden_act != "silu":
            raise ValueError(f"unsupported Dream config hidden_act: {self.hidden_act!r}; only 'silu' is implemented")
        if self.use_sliding_window:
            raise ValueError("unsupported Dream config use_sliding_window: true; attention is over the whole sequence")
        if self.tie_word_embeddings:
            raise ValueError("unsupported Dream config tie_word_embeddings: true; lm_head is a separate matrix")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("hidden_size must divide by num_attention_heads and that by num_key_value_heads")
        if not 0 <= int(self.mask_token_id) < self.vocab_size:
            raise ValueError(f"Dream config mask_token_id {self.mask_token_id} is outside the vocabulary")


def _check_rope_scaling(rope_scaling: dict[str, Any] | None) -> None:
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind != "default":
        raise ValueError(f"unsupported Dream config rope_scaling: {rope_scaling!r}; only plain rotary is implemented")
