"""`dilaserve plan-bench`: solve time and MIP gap of the planner MILP on synthetic workloads.

For each GPU count, ``--repeats`` windows of synthetic arrivals (lengths and SLOs drawn around the
docs/design.md §5 setup, load swept from ``--load`` low to high) are binned into ``--classes`` classes and
planned in sequence, each against the previous plan as the current layout (so hysteresis and placement
run too, as in the live loop). ``solve_s`` is the CPU time of the ``solve_plan`` call (HiGHS runs one
thread, so on an idle core this is its wall time); ``wall_s`` is recorded beside it because a busy
machine inflates wall time arbitrarily.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

from shared.policy.planner.columns import class_columns, latency_model
from shared.policy.planner.milp import default_configs, solve_plan
from shared.policy.planner.types import (
    ArrivalSample, ConfigSpec, Layout, PlannerError, PlannerInput, WorkloadClass,
)
from shared.policy.planner.workload import workload_classes

BASE_S_PER_256 = 1.9  # GSM8K base latency for 256 output tokens (docs/design.md §5)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", default="16,64,256", help="comma-separated cluster sizes")
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--arrivals", type=int, default=3000, help="arrivals per window (before rate scaling)")
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--load", default="0.3,1.3", help="low,high offered load (GPU-seconds per GPU at τ=0.9)")
    p.add_argument("--caches", default="dual,prefix")
    p.add_argument("--tps", default="1,2,4")
    p.add_argument("--time-limit-s", type=float, default=60.0)
    p.add_argument("--mip-gap", type=float, default=0.01)
    p.add_argument("--hysteresis", type=float, default=0.10)
    p.add_argument("--allow-shrink", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the results here")


def synthetic_arrivals(rng: random.Random, n: int, window_s: float) -> list[ArrivalSample]:
    """Prompt lengths log-normal (median ~400), outputs 64–512, SLO 2–5× a length-scaled base."""
    out = []
    for i in range(n):
        prompt = int(min(4096, max(16, rng.lognormvariate(math.log(400), 0.9))))
        output = rng.choice((64, 128, 256, 256, 256, 512))
        slo = rng.choice((2, 3, 4, 5)) * BASE_S_PER_256 * output / 256 * (1 + prompt / 4096)
        out.append(ArrivalSample(arrival_s=window_s * i / n, prompt_len=prompt, output_len=output, slo_s=slo))
    return out


def gpu_seconds_per_request(cls: WorkloadClass, inp: PlannerInput) -> float:
    """Cheapest GPU-seconds one request of the class needs at the highest threshold (0 = unservable)."""
    top = max(inp.thresholds)
    cols = class_columns(0, cls, inp, latency_model(inp.configs))
    costs = [c.w * inp.configs[c.g].tp for c in cols if c.c == top] or [c.w * inp.configs[c.g].tp for c in cols]
    return min(costs, default=0.0)


def scale_to_load(classes: list[WorkloadClass], base: PlannerInput, gpus: int, load: float) -> list[WorkloadClass]:
    """Rescale rates so the classes need ``load · gpus`` GPU-seconds per second at the top threshold."""
    need = sum(c.rate * gpu_seconds_per_request(c, base) for c in classes)
    f = load * gpus / need if need > 0 else 1.0
    return [WorkloadClass(c.class_id, c.prompt_len, c.output_len, c.slo_s, c.rate * f, c.block_len, c.count)
            for c in classes]


def initial_layout(configs: list[ConfigSpec], gpus_per_node: list[int]) -> Layout:
    """Every GPU running the smallest configuration: the layout a fresh cluster would start with."""
    small = min(configs, key=lambda c: (c.tp, c.name))
    return Layout(tuple({small.name: g // small.tp} for g in gpus_per_node))


def bench_size(args: argparse.Namespace, gpus: int, configs: list[ConfigSpec]) -> dict:
    nodes = [args.gpus_per_node] * (gpus // args.gpus_per_node)
    if gpus % args.gpus_per_node:
        nodes.append(gpus % args.gpus_per_node)
    lo, hi = (float(x) for x in args.load.split(","))
    current: Layout | None = initial_layout(configs, nodes)
    cpu, wall, highs, gaps, rows = [], [], [], [], []
    for r in range(args.repeats):
        rng = random.Random(args.seed * 1_000_003 + gpus * 1009 + r)
        classes = workload_classes(synthetic_arrivals(rng, args.arrivals, args.window_s), args.window_s,
                                   args.classes)
        base = PlannerInput(classes, configs, gpus_per_node=nodes)
        load = lo + (hi - lo) * (r / max(1, args.repeats - 1))
        classes = scale_to_load(classes, base, gpus, load)
        inp = PlannerInput(classes, configs, gpus_per_node=nodes, current=current, allow_shrink=args.allow_shrink,
                           time_limit_s=args.time_limit_s, mip_gap=args.mip_gap, hysteresis=args.hysteresis)
        c0, w0 = time.process_time(), time.perf_counter()
        plan = solve_plan(inp)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        highs.append(plan.solve_s)
        gaps.append(plan.gap)
        rows.append({"load": round(load, 3), "classes": len(classes), "status": plan.status, "changed": plan.changed,
                     "instances": plan.instances, "quality": round(plan.objectives["quality"], 4),
                     "unserved_frac": round(plan.objectives["unserved_frac"], 4),
                     "slack": round(plan.objectives["slack"], 4), "kept_instances": plan.kept_instances,
                     "solve_s": round(cpu[-1], 4), "wall_s": round(wall[-1], 3), "gap": plan.gap})
        current = Layout(tuple(plan.nodes))
        print(f"  gpus={gpus} r={r} load={load:.2f} {plan.status} changed={plan.changed} cpu={cpu[-1]:.3f}s "
              f"wall={wall[-1]:.2f}s gap={plan.gap:.4f} q={plan.objectives['quality']:.3f} "
              f"unserved={plan.objectives['unserved_frac']:.3f} {plan.instances}", file=sys.stderr)
    return {"gpus": gpus, "classes": args.classes, "repeats": args.repeats,
            "solve_s_p50": statistics.median(cpu), "solve_s_max": max(cpu), "gap": max(gaps),
            "wall_s_p50": statistics.median(wall), "wall_s_max": max(wall),
            "highs_wall_s_p50": statistics.median(highs), "detail": rows}


def main(args: argparse.Namespace) -> int:
    try:
        configs = default_configs(tps=tuple(int(x) for x in args.tps.split(",")),
                                  caches=tuple(args.caches.split(",")))
    except PlannerError as exc:
        print(f"plan-bench: {exc}", file=sys.stderr)
        return 2
    runs = []
    for gpus in (int(x) for x in args.gpus.split(",")):
        run = bench_size(args, gpus, configs)
        runs.append(run)
        print(f"gpus={run['gpus']} classes={run['classes']} solve_s_p50={run['solve_s_p50']:.4f} "
              f"solve_s_max={run['solve_s_max']:.4f} gap={run['gap']:.4g} wall_s_p50={run['wall_s_p50']:.3f}")
    out = {"runs": runs, "timing": "solve_s = CPU seconds of solve_plan (1 HiGHS thread); wall_s beside it",
           "settings": {k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0
