"""Crash safety with real processes: no accepted request is lost when the scheduler or a worker dies."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import time

import httpx

LONG_CHAT = {"messages": [{"role": "user", "content": "rev:abcdefghijklmnopqrstuvwx="}], "max_tokens": 96,
             "min_threshold": 1.0}


def _post(cluster, body: dict) -> httpx.Response:
    return httpx.post(cluster.url + "/v1/completions", json=body, timeout=180)


def _wait_status(cluster, rid: str, states: tuple[str, ...], timeout_s: float = 60) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        st = httpx.get(f"{cluster.url}/v1/requests/{rid}").json()
        if st.get("status") in states:
            return st
        time.sleep(0.05)
    raise AssertionError(f"{rid} never reached {states}: {st}")


def test_scheduler_crash_loses_nothing(cluster):
    sched = cluster.procs["scheduler"]
    os.kill(sched.pid, signal.SIGKILL)
    sched.popen.wait()
    with cf.ThreadPoolExecutor(4) as pool:
        # Accepted while no scheduler runs: they wait in JetStream.
        futs = [pool.submit(_post, cluster, {"prompt": f"{i}+2=", "max_tokens": 8}) for i in range(4)]
        time.sleep(1.0)
        assert not any(f.done() for f in futs)
        cluster.start("scheduler", ["scheduler"])
        results = [f.result() for f in futs]
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert all(r.json()["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    cluster.wait_ready()


def test_worker_crash_resumes_from_checkpoint(cluster):
    with httpx.stream("POST", cluster.url + "/v1/chat/completions", json={**LONG_CHAT, "stream": True}, timeout=180) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        rid = first["id"]
        st = _wait_status(cluster, rid, ("running",))
        victim = st["worker_id"]
        time.sleep(0.1)  # let it commit a block, if the CPU allows
        proc = cluster.procs[victim]
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    final = events[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length"), final
    assert final["dlm"]["worker_id"] != victim  # finished elsewhere
    assert httpx.get(f"{cluster.url}/v1/requests/{rid}").json()["status"] == "completed"
    cluster.start(victim, ["worker", "--worker-id", victim])
    cluster.wait_ready()
