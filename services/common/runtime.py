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


class Shutdown:
    """A service's own reason to end (e.g. a scheduler that lost its leader lease): the process stops as
    on SIGTERM, but exits with ``code`` so that its supervisor sees a failure and starts it again."""

    def __init__(self) -> None:
        self.code = 0
        self.event = asyncio.Event()

    def request(self, code: int, reason: str) -> None:
        if not self.event.is_set():
            logging.getLogger("dilaserve").error("stopping: %s (exit code %d)", reason, code)
            self.code = code
            self.event.set()


def run_until_signal(start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
                     shutdown: Shutdown | None = None) -> int:
    """Run ``start()`` (which returns an async ``stop``), wait for SIGINT/SIGTERM (or ``shutdown``),
    then ``stop()``. Returns the exit code: 0, or the one ``shutdown`` was requested with."""
    shutdown = shutdown or Shutdown()

    async def _main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.event.set)
        stop = await start()
        await shutdown.event.wait()
        await stop()

    asyncio.run(_main())
    return shutdown.code
