"""`dilaserve soak` on the shared real cluster: concurrent streams all finish, memory is sampled."""

from __future__ import annotations

import argparse
import asyncio

from tooling.soak import soak, summarize


def test_concurrent_streams_finish_without_errors(cluster):
    pid = cluster.procs["gateway"].pid
    stats, memory, wall = asyncio.run(soak(cluster.url, clients=24, duration_s=6.0, max_tokens=8,
                                           gateway_pid=pid, timeout_s=120.0))
    args = argparse.Namespace(clients=24, duration=6.0, max_tokens=8, warmup=1.0, max_growth=10.0)
    summary = summarize(stats, memory, wall, args)
    assert summary["errors"] == 0, summary["first_errors"]
    assert summary["completed"] >= 24  # every client finished at least one stream
    assert summary["gateway_rss_mb_end"] and summary["gateway_rss_mb_end"] > 10  # really read from /proc
    assert summary["ttft_p50_s"] <= summary["latency_p50_s"]
