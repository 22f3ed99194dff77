"""`dilaserve scheduler`: places submitted requests on workers."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.runtime import Shutdown, add_common_arguments, run_until_signal, setup
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


LEASE_LOST_EXIT = 3  # a deposed leader exits with this code: its supervisor restarts it as a standby


def _keep(tasks: set, coro) -> None:
    """Run ``coro`` in a task held until it is done (the loop keeps only weak references)."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)
    shutdown = Shutdown()

    async def start():
        from services.scheduler.leader import Election
        from services.scheduler.service import SchedulerService
        from shared.policy.live import live_core
        from shared.profiles import model_dir, read_tps_prior
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store
        from shared.transport.lease import Lease

        tel = setup_telemetry("scheduler")
        sc = cfg.scheduler
        bus = await Bus.connect(cfg.nats.url, name=sc.scheduler_id)
        store = await Store.from_config(cfg.redis)
        policy = live_core(sc.policy, scheduler_cost_model(cfg), global_slo_s=sc.global_slo_s,
                           tps_prior=read_tps_prior(model_dir(cfg.worker.model_dir)),
                           drop_expired=sc.drop_expired, budget_step_s=sc.budget_step_s, lc_period_s=sc.lc_period_s,
                           place_safety=sc.place_safety)
        log.info("scheduling policy %s", sc.policy)
        lease = Lease(store, sc.scheduler_id, sc.lease_ttl_s)
        election = Election(lease, sc.lease_ttl_s, sc.lease_renew_s)
        svc = SchedulerService(cfg.scheduler, cfg.nats, bus, store, policy, tel, block_length=cfg.worker.block_length,
                               fence=lambda: lease.fence, on_fenced=lambda: _keep(checks, check()))
        leading = asyncio.Event()
        checks: set[asyncio.Task] = set()

        async def check() -> None:
            """A fenced placement: deposed, or only carrying the token before a re-acquisition?"""
            try:
                if lease.held and await asyncio.wait_for(lease.renew(), sc.lease_renew_s):
                    return
            except Exception:
                return  # Redis unreachable: the renewal loop decides
            shutdown.request(LEASE_LOST_EXIT, f"a placement was fenced: {await lease.current() or 'nobody'} leads")

        async def lead() -> None:
            await election.campaign()
            leading.set()
            try:
                await svc.start()
            except Exception as exc:
                log.exception("scheduler start failed")
                shutdown.request(1, f"start failed: {type(exc).__name__}")
                return
            reason = await election.hold()
            shutdown.request(LEASE_LOST_EXIT, f"lost the leader lease: {reason}")

        task = asyncio.create_task(lead())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if leading.is_set():
                await svc.stop()
                try:  # hand over at once rather than after the TTL
                    await asyncio.wait_for(lease.release(), timeout=2.0)
                except Exception as exc:
                    log.warning("lease not released (%s): the standby takes over after its TTL", exc)
            await bus.close()
            await store.close()
            tel.shutdown()

        return stop

    return run_until_signal(start, shutdown)
