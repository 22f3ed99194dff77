"""``dilaserve simulate``: replay a trace (or a generated workload) through every policy side by side."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.policy.policies import POLICY_NAMES
from shared.profiles import read_quality_model
from shared.sim.effects import ClusterEffects
from shared.sim.workload import LengthScaling, parse_slo_mix


def _floats(spec: str) -> tuple[float, ...]:
    return tuple(float(x) for x in spec.split(",") if x.strip())


def _sweep(spec: str) -> list[float]:
    a, b, n = spec.split(":")
    lo, hi, k = float(a), float(b), int(n)
    return [lo] if k <= 1 else [lo + (hi - lo) * i / (k - 1) for i in range(k)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default="azure_conv",
                   help="azure_conv | azure_code | poisson | gamma | path to a CSV/JSONL with timestamp/input/output")
    p.add_argument("--gpus", type=int, default=16)
    p.add_argument("--layout", default="tp1", help="tp1 | tp2 | tp4 | mixed | explicit tp1:8,tp2:2,tp4:1")
    p.add_argument("--config", default="llada8b-gh200", help="llada8b-gh200 or a `dilaserve profile` JSON")
    p.add_argument("--policies", default=",".join(POLICY_NAMES))
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rps", type=float, default=None, help="mean request rate (default: the trace's own)")
    rate.add_argument("--sweep-rps", default=None, metavar="A:B:N", help="N rates from A to B")
    p.add_argument("--sweep-slo", default=None, metavar="A:B:N", help="N SLO scales from A to B (at --rps)")
    p.add_argument("--slo-scale", type=float, default=None,
                   help="SLO = scale × base latency (default 5; with --slo-mix, multiplies each class, default 1)")
    p.add_argument("--slo-mix", default=None, metavar="SPEC",
                   help="SLO classes name:fraction:multiplier[:priority[:min_tau]],… e.g. interactive:0.3:2:1,batch:0.7:6")
    p.add_argument("--base-latency", type=float, default=None,
                   help="base latency in s (default: median request alone on TP1 at the top τ)")
    p.add_argument("--duration", type=float, default=120.0, help="simulated seconds of arrivals (0: whole trace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--block-len", type=int, default=32)
    p.add_argument("--prompt-scale", type=float, default=0.25, help="trace prompt lengths are multiplied by this")
    p.add_argument("--max-prompt", type=int, default=1024)
    p.add_argument("--keep-output", action="store_true", help="use the trace's output lengths (≤ --output-len)")
    p.add_argument("--burst-cv", type=float, default=4.0, help="gamma generator: coefficient of variation of gaps")
    p.add_argument("--thresholds", default="0.9,0.8,0.7,0.6,0.5")
    p.add_argument("--fixed-threshold", type=float, default=0.9)
    p.add_argument("--tedi-slo", choices=("mean", "min"), default="mean",
                   help="tedi's single SLO under a class mix: traffic-weighted mean or the tightest")
    p.add_argument("--budget-step", type=float, default=0.065, metavar="S",
                   help="per-instance token budget: the most tokens whose step latency stays under S seconds")
    p.add_argument("--reject-infeasible", action="store_true",
                   help="dilaserve refuses at arrival what cannot make its deadline even alone at the lowest τ")
    p.add_argument("--no-drop", action="store_true", help="dilaserve keeps hopeless queued requests")
    p.add_argument("--quality", default=None, help="accuracy-vs-τ JSON (default: LLaDA anchors, see docs)")
    p.add_argument("--phase-rps", default="", metavar="A,B",
                   help="phased trace (--trace azure_code,azure_conv): each phase's mean rate")
    p.add_argument("--planner", choices=("on", "off"), default="off",
                   help="on: the reconfiguration MILP re-plans the layout every --plan-interval s of virtual "
                        "time, starting from --layout (docs/planner.md); off: --layout stays fixed")
    p.add_argument("--plan-interval", type=float, default=10.0, metavar="S", help="planner period (virtual s)")
    p.add_argument("--plan-window", type=float, default=30.0, metavar="S", help="arrivals the planner looks at")
    p.add_argument("--plan-classes", type=int, default=8, help="workload classes per planning window")
    p.add_argument("--launch-delay", type=float, default=20.0, metavar="S",
                   help="a launched instance becomes placeable after this many seconds")
    p.add_argument("--teardown", type=float, default=2.0, metavar="S", help="an emptied instance frees its GPUs after S")
    p.add_argument("--rolling-nodes", type=int, default=1, help="nodes reconfigured at the same time")
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--plan-utilization", type=float, default=0.8,
                   help="ρ: the planner keeps each instance busy at most this fraction of the time")
    p.add_argument("--plan-peak-bin", type=float, default=10.0, metavar="S",
                   help="plan for the window's busiest S-second bin (0: for its mean rate)")
    p.add_argument("--plan-replay", default="0.02", metavar="M|off",
                   help="a changed plan must beat the plan in force by M SLO attainment in a replay of the "
                        "window in the simulator (off: the MILP's word is enough)")
    add_effect_arguments(p)
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default=None, help="write PNG plots into this directory")


def add_effect_arguments(p: argparse.ArgumentParser) -> None:
    """The live cluster's effects (docs/simulator.md, "Live-cluster effects"); defaults: none."""
    g = p.add_argument_group("live-cluster effects")
    g.add_argument("--arrival-delay", type=float, default=0.0, metavar="S", help="gateway → scheduler delay")
    g.add_argument("--dispatch-delay", type=float, default=0.0, metavar="S", help="placement → worker delay")
    g.add_argument("--result-delay", type=float, default=0.0, metavar="S", help="last step → client delay")
    g.add_argument("--heartbeat", type=float, default=1.0, metavar="S", help="instance heartbeat period")
    g.add_argument("--tick", type=float, default=1.0, metavar="S", help="scheduler tick (load control) period")
    g.add_argument("--cpu-cores", type=float, default=0.0,
                   help="cores the instances share (0: a device each); steps stretch when oversubscribed")
    g.add_argument("--service-cores", type=float, default=0.0, help="cores the control plane keeps busy")
    g.add_argument("--cost-quantile", type=float, default=0.0,
                   help="the policy's cost model refits toward this quantile of the measured steps (live: 0.9)")
    g.add_argument("--step-scale", type=float, default=1.0,
                   help="every step takes this × the profile's latency (load from outside the cluster)")
    g.add_argument("--step-overhead", type=float, default=0.0, metavar="S",
                   help="worker time per step outside the forward (fixed part)")
    g.add_argument("--step-overhead-per-request", type=float, default=0.0, metavar="S",
                   help="worker time per step outside the forward: this much more per request in the step")
    g.add_argument("--step-scale-by-tokens", default="", metavar="T:F,...",
                   help="steps of T tokens take F × more (interpolated in log tokens), e.g. 16:1.05,512:1.2")
    g.add_argument("--step-scale-over-time", default="", metavar="S:F,...",
                   help="steps that start from S s on take F × more (until the next S), e.g. 0:1,5.5:1.3,8:1")
    g.add_argument("--step-cv", type=float, default=0.0,
                   help="steps of one size vary: a lognormal factor of mean 1 with this coefficient of variation")


def effects_from_args(args: argparse.Namespace) -> ClusterEffects:
    try:
        return ClusterEffects(args.arrival_delay, args.dispatch_delay, args.result_delay, args.heartbeat,
                              args.tick, args.cpu_cores, args.service_cores, args.cost_quantile, args.step_scale,
                              args.step_overhead, args.step_cv, args.step_overhead_per_request,
                              _knots(args.step_scale_by_tokens, "--step-scale-by-tokens", "TOKENS", "16:1.05,512:1.2"),
                              _knots(args.step_scale_over_time, "--step-scale-over-time", "S", "0:1,5.5:1.3,8:1"))
    except ValueError as exc:
        raise SystemExit(f"simulate: {exc}") from None


def _knots(spec: str, flag: str, what: str, example: str) -> tuple[tuple[float, float], ...]:
    """``"16:1.05,512:1.2"`` → ((16.0, 1.05), (512.0, 1.2))."""
    try:
        return tuple((float(t), float(f)) for t, f in (part.split(":") for part in spec.split(",") if part.strip()))
    except ValueError:
        raise SystemExit(f"{flag}: want {what}:FACTOR,... like {example}, got {spec!r}") from None


def build_spec(args: argparse.Namespace):
    from shared.sim.runner import SimSpec
    return SimSpec(
        trace=args.trace, gpus=args.gpus, layout=args.layout, config=args.config,
        policies=tuple(x.strip() for x in args.policies.split(",") if x.strip()),
        duration_s=args.duration or None, seed=args.seed,
        scaling=LengthScaling(args.output_len, args.block_len, args.prompt_scale, 16, args.max_prompt,
                              args.keep_output),
        classes=parse_slo_mix(args.slo_mix), base_latency_s=args.base_latency, burst_cv=args.burst_cv,
        candidates=_floats(args.thresholds), fixed_threshold=args.fixed_threshold, tedi_slo=args.tedi_slo,
        drop=not args.no_drop, reject=args.reject_infeasible, budget_step_s=args.budget_step,
        quality=read_quality_model(args.quality) if args.quality else None,
        planner=_planner_spec(args), phase_rps=_floats(getattr(args, "phase_rps", "") or ""),
        effects=effects_from_args(args) if hasattr(args, "arrival_delay") else ClusterEffects())


def _planner_spec(args: argparse.Namespace):
    if getattr(args, "planner", "off") != "on":
        return None
    from shared.sim.planner import SimPlannerSpec
    return SimPlannerSpec(interval_s=args.plan_interval, window_s=args.plan_window, n_classes=args.plan_classes,
                          gpus_per_node=args.gpus_per_node, launch_delay_s=args.launch_delay,
                          teardown_s=args.teardown, max_nodes_changing=args.rolling_nodes,
                          utilization=args.plan_utilization, peak_bin_s=args.plan_peak_bin,
                          replay_margin=_replay_margin(args.plan_replay))


def _replay_margin(spec: str) -> float | None:
    if spec.strip().lower() == "off":
        return None
    try:
        margin = float(spec)
    except ValueError:
        raise SystemExit(f"--plan-replay: want a margin like 0.02 or 'off', got {spec!r}") from None
    if not 0.0 <= margin <= 1.0:
        raise SystemExit(f"--plan-replay: the margin is an attainment difference in [0, 1], got {margin}")
    return margin


def sweep_points(args: argparse.Namespace) -> tuple[list[tuple[float | None, float]], str | None]:
    scale = args.slo_scale if args.slo_scale is not None else (1.0 if args.slo_mix else 5.0)
    if args.sweep_slo:
        return [(args.rps, s) for s in _sweep(args.sweep_slo)], "slo"
    if args.sweep_rps:
        return [(r, scale) for r in _sweep(args.sweep_rps)], "rps"
    return [(args.rps, scale)], None


def _print_point(point: dict) -> None:
    print(f"rps {point['rps']:.2f}  slo_scale {point['slo_scale']:g}  requests {point['requests']}")
    cols = ("slo_attainment", "goodput_rps", "latency_p50_s", "latency_p90_s", "latency_p99_s",
            "mean_latency_s", "mean_threshold", "est_accuracy", "dropped")
    print("  " + f"{'policy':<10}" + "".join(f"{c[:14]:>15}" for c in cols))
    for name, m in point["policies"].items():
        cells = "".join(f"{(m[c] if m[c] is not None else float('nan')):>15.4f}" if isinstance(m[c], float)
                        else f"{str(m[c]):>15}" for c in cols)
        print("  " + f"{name:<10}" + cells)
    sys.stdout.flush()


def main(args: argparse.Namespace) -> int:
    from shared.sim.runner import dumps, run
    spec = build_spec(args)
    points, sweep = sweep_points(args)
    t0, c0 = time.perf_counter(), time.process_time()
    report, raws = run(spec, points, progress=_print_point)
    print(f"simulated {len(points)} point(s) × {len(spec.policies)} policies in {time.perf_counter() - t0:.1f} s "
          f"wall, {time.process_time() - c0:.1f} s CPU (base latency {report['config']['base_latency_s']:.3f} s)",
          file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(dumps(report))
    if args.plot:
        from shared.sim.plots import plot_all
        for path in plot_all(report, raws, args.plot, sweep):
            print(f"wrote {path}", file=sys.stderr)
    return 0
