"""`dilaserve planner`: keeps the arrival window, solves the reconfiguration MILP every ``interval_s``,
publishes a ``Plan`` when the layout should change, and heartbeats (see services/planner/service.py)."""

from __future__ import annotations

import argparse
import logging

from services.common.runtime import add_common_arguments, run_until_signal, setup

log = logging.getLogger("dilaserve.planner")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)


def planner_cost_model(cfg):
    """The scheduler's cost model under the planner's configuration name: the CPU workers' measured
    profile beside the model when there is one, else the prior (the planner prices what they run)."""
    from shared.policy.live import live_cost_model
    from shared.profiles import load_profiles, model_dir

    sc, name = cfg.scheduler, cfg.planner.instance_config
    data = load_profiles(sc.cost_profile, model_dir(cfg.worker.model_dir)).get("cpu")
    cpu = cfg.worker.device.startswith("cpu")
    return live_cost_model(sc.cost_model, name, {name: data} if data and cpu else None, sc.cost_quantile)


def replay_check(cfg):
    """``planner.replay_margin >= 0``: the round's confirmation of changed plans, a replay of the window
    with the scheduler's policy and cost model (shared/sim/replay.py); else None."""
    if cfg.planner.replay_margin < 0:
        return None
    from shared.policy.live import live_policy_kwargs
    from shared.sim.engine import simulate
    from shared.sim.replay import ReplayCheck
    sc = cfg.scheduler
    knobs = live_policy_kwargs(sc.policy, drop_expired=sc.drop_expired, budget_step_s=sc.budget_step_s,
                               lc_period_s=sc.lc_period_s, place_safety=sc.place_safety)
    knobs.update(block_len=cfg.worker.block_length, global_slo_s=sc.global_slo_s or None)
    check = ReplayCheck(simulate, sc.policy, planner_cost_model(cfg), margin=cfg.planner.replay_margin,
                        hysteresis=cfg.planner.hysteresis, transition_s=cfg.planner.replay_transition_s,
                        sim_kwargs=knobs)
    return check.confirm


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)

    async def start():
        from services.planner.actuators import make_actuator
        from services.planner.service import PlannerService
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store

        tel = setup_telemetry("planner")
        pcfg = cfg.planner
        bus = await Bus.connect(cfg.nats.url, name=pcfg.planner_id)
        store = await Store.from_config(cfg.redis)
        svc = PlannerService(pcfg, bus, store, tel, planner_cost_model(cfg), cfg.worker.block_length,
                             budget_step_s=cfg.scheduler.budget_step_s,
                             replay=replay_check(cfg), actuator=make_actuator(pcfg, bus))
        await svc.start()
        log.info("planner %s ready (%s, %s × %d slots, %s actuator)", pcfg.planner_id, pcfg.mode, pcfg.nodes,
                 pcfg.slots_per_node or pcfg.num_workers, pcfg.actuator)

        async def stop() -> None:
            await svc.stop()
            await bus.close()
            await store.close()
            tel.shutdown()

        return stop

    return run_until_signal(start)
