"""`dilaserve gateway`: the HTTP front door (uvicorn + FastAPI)."""

from __future__ import annotations

import argparse

from services.common.runtime import add_common_arguments, setup


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--host", default=None, help="overrides gateway.host")
    p.add_argument("--port", type=int, default=None, help="overrides gateway.port")


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from services.gateway.app import create_app
    from shared.telemetry import setup_telemetry

    cfg = setup(args)
    if args.host:
        cfg.gateway.host = args.host
    if args.port:
        cfg.gateway.port = args.port
    tel = setup_telemetry("gateway")
    app = create_app(cfg, tel)
    try:
        uvicorn.run(app, host=cfg.gateway.host, port=cfg.gateway.port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=5)
    finally:
        tel.shutdown()
    return 0
