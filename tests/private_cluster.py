"""A cluster of a test module's own: nats-server, redis-server and services on random loopback ports,
for tests that need settings the shared session cluster (conftest.py) does not have."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from services.common.processes import free_port, service_env, start_nats, start_redis, start_service, wait_port


def stop(proc, grace_s: float = 15.0) -> None:
    if proc.popen.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace_s)
        except Exception:
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait()


class PrivateCluster:
    def __init__(self, run_dir: Path, **env: str):
        self.run_dir = run_dir
        nats_port, redis_port, self.port = free_port(), free_port(), free_port()
        self.infra = [start_nats(run_dir, nats_port), start_redis(run_dir, redis_port)]
        for p, port in zip(self.infra, (nats_port, redis_port)):
            wait_port(port, 30, p)
        self.nats_url = f"nats://127.0.0.1:{nats_port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(self.nats_url, f"redis://127.0.0.1:{redis_port}/0", {
            "DILASERVE_GATEWAY_PORT": str(self.port), "DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S": "1.5",
            "DILASERVE_SCHEDULER_GLOBAL_SLO_S": "3.0", **env})
        self.procs: dict = {}

    def start(self, name: str, args: list[str], **env: str) -> None:
        self.procs[name] = start_service(name, args, self.run_dir, {**self.env, **env})

    def scheduler(self, policy: str, record: Path) -> None:
        if "scheduler" in self.procs:
            stop(self.procs.pop("scheduler"))
        self.start("scheduler", ["scheduler"], DILASERVE_SCHEDULER_POLICY=policy,
                   DILASERVE_SCHEDULER_RECORD_PATH=str(record))

    def start_workers_and_gateway(self, n: int = 2) -> None:
        """After the scheduler: ``n`` workers and the gateway, then wait until the scheduler sees them."""
        for i in range(n):
            self.start(f"worker-{i}", ["worker", "--worker-id", f"worker-{i}"])
        self.start("gateway", ["gateway"])
        self.wait_workers(n)

    def wait_workers(self, n: int, timeout_s: float = 240.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for name, p in self.procs.items():
                assert p.alive(), f"{name} exited:\n{p.log_tail()}"
            try:
                body = httpx.get(self.url + "/readyz", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                body = {}
            if body.get("scheduler") and len(body.get("workers", [])) == n:
                return
            time.sleep(0.2)
        raise AssertionError(f"not {n} workers after {timeout_s}s: {body}")

    def close(self) -> None:
        for name in ["gateway", "worker-0", "worker-1", "scheduler"]:
            if name in self.procs:
                os.kill(self.procs[name].pid, signal.SIGCONT)
                stop(self.procs[name])
        for p in reversed(self.infra):
            stop(p)
