"""`dilaserve bench-engine`: threshold decoding with approximate KV caches vs LLaDA's fixed schedule.

One run, the same problems and batch size for every configuration. The baseline is the published
comparison's: fixed schedule with as many steps as canvas tokens (one token per step), no cache.
Speedups are ratios of tokens/s measured side by side in this run.
"""

from __future__ import annotations

import argparse

from lab.evaluate import THRESHOLDS, DecodeSpec, add_common_arguments, load, run_spec, write_json
from lab.tasks import make_problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, n_default=300)


def main(args: argparse.Namespace) -> int:
    model, tokenizer = load(args)
    problems = make_problems(args.n, args.seed, "eval")
    baseline_spec = DecodeSpec("fixed", "none", tokens_per_step=1)
    # Warm-up on a few problems so one-time allocation does not land on the baseline.
    run_spec(model, tokenizer, problems[: min(8, len(problems))], baseline_spec, args)
    baseline = run_spec(model, tokenizer, problems, baseline_spec, args)
    print(f"baseline fixed 1 tok/step, no cache: acc={baseline['accuracy']:.3f} tok/s={baseline['tokens_per_s']:.0f}", flush=True)
    results = []
    for tau in THRESHOLDS:
        for cache in ("dual", "prefix"):
            entry = run_spec(model, tokenizer, problems, DecodeSpec("threshold", cache, tau), args)
            entry["speedup_vs_baseline"] = entry["tokens_per_s"] / baseline["tokens_per_s"]
            entry["accuracy_delta"] = entry["accuracy"] - baseline["accuracy"]
            print(
                f"τ={tau} cache={cache:6s} acc={entry['accuracy']:.3f} ({entry['accuracy_delta']:+.3f}) "
                f"tok/step={entry['tokens_per_step']:.2f} speedup={entry['speedup_vs_baseline']:.2f}x",
                flush=True,
            )
            results.append(entry)
    payload = {
        "n": args.n,
        "seed": args.seed,
        "model": str(args.model),
        "max_tokens": args.max_tokens,
        "block_length": args.block_length,
        "batch_size": args.batch_size,
        "device": args.device,
        "baseline": baseline,
        "results": results,
    }
    write_json(args.json, payload)
    print(f"wrote {args.json}")
    return 0
