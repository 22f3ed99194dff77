"""`dilaserve supervisor`: one node's plan executor as a process (the work is in services/supervisor/service.py).

On start it applies the plan in force (read from Redis; the planner's initial static layout when there is
none yet), i.e. it starts this node's workers as child processes — after adopting the workers a killed
predecessor left running (RUN_DIR/node<N>-workers.json: worker id → PID, configuration; a PID counts
only while it still runs that worker id); then it follows the planner: every
published plan, plus a plan id reported by the planner's heartbeat that this node missed. On SIGTERM it
stops its workers gracefully (each hands its running requests back at a block boundary).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from pathlib import Path

from services.common.runtime import add_common_arguments, run_until_signal, setup

log = logging.getLogger("dilaserve.supervisor")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--node", type=int, default=0, help="this node's index in the plan (default 0)")
    p.add_argument("--slots", type=int, default=0,
                   help="worker slots on this node (default planner.slots_per_node, else planner.num_workers)")
    p.add_argument("--run-dir", default="", help="the workers' logs go to RUN_DIR/logs (default runs/node<N>)")


def worker_ids(node: int, slots: int) -> list[str]:
    """Stable ids, reused after a drain: node 0 keeps the names `dilaserve up` always used."""
    return [f"worker-{i}" if node == 0 else f"node{node}-worker-{i}" for i in range(slots)]


def worker_env(config: str) -> dict[str, str]:
    """The worker settings a configuration name fixes: its cache mode, and its device when it names one
    (``cpu``, or a GPU kind: CUDA). The model comes from the node's own worker.model_dir."""
    from shared.instance_config import InstanceConfig

    ic = InstanceConfig.parse(config)
    env = {"DILASERVE_WORKER_CACHE_MODE": ic.cache_mode}
    if ic.device:
        env["DILASERVE_WORKER_DEVICE"] = "cpu" if ic.device == "cpu" else "cuda"
    return env


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)
    slots = args.slots or cfg.planner.slots_per_node or cfg.planner.num_workers
    if slots < 1 or args.node < 0:
        raise SystemExit("error: --slots must be ≥ 1 and --node ≥ 0")
    run_dir = Path(args.run_dir or f"runs/node{args.node}").resolve()

    async def start():
        from services.common.processes import start_service
        from services.planner.service import static_plan
        from services.supervisor.service import Supervisor
        from shared.transport import Bus, Store

        def spawn(worker_id: str, config: str):
            env = {**os.environ, **worker_env(config)}
            return start_service(worker_id, ["worker", "--worker-id", worker_id], run_dir, env)

        bus = await Bus.connect(cfg.nats.url, name=f"supervisor-{args.node}")
        store = await Store.from_config(cfg.redis)
        sup = Supervisor(node=args.node, slots=slots, spawn=spawn, worker_ids=worker_ids(args.node, slots),
                         registry=run_dir / f"node{args.node}-workers.json")
        adopted = sup.recover()  # a predecessor killed without stopping its workers left them running
        plan = await store.load_plan() or static_plan(cfg.planner, time.time())
        result = await sup.apply(plan)
        log.info("node %d supervisor ready: %d slots, plan %s, adopted %s, started %s (logs in %s)", args.node,
                 slots, plan.plan_id, adopted, result.started, run_dir / "logs")
        follow = asyncio.create_task(sup.run(bus, store))

        async def stop() -> None:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, sup.stop_all)
            await bus.close()
            await store.close()

        return stop

    return run_until_signal(start)
