"""`dilaserve scheduler`: places submitted requests on workers."""

from __future__ import annotations

import argparse
import logging

from services.common.runtime import add_common_arguments, run_until_signal, setup
from shared.config import Config

log = logging.getLogger("dilaserve.scheduler")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)


def scheduler_cost_model(cfg: Config):
    """A curve per profile measured for the workers' model (one per device kind, keyed by the name such a
    worker reports), plus the prior under the CPU workers' name when their device has no profile. A GPU
    worker's kind is known to the worker only (no torch here): its first heartbeat copies a curve of its
    own device kind, else the first one (CostModel.ensure)."""
    from shared.instance_config import InstanceConfig, worker_config
    from shared.policy.live import live_cost_model
    from shared.profiles import load_profiles, model_dir

    wcfg, sc = cfg.worker, cfg.scheduler
    mdir = model_dir(wcfg.model_dir)
    name = mdir.resolve().name
    profiles = {worker_config(name, kind, wcfg.cache_mode).name: data
                for kind, data in load_profiles(sc.cost_profile, mdir).items()}
    if wcfg.device.startswith("cpu"):
        prior = worker_config(name, "cpu", wcfg.cache_mode).name
    else:  # a profiled curve (or, without any, the prior under a device-less name) is the one to copy
        prior = next(iter(profiles), InstanceConfig(cache=wcfg.cache_mode).name)
    return live_cost_model(sc.cost_model, prior, profiles, sc.cost_quantile)


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)

    async def start():
        from services.scheduler.service import SchedulerService
        from shared.policy.live import live_core
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store

        tel = setup_telemetry("scheduler")
        bus = await Bus.connect(cfg.nats.url, name=cfg.scheduler.scheduler_id)
        store = await Store.from_config(cfg.redis)
        sc = cfg.scheduler
        policy = live_core(sc.policy, scheduler_cost_model(cfg), global_slo_s=sc.global_slo_s,
                           drop_expired=sc.drop_expired, budget_step_s=sc.budget_step_s, lc_period_s=sc.lc_period_s,
                           place_safety=sc.place_safety)
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
