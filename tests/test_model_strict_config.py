"""LLaDA configs: what the implementation does not compute is refused, naming the key; absent keys take
LLaDA's own defaults; saved configs name activation_type; a tokenizer with ``auto_map`` loads without
transformers' interactive remote-code prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.worker.model import LLaDAConfig, default_model_dir, load_model, register_models

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    model_type="llada", architectures=["LLaDAModelLM"], d_model=32, n_heads=4, n_kv_heads=4, n_layers=1,
    mlp_hidden_size=48, vocab_size=64, embedding_size=64, max_sequence_length=32, rope=True, rope_theta=10000.0,
    block_type="llama", layer_norm_type="rms", weight_tying=False, activation_type="silu",
    mask_token_id=1, eos_token_id=0, pad_token_id=0,
)


def _from_file(tmp_path: Path, **changes) -> LLaDAConfig:
    cfg = {k: v for k, v in {**TINY, **changes}.items() if v is not ...}  # ... = leave the key out
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    register_models()
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(tmp_path), local_files_only=True)


def _refused(tmp_path: Path, key: str, value) -> None:
    with pytest.raises(ValueError, match=key):
        _from_file(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=key):  # the model loader refuses it too
        load_model(tmp_path)
    with pytest.raises(ValueError, match=key):  # and so does construction in code
        LLaDAConfig(**{**{k: v for k, v in TINY.items() if k not in ("model_type", "architectures")}, key: value})


def test_weight_tying_refused(tmp_path):
    _refused(tmp_path, "weight_tying", True)


def test_include_bias_refused(tmp_path):
    _refused(tmp_path, "include_bias", True)


def test_include_qkv_bias_refused(tmp_path):
    _refused(tmp_path, "include_qkv_bias", True)


def test_attention_layer_norm_refused(tmp_path):
    _refused(tmp_path, "attention_layer_norm", True)


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
def test_activation_other_than_silu_refused(tmp_path, activation):
    # LLaDA's "swiglu" halves ff_proj's output (SwiGLU chunks it): not the llama block's SiLU gate
    _refused(tmp_path, "activation_type", activation)


def test_scale_logits_refused(tmp_path):
    _refused(tmp_path, "scale_logits", True)


def test_input_emb_norm_refused(tmp_path):
    _refused(tmp_path, "input_emb_norm", True)


@pytest.mark.parametrize("norm", ["default", "low_precision", "gemma_rms", "amd_compatible"])
def test_non_rms_norm_refused(tmp_path, norm):
    _refused(tmp_path, "layer_norm_type", norm)


def test_other_variants_refused(tmp_path):
    for key, value in [("block_type", "sequential"), ("rope", False), ("alibi", True), ("block_group_size", 2),
                       ("layer_norm_with_affine", False), ("bias_for_layer_norm", True)]:
        _refused(tmp_path, key, value)


def test_absent_keys_take_llada_defaults(tmp_path):
    cfg = _from_file(tmp_path, rope_theta=..., mlp_hidden_size=...)
    assert cfg.rope_theta == 10000.0 and cfg.mlp_hidden_size == 4 * 32  # mlp_ratio 4 x d_model
    assert _from_file(tmp_path, mlp_hidden_size=..., mlp_ratio=3).mlp_hidden_size == 3 * 32
    assert _from_file(tmp_path, n_kv_heads=...).n_kv_heads == 4  # n_heads
    assert _from_file(tmp_path, n_kv_heads=..., multi_query_attention=True).n_kv_heads == 1
    shape = _from_file(tmp_path, d_model=..., n_heads=..., n_layers=..., mlp_hidden_size=..., max_sequence_length=...,
                       vocab_size=..., embedding_size=...)
    assert (shape.d_model, shape.n_heads, shape.n_layers, shape.mlp_hidden_size) == (768, 12, 12, 3072)
    assert (shape.max_sequence_length, shape.vocab_size, shape.embedding_size) == (1024, 50257, 50304)


@pytest.mark.parametrize("key", ["weight_tying", "block_type", "rope", "layer_norm_type"])
def test_absent_key_whose_llada_default_is_unsupported_is_refused(tmp_path, key):
    """LLaDA's defaults: weight_tying true, block_type sequential, rope false, layer_norm_type default."""
    with pytest.raises(ValueError, match=key):
        _from_file(tmp_path, **{key: ...})


def test_absent_activation_means_silu(tmp_path):
    assert _from_file(tmp_path, activation_type=...).activation_type == "silu"


def test_saved_config_names_activation_type(tmp_path):
    cfg = LLaDAConfig(**{k: v for k, v in TINY.items() if k not in ("model_type", "architectures", "activation_type")})
    cfg.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["activation_type"] == "silu" and saved["weight_tying"] is False and saved["rope_theta"] == 10000.0
    assert _from_file(tmp_path).activation_type == "silu"  # and it reads back


def test_shipped_model_still_loads():
    cfg = load_model(default_model_dir()).config
    assert cfg.activation_type == "silu" and cfg.rope_theta == 10000.0


def test_auto_map_tokenizer_loads_without_the_remote_code_prompt(tmp_path, monkeypatch):
    """LLaDA-8B's layout: auto_map in config.json and tokenizer_config.json, no code beside them. Left to
    itself, transformers asks on stdin whether to run that code (and waits 15 s for an answer)."""
    src = default_model_dir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(src / f, tmp_path / f)
    for f, auto_map in [("config.json", {"AutoConfig": "configuration_llada.LLaDAConfig",
                                         "AutoModel": "modeling_llada.LLaDAModelLM"}),
                        ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_llada.LLaDATokenizer", None]})]:
        data = json.loads((tmp_path / f).read_text())
        (tmp_path / f).write_text(json.dumps({**data, "auto_map": auto_map}))
    prompts: list[str] = []
    monkeypatch.setattr("builtins.input", lambda text="": prompts.append(text) or "n")
    from services.gateway.tokenizer import ModelTokenizer
    from services.worker.model import load_tokenizer

    assert ModelTokenizer(tmp_path).encode("12+3=") == load_tokenizer(default_model_dir()).encode("12+3=")
    assert load_tokenizer(tmp_path).mask_token_id == 1
    assert prompts == []
