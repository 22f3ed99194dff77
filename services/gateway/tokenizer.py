"""The served model's tokenizer (AutoTokenizer, chat template) and its limits from config.json."""

from __future__ import annotations

import json
from pathlib import Path



class ModelTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        self.max_positions = int(cfg.get("max_sequence_length") or cfg.get("max_position_embeddings"))
        self.eos_token_id = int(cfg["eos_token_id"])
        self.mask_token_id = int(cfg["mask_token_id"])
        self.vocab_size = int(cfg["vocab_size"])
        self.tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

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
