"""Dream format: a tiny random checkpoint in Dream-v0-7B's layout, checked against transformers' own Qwen2
(run without a causal mask), Dream's logit shift in the serving forward, batch invariance in every cache
mode, offline loading without running shipped code."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.worker.engine import DenoisingEngine, new_state, run_to_completion
from services.worker.model import DreamModel, Segment, load_model, load_tokenizer
from services.worker.model.tiny_dream import save_tiny_dream

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_dream(tmp_path_factory.mktemp("tiny-dream"), seed=0)


@pytest.fixture(scope="module")
def dream(tiny_dir) -> DreamModel:
    model = load_model(tiny_dir)
    assert isinstance(model, DreamModel)
    return model


def _qwen2(tiny_dir: Path):
    """transformers' Qwen2Model holding the checkpoint's weights (the ``model.`` prefix stripped), eager attention."""
    from transformers import Qwen2Config, Qwen2Model

    c = json.loads((tiny_dir / "config.json").read_text())
    cfg = Qwen2Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], max_position_embeddings=c["max_position_embeddings"],
        rms_norm_eps=c["rms_norm_eps"], rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        hidden_act=c["hidden_act"], tie_word_embeddings=False, attn_implementation="eager",
    )
    weights = load_file(str(tiny_dir / "model.safetensors"))
    base = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    qwen = Qwen2Model(cfg).eval()
    missing, unexpected = qwen.load_state_dict(base, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    assert set(weights) - {"model." + k for k in base} == {"lm_head.weight"}
    return qwen, weights["lm_head.weight"]


def _bidirectional(qwen, ids: torch.Tensor) -> torch.Tensor:
    """Qwen2 without its causal mask: a prepared all-zeros additive 4-D mask replaces the one
    ``create_causal_mask`` would build (Qwen2Model takes a dict of prepared masks as-is), and eager
    attention adds it to the scores, so every position sees every other."""
    b, t = ids.shape
    mask = {"full_attention": torch.zeros(b, 1, t, t)}
    with torch.no_grad():
        return qwen(input_ids=ids, attention_mask=mask).last_hidden_state


def test_hidden_states_equal_transformers_qwen2_without_causal_mask(tiny_dir, dream):
    qwen, lm_head = _qwen2(tiny_dir)
    torch.manual_seed(1)
    ids = torch.randint(0, 58, (3, 40))
    ref = _bidirectional(qwen, ids)
    with torch.no_grad():
        ours = dream.model(ids)
        logits = dream(ids).logits
    diff = (ours - ref).abs().max().item()
    print(f"max abs diff of hidden states vs transformers Qwen2 (fp32): {diff:.3e}")
    assert diff <= 1e-4
    assert (logits - ref @ lm_head.T).abs().max().item() <= 1e-4
    # the reference really is bidirectional: a later token changes an earlier hidden state ...
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 58
    assert (_bidirectional(qwen, changed)[:, 0] - ref[:, 0]).abs().max() > 1e-3
    # ... which Qwen2 with its own (causal) mask would not do
    with torch.no_grad():
        causal, causal_changed = (qwen(input_ids=x).last_hidden_state for x in (ids, changed))
    assert torch.allclose(causal[:, 0], causal_changed[:, 0]) and (causal - ref).abs().max() > 1e-3


def test_serving_logits_follow_dreams_shift(dream):
    """Row for position i = the head on the hidden state at i - 1, in every step shape."""
    torch.manual_seed(2)
    ids = torch.randint(0, 58, (30,))
    with torch.no_grad():
        unshifted = dream(ids[None]).logits[0]
    shifted = unshifted[torch.arange(30) - 1]  # Dream's generation: logits[i] <- logits[i - 1]
    full = Segment("full", ids, torch.arange(30), torch.arange(1, 30), keep_cache=30)
    assert torch.allclose(dream.forward_segments([full])[0], shifted[1:], atol=1e-5)
    dual = Segment("dual", ids[16:24], torch.arange(16, 24), torch.arange(8), cache=full.new_cache)
    assert torch.allclose(dream.forward_segments([dual])[0], shifted[16:24], atol=1e-5)
    pre = Segment("full", ids, torch.arange(30), torch.arange(1), keep_cache=16)
    dream.forward_segments([pre])
    assert pre.new_cache.length == 16 and torch.equal(pre.new_cache.token_ids, ids[:16])
    suffix = Segment("prefix", ids[16:], torch.arange(16, 30), torch.arange(14), cache=pre.new_cache)
    assert torch.allclose(dream.forward_segments([suffix])[0], shifted[16:], atol=1e-5)


def test_engine_commits_the_shifted_prediction(dream):
    mask_id = dream.config.mask_token_id
    prompt = [5, 9, 14, 3, 7]
    engine = DenoisingEngine(dream, "none")
    engine.add(new_state("a", prompt, 8, mask_id, 8, decoding="strict"))
    out = engine.step().requests[0]
    seq = torch.tensor(prompt + [mask_id] * 8)
    with torch.no_grad():
        logits = dream(seq[None]).logits[0, len(prompt) - 1 : len(prompt) + 7]  # predictors of the canvas
    logits[:, mask_id] = float("-inf")
    conf, tok = logits.softmax(-1).max(-1)
    best = int(conf.argmax())
    assert out.committed_positions == [best] and out.committed_token_ids == [int(tok[best])]


def _random_states(seed: int, n: int, mask_id: int):
    rng = random.Random(seed)
    return [
        new_state(
            f"r{i}", [rng.randrange(0, 58) for _ in range(rng.randint(1, 40))], rng.choice([5, 8, 16, 32]), mask_id,
            rng.choice([4, 8]), threshold=rng.choice([1.0, 0.9, 0.5, 0.2]),
            decoding=rng.choice(["threshold", "strict", "fixed"]), steps_per_block=rng.choice([1, 2, 4]),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_invariance_16_mixed_requests(dream, cache):
    engine = DenoisingEngine(dream, cache)
    states = _random_states(3, 16, dream.config.mask_token_id)
    alone = {s.request_id: run_to_completion(engine, [s], 1).finished[s.request_id].canvas_ids for s in states}
    together = run_to_completion(engine, states, 16).finished
    assert {k: v.canvas_ids for k, v in together.items()} == alone
    assert all(dream.config.mask_token_id not in c for c in alone.values())


def test_unsupported_dream_keys_are_refused(tiny_dir, tmp_path):
    base = json.loads((tiny_dir / "config.json").read_text())
    for key, value in [("hidden_act", "gelu"), ("use_sliding_window", True), ("tie_word_embeddings", True),
                       ("rope_scaling", {"rope_type": "yarn", "factor": 4.0})]:
        (tmp_path / "config.json").write_text(json.dumps({**base, key: value}))
        with pytest.raises(ValueError, match=key):
            load_model(tmp_path)


def test_loads_offline_without_running_shipped_code(tiny_dir):
    """HF_HUB_OFFLINE, no HF home, stdin left open: a remote-code prompt would block on it for 15 s."""
    code = (
        "import sys, time; import torch, transformers; from services.worker.model import load_model, load_tokenizer;"
        f"t0 = time.monotonic(); m = load_model({str(tiny_dir)!r}); t = load_tokenizer({str(tiny_dir)!r});"
        "from services.gateway.tokenizer import ModelTokenizer; g = ModelTokenizer(sys.argv[1]);"
        "print(type(m).__name__, t.mask_token_id, m.config.mask_token_id, g.mask_token_id, round(time.monotonic() - t0, 2))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], env=env, stdin=subprocess.PIPE,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    name, tok_mask, cfg_mask, gw_mask, seconds = out.stdout.split()
    assert name == "DreamModel" and tok_mask == cfg_mask == gw_mask
    assert float(seconds) < 10.0  # imports done before the clock starts; a prompt would wait 15 s


def test_no_remote_code_prompt(tiny_dir, monkeypatch):
    prompts: list[str] = []
    monkeypatch.setattr("builtins.input", lambda text="": prompts.append(text) or "n")
    from services.gateway.tokenizer import ModelTokenizer

    assert ModelTokenizer(tiny_dir).mask_token_id == load_tokenizer(tiny_dir).mask_token_id
    assert prompts == []


def test_tokenizer_layout_and_chat_template(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert tok.mask_token_id == cfg["mask_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|mask|>") == len(tok) - 1  # the mask is the last token, as in Dream
    text = tok.apply_chat_template([{"role": "user", "content": "2+2="}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
