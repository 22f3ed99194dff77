"""A restarted node supervisor adopts the workers its killed predecessor left running (no second process
under the same worker id), and drains them like its own. Stand-in workers: sleeping Python processes
whose command line carries ``--worker-id <id>``, as real workers' do. No NATS or Redis needed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from services.common.processes import Proc
from services.supervisor.service import Supervisor, worker_pid_matches
from shared.schemas.cluster import InstanceCount, NodePlan, Plan


def _plan(pid: str, n: int) -> Plan:
    ic = [InstanceCount(config="tp1-dual", count=n)]
    return Plan(plan_id=pid, created_s=0.0, instances=ic, reason="test", nodes=[NodePlan(node=0, instances=ic)])


def _spawner(tmp_path, started: list):
    def spawn(worker_id: str, config: str) -> Proc:
        cmd = [sys.executable, "-c", "import time; time.sleep(120)", "--worker-id", worker_id]
        popen = subprocess.Popen(cmd, start_new_session=True)
        started.append(popen)
        return Proc(worker_id, popen, tmp_path / f"{worker_id}.log")
    return spawn


def test_restarted_supervisor_adopts_running_workers_and_drains_them(tmp_path):
    registry = tmp_path / "node0-workers.json"
    started: list[subprocess.Popen] = []
    ids = ["worker-0", "worker-1"]
    try:
        first = Supervisor(0, 2, _spawner(tmp_path, started), worker_ids=ids, registry=registry, drain_timeout_s=5)
        res = asyncio.run(first.apply(_plan("p1", 2)))
        assert res.started == ids and len(started) == 2
        pids = {w: e["pid"] for w, e in json.loads(registry.read_text()).items()}
        assert pids == {"worker-0": started[0].pid, "worker-1": started[1].pid}
        # the first supervisor dies without stopping anything (SIGKILL); a new one starts on the same node
        second = Supervisor(0, 2, _spawner(tmp_path, started), worker_ids=ids, registry=registry, drain_timeout_s=5)
        assert second.recover() == ids and second.running() == {"tp1-dual": 2}
        assert asyncio.run(second.apply(_plan("p1", 2))).started == [] and len(started) == 2  # no duplicates
        res = asyncio.run(second.apply(_plan("p2", 1)))  # drains an adopted worker: SIGTERM, wait for exit
        assert res.drained == ["worker-1"] and res.killed == []
        assert not worker_pid_matches(pids["worker-1"], "worker-1")
        assert set(json.loads(registry.read_text())) == {"worker-0"}
        second.stop_all(grace_s=5)
        assert not worker_pid_matches(pids["worker-0"], "worker-0") and json.loads(registry.read_text()) == {}
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_recover_ignores_dead_or_recycled_pids_and_a_broken_registry(tmp_path):
    registry = tmp_path / "node0-workers.json"
    # this test process's own PID does not run "--worker-id worker-0"; PID 2**22 + 1 does not exist
    registry.write_text(json.dumps({"worker-0": {"pid": os.getpid(), "config": "tp1-dual"},
                                    "worker-1": {"pid": 2 ** 22 + 1, "config": "tp1-dual"}}))
    sup = Supervisor(0, 2, lambda w, c: None, registry=registry)
    assert sup.recover() == [] and sup.running() == {}
    assert json.loads(registry.read_text()) == {}  # rewritten to what this supervisor runs
    for broken in ("{not json", "[1, 2]", '{"worker-0": 7, "worker-1": {"pid": "x", "config": "tp1-dual"}}'):
        registry.write_text(broken)
        assert Supervisor(0, 2, lambda w, c: None, registry=registry).recover() == [], broken


def test_a_worker_is_recognised_the_moment_its_popen_returns(tmp_path):
    # Popen returns when exec closes the close-on-exec pipe, a moment before the kernel sets up the new
    # command line: /proc/<pid>/cmdline then reads empty (a few spawns in 200 on a 2-core machine)
    started: list[subprocess.Popen] = []
    try:
        for k in range(200):
            proc = _spawner(tmp_path, started)(f"worker-{k}", "tp1-dual")
            assert worker_pid_matches(proc.pid, f"worker-{k}"), k
            proc.popen.kill()
    finally:
        for p in started:
            p.kill()
            p.wait()
