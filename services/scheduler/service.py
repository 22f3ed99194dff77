"""Scheduler service: consume submissions, keep the cluster view, place requests through a policy.

receive (JetStream / heartbeats / events) → decode → tell the policy core (plain data) → core.schedule →
persist → publish. The core owns which request is queued or on which instance; this service keeps only
what delivery needs (the submission, its JetStream handle, trace headers, a migration in transit).
A submission is acked only after its assignment is persisted in Redis; on restart the state is rebuilt
from Redis and unacked submissions are redelivered by JetStream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from shared import subjects
from shared.telemetry import names as tn
from shared.config import NatsConfig, SchedulerConfig
from shared.policy.recording import RecordingCore
from shared.policy.types import InstanceView, RequestView, SchedulerOutput, StepSample, TpsSample
from shared.schemas.migration import MigrateRequest, RequestReleased
from shared.schemas.requests import BlockCommitted
from shared.schemas.cluster import PlannerHeartbeat, SchedulerHeartbeat, WorkerHeartbeat
from shared.schemas.records import TERMINAL_STATES
from shared.schemas.requests import (
    Assignment, AssignmentAck, CancelRequest, RequestFinished, SubmitRequest, ThresholdCaps, WorkSoFar,
    deadline_refusal,
)
from shared.transport import Bus, Delivery, Store
from shared.transport.bus import NoResponders
from shared.transport.lanes import LANE_SPREAD_S, ensure_lanes, spread_leaders
from shared.transport.store import FENCED

log = logging.getLogger("dilaserve.scheduler")


@dataclass
class _Entry:
    submit: SubmitRequest
    view: RequestView
    headers: dict[str, str]
    # its JetStream copies, acked once Redis holds its assignment: none when rebuilt from Redis or
    # re-queued after a worker died, two when a gateway stored it on both submit lanes
    deliveries: list[Delivery] = field(default_factory=list)
    record_retries: int = 0
    confirm: bool = False  # rebuilt from Redis as assigned: re-send the assignment when its worker shows up
    persisted: bool = False  # Redis holds an assignment for it: its JetStream message may be acked at once
    migrating_from: str | None = None  # the worker that still holds it until it is released at a boundary
    blocks_done: int = 0  # highest block count reported (a resumed request re-announces earlier blocks)
    prior: WorkSoFar | None = None  # what the workers it migrated off did: rides on its next assignment


@dataclass
class _Worker:
    last_seen_mono: float
    hb: WorkerHeartbeat | None = None  # None: known only from Redis (rebuild), not placeable yet


def request_view(s: SubmitRequest, block_length: int) -> RequestView:
    return RequestView(
        request_id=s.request_id, arrival_s=s.arrival_s,
        deadline_s=s.deadline_s if s.deadline_s is not None else math.inf,
        prompt_len=len(s.prompt_ids), output_len=s.max_tokens, block_len=block_length,
        priority=s.priority, min_threshold=s.min_threshold or 0.0,
    )


class SchedulerService:
    def __init__(self, cfg: SchedulerConfig, nats_cfg: NatsConfig, bus: Bus, store: Store, policy, tel,
                 block_length: int = 8, fence: Callable[[], tuple[str, str]] | None = None,
                 on_fenced: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.fence = fence  # the leader lease's (key, value): every placement is fenced by it
        self.on_fenced = on_fenced  # a placement found the lease held by another scheduler
        self.nats_cfg = nats_cfg
        self.bus = bus
        self.store = store
        self._record = open(cfg.record_path, "a", buffering=1) if cfg.record_path else None
        self.policy = RecordingCore(policy, self._write_record) if self._record else policy
        self.tel = tel
        self.block_length = block_length
        self.entries: dict[str, _Entry] = {}
        self.workers: dict[str, _Worker] = {}
        self.planner_seen_mono = -math.inf
        self.kick = asyncio.Event()
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()  # dispatches under way (awaited on a graceful stop)
        self.stopping = False
        self.lanes = 1  # submit lanes (shared/transport/lanes.py), known once started

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.rebuild()
        self.lanes = await ensure_lanes(self.bus, self.nats_cfg)
        self._subs = [
            await self.bus.subscribe(subjects.worker_heartbeat(), WorkerHeartbeat, self.on_heartbeat),
            await self.bus.subscribe(subjects.planner_heartbeat(), PlannerHeartbeat, self.on_planner),
            await self.bus.subscribe(subjects.request_done(), RequestFinished, self.on_done),
            await self.bus.subscribe(subjects.request_commit(), BlockCommitted, self.on_commit),
            await self.bus.subscribe(subjects.request_released(), RequestReleased, self.on_released),
            await self.bus.subscribe(subjects.request_cancel(), CancelRequest, self.on_cancel),
            await self.bus.subscribe(subjects.request_offer(), SubmitRequest, self.on_offer),
            *[await self._consume_submissions(lane) for lane in range(self.lanes)],
        ]
        self._tasks = [asyncio.create_task(self.place_loop()), asyncio.create_task(self.status_loop())]
        if self.lanes > 1:
            self._tasks.append(asyncio.create_task(self.lane_loop()))
        log.info("scheduler %s ready", self.cfg.scheduler_id)

    async def _consume_submissions(self, lane: int, patience_s: float = 10.0):
        """Bind a submit lane's durable consumer. After a failover the deposed leader may still be bound
        to it for a moment (until its connection closes or it notices): keep trying for ``patience_s``."""
        end = time.monotonic() + patience_s
        while True:
            try:
                return await self.bus.js_consume(subjects.request_submit(lane), subjects.SUBMIT_STREAMS[lane],
                                                 subjects.SCHEDULER_DURABLE, SubmitRequest, self.on_submit,
                                                 self.cfg.ack_wait_s)
            except Exception as exc:
                if time.monotonic() > end:
                    raise
                log.warning("submission consumer not bound yet (%s); retrying", exc)
                await asyncio.sleep(0.25)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Graceful: take no new submissions, let dispatches under way finish (persisted assignments
        are sent), hand unplaced submissions back to JetStream (nak: the next scheduler gets them at
        once; they are also in Redis as queued), then stop."""
        self.stopping = True
        for sub in reversed(self._subs):  # the JetStream consumer first
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.warning("unsubscribe failed: %s", exc)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=grace_s)
        for rid, e in self.entries.items():
            for d in e.deliveries if self.policy.instance_of(rid) is None else ():
                try:
                    await d.nak()
                except Exception as exc:
                    log.warning("nak of %s failed: %s", e.submit.request_id, exc)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._record is not None:
            self._record.close()

    def _write_record(self, rec: dict) -> None:
        self._record.write(json.dumps(rec) + "\n")  # type: ignore[union-attr]

    def _applied(self, key: tuple) -> None:
        """Note a decision carried out (recorded runs only: the fidelity replay checks them)."""
        if isinstance(self.policy, RecordingCore):
            self.policy.applied(key, time.time())

    async def rebuild(self) -> None:
        """Active requests from Redis: assigned ones keep their worker (given a heartbeat grace period)."""
        now = time.monotonic()
        for rec in await self.store.active_requests():
            if rec.state in ("cancelled",):
                continue
            wid = rec.worker_id if rec.state in ("assigned", "running") and rec.worker_id else None
            view = request_view(rec.submit, self.block_length)
            self.entries[rec.request_id] = _Entry(rec.submit, view, {},
                                                  confirm=wid is not None, persisted=wid is not None)
            self.policy.on_arrival(view, time.time())
            if wid:
                self.policy.assign(rec.request_id, wid, time.time())
                self.workers.setdefault(wid, _Worker(last_seen_mono=now))
        if self.entries:
            log.info("rebuilt %d active requests from Redis", len(self.entries))
            self.kick.set()

    # -- inputs -------------------------------------------------------------------------------
    async def on_submit(self, d: Delivery[SubmitRequest]) -> None:
        """The durable copy of a submission (JetStream). Acked once Redis holds its assignment."""
        entry = self.entries.get(d.message.request_id)
        if entry is None:
            self._admit(d.message, d.headers, d)
        elif entry.persisted:  # placed already (offered earlier, a redelivery, or rebuilt from Redis)
            await d.ack()
        else:  # offered earlier, still queued, or its copy on the other lane: acked when the assignment is persisted
            entry.deliveries.append(d)

    async def on_offer(self, s: SubmitRequest, headers: dict[str, str]) -> None:
        """The core-NATS copy, usually ahead of the JetStream one: start placing now. A stale offer (e.g.
        flushed after a reconnect) for a finished request is harmless: its Redis transition fails."""
        if not self.stopping and s.request_id not in self.entries:
            self._admit(s, headers, None)

    def _admit(self, s: SubmitRequest, headers: dict[str, str], delivery: Delivery | None) -> None:
        entry = self.entries[s.request_id] = _Entry(s, request_view(s, self.block_length), headers,
                                                    [delivery] if delivery else [])
        self.policy.on_arrival(entry.view, time.time())
        self.tel.metrics.request_admitted()
        self.kick.set()

    async def on_heartbeat(self, hb: WorkerHeartbeat, headers: dict[str, str]) -> None:
        w = self.workers.get(hb.worker_id)
        if w is None:
            log.info("worker %s joined (%s)", hb.worker_id, hb.instance_config)
            self.workers[hb.worker_id] = w = _Worker(time.monotonic())
        new_capacity = w.hb is None or (w.hb.draining and not hb.draining)
        restarted = w.hb is not None and w.hb.incarnation != hb.incarnation
        w.hb, w.last_seen_mono = hb, time.monotonic()
        if restarted:  # same id, new process: it holds none of the requests the old one had
            log.warning("worker %s restarted (incarnation %s)", hb.worker_id, hb.incarnation)
            self._requeue_worker(hb.worker_id, forget=False)
        self._observe(hb)
        if not restarted and new_capacity and not hb.draining:
            self._confirm_rebuilt(hb.worker_id)
        if hb.draining:
            self._requeue_worker(hb.worker_id, forget=True)
        elif new_capacity:
            self.kick.set()

    async def on_planner(self, hb: PlannerHeartbeat, headers: dict[str, str]) -> None:
        self.planner_seen_mono = time.monotonic()

    async def on_done(self, fin: RequestFinished, headers: dict[str, str]) -> None:
        entry = self._forget(fin.request_id)
        if entry is not None:
            self.kick.set()
            await self._ack(entry)

    async def on_cancel(self, c: CancelRequest, headers: dict[str, str]) -> None:
        entry = self.entries.get(c.request_id)
        if entry is None or self.policy.instance_of(c.request_id) is not None or entry.migrating_from:
            return  # unknown here, or the worker that holds it finalizes the cancel
        self._forget(c.request_id)
        await self._finalize_cancel(c.request_id, entry)

    def _forget(self, rid: str) -> _Entry | None:
        """It is over (finished, cancelled, refused by its worker): out of this service and the core."""
        entry = self.entries.pop(rid, None)
        if entry is not None:
            self.policy.on_finished(rid, time.time())
        return entry

    async def _finalize_cancel(self, rid: str, entry: _Entry) -> None:
        fin = RequestFinished(request_id=rid, status="cancelled", finish_reason="cancelled",
                              num_prompt_tokens=len(entry.submit.prompt_ids), finished_s=time.time())
        if await self.store.finish(fin, time.time()):
            await self.bus.publish(subjects.request_done(rid), fin, entry.headers)
        await self._ack(entry)

    async def _ack(self, entry: _Entry) -> None:
        """Let JetStream forget the submission (its outcome is in Redis). A lost ack only means a
        redelivery later, which finds the request finished or assigned and is acked then."""
        deliveries, entry.deliveries = entry.deliveries, []
        for d in deliveries:
            try:
                await d.ack()
            except Exception as exc:
                log.warning("ack of %s failed: %s", entry.submit.request_id, exc)

    # -- placement ----------------------------------------------------------------------------
    async def place_loop(self) -> None:
        """Schedule after each batch of inputs (kick) and at least every ``lc_period_s`` (load control)."""
        while True:
            try:
                await asyncio.wait_for(self.kick.wait(), timeout=max(0.05, self.cfg.lc_period_s))
            except asyncio.TimeoutError:
                pass
            self.kick.clear()
            try:
                self.place_once()
            except Exception:
                log.exception("placement failed")

    def place_once(self) -> None:
        """One decision of the policy core (shared/policy/scheduling.py), applied as the simulator applies
        it (shared/sim/engine.py): placements with their caps and deadlines → dispatch, migrations → the
        source worker (it lets go at the next block boundary), changed caps → the workers holding those
        requests, refusals and drops → answered with a deadline refusal."""
        out = self.policy.schedule(time.time())
        for p in out.placements:
            self._applied(("place", p.request_id, p.instance_id, p.cap, p.deadline_s))
            asyncio.create_task(self.dispatch(self.entries[p.request_id], p.instance_id, p.cap, p.deadline_s))
        self._migrate(out)
        self._forward_caps(out.caps)
        for rid in out.rejected + out.dropped:
            self._applied(("refuse", rid))
            entry = self.entries.pop(rid, None)  # the core has let it go already
            if entry is not None:
                asyncio.create_task(self._drop(rid, entry, shed=rid in out.dropped))
        self.tel.metrics.queue_depth(self.policy.queue_length())

    def _migrate(self, out: SchedulerOutput) -> None:
        for m in out.migrations:
            entry = self.entries[m.request_id]
            entry.migrating_from = entry.migrating_from or m.src_instance_id  # who holds it until released
            msg = MigrateRequest(request_id=m.request_id, dst_worker_id=m.dst_instance_id, issued_s=time.time())
            asyncio.create_task(self._publish(subjects.worker_migrate(entry.migrating_from), msg))
            self._applied(("migrate", m.request_id, m.src_instance_id, m.dst_instance_id))

    async def _publish(self, subject: str, msg) -> None:
        try:
            await self.bus.publish(subject, msg)
        except Exception as exc:  # NATS reconnecting: a lost migration leaves the request where it is
            log.warning("publish on %s failed: %s", subject, exc)

    async def on_released(self, evt: RequestReleased, headers: dict[str, str]) -> None:
        """A migrating request left its worker at a block boundary: assign it where the core has it now
        (resuming from the checkpoint). Re-queued meanwhile (its target died): the queue places it."""
        entry = self.entries.get(evt.request_id)
        if entry is None or entry.migrating_from != evt.worker_id:
            return
        entry.migrating_from, entry.prior = None, evt.work or entry.prior
        dst = self.policy.instance_of(evt.request_id)
        if dst is not None:
            rid = evt.request_id
            asyncio.create_task(self.dispatch(entry, dst, self.policy.cap(rid), self.policy.deadline(rid)))

    def _observe(self, hb: WorkerHeartbeat) -> None:
        """A heartbeat registers/updates the instance and refits the cost model and step predictor."""
        if hb.draining:
            return  # its requests are re-queued by on_heartbeat (_requeue_worker)
        self.policy.on_instance_update(InstanceView(
            hb.worker_id, hb.instance_config, self.cfg.token_budget, False,
            [StepSample(x.tokens, x.latency_s) for x in hb.step_samples],
            [TpsSample(x.threshold, x.tokens, x.steps) for x in hb.tps_samples]), time.time())

    async def on_commit(self, evt: BlockCommitted, headers: dict[str, str]) -> None:
        """Block committed: progress for load control, and a block boundary where the request may move
        (not the last block; not while a migration of it is in transit: the simulator's rule too)."""
        e = self.entries.get(evt.request_id)
        if e is None or evt.worker_id != (e.migrating_from or self.policy.instance_of(evt.request_id)):
            return  # a worker that no longer holds it
        done = evt.block_index + 1
        if done <= e.blocks_done:
            return
        e.blocks_done = done
        committed = min(e.view.output_len, done * evt.block_length)
        boundary = committed < e.view.output_len and e.migrating_from is None
        self.policy.on_progress(evt.request_id, committed, done, boundary, time.time())
        if boundary:
            self.kick.set()

    async def _drop(self, rid: str, entry: _Entry, shed: bool) -> None:
        """The policy refused it at arrival or shed it while queued: its deadline cannot be met."""
        fin = deadline_refusal(rid, len(entry.submit.prompt_ids), time.time(), shed=shed)
        try:
            if await self._record_refusal(fin, entry.submit.arrival_s):
                await self.bus.publish(subjects.request_done(rid), fin, entry.headers)
        except Exception as exc:
            log.warning("drop of %s not recorded: %s", rid, exc)
        await self._ack(entry)

    async def _record_refusal(self, fin: RequestFinished, arrival_s: float) -> bool:
        """Record it once. A refusal can come before the gateway's Redis record exists (the gateway writes
        Redis and NATS concurrently): wait for the record, backing off, as a dispatch does."""
        delay_s = 0.001
        while not await self.store.finish(fin, time.time()):
            state = await self.store.get_state(fin.request_id)
            if state in TERMINAL_STATES or time.time() - arrival_s > self.cfg.record_wait_s:
                return False  # finished or cancelled by someone else, or never recorded at all
            if state == "":  # not written yet; a state other than that appeared since: finish again now
                await asyncio.sleep(delay_s)
                delay_s = min(0.5, delay_s * 2)
        return True

    def _holder(self, rid: str) -> str | None:
        e = self.entries.get(rid)
        return (e.migrating_from if e is not None else None) or self.policy.instance_of(rid)

    def _forward_caps(self, caps: dict[str, float]) -> None:
        """Caps of placed requests go to their workers; a queued request's cap rides on its placement."""
        by_worker: dict[str, dict[str, float]] = {}
        for rid, cap in caps.items():
            self._applied(("caps", rid, cap))
            wid = self._holder(rid)
            if wid is not None:
                by_worker.setdefault(wid, {})[rid] = cap
        for wid, worker_caps in by_worker.items():
            msg = ThresholdCaps(caps=worker_caps, issued_s=time.time())
            asyncio.create_task(self._publish(subjects.worker_caps(wid), msg))

    async def dispatch(self, entry: _Entry, worker_id: str, cap: float, deadline_s: float) -> None:
        """Persist the assignment, ack the submission, send the assignment. Any failure (Redis or NATS
        unreachable beyond their clients' retries) puts the request back in the queue."""
        if self.stopping:  # graceful stop under way: leave it queued for the next scheduler
            self._requeue(entry, delay_s=math.inf)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._dispatch(entry, worker_id, cap, deadline_s)
        except Exception as exc:
            log.warning("dispatch of %s to %s failed: %r; re-queued", entry.submit.request_id, worker_id, exc)
            self._requeue(entry, delay_s=0.5)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _dispatch(self, entry: _Entry, worker_id: str, cap: float, deadline_s: float) -> None:
        s = entry.submit
        now = time.time()
        entry.confirm = False
        done, current = await self.store.transition(s.request_id, "assigned", ("queued", "assigned", "running"), now,
                                                    worker_id, fence=self.fence() if self.fence else None)
        if current == FENCED:  # the lease changed: nothing placed, nothing acked; tried again unless deposed
            log.warning("placement of %s fenced: the leader lease changed", s.request_id)
            self._requeue(entry, delay_s=0.2)
            if self.on_fenced:
                self.on_fenced()
            return
        if not done and current == "" and time.time() - s.arrival_s < self.cfg.record_wait_s:
            # The gateway writes Redis and NATS concurrently, and its Redis write may be riding out a
            # Redis restart: wait for the record (backing off) rather than dropping an accepted request.
            entry.record_retries += 1
            self._requeue(entry, delay_s=min(0.5, 0.001 * 2 ** min(entry.record_retries, 9)))
            return
        if not done:  # cancelled meanwhile, or already finished / unknown
            self._forget(s.request_id)
            if current == "cancelled":
                await self._finalize_cancel(s.request_id, entry)
            else:
                await self._ack(entry)
            return
        entry.persisted = True
        await self._ack(entry)  # the assignment is persisted: JetStream may forget the submission
        with self.tel.tracer.start_as_current_span(tn.SPAN_SCHEDULER_PLACE, context=self.tel.extract(entry.headers)) as span:
            span.set_attribute(tn.ATTR_REQUEST_ID, s.request_id)
            span.set_attribute(tn.ATTR_INSTANCE_ID, worker_id)
            headers = self.tel.inject({})
        a = Assignment(request_id=s.request_id, prompt_ids=s.prompt_ids, max_tokens=s.max_tokens, arrival_s=s.arrival_s,
                       assigned_s=now, threshold_cap=cap, min_threshold=s.min_threshold,
                       deadline_s=deadline_s if math.isfinite(deadline_s) else None,
                       priority=s.priority, resume=current != "queued", sampling=s.sampling, prior=entry.prior)
        try:
            ack = await self.bus.request(subjects.worker_assign(worker_id), a, AssignmentAck, self.cfg.assign_timeout_s, headers)
        except NoResponders:  # NATS knows no such subscriber: the process is gone, no need to wait for heartbeats
            log.warning("worker %s does not answer assignments (no subscriber): declared dead", worker_id)
            self._requeue_worker(worker_id, forget=True)
            self._requeue(entry)
            return
        except Exception as exc:  # no reply: the worker is gone or stuck; try again elsewhere
            log.warning("assignment of %s to %s failed: %r", s.request_id, worker_id, exc)
            self._requeue(entry, delay_s=0.2)
            return
        if not ack.accepted:
            if ack.retry:
                self._requeue(entry, delay_s=0.05)
            else:  # the worker recorded the failure/cancel and published the result
                log.info("worker %s refused %s: %s", worker_id, s.request_id, ack.reason)
                self._forget(s.request_id)

    def _requeue(self, entry: _Entry, delay_s: float = 0.0) -> None:
        """Its placement did not happen: back in the core's queue, placed again after ``delay_s``."""
        rid = entry.submit.request_id
        if self.entries.get(rid) is entry:
            self.policy.requeue(rid, time.time())
            if math.isfinite(delay_s):
                asyncio.get_running_loop().call_later(delay_s, self.kick.set)

    def _confirm_rebuilt(self, worker_id: str) -> None:
        """After a scheduler restart, requests Redis shows as assigned to this worker are sent to it
        again (resume=True): the scheduler may have died between persisting an assignment and sending
        it. A worker that already holds the request answers "duplicate"; one that does not resumes it
        from its checkpoint."""
        for rid, e in list(self.entries.items()):
            if e.confirm and self.policy.instance_of(rid) == worker_id:
                e.confirm = False
                asyncio.create_task(self.dispatch(e, worker_id, self.cfg.default_threshold_cap,
                                                  self.policy.deadline(rid)))

    async def _reconcile(self) -> None:
        """Drop requests that Redis shows finished although their RequestFinished never reached this
        scheduler (published while it was disconnected from NATS): they would hold capacity forever."""
        ids = [rid for rid in self.entries if self._holder(rid) is not None]
        for rid, state in zip(ids, await self.store.get_states(ids)):
            if state in TERMINAL_STATES:
                entry = self._forget(rid)
                if entry is not None:
                    log.info("%s finished (%s) without a completion event here: dropped", rid, state)
                    self.kick.set()
                    await self._ack(entry)

    def _requeue_worker(self, worker_id: str, forget: bool) -> None:
        """The worker is gone (or restarted empty): the core re-queues what it held; what was migrating
        off it resumes from its last checkpoint wherever it is placed next."""
        moved = self.policy.on_instance_lost(worker_id, time.time())
        for rid, e in self.entries.items():
            if e.migrating_from == worker_id:
                e.migrating_from = None
                self.policy.requeue(rid, time.time())
                moved.append(rid)
        if forget:
            self.workers.pop(worker_id, None)
        if moved:
            log.warning("re-placing %d requests of worker %s", len(moved), worker_id)
            self.kick.set()

    # -- liveness and status ------------------------------------------------------------------
    async def lane_loop(self) -> None:
        """Keep the submit lanes' leaders on different NATS nodes (shared/transport/lanes.py)."""
        while True:
            await asyncio.sleep(LANE_SPREAD_S)
            try:
                await spread_leaders(self.bus, self.lanes, subjects.SCHEDULER_DURABLE)
            except Exception as exc:  # a lane electing its leader, or NATS reconnecting: check again later
                log.debug("submit lanes not checked: %s", exc)

    async def status_loop(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            now = time.monotonic()
            if not self.bus.connected:  # blind, not silent workers: no one is declared dead meanwhile
                for w in self.workers.values():
                    w.last_seen_mono = now
            elif now - last_reconcile > self.cfg.reconcile_interval_s:
                last_reconcile = now
                try:
                    await self._reconcile()
                except Exception as exc:
                    log.warning("reconcile failed: %s", exc)
            for wid, w in list(self.workers.items()):
                if now - w.last_seen_mono > self.cfg.heartbeat_timeout_s:
                    log.warning("worker %s missed heartbeats for %.1fs: declared dead", wid, now - w.last_seen_mono)
                    self._requeue_worker(wid, forget=True)
            live = sorted(wid for wid, w in self.workers.items() if w.hb is not None and not w.hb.draining)
            num_queued = self.policy.queue_length()
            hb = SchedulerHeartbeat(
                scheduler_id=self.cfg.scheduler_id, worker_ids=live, num_queued=num_queued,
                num_running=len(self.entries) - num_queued,
                planner_alive=now - self.planner_seen_mono < 3 * max(1.0, self.cfg.heartbeat_timeout_s),
                sent_s=time.time(),
            )
            try:
                await self.bus.publish(subjects.scheduler_heartbeat(), hb)
            except Exception as exc:
                log.warning("status not published: %s", exc)
            await asyncio.sleep(self.cfg.status_interval_s)
