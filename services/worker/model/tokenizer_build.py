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


# -- a character tokenizer in Dream's layout (for tiny Dream-format checkpoints) ---------------------
# Dream (a Qwen2 tokenizer) puts its special tokens after the ordinary vocabulary, in this order:
# <|endoftext|> (eos and pad), <|im_start|>, <|im_end|>, ..., <|beginoftext|> (bos), <|mask|> (last).
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
DREAM_CHARS = CHARS + "\n_|'\"#"
# Dream-v0-Instruct's template: Qwen's ChatML with the default system prompt.
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_dream_vocab() -> dict[str, int]:
    tokens = ["<|unk|>", *DREAM_CHARS, *DREAM_SPECIALS]
    return {tok: i for i, tok in enumerate(tokens)}


def save_dream_tokenizer(out_dir: str | Path) -> dict[str, int]:
    """Write a Dream-layout char tokenizer (tokenizer.json, tokenizer_config.json with Dream's class name
    and ``auto_map``, so loading must not need its code); returns the special token ids."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    vocab = build_dream_vocab()
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<|unk|>", *DREAM_SPECIALS])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials = {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "mask_token": "<|mask|>", "unk_token": "<|unk|>"}
    config = {
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        **specials,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": DREAM_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return {"eos": vocab["<|endoftext|>"], "bos": vocab["<|beginoftext|>"], "mask": vocab["<|mask|>"],
            "im_start": vocab["<|im_start|>"], "im_end": vocab["<|im_end|>"], "size": len(vocab)}
