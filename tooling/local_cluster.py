"""`dilaserve up`: NATS (JetStream) + Redis (AOF) + gateway, scheduler, planner and N workers on this machine.

Everything lives under one run folder (data dirs, one log file per service). Ctrl-C stops the services
first, then Redis and NATS, each by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.processes import (
    REPO, Proc, free_port, service_env, start_nats, start_redis, start_service, stop_all, wait_port, wait_ready,
)


@dataclass
class LocalCluster:
    run_dir: Path
    num_workers: int = 2
    port: int = 8000
    extra_env: dict[str, str] = field(default_factory=dict)
    infra: list[Proc] = field(default_factory=list)
    services: list[Proc] = field(default_factory=list)
    nats_url: str = ""
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)  # the services' environment (to restart one alike)
    supervised: bool = False  # a node supervisor runs the workers and executes the planner's plans

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0, progress: bool = True) -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                raise RuntimeError(f"port {self.port} is in use: stop what holds it or pass --port") from None
        nats_port, redis_port = free_port(), free_port()
        self.infra = [start_nats(self.run_dir, nats_port), start_redis(self.run_dir, redis_port)]
        for p, port in zip(self.infra, (nats_port, redis_port)):
            wait_port(port, 30, p)
        self.nats_url, self.redis_url = f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}/0"
        env = service_env(self.nats_url, self.redis_url, {
            "DILASERVE_GATEWAY_PORT": str(self.port), "DILASERVE_PLANNER_NUM_WORKERS": str(self.num_workers),
            **self.extra_env,
        })
        self.env = env
        self.services = [start_service("scheduler", ["scheduler"], self.run_dir, env),
                         start_service("planner", ["planner"], self.run_dir, env)]
        if self.supervised:
            self.services.append(start_service("supervisor", ["supervisor", "--run-dir", str(self.run_dir)],
                                               self.run_dir, env))
        else:
            self.services += [start_service(f"worker-{i}", ["worker", "--worker-id", f"worker-{i}"], self.run_dir,
                                            env) for i in range(self.num_workers)]
        self.services.append(start_service("gateway", ["gateway"], self.run_dir, env))
        wait_ready(self.url, self.num_workers, self.services + self.infra, timeout_s, progress)

    def stop(self) -> None:
        gateway = [p for p in self.services if p.name == "gateway"]
        workers = [p for p in self.services if p.name.startswith("worker")]
        supervisor = [p for p in self.services if p.name == "supervisor"]
        rest = [p for p in self.services if p not in gateway + workers + supervisor]
        stop_all(gateway + workers)
        stop_all(supervisor, grace_s=60.0)  # it drains its workers one block boundary each, then exits
        stop_all(rest)
        stop_all(list(reversed(self.infra)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="number of worker processes (default 2)")
    p.add_argument("--port", type=int, default=8000, help="gateway HTTP port (default 8000)")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/up-<timestamp>)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--supervised", action="store_true",
                   help="run the workers under a node supervisor that executes the planner's plans (drains and "
                        "starts workers); without it the workers stay as started and plans are only published")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir or REPO / "runs" / time.strftime("up-%Y%m%d-%H%M%S")).resolve()
    cluster = LocalCluster(run_dir, num_workers=args.workers, port=args.port, supervised=args.supervised)
    print(f"starting DiLaServe: {args.workers} workers, run folder {run_dir}", flush=True)
    stop_requested = False

    def on_signal(signum, frame):
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # explicit: a backgrounded `up` inherits SIGINT ignored
    try:
        cluster.start(timeout_s=args.timeout)
        print(_banner(cluster), flush=True)
        while True:
            for p in cluster.services + cluster.infra:
                if not p.alive():
                    print(f"warning: {p.name} exited (code {p.popen.returncode}); log {p.log_path}", flush=True)
                    cluster.services = [q for q in cluster.services if q is not p]
                    cluster.infra = [q for q in cluster.infra if q is not p]
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return_code = 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        cluster.stop()
        print("stopped.", flush=True)
    return return_code


def _banner(c: LocalCluster) -> str:
    return f"""
DiLaServe is up: {c.url}   (NATS {c.nats_url}, Redis {c.redis_url})
logs: {c.run_dir / 'logs'}

  curl -s {c.url}/v1/completions -H 'content-type: application/json' \\
       -d '{{"model": "dilaserve-tiny", "prompt": "123+456=", "max_tokens": 16}}'

Press Ctrl-C to stop.
"""
