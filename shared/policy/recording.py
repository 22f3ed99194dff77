"""A record of everything a driver tells a ``SchedulerCore`` and everything it decides, as plain dicts.

``RecordingCore`` stands in for the core (same calls, same answers) and hands each input, with its
``now_s``, and each ``schedule`` output to a sink. The live scheduler writes the records as JSON lines
(``scheduler.record_path``); ``shared/sim/recorded.py`` replays them through a fresh core built from the
first record and compares decisions. Pure: the sink does the I/O.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

from shared.policy.scheduling import SchedulerCore
from shared.policy.types import InstanceView, RequestView, SchedulerOutput

Sink = Callable[[dict[str, Any]], None]


def core_snapshot(core: SchedulerCore) -> dict[str, Any]:
    """What a replay needs to build the same core: its switches and its models' current state."""
    return {"kind": "start", "params": asdict(core.params),
            "cost": {n: [list(p) for p in zip(c.xs, c.ys)] for n, c in core.cost.curves.items()},
            "cost_learning_rate": core.cost.learning_rate, "cost_quantile": core.cost.quantile,
            "cost_global_share": core.cost.global_share,
            "tps": {str(t): v for t, v in core.predictor.tps.items()},
            "tps_learning_rate": core.predictor.learning_rate}


def output_record(out: SchedulerOutput) -> dict[str, Any]:
    return asdict(out)


class RecordingCore:
    """Forwards every input to ``core`` and records it; queries pass through unrecorded."""

    def __init__(self, core: SchedulerCore, sink: Sink):
        self.core = core
        self._sink = sink
        sink(core_snapshot(core))

    def __getattr__(self, name: str) -> Any:  # queries (instance_of, queue_length, cap, params, cost …)
        return getattr(self.core, name)

    def _log(self, kind: str, now_s: float, **data: Any) -> None:
        self._sink({"kind": kind, "now_s": now_s, **data})

    def on_arrival(self, req: RequestView, now_s: float) -> None:
        self._log("arrival", now_s, req=asdict(req))
        self.core.on_arrival(req, now_s)

    def on_instance_update(self, inst: InstanceView, now_s: float) -> None:
        self._log("instance", now_s, inst=asdict(inst))
        self.core.on_instance_update(inst, now_s)

    def on_instance_lost(self, instance_id: str, now_s: float) -> list[str]:
        self._log("instance_lost", now_s, instance_id=instance_id)
        return self.core.on_instance_lost(instance_id, now_s)

    def on_progress(self, request_id: str, committed: int, blocks_refreshed: int, at_block_boundary: bool,
                    now_s: float) -> None:
        self._log("progress", now_s, request_id=request_id, committed=committed,
                  blocks_refreshed=blocks_refreshed, at_block_boundary=at_block_boundary)
        self.core.on_progress(request_id, committed, blocks_refreshed, at_block_boundary, now_s)

    def on_finished(self, request_id: str, now_s: float) -> None:
        self._log("finished", now_s, request_id=request_id)
        self.core.on_finished(request_id, now_s)

    def requeue(self, request_id: str, now_s: float) -> None:
        self._log("requeue", now_s, request_id=request_id)
        self.core.requeue(request_id, now_s)

    def assign(self, request_id: str, instance_id: str, now_s: float) -> None:
        self._log("assign", now_s, request_id=request_id, instance_id=instance_id)
        self.core.assign(request_id, instance_id, now_s)

    def schedule(self, now_s: float) -> SchedulerOutput:
        out = self.core.schedule(now_s)
        self._log("schedule", now_s, out=output_record(out))
        return out

    def applied(self, key: tuple, now_s: float) -> None:
        """The driver carried out a decision: ``("place", rid, instance, cap, deadline_s)``, ``("migrate",
        rid, src, dst)``, ``("caps", rid, cap)`` or ``("refuse", rid)``."""
        self._log("applied", now_s, key=list(key))
