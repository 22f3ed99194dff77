"""`dilaserve experiment`: the policies' SLO attainment measured on the running cluster, beside what the
simulator predicts for the same workload.

For every rate of the sweep and every policy, R times, a fresh local cluster (tooling/local_cluster.py,
as `dilaserve up`) runs that policy; after a warm-up the same workload is replayed open loop (a trace's
arrival pattern rescaled to the rate, task-suite prompts with exact answers, one SLO or a class mix) and
every request's outcome is read from the gateway's answer. Inside each repeat the runs go round-robin
over rates and policies, the policy order rotating from repeat to repeat, so that a noisy shared machine
affects every policy alike. Then the simulator replays the same requests with the cluster's measured
step profile and the control-plane delays and CPU load measured in the live runs. Output: one JSON and
PNGs in --out-dir (docs/benchmarks.md, "Live vs simulated").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from shared.policy.policies import POLICY_NAMES
from shared.profiles import SHIPPED_MODEL_DIR
from tooling.experiment_run import ExperimentSpec, run_experiment
from tooling.experiment_workload import WorkloadSpec, default_tasks, model_shape, slo_classes

DEFAULT_RATES = "10,20"


def _floats(spec: str) -> list[float]:
    return [float(x) for x in spec.split(",") if x.strip()]


def _names(spec: str) -> list[str]:
    return [x.strip() for x in spec.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated policy names")
    p.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated arrival rates (req/s)")
    p.add_argument("--repeats", type=int, default=3, help="runs per (rate, policy), interleaved")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per run")
    p.add_argument("--slo-ms", type=float, default=400.0,
                   help="the SLO of every request, or with --slo-mix the unit its multipliers scale")
    p.add_argument("--slo-mix", default=None, metavar="SPEC",
                   help="SLO classes name:fraction:multiplier[:priority[:min_tau]],… (as `simulate`), "
                        "e.g. interactive:0.3:2:1,batch:0.7:6: each class's SLO = multiplier × --slo-ms")
    p.add_argument("--trace", default="azure_conv",
                   help="azure_conv | azure_code | poisson | gamma | a CSV/JSONL trace `simulate` reads")
    p.add_argument("--rate-basis", choices=("window", "trace"), default="window",
                   help="window: each run's window of the trace holds rate × duration arrivals; trace: the "
                        "whole trace's mean rate is the rate (as `simulate`)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out-dir", default=None, help="default runs/experiment-<timestamp>")
    p.add_argument("--warmup-s", type=float, default=5.0, help="closed-loop warm-up before each replay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=0,
                   help="canvas per request (0: the model's training max_canvas); clipped to the context")
    p.add_argument("--keep-output", action="store_true",
                   help="the trace's output lengths, in whole blocks, up to --max-tokens")
    p.add_argument("--tasks", default="", help="task mix (default lab.tasks.EVAL_TASKS, else every task)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request HTTP timeout (s)")
    p.add_argument("--quality", default=None,
                   help="accuracy-vs-τ JSON or a `dilaserve eval` JSON for the simulator (default: the "
                        "accuracy per τ measured in the live runs)")
    p.add_argument("--resimulate", action="store_true",
                   help="no live runs: simulate again the runs a finished sweep saved in --out-dir (the "
                        "sweep's own options) and rewrite its report")
    p.add_argument("--sim-cores", type=float, default=float(os.cpu_count() or 1),
                   help="cores the simulated workers and services share, for sweeps saved without step samples "
                        "(otherwise each rate's live steps give the shared CPU's effect; default: this machine's)")


def validate(args: argparse.Namespace) -> None:
    unknown = [x for x in _names(args.policies) if x not in POLICY_NAMES]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; choose from {', '.join(POLICY_NAMES)}")
    if not _floats(args.rates) or min(_floats(args.rates)) <= 0:
        raise SystemExit("--rates: want positive rates, e.g. 10,20")
    if args.resimulate and not args.out_dir:
        raise SystemExit("--resimulate: give the finished sweep's folder as --out-dir")
    if args.repeats < 1 or args.duration <= 0 or args.workers < 1 or args.slo_ms <= 0:
        raise SystemExit("--repeats, --duration, --workers and --slo-ms must be positive")


def build_spec(args: argparse.Namespace) -> ExperimentSpec:
    shape = model_shape(SHIPPED_MODEL_DIR)
    workload = WorkloadSpec(
        trace=args.trace, duration_s=args.duration, seed=args.seed, slo_ms=args.slo_ms,
        classes=slo_classes(args.slo_mix), max_tokens=args.max_tokens or shape.canvas, block_len=shape.block_len,
        max_positions=shape.max_positions, tasks=tuple(_names(args.tasks)) or default_tasks(),
        keep_output=args.keep_output, rate_basis=args.rate_basis)
    return ExperimentSpec(policies=_names(args.policies), rates=_floats(args.rates), repeats=args.repeats,
                          workload=workload, workers=args.workers, warmup_s=args.warmup_s, timeout_s=args.timeout,
                          quality=args.quality, sim_cores=args.sim_cores, model_dir=SHIPPED_MODEL_DIR)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    validate(args)
    from services.gateway.tokenizer import ModelTokenizer  # the gateway's own token count

    spec = build_spec(args)
    encode = ModelTokenizer(spec.model_dir).encode
    out = Path(args.out_dir or Path("runs") / time.strftime("experiment-%Y%m%d-%H%M%S")).resolve()
    if not args.resimulate:
        report = run_experiment(spec, out, _log, encode)
    else:
        try:
            report = run_experiment(spec, out, _log, encode, resimulate=True)
        except (ValueError, FileNotFoundError) as e:  # a folder that is not this sweep's
            raise SystemExit(f"experiment --resimulate: {e}") from None
    print(json.dumps(report["paths"], indent=2))
    return 0
