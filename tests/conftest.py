"""Fixtures: real nats-server and redis-server on random loopback ports (stopped by PID), and the whole
service stack (scheduler, planner, 2 workers, gateway) as real processes against them."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.processes import (
    Proc, free_port, service_env, start_nats, start_redis, start_service, wait_port, wait_ready,
)

NUM_WORKERS = 2


@pytest.fixture(scope="module")
def random_model():
    """A tiny LLaDA model with random weights (GQA: 4 heads over 2 K/V heads), for engine tests."""
    import torch

    from services.worker.model import LLaDAConfig, LLaDAModelLM

    torch.manual_seed(0)
    cfg = LLaDAConfig(
        d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=96, vocab_size=64, embedding_size=64,
        max_sequence_length=96, mask_token_id=1, eos_token_id=0, pad_token_id=0,
    )
    return LLaDAModelLM(cfg).eval()


def _stop(proc: Proc, grace_s: float = 10.0) -> None:
    """Stop one process by its PID: SIGTERM, then SIGKILL."""
    if proc.popen.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dilaserve-run")


@pytest.fixture(scope="session")
def nats_url(run_dir):
    port = free_port()
    proc = start_nats(run_dir, port)
    wait_port(port, 30, proc)
    yield f"nats://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="session")
def redis_url(run_dir):
    port = free_port()
    proc = start_redis(run_dir, port)
    wait_port(port, 30, proc)
    yield f"redis://127.0.0.1:{port}"
    _stop(proc)


@dataclass
class Cluster:
    url: str
    nats_url: str
    redis_url: str  # the services use database 0
    run_dir: Path
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> Proc:
        self.procs[name] = start_service(name, args, self.run_dir, self.env)
        return self.procs[name]

    def restart(self, name: str, args: list[str], kill: bool = True) -> Proc:
        old = self.procs[name]
        if kill and old.popen.poll() is None:
            os.kill(old.pid, signal.SIGKILL)
            old.popen.wait()
        return self.start(name, args)

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        wait_ready(self.url, NUM_WORKERS, list(self.procs.values()), timeout_s, progress=False)


@pytest.fixture(scope="session")
def cluster(nats_url, redis_url, run_dir) -> Cluster:
    port = free_port()
    env = service_env(nats_url, redis_url + "/0", {
        "DILASERVE_GATEWAY_PORT": str(port), "DILASERVE_PLANNER_NUM_WORKERS": str(NUM_WORKERS),
        "DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S": "2.0",
    })
    c = Cluster(f"http://127.0.0.1:{port}", nats_url, redis_url, run_dir, env)
    c.start("scheduler", ["scheduler"])
    c.start("planner", ["planner"])
    for i in range(NUM_WORKERS):
        c.start(f"worker-{i}", ["worker", "--worker-id", f"worker-{i}"])
    c.start("gateway", ["gateway"])
    try:
        c.wait_ready()
    except Exception:
        for p in c.procs.values():
            _stop(p)
        raise
    yield c
    for name in ["gateway"] + [n for n in c.procs if n.startswith("worker")] + ["scheduler", "planner"]:
        _stop(c.procs[name])
