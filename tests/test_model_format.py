"""The model follows LLaDA-8B's checkpoint format and loads offline through transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from services.worker.model import LLaDAConfig, LLaDAModelLM, default_model_dir, load_model, register_llada

LLADA_8B_LAYER_PARAMS = {"attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"}


def test_parameter_names_and_shapes_follow_llada_8b():
    cfg = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=48, vocab_size=50, embedding_size=56, max_sequence_length=64)
    names = {k: tuple(v.shape) for k, v in LLaDAModelLM(cfg).state_dict().items()}
    assert names["model.transformer.wte.weight"] == (56, 32)
    assert names["model.transformer.ff_out.weight"] == (56, 32)
    assert names["model.transformer.ln_f.weight"] == (32,)
    for i in range(2):
        assert {k.split(".")[4] for k in names if k.startswith(f"model.transformer.blocks.{i}.")} == LLADA_8B_LAYER_PARAMS
    assert names["model.transformer.blocks.0.ff_proj.weight"] == (48, 32)
    assert names["model.transformer.blocks.0.ff_out.weight"] == (32, 48)
    assert len(names) == 3 + 9 * 2


def test_published_8b_config_keys_are_understood(tmp_path):
    """A config.json shaped like LLaDA-8B's (extra OLMo keys included) builds the 8B shape."""
    published = {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32,
        "n_layers": 32, "mlp_hidden_size": 12288, "mlp_ratio": 4, "vocab_size": 126464, "embedding_size": 126464,
        "max_sequence_length": 4096, "rope": True, "rope_theta": 500000.0, "block_type": "llama",
        "layer_norm_type": "rms", "rms_norm_eps": 1e-05, "include_bias": False, "weight_tying": False,
        "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081, "activation_type": "silu",
    }
    (tmp_path / "config.json").write_text(json.dumps(published))
    register_llada()
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(tmp_path), local_files_only=True)
    assert isinstance(cfg, LLaDAConfig) and cfg.mask_token_id == 126336 and cfg.head_dim == 128
    with torch.device("meta"):
        model = LLaDAModelLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert 7.5e9 < n_params < 8.5e9


def test_shipped_checkpoint_is_small_and_complete():
    d = default_model_dir()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (d / f).is_file(), f
    total = sum(f.stat().st_size for f in d.iterdir())
    assert total <= 30 * 2**20
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["architectures"] == ["LLaDAModelLM"]


def test_loads_offline_in_a_fresh_process():
    code = (
        "from services.worker.model import load_model, load_tokenizer, default_model_dir;"
        "m = load_model(default_model_dir()); t = load_tokenizer(default_model_dir());"
        "print(type(m).__name__, t.mask_token_id, m.config.mask_token_id)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LLaDAModelLM", "1", "1"]


def test_round_trip_save_and_load(tmp_path):
    torch.manual_seed(0)
    cfg = LLaDAConfig(d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=48, vocab_size=64, embedding_size=64,
                      max_sequence_length=32, mask_token_id=1, eos_token_id=0, pad_token_id=0)
    m = LLaDAModelLM(cfg).eval()
    m.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = load_model(tmp_path)
    ids = torch.randint(2, 64, (1, 10))
    assert torch.equal(m(ids).logits, loaded(ids).logits)
