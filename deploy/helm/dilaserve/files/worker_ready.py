"""Worker readiness probe: ready when this worker's own heartbeat is on NATS and it takes work.

The worker has no HTTP API; its heartbeat (shared/schemas/cluster.py, WorkerHeartbeat) is what the
scheduler places by, so the probe listens for one: exit 0 for a heartbeat that is not draining,
1 for a draining one or none within the timeout. Reads DILASERVE_NATS_URL and
DILASERVE_WORKER_WORKER_ID from the container's environment.
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats

from shared import subjects
from shared.schemas.cluster import WorkerHeartbeat
from shared.schemas.codec import decode

TIMEOUT_S = float(os.environ.get("DILASERVE_PROBE_TIMEOUT_S", "5"))


def ready(data: bytes) -> bool:
    """A heartbeat that takes work."""
    return not decode(data, WorkerHeartbeat).draining


async def _quiet(exc: Exception) -> None:
    return None  # the exit status and one line say it; the client's own tracebacks would flood the log


async def probe(url: str, worker_id: str, timeout_s: float) -> bool:
    # Two connection attempts at most: the client would otherwise retry for minutes past the probe timeout.
    nc = await nats.connect(url, connect_timeout=timeout_s, allow_reconnect=False, max_reconnect_attempts=1,
                            reconnect_time_wait=0.2,
                            error_cb=_quiet, name=f"probe-{worker_id}")
    try:
        sub = await nc.subscribe(subjects.worker_heartbeat(worker_id))
        msg = await sub.next_msg(timeout=timeout_s)
        return ready(msg.data)
    finally:
        await nc.close()


def main() -> int:
    url = os.environ.get("DILASERVE_NATS_URL", "nats://127.0.0.1:4222")
    worker_id = os.environ.get("DILASERVE_WORKER_WORKER_ID", "")
    if not worker_id:
        print("DILASERVE_WORKER_WORKER_ID is not set", file=sys.stderr)
        return 1
    try:
        ok = asyncio.run(asyncio.wait_for(probe(url, worker_id, TIMEOUT_S), 2 * TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("ready" if ok else "draining")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
