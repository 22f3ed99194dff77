"""What the planner hears on NATS about the workers: their load and the scheduler's live set.

The Kubernetes actuator picks which pods a scale-down removes by load (the busiest stay, as the drain
rule says), and counts a drain as done once the scheduler no longer lists the worker (its draining
heartbeat arrived and its requests were handed back) and the pod is gone.
"""

from __future__ import annotations

from shared import subjects
from shared.schemas.cluster import SchedulerHeartbeat, WorkerHeartbeat


class ClusterView:
    def __init__(self) -> None:
        self.load: dict[str, int] = {}  # worker id -> requests it holds (last heartbeat)
        self.live: set[str] | None = None  # the scheduler's placeable workers; None = not heard yet
        self._subs: list = []

    async def start(self, bus) -> None:
        self._subs = [await bus.subscribe(subjects.worker_heartbeat(), WorkerHeartbeat, self._on_worker),
                      await bus.subscribe(subjects.scheduler_heartbeat(), SchedulerHeartbeat, self._on_scheduler)]

    async def _on_worker(self, hb: WorkerHeartbeat, headers: dict[str, str]) -> None:
        self.load[hb.worker_id] = hb.num_active

    async def _on_scheduler(self, hb: SchedulerHeartbeat, headers: dict[str, str]) -> None:
        self.live = set(hb.worker_ids)

    def scheduler_released(self, worker_ids: set[str]) -> bool:
        """The scheduler places nothing on these workers any more (True when no scheduler is heard)."""
        return self.live is None or not (self.live & worker_ids)

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []
