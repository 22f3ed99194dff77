"""`dilaserve train` on a micro config: runs, exports a loadable model, resumes from its checkpoint."""

from __future__ import annotations

import json

from services.cli import main as cli
from services.worker.model import load_model, load_tokenizer


def _train(tmp_path, steps):
    return cli([
        "train", "--out", str(tmp_path / "model"), "--run-dir", str(tmp_path / "run"), "--steps", str(steps),
        "--batch-size", "4", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--mlp-hidden-size", "32",
        "--checkpoint-every", "2", "--warmup-steps", "1",
    ])


def test_train_exports_and_resumes(tmp_path, capsys):
    assert _train(tmp_path, 2) == 0
    meta = json.loads((tmp_path / "model" / "training.json").read_text())
    assert meta["trained_steps"] == 2
    model = load_model(tmp_path / "model")
    assert load_tokenizer(tmp_path / "model").mask_token_id == model.config.mask_token_id
    assert _train(tmp_path, 4) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((tmp_path / "model" / "training.json").read_text())["trained_steps"] == 4
