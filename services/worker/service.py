"""Worker service: the step loop around the denoising engine, wired to NATS and Redis.

Receive assignments (request/reply) → join the batch between steps → run ONE step in a thread (so
heartbeats and cancels keep flowing on the event loop) → publish finished blocks, checkpoint them to
Redis, publish completion. Cancellation is applied between steps; a request whose committed text
reaches one of its stop strings leaves the batch right after the step that committed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from services.worker.engine import DenoisingEngine, StepOutput, new_state, output_ids, rewind_to_block_start
from services.worker.engine.stops import Decode, StopWatch
from services.worker.threshold_control import ThresholdControl
from shared import subjects
from shared.telemetry import names as tn
from shared.config import WorkerConfig
from shared.schemas.cluster import WorkerHeartbeat
from shared.schemas.engine import DecodeState
from shared.schemas.migration import MigrateRequest, RequestReleased
from shared.schemas.requests import (
    Assignment, AssignmentAck, BlockCommitted, CancelRequest, RequestFinished, RequestStats, Sampling, ThresholdCaps,
    WorkSoFar,
)
from shared.transport import Bus, Store

log = logging.getLogger("dilaserve.worker")


@dataclass
class _Meta:
    """Worker-side bookkeeping of one request (not part of the resumable state)."""

    assignment: Assignment
    received_s: float  # wall clock, to compare with the gateway's arrival
    received_mono: float
    threshold: float
    trace_headers: dict[str, str]
    thresholds_used: list[float] = field(default_factory=list)
    forward_s: float = 0.0
    stop: StopWatch | None = None


def _work_so_far(m: _Meta, moves: int = 0) -> WorkSoFar:
    """Its time on this worker added to what the workers it left did (``Assignment.prior``); ``moves``:
    the migration under way, counted when it leaves."""
    p, a = m.assignment.prior or WorkSoFar(), m.assignment
    return WorkSoFar(assigned_at_s=p.assigned_at_s or a.assigned_s, received_at_s=p.received_at_s or m.received_s,
                     worker_s=p.worker_s + time.monotonic() - m.received_mono, forward_s=p.forward_s + m.forward_s,
                     num_migrations=p.num_migrations + moves)


def _load_decode(configured_dir: str) -> Decode | None:
    """The model's tokenizer as a decode function (as the gateway decodes), or None if it cannot be
    loaded: the worker still serves, and refuses only requests with stop strings, saying why."""
    from services.worker.model import load_tokenizer
    from shared.profiles import model_dir

    try:
        tok = load_tokenizer(model_dir(configured_dir))
    except Exception:
        log.exception("tokenizer not loaded: requests with stop strings will be refused")
        return None
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _lower_priority(increment: int) -> None:
    if increment > 0:
        try:  # Linux: a thread id as PRIO_PROCESS target renices just this thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + increment)
        except OSError as exc:
            log.warning("could not lower the forward thread's priority: %s", exc)


class WorkerService:
    def __init__(self, cfg: WorkerConfig, worker_id: str, bus: Bus, store: Store, engine: DenoisingEngine, tel,
                 control: ThresholdControl | None = None, decode: Decode | None = None) -> None:
        self.cfg = cfg
        self.worker_id = worker_id
        self.bus = bus
        self.store = store
        self.engine = engine
        self.tel = tel
        self.meta: dict[str, _Meta] = {}
        self.pending: list[DecodeState] = []
        self.cancels: set[str] = set()
        self.migrating: dict[str, str] = {}  # request id → its new worker: released at its next block boundary
        self.at_boundary: set[str] = set()  # requests whose last step finished a block (the next not started)
        self.recent_cancels: dict[str, None] = {}  # insertion-ordered set of cancelled ids
        self._bg: set[asyncio.Task] = set()
        # One dedicated forward thread, niced below the event-loop thread: on a busy CPU the OS then
        # runs message handling (assignments, cancels, results) ahead of compute.
        self._forward = ThreadPoolExecutor(1, thread_name_prefix="forward", initializer=_lower_priority,
                                           initargs=(cfg.forward_nice,))
        self.wake = asyncio.Event()
        self.stopping = False
        self.step_latency_ema_s = 0.0
        self.tokens_per_step_ema = 0.0
        self.num_steps_total = 0
        self._forward_end: float | None = None  # when the last step came back (None: idle since)
        self._gap_before_s: float | None = None
        if control is None:  # the policy settings of the environment's configuration (main.py passes its own)
            from services.worker.device import worker_instance_config
            from services.worker.threshold_control import worker_threshold_control
            from shared.config import load_config
            control = worker_threshold_control(load_config().scheduler, cfg,
                                               worker_instance_config(cfg, engine.cache_mode))
        self.control = control  # per-request τ each step: the simulator's choose_threshold
        self.decode = decode  # token ids → text, for stop strings (the model's tokenizer, loaded in start())
        self.incarnation = uuid.uuid4().hex[:12]  # tells the scheduler a restarted process apart from the old one
        self._subs: list = []
        self._tasks: list[asyncio.Task] = []

    @property
    def instance_config(self) -> str:
        """The wire name (model/device kind/tp<N>-<cache>, services/worker/device.py): the one the worker's
        cost model is keyed by, so the scheduler refits the same configuration's curve."""
        return self.control.config

    async def start(self) -> None:
        if self.decode is None:
            self.decode = await asyncio.to_thread(_load_decode, self.cfg.model_dir)
        self._subs = [
            await self.bus.serve(subjects.worker_assign(self.worker_id), Assignment, self.on_assign),
            await self.bus.subscribe(subjects.request_cancel(), CancelRequest, self.on_cancel),
            await self.bus.subscribe(subjects.worker_caps(self.worker_id), ThresholdCaps, self.on_caps),
            await self.bus.subscribe(subjects.worker_migrate(self.worker_id), MigrateRequest, self.on_migrate),
        ]
        await self.bus.flush()
        self._tasks = [asyncio.create_task(self.step_loop()), asyncio.create_task(self.heartbeat_loop())]
        log.info("worker %s ready (%s, max batch %d)", self.worker_id, self.instance_config, self.cfg.max_batch)

    async def stop(self, step_grace_s: float = 30.0) -> None:
        """Stop taking work, let the step in flight finish (its results are recorded and announced),
        checkpoint everything still held at its block boundary, then announce ``draining`` so the
        scheduler re-places those requests at once (they resume from the checkpoints)."""
        for t in self._tasks[1:]:  # heartbeats first: a draining beat must not precede the checkpoints
            t.cancel()
        self.stopping = True
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # NATS unreachable: the scheduler's heartbeat timeout covers it
                log.warning("unsubscribe failed: %s", exc)
        self.wake.set()
        if self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout=step_grace_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._tasks[0].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        for rid in self.engine.request_ids:
            # A block-boundary checkpoint: resuming it reproduces the uninterrupted output exactly.
            await self._save_checkpoint(rewind_to_block_start(self.engine.state(rid)))
        await self._publish_heartbeat(draining=True)
        try:
            await self.bus.flush()
        except Exception as exc:
            log.warning("final flush failed: %s", exc)

    # -- inputs -------------------------------------------------------------------------------
    async def on_assign(self, a: Assignment, headers: dict[str, str]) -> AssignmentAck:
        received_s, received_mono = time.time(), time.monotonic()
        rid = a.request_id
        if rid in self.meta:  # re-sent (lost reply, scheduler restart): already ours
            self._background(self.store.transition(rid, "running", ("assigned",), time.time(), self.worker_id))
            return AssignmentAck(request_id=rid, worker_id=self.worker_id, accepted=True, reason="duplicate")
        if self.stopping:
            return AssignmentAck(request_id=rid, worker_id=self.worker_id, accepted=False, reason="worker stopping", retry=True)
        with self.tel.tracer.start_as_current_span(tn.SPAN_WORKER_ASSIGN, context=self.tel.extract(headers)) as span:
            span.set_attribute(tn.ATTR_REQUEST_ID, rid)
            trace_headers = self.tel.inject({})
        now = time.time()
        if rid in self.recent_cancels:  # the cancel overtook the assignment
            fin = RequestFinished(request_id=rid, status="cancelled", finish_reason="cancelled", finished_s=now)
            await self._finalize(fin, trace_headers)
            return AssignmentAck(request_id=rid, worker_id=self.worker_id, accepted=False, reason="request is cancelled")
        tau = self.control.initial(a.threshold_cap, a.min_threshold)
        # Fresh requests skip the Redis round trip: only a resumed one can have a checkpoint.
        checkpoint = await self.store.load_checkpoint(rid) if a.resume else None
        state = checkpoint or new_state(
            rid, a.prompt_ids, a.max_tokens, mask_token_id=self.engine.mask_token_id,
            block_length=self.cfg.block_length, threshold=tau,
        )
        state.threshold = tau
        sampling = a.sampling or Sampling()
        state.temperature, state.top_p, state.seed = sampling.temperature, sampling.top_p, sampling.seed
        try:
            self.engine.validate(state)
            stop = self._stop_watch(sampling)
        except ValueError as exc:
            await self._finalize(RequestFinished(request_id=rid, status="failed", finish_reason="error", error=str(exc),
                                                 num_prompt_tokens=len(a.prompt_ids), finished_s=time.time()), trace_headers)
            return AssignmentAck(request_id=rid, worker_id=self.worker_id, accepted=False, reason=str(exc))
        self.meta[rid] = _Meta(a, received_s, received_mono, tau, trace_headers, stop=stop)
        self.control.add(rid, a.arrival_s, a.deadline_s, a.threshold_cap, a.min_threshold, len(state.prompt_ids),
                         len(state.canvas_ids), state.num_masked, state.block_index, state.block_length)
        self.pending.append(state)
        if checkpoint is not None:
            log.info("resuming %s from its checkpoint at block %d/%d", rid, state.block_index, state.num_blocks)
        if state.block_index > 0:  # resumed: re-announce blocks already committed (gateways dedupe)
            self._publish_blocks(state, 0, state.block_index)
        self.wake.set()
        # Lifecycle bookkeeping off the critical path (the scheduler already persisted "assigned").
        self._background(self.store.transition(rid, "running", ("assigned",), now, self.worker_id))
        return AssignmentAck(request_id=rid, worker_id=self.worker_id, accepted=True)

    def _stop_watch(self, sampling: Sampling) -> StopWatch | None:
        if not sampling.stop:
            return None
        if self.decode is None:
            raise ValueError("this worker has no tokenizer to match stop strings against")
        return StopWatch(list(sampling.stop), self.decode, self.engine.eos_token_id)

    def _background(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def on_cancel(self, c: CancelRequest, headers: dict[str, str]) -> None:
        self.recent_cancels[c.request_id] = None
        while len(self.recent_cancels) > 10_000:  # bounded memory: forget the oldest
            self.recent_cancels.pop(next(iter(self.recent_cancels)))
        if c.request_id in self.meta:
            self.cancels.add(c.request_id)
            self.wake.set()

    async def on_caps(self, caps: ThresholdCaps, headers: dict[str, str]) -> None:
        for rid, cap in caps.caps.items():
            m = self.meta.get(rid)
            if m is not None:
                m.threshold = self.control.initial(cap, m.assignment.min_threshold)
                self.control.set_cap(rid, cap)

    async def on_migrate(self, m: MigrateRequest, headers: dict[str, str]) -> None:
        if m.request_id in self.meta:
            self.migrating[m.request_id] = m.dst_worker_id
            self.wake.set()

    # -- the step loop ------------------------------------------------------------------------
    async def step_loop(self) -> None:
        while not self.stopping:
            await self._apply_cancels()
            await self._release_migrating()
            self._admit()
            if self.engine.num_requests == 0:
                self._forward_end = None  # an idle wait is not step-loop time
                self.wake.clear()
                await self.wake.wait()
                continue
            thresholds = self.control.choose(self.engine.request_ids, time.time(), keep=self.meta)
            try:
                out = await asyncio.get_running_loop().run_in_executor(self._forward, self.engine.step, thresholds)
                self._note_cycle(out.elapsed_s)
            except Exception as exc:  # a broken step must not hang requests: fail the batch loudly
                log.exception("engine step failed")
                await self._fail_all(f"engine step failed: {exc}")
                continue
            try:
                await self._after_step(out)
            except Exception:  # the loop must survive (NATS/Redis blips); results are retried in _finalize
                log.exception("after-step bookkeeping failed")

    def _note_cycle(self, forward_s: float) -> None:
        """The step loop's time outside the forward since the previous step came back: bookkeeping,
        events, τ choice and the hand-offs to and from the forward thread (None after an idle wait)."""
        now = time.perf_counter()
        self._gap_before_s = None if self._forward_end is None else max(0.0, now - self._forward_end - forward_s)
        self._forward_end = now

    async def _release_migrating(self) -> None:
        """Let go of migrating requests that sit at a block boundary (or never started here): checkpoint,
        then tell the scheduler, which assigns them to their new worker (resume from the checkpoint)."""
        for rid in [r for r in self.migrating if r in self.at_boundary or not self.engine.has(r)]:
            self.migrating.pop(rid)
            if self.engine.has(rid):
                state = self.engine.remove(rid)
            else:
                state = next((s for s in self.pending if s.request_id == rid), None)
                self.pending = [s for s in self.pending if s.request_id != rid]
            self.at_boundary.discard(rid)
            m = self.meta.pop(rid, None)
            if state is None or m is None:
                continue  # finished or cancelled meanwhile
            await self._save_checkpoint(state)
            log.info("released %s at block %d/%d (migrating)", rid, state.block_index, state.num_blocks)
            evt = RequestReleased(request_id=rid, worker_id=self.worker_id, block_index=state.block_index,
                                  released_s=time.time(), work=_work_so_far(m, moves=1))
            await self._publish_release(evt)

    async def _publish_release(self, evt: RequestReleased) -> None:
        """The request is held nowhere until the scheduler hears of it: retry as results are retried."""
        delay_s = 0.05
        for _ in range(8):
            try:
                await self.bus.publish(subjects.request_released(evt.request_id), evt)
                return
            except Exception as exc:
                log.warning("release of %s not published (%s); retrying", evt.request_id, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(1.0, delay_s * 2)
        log.error("release of %s never published: it resumes only after a scheduler restart", evt.request_id)

    def _admit(self) -> None:
        while self.pending and self.engine.num_requests < self.cfg.max_batch:
            self.engine.add(self.pending.pop(0))

    async def _apply_cancels(self) -> None:
        cancels, self.cancels = self.cancels, set()
        for rid in cancels:
            if self.engine.has(rid):
                state = self.engine.remove(rid)
            else:
                state = next((s for s in self.pending if s.request_id == rid), None)
                self.pending = [s for s in self.pending if s.request_id != rid]
            if state is None or rid not in self.meta:
                continue
            await self._finish(state, status="cancelled")

    async def _after_step(self, out: StepOutput) -> None:
        self.num_steps_total += 1
        self.control.observe(out.elapsed_s, out.num_tokens_executed, out.requests, self._gap_before_s)
        a = 0.2
        self.step_latency_ema_s = out.elapsed_s if self.num_steps_total == 1 else (1 - a) * self.step_latency_ema_s + a * out.elapsed_s
        committed = sum(len(r.committed_token_ids) for r in out.requests)
        self.tokens_per_step_ema = (1 - a) * self.tokens_per_step_ema + a * committed
        finished = {s.request_id: s for s in out.finished}
        stopped = self._take_stopped(out, finished)
        checkpoints = []
        for r in out.requests:
            m = self.meta.get(r.request_id)
            if m is None:
                continue
            m.forward_s += out.elapsed_s
            m.thresholds_used.append(r.threshold)
            if r.block_finished and r.request_id not in finished:
                self.at_boundary.add(r.request_id)
            else:
                self.at_boundary.discard(r.request_id)
            if r.block_finished:
                done = finished.get(r.request_id) or stopped.get(r.request_id, (None,))[0]
                state = done or self.engine.state(r.request_id)
                self._publish_blocks(state, r.block_index, state.block_index)
                if done is None:
                    checkpoints.append(self._save_checkpoint(state))
        # Results first (all at once); checkpoints of the unfinished can wait a round trip.
        await asyncio.gather(*(self._finish(state, status="completed") for state in out.finished
                               if state.request_id not in stopped),
                             *(self._finish(state, "completed", stop_ids=ids) for state, ids in stopped.values()))
        await asyncio.gather(*checkpoints)
        if any(r.block_finished for r in out.requests) and self.bus.connected:
            try:
                await self.bus.flush()  # hand the events to NATS now, not after the next forward
            except Exception as exc:  # reconnecting: the client buffers, nothing to do here
                log.warning("flush failed: %s", exc)
        self.tel.metrics.step(
            latency_s=out.elapsed_s, tokens_executed=out.num_tokens_executed, num_refresh=out.num_refresh,
            num_reuse=len(out.requests) - out.num_refresh,
            committed_tokens=[len(r.committed_token_ids) for r in out.requests],
            thresholds=[r.threshold for r in out.requests],
            caps=[self.meta[r.request_id].assignment.threshold_cap for r in out.requests if r.request_id in self.meta],
        )

    def _take_stopped(self, out: StepOutput, finished: dict[str, DecodeState]) -> dict[str, tuple[DecodeState, list[int]]]:
        """Requests whose committed prefix now holds a stop string, out of the batch at once, with their
        output ids (cut after the stop string; the gateway cuts the text at its start)."""
        stopped = {}
        for r in out.requests:
            m = self.meta.get(r.request_id)
            if m is None or m.stop is None or not r.committed_token_ids:
                continue
            state = finished.get(r.request_id) or self.engine.state(r.request_id)
            ids = m.stop.check(state)
            if ids is None:
                continue
            if self.engine.has(r.request_id):
                state = self.engine.remove(r.request_id)
            stopped[r.request_id] = (state, ids)
        return stopped

    def _publish_blocks(self, state: DecodeState, first: int, end: int) -> None:
        m = self.meta.get(state.request_id)
        headers = m.trace_headers if m else None
        now = time.time()
        for b in range(first, end):
            lo, hi = b * state.block_length, min((b + 1) * state.block_length, len(state.canvas_ids))
            evt = BlockCommitted(request_id=state.request_id, worker_id=self.worker_id, block_index=b,
                                 block_length=state.block_length, token_ids=state.canvas_ids[lo:hi], committed_s=now)
            asyncio.ensure_future(self.bus.publish(subjects.request_commit(state.request_id), evt, headers))

    async def _finish(self, state: DecodeState, status: str, stop_ids: list[int] | None = None) -> None:
        m = self.meta.pop(state.request_id)
        self.at_boundary.discard(state.request_id)
        self.migrating.pop(state.request_id, None)
        eos = self.engine.eos_token_id
        out = output_ids(state, eos) if stop_ids is None else stop_ids
        if stop_ids is not None:
            reason = "stop"
        elif status == "completed":
            reason = "stop" if eos in state.canvas_ids else "length"
        else:
            reason = "cancelled"
        used = m.thresholds_used or [m.threshold]
        done = _work_so_far(m)
        stats = RequestStats(
            worker_id=self.worker_id, thresholds_used=sorted(set(used), reverse=True),
            threshold_mean=sum(used) / len(used), num_steps=state.num_steps,
            num_refresh_steps=state.num_refresh_steps, num_reuse_steps=state.num_reuse_steps,
            queue_s=max(0.0, done.received_at_s - m.assignment.arrival_s), worker_s=done.worker_s,
            worker_forward_s=done.forward_s, assigned_at_s=done.assigned_at_s, received_at_s=done.received_at_s,
            num_migrations=done.num_migrations,
        )
        fin = RequestFinished(request_id=state.request_id, status=status, finish_reason=reason,  # type: ignore[arg-type]
                              output_ids=out, num_prompt_tokens=len(state.prompt_ids), stats=stats, finished_s=time.time())
        await self._finalize(fin, m.trace_headers)

    async def _save_checkpoint(self, state: DecodeState) -> None:
        try:
            await self.store.save_checkpoint(state)
        except Exception as exc:  # a missed checkpoint costs recomputation after a crash, nothing else
            log.warning("checkpoint of %s not saved: %s", state.request_id, exc)

    async def _finalize(self, fin: RequestFinished, headers: dict[str, str] | None) -> None:
        """Record the result in Redis (atomic, once per request), then announce it — only if this call
        is the one that recorded it. A request that ran twice (its worker was declared dead but was
        not, or an assignment reply was lost) thus completes exactly once.

        Redis unreachable beyond the client's retries: keep retrying (the result is only in memory
        here). If this process dies before the record, the request is re-run from its checkpoint; if
        it dies between record and announcement, gateways find the result in Redis.
        """
        token = uuid.uuid4().hex  # a retried call that already landed is recognised as ours
        delay_s = 0.05
        while True:
            try:
                recorded = await self.store.finish(fin, time.time(), token)
                break
            except Exception as exc:
                if self.stopping:
                    log.error("result of %s not recorded (%s); it will be re-run from its checkpoint", fin.request_id, exc)
                    return
                log.warning("recording the result of %s failed (%s); retrying", fin.request_id, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(1.0, delay_s * 2)
        if not recorded:
            log.info("%s already finished elsewhere: result not announced again", fin.request_id)
            return
        try:
            await self.bus.publish(subjects.request_done(fin.request_id), fin, headers)
        except Exception as exc:  # NATS buffer full / closed: gateways fall back to the Redis record
            log.warning("completion of %s not published (%s); it is recorded in Redis", fin.request_id, exc)

    async def _fail_all(self, error: str) -> None:
        for rid in self.engine.request_ids:
            self.engine.remove(rid)
            m = self.meta.pop(rid, None)
            fin = RequestFinished(request_id=rid, status="failed", finish_reason="error", error=error, finished_s=time.time())
            await self._finalize(fin, m.trace_headers if m else None)

    # -- heartbeats ---------------------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        while not self.stopping:
            await self._publish_heartbeat()
            await asyncio.sleep(self.cfg.heartbeat_interval_s)

    async def _publish_heartbeat(self, draining: bool = False) -> None:
        active = self.engine.request_ids
        tokens = sum(len(self.meta[r].assignment.prompt_ids) + self.meta[r].assignment.max_tokens for r in active if r in self.meta)
        step_samples, tps_samples = self.control.take_samples()
        hb = WorkerHeartbeat(
            worker_id=self.worker_id, instance_config=self.instance_config, num_active=len(active) + len(self.pending),
            num_active_tokens=tokens, max_batch=self.cfg.max_batch, step_latency_ema_s=self.step_latency_ema_s,
            tokens_per_step_ema=self.tokens_per_step_ema, num_steps_total=self.num_steps_total, sent_s=time.time(),
            draining=draining or self.stopping, incarnation=self.incarnation,
            step_samples=step_samples, tps_samples=tps_samples,
        )
        try:
            await self.bus.publish(subjects.worker_heartbeat(self.worker_id), hb)
        except Exception as exc:  # NATS reconnecting: the next beat will do
            log.warning("heartbeat not sent: %s", exc)
