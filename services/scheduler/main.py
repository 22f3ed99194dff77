"""`dilaserve scheduler`: places submitted requests on workers."""

from __future__ import annotations

import argparse
import logging

from services.common.runtime import add_common_arguments, run_until_signal, setup

log = logging.getLogger("dilaserve.scheduler")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)

    async def start():
        from services.scheduler.service import SchedulerService
        from shared.policy.live import live_core, live_cost_model
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store

        tel = setup_telemetry("scheduler")
        bus = await Bus.connect(cfg.nats.url, name=cfg.scheduler.scheduler_id)
        store = await Store.from_config(cfg.redis)
        sc = cfg.scheduler
        worker_config = f"tp1-{cfg.worker.cache_mode}"  # what workers report (WorkerService.instance_config)
        policy = live_core(sc.policy, live_cost_model(sc.cost_model, worker_config), global_slo_s=sc.global_slo_s,
                           drop_expired=sc.drop_expired, budget_step_s=sc.budget_step_s, lc_period_s=sc.lc_period_s)
        log.info("scheduling policy %s", sc.policy)
        svc = SchedulerService(cfg.scheduler, cfg.nats, bus, store, policy, tel, block_length=cfg.worker.block_length)
        await svc.start()

        async def stop() -> None:
            await svc.stop()
            await bus.close()
            await store.close()
            tel.shutdown()

        return stop

    return run_until_signal(start)
