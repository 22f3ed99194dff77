"""`dilaserve train`: trains the shipped tiny masked-diffusion LM on the task suite, on CPU.

Objective: LLaDA-style SFT. The prompt is never masked; canvas positions (answer + EOS padding) are
masked and the loss is cross-entropy on masked positions. Half of each batch uses uniform random
masking (ratio t ~ U(0, 1)); the other half uses the states block decoding actually visits: blocks
before a random block fully visible, the block itself masked with ratio t, later blocks fully masked.

Speed on CPU (the budget is 90 minutes on 2 cores): each batch is sorted by length and run as a few
micro-batches, each padded only to its own longest row (the same gradient). Measured side by side on the
2-core VM: 0.63–0.67 s/step with 3 micro-batches against 0.87–0.89 s for one full-width batch;
`--precision bf16` (autocast, fp32 master weights) gives 0.55 s.

Fine-tuning: `--init-from DIR` starts from an exported model's weights with a fresh optimizer and
schedule; with `--task-weights` it is how the shipped model's stages 2 and 3 were trained (docs/engine.md).

Seeded and resumable: the data of step s is a pure function of (seed, s), and a checkpoint holds the
model, the optimizer and the step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lab.tasks import parse_task_weights, sample_problem, train_weights_at
from services.worker.model import LLaDAConfig, LLaDAModelLM, register_llada
from services.worker.model.tokenizer_build import VOCAB_SIZE, build_vocab, save_tokenizer


@dataclass
class TrainConfig:
    out: str = "models/dilaserve-tiny"
    run_dir: str = "runs/train"
    steps: int = 5000
    batch_size: int = 96
    lr: float = 1.5e-3
    warmup_steps: int = 200
    seed: int = 0
    d_model: int = 192
    n_layers: int = 6
    n_heads: int = 6
    mlp_hidden_size: int = 512
    max_sequence_length: int = 128
    block_length: int = 8
    min_canvas: int = 8
    max_canvas: int = 40
    micro_batches: int = 3
    precision: str = "fp32"  # or "bf16" autocast (faster; the one bf16 run did not learn add/sub, see docs)
    task_weights: str = ""  # e.g. "add=1,sub=1,rev=3" (others 0); "" = lab.tasks.TRAIN_CURRICULUM
    init_from: str = ""  # start from this exported model's weights (fresh optimizer): a fine-tuning stage
    checkpoint_every: int = 250
    threads: int = 0
    max_minutes: float = 0.0


class CharCodec:
    """Direct char -> id mapping identical to the saved fast tokenizer (checked by a test)."""

    def __init__(self) -> None:
        vocab = build_vocab()
        self.ids = {ch: i for ch, i in vocab.items() if len(ch) == 1}
        self.eos = vocab["<|endoftext|>"]
        self.mask = vocab["<|mdm_mask|>"]

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text.lower()]


def model_config(cfg: TrainConfig, codec: CharCodec) -> LLaDAConfig:
    return LLaDAConfig(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        mlp_hidden_size=cfg.mlp_hidden_size,
        vocab_size=VOCAB_SIZE,
        embedding_size=VOCAB_SIZE,
        max_sequence_length=cfg.max_sequence_length,
        rope_theta=10000.0,
        mask_token_id=codec.mask,
        eos_token_id=codec.eos,
        pad_token_id=codec.eos,
        architectures=["LLaDAModelLM"],
        block_length=cfg.block_length,
    )


def make_batch(cfg: TrainConfig, codec: CharCodec, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (noisy ids, target ids, loss mask, attention mask), all [B, T]."""
    rng = random.Random(f"train:{cfg.seed}:{step}")
    weights = parse_task_weights(cfg.task_weights) if cfg.task_weights else train_weights_at(step / cfg.steps)
    rows = []
    for i in range(cfg.batch_size):
        p = sample_problem(rng, "train", weights=weights)
        ans = codec.encode(p.answer)
        if len(ans) + 1 > cfg.max_canvas:
            raise ValueError(f"a {p.task} answer has {len(ans)} tokens: --max-canvas {cfg.max_canvas} leaves no room "
                             f"for it and its EOS (long tasks need 64)")
        canvas_len = rng.randint(max(cfg.min_canvas, len(ans) + 1), cfg.max_canvas)
        canvas = ans + [codec.eos] * (canvas_len - len(ans))
        prompt = codec.encode(p.prompt)
        masked = _mask_positions(rng, canvas_len, cfg.block_length, block_structured=(i % 2 == 1))
        rows.append((prompt, canvas, masked))
    width = max(len(p) + len(c) for p, c, _ in rows)
    noisy = torch.full((cfg.batch_size, width), codec.eos, dtype=torch.long)
    target = torch.full_like(noisy, codec.eos)
    loss_mask = torch.zeros_like(noisy, dtype=torch.bool)
    attn = torch.zeros_like(noisy, dtype=torch.long)
    for b, (prompt, canvas, masked) in enumerate(rows):
        seq = prompt + canvas
        target[b, : len(seq)] = torch.tensor(seq)
        noisy[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
        for j in masked:
            noisy[b, len(prompt) + j] = codec.mask
            loss_mask[b, len(prompt) + j] = True
    return noisy, target, loss_mask, attn


def _mask_positions(rng: random.Random, canvas_len: int, block: int, block_structured: bool) -> list[int]:
    t = rng.uniform(0.05, 1.0)
    if not block_structured:
        chosen = [j for j in range(canvas_len) if rng.random() < t]
        return chosen or [rng.randrange(canvas_len)]
    n_blocks = math.ceil(canvas_len / block)
    b = rng.randrange(n_blocks)
    start, end = b * block, min((b + 1) * block, canvas_len)
    inside = [j for j in range(start, end) if rng.random() < t] or [rng.randrange(start, end)]
    return inside + list(range(end, canvas_len))


def batch_loss(model: LLaDAModelLM, batch: tuple[torch.Tensor, ...], micro_batches: int, bf16: bool) -> float:
    """Forward + backward in length-sorted micro-batches; gradients equal one full-batch mean loss."""
    noisy, target, loss_mask, attn = batch
    lengths = attn.sum(1)
    total = loss_mask.sum()
    loss_sum = 0.0
    for rows in torch.argsort(lengths).chunk(micro_batches):
        width = int(lengths[rows].max())
        mask = loss_mask[rows, :width]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(noisy[rows, :width], attention_mask=attn[rows, :width]).logits
        loss = F.cross_entropy(logits[mask].float(), target[rows, :width][mask], reduction="sum") / total
        loss.backward()
        loss_sum += loss.item()
    return loss_sum


def load_weights(model: LLaDAModelLM, model_dir: Path) -> None:
    """Weights of an exported model (``--init-from``); its shapes must match the configured model."""
    from safetensors.torch import load_file

    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"--init-from {model_dir}: no model.safetensors there")
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise ValueError(f"--init-from {model_dir} does not match the configured model "
                         f"(--d-model/--n-layers/...): {str(exc).splitlines()[0]}") from None


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def export(model: LLaDAModelLM, out: str | Path, train_cfg: TrainConfig, step: int) -> None:
    """Write safetensors + config.json + tokenizer files (atomically replace the directory)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tmp)
    (tmp / "training.json").write_text(json.dumps({**asdict(train_cfg), "trained_steps": step}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def train(cfg: TrainConfig) -> Path:
    from tqdm import tqdm

    if cfg.precision not in ("bf16", "fp32"):
        raise ValueError(f"--precision must be bf16 or fp32, not {cfg.precision!r}")
    if cfg.task_weights:
        parse_task_weights(cfg.task_weights)  # a bad spec fails here, not at the first batch
    if not 1 <= cfg.micro_batches <= cfg.batch_size:
        raise ValueError(f"--micro-batches must be between 1 and the batch size {cfg.batch_size}")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    register_llada()
    codec = CharCodec()
    torch.manual_seed(cfg.seed)
    model = LLaDAModelLM(model_config(cfg, codec))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    start = 0
    if cfg.init_from and not ckpt_path.exists():
        load_weights(model, Path(cfg.init_from))
        print(f"starting from the weights of {cfg.init_from}", flush=True)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        print(f"resuming from {ckpt_path} at step {start}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; training {cfg.steps} steps, batch {cfg.batch_size}", flush=True)
    model.train()
    t0 = time.monotonic()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", mininterval=5)
    ema = None
    step = start
    for step in bar:
        batch = make_batch(cfg, codec, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch, cfg.micro_batches, bf16=cfg.precision == "bf16")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr_at(cfg, step):.2e}")
        done = step + 1
        out_of_time = cfg.max_minutes and (time.monotonic() - t0) > cfg.max_minutes * 60
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done}, ckpt_path)
            export(model, cfg.out, cfg, done)
        if out_of_time:
            print(f"stopping at step {done}: --max-minutes reached (resume to continue)", flush=True)
            break
    print(f"model written to {cfg.out}", flush=True)
    return Path(cfg.out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)


def main(args: argparse.Namespace) -> int:
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    train(cfg)
    return 0
