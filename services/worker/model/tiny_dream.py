"""A tiny random checkpoint in Dream-v0-7B's layout (config keys, weight names, tokenizer layout).

For tests and smoke runs: nothing is downloaded; the weights are random (seeded), every parameter
drawn, biases and norm weights included, so a comparison against another implementation exercises all
of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from services.worker.model.configuration_dream import DreamConfig
from services.worker.model.modeling_dream import DreamModel
from services.worker.model.tokenizer_build import save_dream_tokenizer

# Dream-v0-Instruct-7B's keys, shrunk (its own: hidden 3584, 28 layers, 28 heads, 4 KV heads).
TINY_DREAM_SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=160, rope_theta=1000000.0, rms_norm_eps=1e-6)


def tiny_dream_config(token_ids: dict[str, int]) -> DreamConfig:
    vocab_size = -(-token_ids["size"] // 8) * 8  # padded past the tokenizer, as Dream's 152064 > 151667
    return DreamConfig(
        **TINY_DREAM_SHAPE, vocab_size=vocab_size, mask_token_id=token_ids["mask"], pad_token_id=token_ids["eos"],
        eos_token_id=token_ids["eos"], bos_token_id=token_ids["eos"], architectures=["DreamModel"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    )


def save_tiny_dream(out_dir: str | Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors and the tokenizer; returns the directory."""
    out = Path(out_dir)
    ids = save_dream_tokenizer(out)
    torch.manual_seed(seed)
    model = DreamModel(tiny_dream_config(ids)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "Dream", cfg
    return out
