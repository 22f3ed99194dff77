"""`dilaserve up --ha` on real processes (3 clustered nats-servers, a Redis master, its replica and 3
Sentinels, 2 schedulers, 2 gateways, planner, worker; all on random loopback ports, stopped by PID): the
leading scheduler, the NATS node leading the submit lane in use and the Redis master are SIGKILLed
under load, nothing restarted by the test. Every accepted request completes exactly once with its
uninterrupted output, and each failover takes at most 5 s."""

from __future__ import annotations

import asyncio

import pytest

from shared import subjects
from shared.transport import Bus
from services.common.processes import wait_sentinels
from tooling.chaos import make_prompts, reference_outputs, run_scenario, start_cluster, wait_cluster_ready

pytestmark = pytest.mark.slow  # ≈ 2 min on an idle 2-core machine: 14 processes, two faults

NUM_REQUESTS = 6
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def ha_setup(tmp_path_factory):
    prompts = make_prompts(NUM_REQUESTS, seed=5)
    refs = reference_outputs(prompts, MAX_TOKENS)
    cluster = start_cluster(tmp_path_factory.mktemp("ha-run"), num_workers=1, ha=True)
    try:
        yield cluster, prompts, refs
    finally:
        cluster.stop()


def test_submit_stream_is_replicated(ha_setup):
    cluster, _, _ = ha_setup

    async def replicas() -> int:
        bus = await Bus.connect(cluster.nats_url, name="test-ha")
        try:
            return [(await bus.js.stream_info(s)).config.num_replicas for s in subjects.SUBMIT_STREAMS]
        finally:
            await bus.close()

    assert asyncio.run(replicas()) == [3, 3]  # both submit lanes
    assert len(cluster.urls) == 2


@pytest.mark.parametrize("scenario", ["kill-leader-scheduler", "kill-nats-node", "kill-redis-master"])
def test_failover_loses_nothing(ha_setup, scenario):
    cluster, prompts, refs = ha_setup
    wait_cluster_ready(cluster)
    rep = asyncio.run(run_scenario(cluster, scenario, prompts, refs, max_tokens=MAX_TOKENS, rps=6.0, timeout_s=90.0))
    summary = {k: rep[k] for k in ("accepted", "completed", "lost", "duplicates", "mismatched_outputs")}
    print(scenario, summary, rep["fault"])
    assert rep["lost"] == 0 and rep["duplicates"] == 0 and rep["mismatched_outputs"] == 0, (summary, rep["problems"])
    assert rep["accepted"] >= NUM_REQUESTS // 2, (summary, rep["rejections"])
    assert set(rep["redis_states"]) == {"completed"}, rep["redis_states"]
    assert rep["fault"]["failover_s"] <= 5.0, rep["fault"]
    # the victim comes back, started by the cluster itself (a Redis node after 5 s, as a replica)
    wait_cluster_ready(cluster, timeout_s=60)
    assert next(p for p in cluster.services + cluster.infra if p.name == rep["fault"]["target"]).alive()


def test_sentinel_urls_are_checked():
    from shared.transport.store import _sentinel_pool

    pool = _sentinel_pool("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/dlm/2", {"max_connections": 4})
    assert pool.service_name == "dlm" and pool.connection_kwargs["db"] == 2
    assert [tuple(s.connection_pool.connection_kwargs[k] for k in ("host", "port"))
            for s in pool.sentinel_manager.sentinels] == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    with pytest.raises(ValueError, match="names no master"):
        _sentinel_pool("redis+sentinel://127.0.0.1:26379", {})
    with pytest.raises(ValueError, match="not host:port"):
        _sentinel_pool("redis+sentinel://localhost/dlm/0", {})


def test_redis_fails_over_twice_without_losing_writes(tmp_path):
    """Master killed, Sentinel promotes the replica, the healer brings the old master back as a replica
    of the new one (it asks Sentinel first); then the new master is killed too: every write survives."""
    from services.common.processes import Healer, sentinel_master
    from shared.transport import Store
    from tooling.local_cluster import LocalCluster

    c = LocalCluster(tmp_path, ha=True)
    healer = None
    try:
        c._start_ha_infra()
        healer = Healer([c.infra], print)
        healer.start()

        async def write_then_kill(key: str) -> None:
            store = await Store.connect(c.redis_url)
            try:
                await store.r.set(key, "1")
                master = int(sentinel_master(c.sentinel_ports[0])["port"])
                victim = next(p for p in c.infra if p.name == f"redis-{c.redis_ports.index(master)}")
                victim.popen.kill()
                for _ in range(200):
                    await asyncio.sleep(0.1)
                    if int(sentinel_master(c.sentinel_ports[0]).get("port", master)) != master:
                        break
                assert await store.r.get(key) == b"1"  # through Sentinel, on the new master
            finally:
                await store.close()

        asyncio.run(write_then_kill("a"))
        wait_sentinels(c.sentinel_ports, timeout_s=90)  # the old master is back, replicating
        asyncio.run(write_then_kill("b"))

        async def both() -> list:
            store = await Store.connect(c.redis_url)
            try:
                return [await store.r.get(k) for k in ("a", "b")]
            finally:
                await store.close()

        assert asyncio.run(both()) == [b"1", b"1"]
    finally:
        if healer is not None:
            healer.stop()
        c.stop()
