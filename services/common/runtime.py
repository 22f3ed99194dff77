"""Shared process plumbing for the service entry points: config, logging, signals, clean shutdown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Awaitable, Callable

from shared.config import Config, load_config


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML/JSON config file (env DILASERVE_* overrides it)")
    p.add_argument("--log-level", default="INFO")


def setup(args: argparse.Namespace) -> Config:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return load_config(args.config)


def run_until_signal(start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]) -> int:
    """Run ``start()`` (which returns an async ``stop``), wait for SIGINT/SIGTERM, then ``stop()``."""

    async def _main() -> None:
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
        stop = await start()
        await stop_event.wait()
        await stop()

    asyncio.run(_main())
    return 0
