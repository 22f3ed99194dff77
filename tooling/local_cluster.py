"""`dilaserve up`: NATS (JetStream) + Redis (AOF) + gateway, scheduler, planner and N workers on this machine.

Everything lives under one run folder (data dirs, one log file per service). A process that exits on its
own is started again (services.common.processes.Healer: exponential backoff, each exit logged with its
code). ``--ha``: 3 clustered nats-servers (the submit stream on all 3), Redis with a replica and 3
Sentinels, 2 schedulers (one leads by lease) and 2 gateways. Ctrl-C stops the services first, then
Redis and NATS, each by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.common.processes import (
    REPO, Healer, Proc, free_port, service_env, start_nats, start_redis, start_sentinel, start_service, stop_all,
    wait_port, wait_ready, wait_sentinels, SENTINEL_MASTER,
)

# A submission waits out a NATS node's failover (its stream leader re-elected: ≈ 4-9 s) instead of a 503.
HA_ENV = {"DILASERVE_GATEWAY_BACKEND_TIMEOUT_S": "12"}
HA_REDIS_RESTART_S = 5.0  # a dead Redis node of --ha comes back after Sentinel's failover (≈ 1-3 s), as a replica


def _say(msg: str) -> None:
    print(f"[up {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class LocalCluster:
    run_dir: Path
    num_workers: int = 2
    port: int = 8000
    extra_env: dict[str, str] = field(default_factory=dict)
    infra: list[Proc] = field(default_factory=list)
    services: list[Proc] = field(default_factory=list)
    nats_url: str = ""  # under --ha: every node's URL, comma-separated
    redis_url: str = ""  # under --ha: redis+sentinel://...
    env: dict[str, str] = field(default_factory=dict)  # the services' environment (to restart one alike)
    supervised: bool = False  # a node supervisor runs the workers and executes the planner's plans
    ha: bool = False
    heal: bool = False  # restart what exits on its own (`dilaserve up` does; tests that kill on purpose may not)
    say: Callable[[str], None] = _say
    healer: Healer | None = None
    gateway_ports: list[int] = field(default_factory=list)
    nats_ports: list[int] = field(default_factory=list)
    redis_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.gateway_ports or [self.port]]

    def start(self, timeout_s: float = 300.0, progress: bool = True) -> None:
        self.gateway_ports = [self.port, self.port + 1] if self.ha else [self.port]
        for port in self.gateway_ports:
            _check_port_free(port)
        self._start_ha_infra() if self.ha else self._start_infra()
        env = service_env(self.nats_url, self.redis_url, {
            "DILASERVE_GATEWAY_PORT": str(self.port), "DILASERVE_PLANNER_NUM_WORKERS": str(self.num_workers),
            **(HA_ENV | {"DILASERVE_NATS_STREAM_REPLICAS": str(len(self.nats_ports))} if self.ha else {}),
            **self.extra_env,
        })
        self.env = env
        if self.ha:  # distinct lease holders
            self.services = [start_service(name, ["scheduler"], self.run_dir, {**env, "DILASERVE_SCHEDULER_SCHEDULER_ID": name})
                             for name in ("scheduler-0", "scheduler-1")]
        else:
            self.services = [start_service("scheduler", ["scheduler"], self.run_dir, env)]
        self.services.append(start_service("planner", ["planner"], self.run_dir, env))
        if self.supervised:
            self.services.append(start_service("supervisor", ["supervisor", "--run-dir", str(self.run_dir)],
                                               self.run_dir, env))
        else:
            self.services += [start_service(f"worker-{i}", ["worker", "--worker-id", f"worker-{i}"], self.run_dir,
                                            env) for i in range(self.num_workers)]
        for k, port in enumerate(self.gateway_ports):
            self.services.append(start_service("gateway" if k == 0 else f"gateway-{k}", ["gateway"], self.run_dir,
                                               {**env, "DILASERVE_GATEWAY_PORT": str(port)}))
        for url in self.urls:
            wait_ready(url, self.num_workers, self.services + self.infra, timeout_s, progress)
        if self.heal:
            self.healer = Healer([self.services, self.infra], self.say)
            self.healer.start()

    def _start_infra(self) -> None:
        nats_port, redis_port = free_port(), free_port()
        self.infra = [start_nats(self.run_dir, nats_port), start_redis(self.run_dir, redis_port)]
        for p, port in zip(self.infra, (nats_port, redis_port)):
            wait_port(port, 30, p)
        self.nats_ports, self.redis_ports = [nats_port], [redis_port]
        self.nats_url, self.redis_url = f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}/0"

    def _start_ha_infra(self) -> None:
        """3 nats-server nodes (one cluster, JetStream on each); a Redis master, its replica and 3 Sentinels
        (quorum 2). Each restarts from its own data dir."""
        self.nats_ports = [free_port() for _ in range(3)]
        routes = [free_port() for _ in range(3)]
        self.infra = [start_nats(self.run_dir, self.nats_ports[i], f"nats-{i}", routes[i],
                                 [r for j, r in enumerate(routes) if j != i]) for i in range(3)]
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        sp = self.sentinel_ports
        redis = [start_redis(self.run_dir, self.redis_ports[0], "redis-0", sentinel=True, sentinel_ports=sp),
                 start_redis(self.run_dir, self.redis_ports[1], "redis-1", replica_of=self.redis_ports[0], sentinel=True,
                             sentinel_ports=sp)]
        for p in redis:
            p.first_delay_s = HA_REDIS_RESTART_S
        self.infra += redis
        for p, port in zip(self.infra, self.nats_ports + self.redis_ports):
            wait_port(port, 30, p)
        sentinels = [start_sentinel(self.run_dir, port, self.redis_ports[0], f"sentinel-{i}")
                     for i, port in enumerate(self.sentinel_ports)]
        self.infra += sentinels
        for p, port in zip(sentinels, self.sentinel_ports):
            wait_port(port, 30, p)
        self.nats_url = ",".join(f"nats://127.0.0.1:{p}" for p in self.nats_ports)
        self.redis_url = ("redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
                          + f"/{SENTINEL_MASTER}/0")
        wait_sentinels(self.sentinel_ports)
        asyncio.run(_wait_jetstream(self.nats_url))

    def stop(self) -> None:
        if self.healer is not None:
            self.healer.stop()
        gateway = [p for p in self.services if p.name.startswith("gateway")]
        workers = [p for p in self.services if p.name.startswith("worker")]
        supervisor = [p for p in self.services if p.name == "supervisor"]
        rest = [p for p in self.services if p not in gateway + workers + supervisor]
        stop_all(gateway + workers)
        stop_all(supervisor, grace_s=60.0)  # it drains its workers one block boundary each, then exits
        stop_all(rest)
        stop_all(list(reversed(self.infra)))


def _check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is in use: stop what holds it or pass --port") from None


async def _wait_jetstream(nats_url: str, timeout_s: float = 60.0) -> None:
    """Until the cluster's JetStream answers (its meta group has elected a leader)."""
    from shared.transport import Bus

    bus = await Bus.connect(nats_url, name="up-probe")
    try:
        end = time.monotonic() + timeout_s
        while True:
            try:
                await bus.js.account_info()
                return
            except Exception as exc:
                if time.monotonic() > end:
                    raise RuntimeError(f"JetStream of the NATS cluster not available after {timeout_s:.0f}s: {exc}") from None
                await asyncio.sleep(0.25)
    finally:
        await bus.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="number of worker processes (default 2)")
    p.add_argument("--port", type=int, default=8000, help="gateway HTTP port (default 8000)")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/up-<timestamp>)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    p.add_argument("--ha", action="store_true",
                   help="no single point of failure: 3 clustered nats-servers, Redis with a replica and Sentinel, "
                        "2 schedulers (one leads) and 2 gateways (--port and --port + 1)")
    p.add_argument("--supervised", action="store_true",
                   help="run the workers under a node supervisor that executes the planner's plans (drains and "
                        "starts workers); without it the workers stay as started and plans are only published")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir or REPO / "runs" / time.strftime("up-%Y%m%d-%H%M%S")).resolve()
    cluster = LocalCluster(run_dir, num_workers=args.workers, port=args.port, supervised=args.supervised, ha=args.ha,
                           heal=True)
    print(f"starting DiLaServe{' (--ha)' if args.ha else ''}: {args.workers} workers, run folder {run_dir}", flush=True)
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
        while True:  # the healer (a thread) restarts what exits
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
    urls = "   ".join(c.urls)
    if c.ha:
        infra = (f"NATS cluster {c.nats_url}\nRedis via Sentinel {c.redis_url} (master and replica on ports "
                 f"{', '.join(map(str, c.redis_ports))}); schedulers scheduler-0 and scheduler-1 (one leads)")
    else:
        infra = f"NATS {c.nats_url}, Redis {c.redis_url}"
    return f"""
DiLaServe is up: {urls}
{infra}
logs: {c.run_dir / 'logs'}   (a process that exits is restarted; see the messages here)

  curl -s {c.url}/v1/completions -H 'content-type: application/json' \\
       -d '{{"model": "dilaserve-tiny", "prompt": "123+456=", "max_tokens": 16}}'

Press Ctrl-C to stop.
"""
