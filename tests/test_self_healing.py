"""`dilaserve up` heals itself: a `LocalCluster` with its healer (real nats-server, redis-server and
services, all stopped by PID). Each service in turn is SIGKILLed with requests in flight: every request
is answered (completed, or an explicit error) within its deadline + 5 s, the healer starts the victim
again, and the cluster serves a new request soon after."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from services.common.processes import Healer, Proc, _spawn, free_port
from tooling.local_cluster import LocalCluster

SLO_MS = 20_000
BODY = {"model": "dilaserve-tiny", "prompt": "123+456=", "max_tokens": 32, "dlm": {"slo_ms": SLO_MS}}
IN_FLIGHT = 8
VICTIMS = ["scheduler", "redis", "nats", "worker-0", "planner", "gateway"]


def test_healer_backs_off_and_logs_exit_codes(tmp_path):
    """A process that keeps dying is restarted after 0.1, 0.2, 0.4 s ... (each exit logged with its code)."""
    def crashing() -> Proc:
        p = _spawn("crasher", ["sh", "-c", "exit 3"], tmp_path)
        p.respawn, p.first_delay_s = crashing, 0.1
        return p

    procs, said = [crashing()], []
    healer = Healer([procs], said.append, max_delay_s=0.4, stable_s=60.0, period_s=0.02)
    healer.start()
    try:
        end = time.monotonic() + 20
        while sum(e[2] == "restarted" for e in healer.events) < 4 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        healer.stop()
    exits = [t for t, _, what in healer.events if what == "exited 3"]
    restarts = [t for t, _, what in healer.events if what == "restarted"]
    assert len(restarts) >= 4, said
    delays = [r - e for e, r in zip(exits, restarts)]
    assert delays[0] >= 0.1 and delays[1] >= 0.2 and delays[2] >= 0.4 and delays[3] >= 0.4, delays
    assert delays[3] < 2.0, delays  # capped at max_delay_s (plus polling)
    assert any("crasher exited (code 3); restarting in 0.2s" in m for m in said), said
    procs[0].popen.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("heal"), num_workers=2, port=free_port(), heal=True,
                     say=lambda m: print(m, flush=True),
                     extra_env={"DILASERVE_SCHEDULER_HEARTBEAT_TIMEOUT_S": "2.0"})
    try:
        c.start(timeout_s=240, progress=False)
        yield c
    finally:
        c.stop()


async def _post(client: httpx.AsyncClient, url: str) -> tuple[str, float]:
    """'ok', 'error <status>' (an explicit HTTP error) or 'transport <exc>' (connection lost), and the time."""
    t = time.monotonic()
    try:
        r = await client.post(url + "/v1/completions", json=BODY)
    except httpx.HTTPError as exc:
        return f"transport {type(exc).__name__}", time.monotonic() - t
    if r.status_code == 200:
        return ("ok" if r.json()["choices"][0]["text"] else "empty"), time.monotonic() - t
    assert "error" in r.json(), r.text  # explicit: an OpenAI-style error body
    return f"error {r.status_code}", time.monotonic() - t


async def _until_served(client: httpx.AsyncClient, url: str, timeout_s: float) -> float:
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        outcome, _ = await _post(client, url)
        if outcome == "ok":
            return time.monotonic() - t
        await asyncio.sleep(0.2)
    raise AssertionError(f"not serving {timeout_s:.0f}s after the fault")


async def _kill_under_load(c: LocalCluster, victim: str) -> dict:
    """Requests every 50 ms from before the kill to after it: some in flight at the kill, some
    submitted while the victim is down."""
    old = next(p for p in c.services + c.infra if p.name == victim)
    async with httpx.AsyncClient(timeout=httpx.Timeout(SLO_MS / 1000 + 30)) as client:
        flying = []
        for k in range(IN_FLIGHT):
            flying.append(asyncio.create_task(_post(client, c.url)))
            if k == IN_FLIGHT // 2:
                os.kill(old.pid, signal.SIGKILL)
                t_kill = time.monotonic()
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*flying)
        await _until_served(client, c.url, 60)
        recovered_s = time.monotonic() - t_kill
    end = time.monotonic() + 30
    while time.monotonic() < end:  # the healer's first delay is 0.5 s
        new = next(p for p in c.services + c.infra if p.name == victim)
        if new is not old and new.alive():
            break
        await asyncio.sleep(0.1)
    return {"answers": answers, "recovered_s": recovered_s, "restarted": new is not old and new.alive()}


@pytest.mark.parametrize("victim", VICTIMS)
def test_sigkill_is_healed(cluster, victim):
    rep = asyncio.run(_kill_under_load(cluster, victim))
    print(victim, rep)
    assert rep["restarted"], victim
    assert any(ev[1] == victim and ev[2] == "exited -9" for ev in cluster.healer.events)
    for outcome, took_s in rep["answers"]:
        assert took_s <= SLO_MS / 1000 + 5, (victim, rep)
        if victim != "gateway":  # a killed gateway drops its connections; every other fault is ridden out
            assert outcome == "ok", (victim, rep)
    # measured on the 2-core VM beside a training job: 0.2-1.2 s, a gateway (its start-up) 3.4 s
    assert rep["recovered_s"] <= 10, rep
