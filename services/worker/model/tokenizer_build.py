"""Builds the shipped model's character-level tokenizer (a `tokenizers` fast tokenizer, AutoTokenizer-loadable)."""

from __future__ import annotations

import json
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mdm_mask|>"
UNK_TOKEN = "<|unk|>"
CHARS = " 0123456789abcdefghijklmnopqrstuvwxyz+-*=:,.?!()/<>"
VOCAB_SIZE = 64

# The chat template keeps only the message contents: the tiny model was trained on bare task prompts.
CHAT_TEMPLATE = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"


def build_vocab() -> dict[str, int]:
    tokens = [EOS_TOKEN, MASK_TOKEN, UNK_TOKEN, *CHARS]
    tokens += [f"<|reserved_{i}|>" for i in range(VOCAB_SIZE - len(tokens))]
    return {tok: i for i, tok in enumerate(tokens)}


def save_tokenizer(out_dir: str | Path) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json; returns the special token ids."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    vocab = build_vocab()
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.decoder = decoders.Fuse()
    specials = [EOS_TOKEN, MASK_TOKEN, UNK_TOKEN]
    tok.add_special_tokens(specials)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "mask_token": MASK_TOKEN,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "mask_token": MASK_TOKEN}, indent=2) + "\n"
    )
    return {"eos": vocab[EOS_TOKEN], "mask": vocab[MASK_TOKEN], "unk": vocab[UNK_TOKEN]}
