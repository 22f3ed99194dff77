"""`dilaserve bench-step`: one serving step, packed attention (the serving path) against a per-segment loop.

The baseline, ``loop_run_segments``, is the serving forward with attention run segment by segment in
every layer (one SDPA call per segment and layer, caches as separate tensors); the new side is the
model's ``forward_segments`` (services/worker/model/segments.py, K/V in the model's arena). Both run the
same mixed batch: half refresh segments (full sequences of half to three quarters of the model's
positions, keeping a cache) and half reuse segments (one block of the model's block length against a
cache of such a sequence, dual or prefix). Old and new alternate step by
step (the order flipped every pair) and the figure is the median of per-pair ratios new ÷ old, so load
from other processes on the machine falls on both sides of a ratio alike.

Prints one JSON object: per-pair ratios of wall time and of the thread's CPU time, their median and
spread, the median step times, the attention calls per step at each profiled batch size (torch
profiler), host read-backs during the new step, and the largest logit difference between the two.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from services.worker.model import KVCache, LLaDAModelLM, Segment, default_model_dir, load_model
from services.worker.model.segments import SegmentLayer, rotary_tables

ATTENTION_OPS = ("aten::scaled_dot_product_attention",)
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")


# -- the baseline: attention in a loop over segments -------------------------------------------------


def loop_run_segments(
    segments: Sequence[Segment],
    embed: Callable[[torch.Tensor], torch.Tensor],
    layers: Sequence[SegmentLayer],
    head: Callable[[torch.Tensor], torch.Tensor],
    head_dim: int,
    rope_theta: float,
) -> list[torch.Tensor]:
    """The step with linear layers packed and attention per segment; caches are hand-built ``KVCache``s."""
    ids = torch.cat([s.token_ids for s in segments])
    positions = torch.cat([s.positions for s in segments])
    cos, sin = rotary_tables(positions, head_dim, rope_theta)
    offsets = [0]
    for s in segments:
        offsets.append(offsets[-1] + int(s.token_ids.numel()))
    h = embed(ids)
    new_k: list[list[torch.Tensor]] = [[] for _ in segments]
    new_v: list[list[torch.Tensor]] = [[] for _ in segments]
    for li, layer in enumerate(layers):
        q, k, v = layer.qkv(h, cos, sin)  # [N, H, D]
        outs = []
        for si, seg in enumerate(segments):
            lo, hi = offsets[si], offsets[si + 1]
            qs, ks, vs = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
            keys, vals = _segment_kv(seg, li, ks, vs)
            if seg.kind == "full" and seg.keep_cache:
                new_k[si].append(ks[:, : seg.keep_cache])
                new_v[si].append(vs[:, : seg.keep_cache])
            gqa = keys.shape[0] != qs.shape[0]
            o = F.scaled_dot_product_attention(qs[None], keys[None], vals[None], enable_gqa=gqa)[0]
            outs.append(o.transpose(0, 1).reshape(hi - lo, -1))
        h = h + layer.project_out(torch.cat(outs))
        h = h + layer.feed_forward(h)
    for si, seg in enumerate(segments):
        if seg.kind == "full" and seg.keep_cache:
            seg.new_cache = KVCache(torch.stack(new_k[si]), torch.stack(new_v[si]), seg.token_ids[: seg.keep_cache])
    rows = torch.cat([s.logit_rows + offsets[i] for i, s in enumerate(segments)])
    logits = head(h[rows]).float()
    return list(torch.split(logits, [int(s.logit_rows.numel()) for s in segments]))


def _segment_kv(seg: Segment, layer: int, ks: torch.Tensor, vs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if seg.kind == "full":
        return ks, vs
    assert seg.cache is not None, f"{seg.kind} segment needs a cache"
    if seg.kind == "dual":
        seg.cache.keys[layer].index_copy_(1, seg.positions, ks)
        seg.cache.values[layer].index_copy_(1, seg.positions, vs)
        return seg.cache.keys[layer], seg.cache.values[layer]
    return torch.cat([seg.cache.keys[layer], ks], dim=1), torch.cat([seg.cache.values[layer], vs], dim=1)


def loop_forward(model: LLaDAModelLM, segments: list[Segment]) -> list[torch.Tensor]:
    t, c = model.model.transformer, model.config
    with torch.inference_mode():
        return loop_run_segments(segments, t.wte, model.blocks, model._head, c.head_dim, c.rope_theta)


# -- the workload ---------------------------------------------------------------------------------


class Workload:
    """A mixed batch rebuilt for every step: even indices refresh, odd ones reuse their own cache.

    The old side's caches are separate tensors, the new side's live in the model's arena; both come
    from the same refresh of the same tokens.
    """

    def __init__(self, model: LLaDAModelLM, batch: int, reuse: str, seed: int) -> None:
        rng = random.Random(seed)
        c = model.config
        vocab, positions = int(c.vocab_size), int(c.max_sequence_length)
        self.reuse, self.block = reuse, int(c.block_length)
        # prompt + canvas between half and three quarters of the model's positions (84-120 of 160 for
        # the shipped model: its prompts of 20-55 tokens and a canvas of 64)
        lengths = [rng.randint(positions // 2, positions * 3 // 4) for _ in range(batch)]
        self.seqs = [torch.tensor([rng.randrange(2, vocab) for _ in range(n)]) for n in lengths]
        self.starts = [len(s) - 2 * self.block for s in self.seqs]  # the block before the last one
        self.old_caches: dict[int, KVCache] = {}
        self.new_caches: dict[int, KVCache] = {}
        reusing = range(1, batch, 2)
        refresh_old = [self._refresh(i) for i in reusing]
        loop_forward(model, refresh_old)
        for i, so in zip(reusing, refresh_old):
            self.old_caches[i] = KVCache(so.new_cache.keys.contiguous(), so.new_cache.values.contiguous(), so.new_cache.token_ids)
        # every request refreshed once in order, the refreshing ones' caches dropped: their slots lie between
        # the reusing ones', as in serving, where requests start blocks at different steps
        refresh_new = [self._refresh(i) for i in range(batch)]
        model.forward_segments(refresh_new)
        for i in reusing:
            self.new_caches[i] = refresh_new[i].new_cache

    def _keep(self, i: int) -> int:
        return len(self.seqs[i]) if self.reuse == "dual" else self.starts[i]

    def _refresh(self, i: int) -> Segment:
        s, start = self.seqs[i], self.starts[i]
        return Segment("full", s, torch.arange(len(s)), torch.arange(start, start + self.block), keep_cache=self._keep(i))

    def _reuse(self, i: int, cache: KVCache) -> Segment:
        s, start, b = self.seqs[i], self.starts[i], self.block
        end = start + b if self.reuse == "dual" else len(s)
        return Segment(self.reuse, s[start:end], torch.arange(start, end), torch.arange(b), cache=cache)

    def segments(self, side: str) -> list[Segment]:
        caches = self.old_caches if side == "old" else self.new_caches
        return [self._reuse(i, caches[i]) if i in caches else self._refresh(i) for i in range(len(self.seqs))]


def run_side(model: LLaDAModelLM, work: Workload, side: str) -> list[torch.Tensor]:
    segs = work.segments(side)
    return loop_forward(model, segs) if side == "old" else model.forward_segments(segs)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def op_counts(model: LLaDAModelLM, work: Workload, side: str) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_side(model, work, side)
    names = [e.name for e in prof.events()]
    return {"attention_calls": sum(n in ATTENTION_OPS for n in names), "host_syncs": sum(n in SYNC_OPS for n in names)}


def summary(values: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": qs[0], "p75": qs[2], "min": min(values), "max": max(values)}


def measure_pairs(model: LLaDAModelLM, work: Workload, pairs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run_side(model, work, "old")
        run_side(model, work, "new")
    wall = {"old": [], "new": []}
    cpu = {"old": [], "new": []}
    for p in range(pairs):
        order = ("old", "new") if p % 2 == 0 else ("new", "old")
        for side in order:
            w, c = timed(lambda: run_side(model, work, side))
            wall[side].append(w)
            cpu[side].append(c)
        print(
            f"pair {p + 1}/{pairs}: old {wall['old'][-1] * 1e3:.1f} ms (cpu {cpu['old'][-1] * 1e3:.1f}) "
            f"new {wall['new'][-1] * 1e3:.1f} ms (cpu {cpu['new'][-1] * 1e3:.1f}) "
            f"ratio {wall['new'][-1] / wall['old'][-1]:.3f}",
            file=sys.stderr, flush=True,
        )
    wall_ratios = [n / o for n, o in zip(wall["new"], wall["old"])]
    cpu_ratios = [n / o for n, o in zip(cpu["new"], cpu["old"])]
    return {
        "pairs": pairs,
        "wall_ratio": summary(wall_ratios),
        "cpu_ratio": summary(cpu_ratios),
        "wall_ratios": [round(r, 4) for r in wall_ratios],
        "cpu_ratios": [round(r, 4) for r in cpu_ratios],
        "old_wall_ms": statistics.median(wall["old"]) * 1e3,
        "new_wall_ms": statistics.median(wall["new"]) * 1e3,
        "old_cpu_ms": statistics.median(cpu["old"]) * 1e3,
        "new_cpu_ms": statistics.median(cpu["new"]) * 1e3,
    }


def max_logit_diff(model: LLaDAModelLM, work: Workload) -> float:
    old, new = run_side(model, work, "old"), run_side(model, work, "new")
    return max(float((a - b).abs().max()) for a, b in zip(old, new))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(default_model_dir()))
    p.add_argument("--batch", type=int, default=64, help="segments in the timed step")
    p.add_argument("--pairs", type=int, default=15, help="interleaved (old, new) pairs (>= 1)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reuse", choices=["dual", "prefix"], default="dual", help="the reuse segments' kind")
    p.add_argument("--count-batches", type=lambda s: [int(x) for x in s.split(",")], default=[3, 16, 64],
                   help="batch sizes whose attention calls per step are counted")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    if args.pairs < 1 or args.batch < 2:
        raise SystemExit("--pairs must be >= 1 and --batch >= 2 (one refresh and one reuse segment)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if not isinstance(model, LLaDAModelLM):
        raise SystemExit("bench-step runs LLaDA-format models (the baseline loop calls LLaDA's blocks)")
    counts = {}
    for b in args.count_batches:
        w = Workload(model, b, args.reuse, args.seed)
        counts[str(b)] = {"old": op_counts(model, w, "old"), "new": op_counts(model, w, "new")}
    work = Workload(model, args.batch, args.reuse, args.seed)
    result = {
        "model": args.model, "batch": args.batch, "reuse": args.reuse, "threads": torch.get_num_threads(),
        "max_abs_logit_diff": max_logit_diff(model, work),
        "per_step_counts": counts,
    }
    result.update(measure_pairs(model, work, args.pairs, args.warmup))
    print(json.dumps(result, indent=2))
    return 0
