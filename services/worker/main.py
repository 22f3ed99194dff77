"""`dilaserve worker`: one model instance serving assignments from the scheduler."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from services.common.runtime import add_common_arguments, run_until_signal, setup

log = logging.getLogger("dilaserve.worker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--worker-id", default=None, help="overrides worker.worker_id")


def main(args: argparse.Namespace) -> int:
    cfg = setup(args)
    wcfg = cfg.worker
    worker_id = args.worker_id or wcfg.worker_id or f"worker-{os.getpid()}"

    async def start():
        import torch

        from services.worker.engine import DenoisingEngine
        from services.worker.model import load_model
        from services.worker.service import WorkerService
        from shared.profiles import model_dir
        from shared.telemetry import setup_telemetry
        from shared.transport import Bus, Store

        torch.set_num_threads(max(1, wcfg.torch_threads))
        # The forward runs in a thread that holds the GIL between kernels; a short switch interval
        # lets the event loop (assignments, cancels, heartbeats) in within ~1 ms instead of 5 ms.
        sys.setswitchinterval(0.001)
        tel = setup_telemetry("worker")
        model = load_model(model_dir(wcfg.model_dir), device=wcfg.device)
        engine = DenoisingEngine(model, cache_mode=wcfg.cache_mode)  # type: ignore[arg-type]
        bus = await Bus.connect(cfg.nats.url, name=worker_id)
        store = await Store.from_config(cfg.redis)
        from services.worker.device import worker_instance_config
        from services.worker.threshold_control import worker_threshold_control

        # The scheduler's policy settings; the configuration names this model, device kind and cache.
        control = worker_threshold_control(cfg.scheduler, wcfg, worker_instance_config(wcfg, engine.cache_mode))
        svc = WorkerService(wcfg, worker_id, bus, store, engine, tel, control=control)
        await svc.start()

        async def stop() -> None:
            log.info("worker %s stopping", worker_id)
            await svc.stop()
            await bus.close()
            await store.close()
            tel.shutdown()

        return stop

    return run_until_signal(start)
