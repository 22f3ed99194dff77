"""The served model's tokenizer (AutoTokenizer, chat template) and its limits from config.json."""

from __future__ import annotations

import json
from pathlib import Path


def load_local_tokenizer(model_dir: str | Path):
    """A tokenizer from a local directory, never running code shipped with the checkpoint.

    ``trust_remote_code=False`` is explicit: left unset, transformers asks on stdin (for up to 15 s)
    whenever a config carries ``auto_map``. A tokenizer whose class exists only as shipped code
    (Dream's ``DreamTokenizer``) is read from its ``tokenizer.json`` as a fast tokenizer instead.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(model_dir)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc) or not (path / "tokenizer.json").is_file():
            raise
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


class ModelTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        self.max_positions = int(cfg.get("max_sequence_length") or cfg.get("max_position_embeddings"))
        self.eos_token_id = int(cfg["eos_token_id"])
        self.mask_token_id = int(cfg["mask_token_id"])
        self.vocab_size = int(cfg["vocab_size"])
        self.tok = load_local_tokenizer(model_dir)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def text_until_eos(self, ids: list[int]) -> tuple[str, bool]:
        """Decoded text up to the first EOS/mask, and whether an EOS (end of text) was seen."""
        out = []
        for t in ids:
            if t == self.eos_token_id:
                return self.decode(out), True
            if t == self.mask_token_id:
                break
            out.append(t)
        return self.decode(out), False
