"""`dilaserve profile`: step latency against tokens executed, for refresh and reuse step shapes.

Writes the cost model's input format (docs/design.md §4.1):
{"device": ..., "device_kind": ..., "model": ..., "model_name": ..., "cache": ...,
 "points": [{"kind": "refresh"|"reuse", "tokens": int, "latency_s": float}, ...]}
by default beside the model, one file per device kind (``models/dilaserve-tiny/profile-cpu.json``): where
the live cost model of a worker on that device kind reads it (shared/profiles.py).

A refresh point runs `b` full sequences of `seq_len` tokens (tokens = b * seq_len); a reuse point runs
`b` dual-cache block steps of `block_length` tokens against cached K/V (tokens = b * block_length).
Each point is the median of `--repeats` timed steps after a warm-up. `--shape llada-8b` builds LLaDA-8B's
shape with random weights (bf16, CUDA only: 16 GB of weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from services.worker.device import torch_device_kind
from services.worker.engine.decoding import candidate_tokens
from services.worker.model import LLaDAConfig, LLaDAModelLM, Segment, default_model_dir, load_model
from shared.profiles import DEFAULT_BLOCK_LENGTH, profile_path


def build_model(args: argparse.Namespace) -> tuple[LLaDAModelLM, str]:
    if args.shape == "llada-8b":
        if not args.device.startswith("cuda"):
            raise SystemExit("--shape llada-8b needs a CUDA device (16 GB of bf16 weights)")
        cfg = LLaDAConfig()  # the published 8B shape; weights random
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(args.device):
            model = LLaDAModelLM(cfg)
        torch.set_default_dtype(torch.float32)
        return model.eval(), "llada-8b-shape (random bf16 weights)"
    return load_model(args.model, device=args.device), str(args.model)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(model: LLaDAModelLM, make_segments, device: str, repeats: int) -> float:
    mask_id = int(model.config.mask_token_id)
    samples = []
    for i in range(repeats + 1):
        segs = make_segments()
        _sync(device)
        t0 = time.perf_counter()
        for lg in model.forward_segments(segs):
            candidate_tokens(lg, mask_id)
        _sync(device)
        if i:  # the first run is the warm-up
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def profile_points(model: LLaDAModelLM, args: argparse.Namespace) -> list[dict]:
    dev, seq_len, block = args.device, args.seq_len, args.block_length
    vocab = int(model.config.vocab_size)
    gen = torch.Generator(device="cpu").manual_seed(0)
    seq = torch.randint(2, vocab, (seq_len,), generator=gen).to(dev)
    positions = torch.arange(seq_len, device=dev)
    start = seq_len - 2 * block
    rows = torch.arange(block, device=dev)
    refresh = Segment("full", seq, positions, rows + start, keep_cache=seq_len)
    model.forward_segments([refresh])
    cache = refresh.new_cache
    points = []
    for b in args.batch_sizes:
        lat = time_step(model, lambda: [Segment("full", seq, positions, rows + start, keep_cache=seq_len) for _ in range(b)], dev, args.repeats)
        points.append({"kind": "refresh", "tokens": b * seq_len, "latency_s": lat})
        caches = [type(cache)(cache.keys.clone(), cache.values.clone()) for _ in range(b)]
        lat = time_step(
            model,
            lambda: [Segment("dual", seq[start : start + block], positions[start : start + block], rows, cache=c) for c in caches],
            dev,
            args.repeats,
        )
        points.append({"kind": "reuse", "tokens": b * block, "latency_s": lat})
        print(f"batch {b:4d}: refresh {b * seq_len:6d} tok {points[-2]['latency_s'] * 1e3:8.2f} ms | reuse {b * block:5d} tok {lat * 1e3:8.2f} ms", flush=True)
    return points


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(default_model_dir()))
    p.add_argument("--shape", choices=["model", "llada-8b"], default="model", help="profile the model dir, or LLaDA-8B's shape with random weights")
    p.add_argument("--json", default="", help="output (default: MODEL/profile-<device kind>.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-len", type=int, default=112, help="prompt + canvas tokens per request (the shipped model: "
                   "prompts of 20-55 tokens and a canvas of 64)")
    p.add_argument("--block-length", type=int, default=0, help="default: the model's config.json block_length")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)


def output_path(args: argparse.Namespace, kind: str) -> Path:
    if args.json:
        return Path(args.json)
    if args.shape != "model":
        raise SystemExit("--shape llada-8b has no model directory: pass --json")
    return profile_path(Path(args.model), kind)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = torch_device_kind(args.device)
    out = output_path(args, kind)
    model, name = build_model(args)
    if args.block_length <= 0:
        args.block_length = int(getattr(model.config, "block_length", 0) or 0) or DEFAULT_BLOCK_LENGTH
    points = profile_points(model, args)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    model_name = Path(args.model).resolve().name if args.shape == "model" else args.shape
    payload = {"device": device, "device_kind": kind, "model": model_name if args.shape == "model" else name,
               "model_name": model_name, "cache": "dual",
               "seq_len": args.seq_len, "block_length": args.block_length, "repeats": args.repeats, "points": points}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
