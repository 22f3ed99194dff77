"""`dilaserve` command line: one subcommand per module, imported only when that subcommand runs.

Each target module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("tooling.local_cluster", "start NATS, Redis and every service on this machine"),
    "train": ("lab.train", "train the shipped tiny diffusion LM (CPU, resumable)"),
    "eval": ("lab.evaluate", "accuracy and speed of each decoding configuration"),
    "bench-engine": ("lab.bench_engine", "threshold decoding + caches vs the fixed-schedule baseline"),
    "bench-step": ("lab.bench_step", "one serving step: packed attention against a per-segment loop"),
    "profile": ("lab.profiling", "step latency against tokens executed (cost-model input)"),
    "bench": ("tooling.loadgen", "open-loop load generator against a running gateway"),
    "simulate": ("shared.sim.cli", "trace-driven discrete-event simulation of the scheduling policies"),
    "experiment": ("tooling.experiment", "policies' SLO attainment on fresh local clusters beside the simulator's"),
    "plan-bench": ("tooling.plan_bench", "planner MILP solve-time benchmark"),
    "soak": ("tooling.soak", "many concurrent streaming clients: errors and gateway memory over time"),
    "chaos": ("tooling.chaos", "fault injection under load: nothing accepted is lost, duplicated or changed"),
    "gateway": ("services.gateway.main", "run the gateway service"),
    "scheduler": ("services.scheduler.main", "run the scheduler service"),
    "planner": ("services.planner.main", "run the planner service"),
    "worker": ("services.worker.main", "run one worker (model instance)"),
    "supervisor": ("services.supervisor.main", "node supervisor: runs this node's workers, follows the plans"),
}
# Long-running services handle SIGTERM themselves (a graceful drain); every other command is a tool.
SERVICES = {"gateway", "scheduler", "planner", "worker", "supervisor"}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="dilaserve", description="DiLaServe: serving diffusion language models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    if args.command not in SERVICES:  # SIGTERM unwinds like Ctrl-C: the clusters a tool started are stopped
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
