"""Node supervisor: the plan executor (docs/design.md §3, §4.5). Turns the planner's ``Plan`` into worker processes.

On a new plan the supervisor of node ``n`` compares ``plan.nodes[n]`` (instances per configuration) with
the workers it runs and:

1. **drains** each worker the plan no longer wants: SIGTERM, i.e. the worker's graceful stop
   (``WorkerService.stop``): it takes no new assignment, checkpoints every in-flight request at its
   block boundary (``rewind_to_block_start``) and publishes a draining heartbeat, on which the scheduler
   re-places those requests (``resume=True``); the worker that gets one continues from the checkpoint,
   which reproduces the uninterrupted output exactly (decoding is deterministic given the committed
   blocks). The supervisor waits for the process to exit (``drain_timeout_s``, then SIGKILL: the
   scheduler's heartbeat timeout re-places from the last checkpoint instead);
2. **starts** the workers the plan adds, each on ``tp`` free slots of the node, once the drained ones
   have freed them.

What is real on CPU: a "GPU" is a worker slot; one worker process = one instance; only TP1-style
configurations (``tp1-<cache>``) run — a TP degree above 1 would occupy that many slots, but there is no
tensor parallelism inside a worker yet, so the supervisor refuses such configurations (logged, counted
in ``ApplyResult.unsupported``) instead of pretending. Migration is by hand-back at a block boundary
(the live scheduler has no "draining but still running" state); the simulator models the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shared.instance_config import InstanceConfig, tp_of
from shared.policy.planner.drain import Running, to_drain
from shared.schemas.cluster import Plan

log = logging.getLogger("dilaserve.supervisor")

SUPPORTED_TP = (1,)  # CPU workers: no tensor parallelism inside a worker yet


def node_share(plan: Plan, node: int) -> dict[str, int]:
    """What ``plan`` asks of ``node``: its per-node entry, or the totals when the plan has no placement
    (a single-node plan)."""
    if plan.nodes:
        for npl in plan.nodes:
            if npl.node == node:
                return {ic.config: ic.count for ic in npl.instances if ic.count > 0}
        return {}
    return {ic.config: ic.count for ic in plan.instances if ic.count > 0} if node == 0 else {}


class AdoptedProc:
    """A worker this supervisor did not start (its predecessor did, then died): known by PID only.

    It is alive while the PID exists, is not a zombie and still runs ``--worker-id <id>`` — the check
    that a recycled PID is not mistaken for the worker."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid, self.popen = name, pid, None

    def alive(self) -> bool:
        return worker_pid_matches(self.pid, self.name)


def worker_pid_matches(pid: int, worker_id: str, exec_wait_s: float = 1.0) -> bool:
    """Is ``pid`` a live (non-zombie) process whose command line carries ``--worker-id worker_id``?"""
    end = time.monotonic() + exec_wait_s
    while True:
        argv = _live_argv(pid)
        # an empty command line on a live process: exec is still setting up its arguments (the parent's
        # Popen returns once the close-on-exec pipe closes, a moment before); look again shortly
        if argv != [""] or time.monotonic() >= end:
            break
        time.sleep(0.01)
    return any(a == "--worker-id" and b == worker_id for a, b in zip(argv, argv[1:]))


def _live_argv(pid: int) -> list[str]:
    """The command line of ``pid`` ([] if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return []
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except (OSError, IndexError):
        return []


def _exited(proc, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the process to end; True if it did."""
    popen = getattr(proc, "popen", None)
    if popen is not None:
        try:
            popen.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    end = time.monotonic() + timeout_s
    while proc.alive():
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def _signal(proc, sig: int) -> None:
    if proc.alive():
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Instance:
    worker_id: str
    config: str
    proc: object  # services.common.processes.Proc (popen, pid, alive())

    @property
    def slots(self) -> int:
        return tp_of(self.config)


@dataclass
class ApplyResult:
    plan_id: str
    drained: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # did not exit within drain_timeout_s
    unsupported: dict[str, int] = field(default_factory=dict)
    no_room: dict[str, int] = field(default_factory=dict)


Spawn = Callable[[str, str], object]  # (worker_id, config) -> Proc


class Supervisor:
    """Executes plans for one node. ``spawn(worker_id, config)`` starts a worker process."""

    def __init__(self, node: int, slots: int, spawn: Spawn, worker_ids: list[str] | None = None,
                 drain_timeout_s: float = 30.0, prefix: str = "", registry: Path | None = None) -> None:
        self.node = node
        self.registry = registry  # JSON {worker_id: {pid, config}}: what a restarted supervisor adopts
        self.slots = slots
        self.spawn = spawn
        self.pool = list(worker_ids or [])  # ids to (re)use, in order; then "<prefix>w<k>"
        self.prefix = prefix or f"node{node}-"
        self.drain_timeout_s = drain_timeout_s
        self.instances: dict[str, Instance] = {}
        self.plan_id = ""
        self._seq = 0
        self._lock = asyncio.Lock()

    def adopt(self, worker_id: str, config: str, proc) -> None:
        """Take over a worker started by someone else (the cluster's initial layout)."""
        self.instances[worker_id] = Instance(worker_id, config, proc)
        self._save()

    def recover(self) -> list[str]:
        """Adopt the workers a previous supervisor of this node left running (it was killed without
        stopping them: they are in their own sessions and kept serving). Without this a restarted
        supervisor would start a second process under the same worker id."""
        try:
            entries = json.loads(self.registry.read_text()) if self.registry else {}
        except (OSError, ValueError) as exc:
            log.warning("worker registry %s unreadable (%s): adopting nothing", self.registry, exc)
            entries = {}
        if not isinstance(entries, dict):
            log.warning("worker registry %s is not an object: adopting nothing", self.registry)
            entries = {}
        adopted = []
        for wid, e in sorted(entries.items()):
            try:
                pid, config = int(e.get("pid", 0)), str(e.get("config", ""))
            except (AttributeError, TypeError, ValueError):
                log.warning("worker registry entry %s=%r malformed: skipped", wid, e)
                continue
            if wid not in self.instances and pid > 0 and config and worker_pid_matches(pid, wid):
                self.instances[wid] = Instance(wid, config, AdoptedProc(wid, pid))
                adopted.append(wid)
        if adopted:
            log.info("node %d: adopted running workers %s", self.node, adopted)
        self._save()
        return adopted

    def _save(self) -> None:
        if self.registry is None:
            return
        data = {i.worker_id: {"pid": i.proc.pid, "config": i.config} for i in self.instances.values()}
        tmp = self.registry.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(self.registry)  # atomic: a crash leaves the old or the new registry, never half

    def running(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for inst in self.instances.values():
            out[inst.config] = out.get(inst.config, 0) + 1
        return dict(sorted(out.items()))

    def free_slots(self) -> int:
        return self.slots - sum(i.slots for i in self.instances.values())

    def _new_id(self) -> str:
        for wid in self.pool:
            if wid not in self.instances:
                return wid
        while True:
            self._seq += 1
            wid = f"{self.prefix}w{self._seq}"
            if wid not in self.instances:
                return wid

    async def apply(self, plan: Plan) -> ApplyResult:
        """Drain what the plan removes (wait for exit), then start what it adds. Serialised per node."""
        async with self._lock:
            res = ApplyResult(plan.plan_id)
            want = node_share(plan, self.node)
            for cfg in list(want):
                if InstanceConfig.parse_or_none(cfg) is None or tp_of(cfg) not in SUPPORTED_TP:  # or no configuration
                    res.unsupported[cfg] = want.pop(cfg)
                    log.error("plan %s: %s × %d not supported on this node (no tensor parallelism in a worker)",
                              plan.plan_id, cfg, res.unsupported[cfg])
            have: dict[str, list[Instance]] = {}
            for inst in self.instances.values():
                have.setdefault(inst.config, []).append(inst)
            # the planner's drain rule; this node sees no per-worker load, so the newest go first
            drain = set(to_drain([Running(i.worker_id, i.config) for i in self.instances.values()], want))
            victims = [i for i in self.instances.values() if i.worker_id in drain]
            await asyncio.gather(*(self._drain(v, res) for v in victims))
            for cfg, n in sorted(want.items()):
                for _ in range(n - len(have.get(cfg, []))):
                    if self.free_slots() < tp_of(cfg):
                        res.no_room[cfg] = res.no_room.get(cfg, 0) + 1
                        continue
                    wid = self._new_id()
                    self.instances[wid] = Instance(wid, cfg, self.spawn(wid, cfg))
                    res.started.append(wid)
                    self._save()
            self.plan_id = plan.plan_id
            log.info("node %d applied plan %s: drained %s, started %s, running %s", self.node, plan.plan_id,
                     res.drained, res.started, self.running())
            return res

    async def _drain(self, inst: Instance, res: ApplyResult) -> None:
        proc, loop = inst.proc, asyncio.get_running_loop()
        if proc.alive():
            _signal(proc, signal.SIGTERM)  # graceful stop: hand back at the block boundary
            if not await loop.run_in_executor(None, _exited, proc, self.drain_timeout_s):
                _signal(proc, signal.SIGKILL)
                await loop.run_in_executor(None, _exited, proc, 10.0)
                res.killed.append(inst.worker_id)
        self.instances.pop(inst.worker_id, None)
        self._save()
        res.drained.append(inst.worker_id)

    async def run(self, bus, store=None) -> None:
        """Follow ``subjects.plan_publish()`` until cancelled (each plan applied in order).

        With ``store``, also watch the planner's heartbeat: when the plan id it reports changes to one this
        node has not applied (a publish missed during a NATS blip), the plan is read back from Redis."""
        from shared import subjects
        from shared.schemas.cluster import PlannerHeartbeat

        queue: asyncio.Queue[Plan] = asyncio.Queue()
        reported = {"plan_id": ""}

        async def on_plan(plan: Plan, headers: dict[str, str]) -> None:
            queue.put_nowait(plan)

        async def on_heartbeat(hb: PlannerHeartbeat, headers: dict[str, str]) -> None:
            changed = hb.plan_id and hb.plan_id != reported["plan_id"]
            reported["plan_id"] = hb.plan_id
            if changed and hb.plan_id != self.plan_id:
                plan = await store.load_plan()
                if plan is not None and plan.plan_id == hb.plan_id:
                    log.info("planner reports plan %s, not applied here: read it back from Redis", plan.plan_id)
                    queue.put_nowait(plan)

        sub = await bus.subscribe(subjects.plan_publish(), Plan, on_plan)
        hb_sub = await bus.subscribe(subjects.planner_heartbeat(), PlannerHeartbeat, on_heartbeat) if store else None
        try:
            while True:
                plan = await queue.get()
                while not queue.empty():  # only the newest plan matters
                    plan = queue.get_nowait()
                if plan.plan_id != self.plan_id:
                    await self.apply(plan)
        finally:
            await sub.unsubscribe()
            if hb_sub is not None:
                await hb_sub.unsubscribe()

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every worker (graceful), SIGKILL what ignores it (shutdown of the whole node)."""
        for inst in list(self.instances.values()):
            _signal(inst.proc, signal.SIGTERM)
        for inst in list(self.instances.values()):
            if not _exited(inst.proc, grace_s):
                _signal(inst.proc, signal.SIGKILL)
                _exited(inst.proc, 10.0)
        self.instances.clear()
        self._save()
