"""`dilaserve planner`: publishes the cluster plan and heartbeats.

For now the plan is static (the configured instance mix); the MILP of DESIGN §4.5 replaces
``static_plan`` later without changing the loop or the wire messages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid

from services.runtime import add_common_arguments, run_until_signal, setup
from shared.config import PlannerConfig
from shared.schemas.cluster import InstanceCount, Plan, PlannerHeartbeat

log = logging.getLogger("dilaserve.planner")


def static_plan(cfg: PlannerConfig, now_s: float) -> Plan:
    return Plan(plan_id=uuid.uuid4().hex[:12], created_s=now_s,
                instances=[InstanceCount(config=cfg.instance_config, count=cfg.num_workers)], reason="static")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)

    async def start():
        from shared import subjects
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store

        tel = setup_telemetry("planner")
        pcfg = cfg.planner
        bus = await Bus.connect(cfg.nats.url, name=pcfg.planner_id)
        store = await Store.connect(cfg.redis.url, cfg.redis.result_ttl_s)

        async def loop() -> None:
            plan: Plan | None = None
            while True:
                t0 = time.perf_counter()
                new = static_plan(pcfg, time.time())
                changed = plan is None or new.instances != plan.instances
                if changed:
                    plan = new
                    await store.save_plan(plan)
                    await bus.publish(subjects.plan_publish(), plan)
                    for ic in plan.instances:
                        tel.metrics.instances(config=ic.config, count=ic.count)
                    log.info("plan %s: %s", plan.plan_id, [(i.config, i.count) for i in plan.instances])
                tel.metrics.planner_solve(solve_s=time.perf_counter() - t0, changed=changed)
                assert plan is not None
                # Heartbeat more often than the planning interval so liveness is visible quickly.
                for _ in range(max(1, int(pcfg.interval_s / 0.5))):
                    await bus.publish(subjects.planner_heartbeat(),
                                      PlannerHeartbeat(planner_id=pcfg.planner_id, plan_id=plan.plan_id, sent_s=time.time()))
                    await asyncio.sleep(0.5)

        task = asyncio.create_task(loop())
        log.info("planner %s ready", pcfg.planner_id)

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await bus.close()
            await store.close()
            tel.shutdown()

        return stop

    return run_until_signal(start)
