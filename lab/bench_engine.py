"""`dilaserve bench-engine`: threshold decoding with approximate KV caches vs LLaDA's fixed schedule.

The same problems and batch size for every configuration. The baseline is the published comparison's:
fixed schedule with as many steps as canvas tokens (one token per step), no cache. Configurations run
interleaved in rounds — every configuration once per round, the order rotated from round to round — and
each speedup is the median over rounds of (tokens/s ÷ the baseline's tokens/s in the same round), so a
shared, noisy machine slows both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import statistics

from lab.evaluate import CACHES, THRESHOLDS, DecodeSpec, add_common_arguments, header, load, problems_of, run_spec, write_json

BASELINE = DecodeSpec("fixed", "none", tokens_per_step=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, n_default=200)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported; ≥ 1)")
    p.add_argument("--caches", default="dual,prefix", help="caches to pair with each τ")


def bench_specs(caches: list[str]) -> list[DecodeSpec]:
    return [BASELINE] + [DecodeSpec("threshold", c, t) for t in THRESHOLDS for c in caches]


def round_order(specs: list[DecodeSpec], round_index: int) -> list[DecodeSpec]:
    """Every configuration once, rotated by the round so none always runs first (or last)."""
    k = round_index % len(specs)
    return specs[k:] + specs[:k]


def run_rounds(model, tokenizer, problems, specs: list[DecodeSpec], args: argparse.Namespace) -> dict[DecodeSpec, list[dict]]:
    runs: dict[DecodeSpec, list[dict]] = {s: [] for s in specs}
    for r in range(args.rounds):
        for spec in round_order(specs, r):
            entry = run_spec(model, tokenizer, problems, spec, args)
            runs[spec].append(entry)
            print(f"round {r + 1}/{args.rounds} {spec.label:40s} tok/s={entry['tokens_per_s']:.0f} "
                  f"acc={entry['accuracy']:.3f}", flush=True)
    return runs


def summarize_runs(runs: dict[DecodeSpec, list[dict]]) -> tuple[dict, list[dict]]:
    """(baseline entry, threshold entries), each with per-round speedups and their median."""
    base_rounds = runs[BASELINE]
    out = []
    for spec, rounds in runs.items():
        ratios = [e["tokens_per_s"] / b["tokens_per_s"] for e, b in zip(rounds, base_rounds)]
        entry = dict(rounds[0])  # accuracy and step counts: greedy decoding gives the same every round
        entry.update(
            tokens_per_s=statistics.median(e["tokens_per_s"] for e in rounds),
            tokens_per_s_rounds=[e["tokens_per_s"] for e in rounds],
            speedup_rounds=ratios,
            speedup_vs_baseline=statistics.median(ratios),
            accuracy_delta=rounds[0]["accuracy"] - base_rounds[0]["accuracy"],
        )
        out.append(entry)
    return out[0], out[1:]


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise SystemExit("--rounds must be ≥ 1")
    model, tokenizer = load(args)
    problems = problems_of(args)
    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    if not caches or set(caches) - set(CACHES):
        raise SystemExit(f"--caches {args.caches!r}: choose from {', '.join(CACHES)}")
    specs = bench_specs(caches)
    run_spec(model, tokenizer, problems[: min(8, len(problems))], BASELINE, args)  # warm-up: one-time allocation
    baseline, results = summarize_runs(run_rounds(model, tokenizer, problems, specs, args))
    for e in results:
        print(f"τ={e['threshold']} cache={e['cache']:6s} acc={e['accuracy']:.3f} ({e['accuracy_delta']:+.3f}) "
              f"content tok/step={e['content_tokens_per_step']:.2f} speedup={e['speedup_vs_baseline']:.2f}x "
              f"(rounds {', '.join(f'{x:.2f}' for x in e['speedup_rounds'])})", flush=True)
    write_json(args.json, {**header(args), "rounds": args.rounds, "baseline": baseline, "results": results})
    print(f"wrote {args.json}")
    return 0
