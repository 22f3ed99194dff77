"""`dilaserve eval`: accuracy and speed of every decoding configuration on fresh task-suite problems.

All configurations run through the batch engine with continuous batching at the same batch size. Per
configuration: exact-match accuracy (with its standard error), tokens per step over the whole canvas and
over content only (EOS padding excluded: the padding is committed in bulk and says nothing about the
model's parallelism), steps per block, and the refresh/reuse split of the approximate KV cache.
`--quality-out` writes the accuracy-vs-τ curve in the format `dilaserve simulate --quality` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from services.worker.engine import DenoisingEngine, new_state, output_ids, run_to_completion
from services.worker.model import default_model_dir, load_model, load_tokenizer
from lab.tasks import EVAL_TASKS, TASKS, Problem, check_answer, make_problems, parse_task_weights, train_weights_at

THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5)
CACHES = ("none", "prefix", "dual")
CANVAS_BLOCKS = 4  # default canvas: four blocks of the model's block length


@dataclass(frozen=True)
class DecodeSpec:
    decoding: str  # strict | fixed | threshold
    cache: str
    threshold: float | None = None
    tokens_per_step: int = 1  # fixed schedule: canvas tokens per step (steps budget = canvas / this)

    @property
    def label(self) -> str:
        if self.decoding == "threshold":
            return f"threshold τ={self.threshold} cache={self.cache}"
        if self.decoding == "fixed":
            return f"fixed k={self.tokens_per_step} cache={self.cache}"
        return f"strict cache={self.cache}"


def eval_specs(fixed_tokens_per_step: int) -> list[DecodeSpec]:
    specs = [DecodeSpec("strict", "none"), DecodeSpec("fixed", "none", tokens_per_step=fixed_tokens_per_step)]
    specs += [DecodeSpec("threshold", c, t) for t in THRESHOLDS for c in CACHES]
    return specs


def build_states(problems: list[Problem], tokenizer, spec: DecodeSpec, max_tokens: int, block_length: int, mask_id: int):
    steps_per_block = max(1, block_length // spec.tokens_per_step)
    states = []
    for i, p in enumerate(problems):
        ids = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        states.append(
            new_state(
                f"p{i}",
                ids,
                max_tokens,
                mask_id,
                block_length,
                threshold=spec.threshold or 1.0,
                decoding=spec.decoding,
                steps_per_block=steps_per_block if spec.decoding == "fixed" else 0,
            )
        )
    return states


def run_spec(model, tokenizer, problems: list[Problem], spec: DecodeSpec, args: argparse.Namespace) -> dict:
    """Decode every problem with one configuration; returns one `results` entry."""
    from tqdm import tqdm

    engine = DenoisingEngine(model, cache_mode=spec.cache)  # type: ignore[arg-type]
    states = build_states(problems, tokenizer, spec, args.max_tokens, args.block_length, engine.mask_token_id)
    with tqdm(total=len(states), desc=spec.label, leave=False, mininterval=2) as bar:
        t0 = time.perf_counter()
        stats = run_to_completion(engine, states, max_batch=args.batch_size, progress=bar)
        wall_s = time.perf_counter() - t0
    return summarize(problems, tokenizer, engine.eos_token_id, spec, stats, wall_s, args)


def summarize(problems: list[Problem], tokenizer, eos_id: int, spec: DecodeSpec, stats, wall_s: float,
              args: argparse.Namespace) -> dict:
    """One `results` entry from the finished states of a run."""
    correct = content_tokens = total_steps = 0
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        st = stats.finished[f"p{i}"]
        ids = output_ids(st, eos_id)
        ok = check_answer(p, tokenizer.decode(ids))
        correct += ok
        by_task.setdefault(p.task, []).append(int(ok))
        total_steps += st.num_steps
        content_tokens += len(ids)
    n = len(problems)
    accuracy = correct / n
    blocks = n * math.ceil(args.max_tokens / args.block_length)
    request_steps = stats.refresh_steps + stats.reuse_steps
    return {
        "decoding": spec.decoding,
        "threshold": spec.threshold,
        "cache": spec.cache,
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / n),
        "tokens_per_step": n * args.max_tokens / total_steps,
        "content_tokens_per_step": content_tokens / total_steps,
        "steps_per_request": total_steps / n,
        "steps_per_block": total_steps / blocks,
        "tokens_per_s": n * args.max_tokens / wall_s,
        "content_tokens_per_s": content_tokens / wall_s,
        "refresh_steps": stats.refresh_steps,
        "reuse_steps": stats.reuse_steps,
        "reuse_fraction": stats.reuse_steps / request_steps if request_steps else 0.0,
        "wall_s": wall_s,
        "accuracy_by_task": {k: sum(v) / len(v) for k, v in sorted(by_task.items())},
    }


def add_speedups(results: list[dict]) -> None:
    """Throughput of each configuration relative to the fixed-schedule baseline and to strict decoding,
    measured in the same run (a ratio side by side, so a noisy shared machine affects both alike)."""
    fixed = next(r for r in results if r["decoding"] == "fixed")
    strict = next(r for r in results if r["decoding"] == "strict")
    for r in results:
        r["speedup_vs_baseline"] = r["tokens_per_s"] / fixed["tokens_per_s"]
        r["speedup_vs_strict"] = r["tokens_per_s"] / strict["tokens_per_s"]


def load(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    tokenizer = load_tokenizer(args.model)
    if args.block_length is None:  # the block length the model was trained with
        args.block_length = int(getattr(model.config, "block_length", 0) or 8)
    if args.max_tokens is None:
        args.max_tokens = CANVAS_BLOCKS * args.block_length
    if args.max_tokens < 1 or args.block_length < 1:
        raise SystemExit("--max-tokens and --block-length must be positive")
    return model, tokenizer


def problems_of(args: argparse.Namespace) -> list[Problem]:
    return make_problems(args.n, args.seed, "eval", tasks=parse_tasks(args.tasks, args.model))


def trained_tasks(model_dir: str) -> tuple[str, ...]:
    """The tasks the model's last training stage drew (its training.json), else the long tasks."""
    path = Path(model_dir) / "training.json"
    if not path.is_file():
        return EVAL_TASKS
    spec = json.loads(path.read_text()).get("task_weights") or ""
    weights = parse_task_weights(spec) if spec else train_weights_at(0.0)
    return tuple(t for t in TASKS if weights.get(t, 0.0) > 0)


def parse_tasks(spec: str, model_dir: str) -> tuple[str, ...]:
    """``"trained"`` (what the model was trained on), ``"all"``, ``"eval"`` (the long tasks) or a comma
    list of task names."""
    if spec == "trained":
        return trained_tasks(model_dir)
    if spec == "all":
        return TASKS
    if spec == "eval":
        return EVAL_TASKS
    tasks = tuple(t.strip() for t in spec.split(",") if t.strip())
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise SystemExit(f"--tasks {spec!r}: unknown task(s) {', '.join(unknown) or '(none given)'}; "
                         f"tasks are {', '.join(TASKS)}, or 'all' / 'eval'")
    return tasks


def add_common_arguments(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("--model", default=str(default_model_dir()), help="local model directory")
    p.add_argument("--n", type=int, default=n_default, help="number of fresh evaluation problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--batch-size", type=int, default=32, help="requests in flight (continuous batching)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"canvas length (default: {CANVAS_BLOCKS} blocks)")
    p.add_argument("--block-length", type=int, default=None, help="default: the model's config.json block_length")
    p.add_argument("--tasks", default="trained",
                   help=f"comma list of tasks, 'trained' (default: the tasks of the model's training.json), "
                        f"'eval' (the long tasks: {', '.join(EVAL_TASKS)}) or 'all'")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, n_default=1000)
    p.add_argument("--plot", default=None, help="PNG: accuracy against tokens per step")
    p.add_argument("--quality-out", default=None,
                   help="JSON: accuracy vs τ (threshold decoding, --quality-cache) for `dilaserve simulate --quality`")
    p.add_argument("--quality-cache", default="dual", choices=CACHES)
    p.add_argument("--fixed-tokens-per-step", type=int, default=1,
                   help="fixed-schedule baseline: k tokens per step (1 = LLaDA's default, steps = canvas length)")


def write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def plot_tradeoff(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for cache, marker in zip(CACHES, "osD"):
        pts = [r for r in results if r["decoding"] == "threshold" and r["cache"] == cache]
        ax.plot([r["content_tokens_per_step"] for r in pts], [r["accuracy"] for r in pts], marker=marker,
                label=f"threshold, cache={cache}")
        for r in pts:
            ax.annotate(f"{r['threshold']}", (r["content_tokens_per_step"], r["accuracy"]), fontsize=7)
    for r in results:
        if r["decoding"] != "threshold":
            ax.scatter([r["content_tokens_per_step"]], [r["accuracy"]], marker="x", s=60,
                       label=f"{r['decoding']} (cache={r['cache']})")
    ax.set_xlabel("committed content tokens per step (EOS padding excluded)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def quality_curve(results: list[dict], cache: str) -> dict:
    """``{"points": [{"threshold", "accuracy"}]}``: threshold decoding with ``cache``, strict as τ = 1."""
    strict = next(r for r in results if r["decoding"] == "strict")
    points = [{"threshold": r["threshold"], "accuracy": r["accuracy"]}
              for r in results if r["decoding"] == "threshold" and r["cache"] == cache]
    return {"cache": cache, "points": sorted(points + [{"threshold": 1.0, "accuracy": strict["accuracy"]}],
                                             key=lambda p: p["threshold"])}


def describe(label: str, r: dict) -> str:
    return (f"{label:40s} acc={r['accuracy']:.3f}±{r['accuracy_stderr']:.3f} content tok/step="
            f"{r['content_tokens_per_step']:.2f} steps/block={r['steps_per_block']:.2f} "
            f"reuse={r['reuse_fraction']:.2f} tok/s={r['tokens_per_s']:.0f}")


def header(args: argparse.Namespace) -> dict:
    return {"n": args.n, "seed": args.seed, "model": str(args.model), "tasks": list(parse_tasks(args.tasks, args.model)),
            "max_tokens": args.max_tokens, "block_length": args.block_length, "batch_size": args.batch_size,
            "device": args.device}


def main(args: argparse.Namespace) -> int:
    model, tokenizer = load(args)
    problems = problems_of(args)
    results = []
    for spec in eval_specs(args.fixed_tokens_per_step):
        entry = run_spec(model, tokenizer, problems, spec, args)
        print(describe(spec.label, entry), flush=True)
        results.append(entry)
    add_speedups(results)
    write_json(args.json, {**header(args), "results": results})
    if args.quality_out:
        write_json(args.quality_out, quality_curve(results, args.quality_cache))
        print(f"wrote {args.quality_out}")
    if args.plot:
        plot_tradeoff(results, args.plot, f"{Path(args.model).name}: {args.n} problems, seed {args.seed}")
    print(f"wrote {args.json}")
    return 0
