"""`dilaserve train` on a micro config: runs, exports a loadable model, resumes from its checkpoint."""

from __future__ import annotations

import json

from services.common.cli import main as cli
from services.worker.model import load_model, load_tokenizer


def _train(tmp_path, steps, *extra, out="model", run="run"):
    return cli([
        "train", "--out", str(tmp_path / out), "--run-dir", str(tmp_path / run), "--steps", str(steps),
        "--batch-size", "4", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--mlp-hidden-size", "32",
        "--checkpoint-every", "2", "--warmup-steps", "1", *extra,
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


def test_micro_batches_give_the_full_batch_gradient():
    """Length-sorted micro-batches (each padded to its own longest row) must not change the gradient."""
    import torch

    from services.worker.model import LLaDAModelLM, register_llada
    from lab.train import CharCodec, TrainConfig, batch_loss, make_batch, model_config

    register_llada()
    cfg = TrainConfig(batch_size=12, d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=32)
    codec = CharCodec()
    torch.manual_seed(0)
    model = LLaDAModelLM(model_config(cfg, codec))
    batch = make_batch(cfg, codec, step=3)
    grads, losses = [], []
    for micro in (1, 3):
        model.zero_grad()
        losses.append(batch_loss(model, batch, micro, bf16=False))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_bad_precision_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="--precision must be bf16 or fp32"):
        cli(["train", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), "--steps", "1",
             "--precision", "fp16"])


def test_fine_tuning_starts_from_an_exported_model(tmp_path, capsys):
    from safetensors.torch import load_file

    assert _train(tmp_path, 2) == 0
    before = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert _train(tmp_path, 1, "--init-from", str(tmp_path / "model"), "--task-weights", "rev=1", "--lr", "0",
                  out="tuned", run="run-ft") == 0
    assert "starting from the weights of" in capsys.readouterr().out
    after = load_file(str(tmp_path / "tuned" / "model.safetensors"))  # lr 0: the weights are carried over
    assert all((before[k] == after[k]).all() for k in before)
    meta = json.loads((tmp_path / "tuned" / "training.json").read_text())
    assert meta["init_from"] == str(tmp_path / "model") and meta["task_weights"] == "rev=1"


def test_fine_tuning_errors_are_clear(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no model.safetensors there"):
        _train(tmp_path, 1, "--init-from", str(tmp_path / "nothing"))
    assert _train(tmp_path, 1, out="small") == 0
    with pytest.raises(ValueError, match="does not match the configured model"):
        _train(tmp_path, 1, "--init-from", str(tmp_path / "small"), "--d-model", "64", run="run-big")
    with pytest.raises(ValueError, match="unknown task 'div'"):
        _train(tmp_path, 1, "--task-weights", "div=1", run="run-bad")
