"""SchedulerCore (docs/design.md §4.2): admission, EDF/FCFS order, placement, block-boundary migration,
feasibility (reject / queued drop) and the load controller's caps. Pure: the caller passes ``now_s``.

Live use (scheduler service) and the simulator call exactly this:
``on_arrival`` → ``schedule`` → (workers run) → ``on_progress`` / ``on_finished`` / ``on_instance_update``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from shared.policy.cost_model import CostModel
from shared.policy.load_control import LoadController, LoadItem
from shared.policy.step_predictor import StepPredictor
from shared.policy.threshold import ThresholdParams, allowed_thresholds, refresh_left
from shared.policy.types import InstanceView, Migration, Placement, Progress, RequestView, SchedulerOutput


@dataclass(slots=True, frozen=True)
class CoreParams:
    order: str = "edf"  # "fcfs" (arrival order) | "edf" (deadline order)
    use_priority: bool = True  # priority classes before deadlines
    migrate: bool = True
    migrate_gain: float = 0.05  # move only if the step latency drops by at least this fraction
    drop_expired: bool = False  # drop queued requests that can no longer make their deadline
    reject_infeasible: bool = False  # refuse at arrival what cannot make its deadline
    optimism: float = 0.8  # feasibility: fastest solo time × optimism must fit
    place_safety: float = 1.1  # drop at placement if expected time there × this misses the deadline
    # admission: place a request only where the step latency with it added still lets every request already
    # there that can make its deadline make it (expected steps left at its lowest τ × place_safety)
    protect_admitted: bool = False
    global_slo_s: float | None = None  # one deployment-wide SLO (tedi): overrides per-request deadlines
    budget_step_s: float = 0.065  # default token budget: most tokens whose step stays under this latency
    load_control: str = "none"  # "none" | "window" | "deadline"
    lc_period_s: float = 1.0
    lc_utilization: float = 0.9  # fraction of peak token throughput the load controller plans with
    shed_threshold: float | None = None  # with drop_expired: Moore–Hodgson shedding plans the queue at this τ
    honour_floor: bool = True  # respect each request's min_threshold
    threshold: ThresholdParams = field(default_factory=ThresholdParams)


@dataclass(slots=True)
class _Req:
    view: RequestView
    deadline_s: float  # effective deadline (the global SLO's under tedi)
    seq: int
    footprint: float  # expected executed tokens per step
    progress: Progress = field(default_factory=Progress)
    instance_id: str | None = None
    cap: float = 1.0
    at_boundary: bool = False
    plan: tuple[int, int, float] = (-1, -1, 0.0)  # (predictor version, committed, steps left at lowest τ)


@dataclass(slots=True)
class _Inst:
    view: InstanceView
    budget: int
    load: float = 0.0
    members: dict[str, None] = field(default_factory=dict)  # ordered set of request ids


class SchedulerCore:
    def __init__(self, params: CoreParams, cost: CostModel, predictor: StepPredictor):
        self.params = params
        self.cost = cost
        self.predictor = predictor
        self.reqs: dict[str, _Req] = {}
        self.insts: dict[str, _Inst] = {}
        self._queue: list[tuple[tuple, str]] = []
        self._queued: set[str] = set()
        self._boundary: list[str] = []
        self._rejected: list[str] = []
        self._mixed = False  # instances of more than one configuration (see _note_configs)
        self._seq = 0
        self._predictor_version = 0  # bumped when heartbeats refit the step predictor (see _steps_at_floor)
        lc = params.load_control
        self.load_controller = None if lc == "none" else LoadController(
            params.threshold.candidates, lc, params.lc_period_s, params.honour_floor)

    # --- inputs ---------------------------------------------------------------------------------------
    def on_arrival(self, req: RequestView, now_s: float) -> None:
        deadline = req.deadline_s if self.params.global_slo_s is None else req.arrival_s + self.params.global_slo_s
        if not self.params.honour_floor and req.min_threshold:
            req = RequestView(req.request_id, req.arrival_s, req.deadline_s, req.prompt_len, req.output_len,
                              req.block_len, req.priority, 0.0)
        r = _Req(req, deadline, self._seq, self._footprint(req))
        r.cap = self.params.threshold.candidates[0]
        self._seq += 1
        if self.params.reject_infeasible and not self.feasible(r, now_s):
            self._rejected.append(req.request_id)
            return
        self.reqs[req.request_id] = r
        self._enqueue(r)

    def on_instance_update(self, inst: InstanceView, now_s: float) -> None:
        """Heartbeat: (re)register the instance and refit the cost model and step predictor."""
        self.cost.ensure(inst.config)
        for s in inst.step_samples:
            self.cost.observe(inst.config, s.tokens, s.latency_s)
        for t in inst.tps_samples:
            self.predictor.observe(t.threshold, t.tokens, t.steps)
        self._predictor_version += bool(inst.tps_samples)
        budget = inst.token_budget or self.cost.budget_for(inst.config, self.params.budget_step_s)
        cur = self.insts.get(inst.instance_id)
        view = InstanceView(inst.instance_id, inst.config, inst.token_budget, inst.draining)
        if cur is None:
            self.insts[inst.instance_id] = new = _Inst(view, budget)
            self._adopt(new)
        else:
            config_changed = cur.view.config != inst.config
            cur.view, cur.budget = view, budget
        if cur is None or config_changed:
            self._note_configs()

    def on_instance_lost(self, instance_id: str, now_s: float) -> list[str]:
        """Missed heartbeats: requeue its requests (they resume from their committed blocks)."""
        inst = self.insts.pop(instance_id, None)
        if inst is None:  # known only from ``assign`` (no heartbeat yet): its requests hold no load
            moved = [rid for rid, r in self.reqs.items() if r.instance_id == instance_id]
        else:
            self._note_configs()
            moved = list(inst.members)
        for rid in moved:
            r = self.reqs[rid]
            r.instance_id = None
            r.progress.blocks_refreshed = r.progress.committed // r.view.block_len
            self._enqueue(r)
        return moved

    def on_progress(self, request_id: str, committed: int, blocks_refreshed: int,
                    at_block_boundary: bool, now_s: float) -> None:
        """Worker step stats; ``at_block_boundary``: the current block is done, the next not started."""
        r = self.reqs.get(request_id)
        if r is None:
            return
        r.progress.committed = committed
        r.progress.blocks_refreshed = blocks_refreshed
        if at_block_boundary and not r.at_boundary:
            r.at_boundary = True
            self._boundary.append(request_id)

    def on_finished(self, request_id: str, now_s: float) -> None:
        r = self.reqs.pop(request_id, None)
        if r is not None and r.instance_id is not None:
            self._detach(r)
        self._queued.discard(request_id)

    def requeue(self, request_id: str, now_s: float) -> None:
        """Its placement did not happen (the worker refused, timed out or went away): queue it again."""
        r = self.reqs.get(request_id)
        if r is None or (r.instance_id is None and request_id in self._queued):
            return
        if r.instance_id is not None:
            self._detach(r)
        r.at_boundary = False
        self._enqueue(r)

    def assign(self, request_id: str, instance_id: str, now_s: float) -> None:
        """It runs on ``instance_id`` without this core having placed it there (state rebuilt after a
        restart, or a placement decided elsewhere): record that, take it out of the queue."""
        r = self.reqs.get(request_id)
        if r is None or r.instance_id == instance_id:
            return
        if r.instance_id is not None:
            self._detach(r)
        self._queued.discard(request_id)  # its heap entry is skipped as stale
        inst = self.insts.get(instance_id)
        if inst is not None:
            self._attach(r, inst)
        else:
            r.instance_id = instance_id  # unknown instance (no heartbeat yet): no load to account

    # --- queries --------------------------------------------------------------------------------------
    def request_ids(self) -> list[str]:
        return list(self.reqs)

    def instance_ids(self) -> list[str]:
        return list(self.insts)

    def instance_of(self, request_id: str) -> str | None:
        r = self.reqs.get(request_id)
        return r.instance_id if r is not None else None

    def cap(self, request_id: str) -> float:
        r = self.reqs.get(request_id)
        return r.cap if r is not None else self.params.threshold.candidates[0]

    def deadline(self, request_id: str) -> float:
        return self.reqs[request_id].deadline_s

    def queue_length(self) -> int:
        return len(self._queued)

    def feasible(self, r: _Req, now_s: float) -> bool:
        """Could it still finish in time alone on the fastest configuration at its lowest τ (optimistic)?"""
        floor = r.view.min_threshold if self.params.honour_floor else 0.0
        tau = allowed_thresholds(self.params.threshold.candidates, 1.0, floor)[-1]
        masked = r.progress.masked_left(r.view.output_len)
        n_ref = refresh_left(r.view.num_blocks, r.progress.blocks_refreshed)
        reuse = max(0.0, self.predictor.steps_left(masked, tau) - n_ref)
        configs = self._configs()
        best = min(n_ref * self.cost.latency(c, r.view.full_len) + reuse * self.cost.latency(c, r.view.block_len)
                   for c in configs) if configs else 0.0
        return now_s + self.params.optimism * best <= r.deadline_s

    # --- the decision ---------------------------------------------------------------------------------
    def schedule(self, now_s: float) -> SchedulerOutput:
        out = SchedulerOutput(rejected=self._rejected)
        self._rejected = []
        if self.load_controller is not None and self.load_controller.due(now_s):
            # Place first: shedding plans the requests that must wait, each priced at a full instance's
            # step. A request that has room now (e.g. one that arrived just before this tick) is not one.
            self._place(out, now_s)
            out.caps = self._load_control(now_s, out)
            self._recap_placements(out)
        self._migrate(out, now_s)
        self._place(out, now_s)
        return out

    def _recap_placements(self, out: SchedulerOutput) -> None:
        """A request placed in this call carries the cap the load control just gave it."""
        for k, p in enumerate(out.placements):
            cap = out.caps.pop(p.request_id, None)
            if cap is not None:
                out.placements[k] = Placement(p.request_id, p.instance_id, cap, p.deadline_s)

    # --- internals ------------------------------------------------------------------------------------
    def _adopt(self, inst: _Inst) -> None:
        """A new instance takes on the requests ``assign`` put on it before its first heartbeat."""
        iid = inst.view.instance_id
        for r in self.reqs.values():
            if r.instance_id == iid and r.view.request_id not in inst.members:
                self._attach(r, inst)

    def _note_configs(self) -> None:
        """Does the pool mix configurations? Only then is a request's own time worth computing in
        placement (within one configuration it ranks instances exactly as the step latency does)."""
        self._mixed = len({i.view.config for i in self.insts.values()}) > 1

    def _configs(self) -> list[str]:
        cfgs = sorted({i.view.config for i in self.insts.values()})
        return cfgs or self.cost.configs

    def _footprint(self, req: RequestView, cap: float | None = None) -> float:
        """Expected executed tokens per step at the τ it will run (fixed τ, else its cap): B per reuse
        step plus full_len once per block (a block takes B / tokens_per_step(τ) steps)."""
        th = self.params.threshold
        tau = max(th.fixed, req.min_threshold) if th.mode == "fixed" else (cap or th.candidates[0])
        f = min(1.0, self.predictor.tokens_per_step(tau) / req.block_len)
        return req.block_len * (1.0 - f) + req.full_len * f

    def _set_cap(self, r: _Req, cap: float) -> None:
        """New cap → new footprint; keep the instance's load in step."""
        r.cap = cap
        fp = self._footprint(r.view, cap)
        inst = self.insts.get(r.instance_id or "")
        if inst is not None:
            inst.load = max(0.0, inst.load + fp - r.footprint)
        r.footprint = fp

    def _key(self, r: _Req) -> tuple:
        if self.params.order == "fcfs":
            return (r.view.arrival_s, r.seq)
        prio = -r.view.priority if self.params.use_priority else 0
        return (prio, r.deadline_s, r.seq)

    def _enqueue(self, r: _Req) -> None:
        self._queued.add(r.view.request_id)
        heapq.heappush(self._queue, (self._key(r), r.view.request_id))

    def _attach(self, r: _Req, inst: _Inst) -> None:
        r.instance_id = inst.view.instance_id
        inst.members[r.view.request_id] = None
        inst.load += r.footprint

    def _detach(self, r: _Req) -> None:
        inst = self.insts.get(r.instance_id or "")
        if inst is not None:
            inst.members.pop(r.view.request_id, None)
            inst.load = max(0.0, inst.load - r.footprint)
        r.instance_id = None

    def _best_instance(self, r: _Req, now_s: float, exclude: str | None = None) -> tuple[_Inst | None, float]:
        """docs/design.md §4.2's lowest resulting step latency among instances with room (an empty instance always
        has room), ties to the least loaded — but first among the instances where the request, at its lowest
        allowed τ, would still make its deadline (``_time_on``); if none, where it finishes soonest. Within
        one configuration this is the plain rule (time and step latency both grow with the load). Across
        configurations the step latency of an averaged footprint hides the refresh steps — a 4k-token
        request's mean footprint is ~400 tokens, where TP1 and TP4 step equally fast, while its 8 refreshes
        take 121 ms on TP1 and 50 ms on TP4 — so the deadline decides first, then the plain rule spreads
        the load. With ``protect_admitted``, the best instance whose members stay on time (checked in
        rank order: the check walks the members). Returns the instance and its resulting step latency."""
        ranked = []
        for k, inst in enumerate(self.insts.values()):
            if inst.view.draining or inst.view.instance_id == exclude:
                continue
            if inst.members and inst.load + r.footprint > inst.budget:
                continue
            lat = self.cost.latency_envelope(inst.view.config, inst.load + r.footprint)
            if not self._mixed or now_s + (t := self._time_on(r, inst.view.config, inst.load)) <= r.deadline_s:
                key = (0, lat, inst.load)
            else:
                key = (1, t, inst.load)
            ranked.append((key, k, inst, lat))
        ranked.sort(key=lambda c: (c[0], c[1]))
        for _, _, inst, lat in ranked:
            if not self.params.protect_admitted or self._keeps_members(inst, lat, now_s):
                return inst, lat
        return None, float("inf")

    def _time_on(self, r: _Req, config: str, others_load: float) -> float:
        """Expected time left for ``r`` at its lowest allowed τ (what the worker falls back to when the
        deadline is near, §4.3) on an instance of ``config`` whose other requests execute ``others_load``
        tokens per step: its refresh steps run its whole canvas, its reuse steps one block."""
        floor = r.view.min_threshold if self.params.honour_floor else 0.0
        tau = allowed_thresholds(self.params.threshold.candidates, 1.0, floor)[-1]
        n_ref = refresh_left(r.view.num_blocks, r.progress.blocks_refreshed)
        reuse = max(0.0, self.predictor.steps_left(r.progress.masked_left(r.view.output_len), tau) - n_ref)
        return (n_ref * self.cost.latency_envelope(config, others_load + r.view.full_len)
                + reuse * self.cost.latency_envelope(config, others_load + r.view.block_len))

    def _place(self, out: SchedulerOutput, now_s: float) -> None:
        while self._queue:
            _, rid = self._queue[0]
            r = self.reqs.get(rid)
            if r is None or rid not in self._queued or r.instance_id is not None:
                heapq.heappop(self._queue)  # stale entry
                continue
            if self.params.drop_expired and not self.feasible(r, now_s):
                self._drop(rid, out)
                continue
            inst, lat = self._best_instance(r, now_s)
            if inst is None:
                break  # nothing fits: no overload, wait for capacity
            if self.params.drop_expired and not self._fits_deadline(r, lat, now_s):
                self._drop(rid, out)
                continue
            heapq.heappop(self._queue)
            self._queued.discard(rid)
            self._attach(r, inst)
            out.placements.append(Placement(rid, inst.view.instance_id, r.cap, r.deadline_s))

    def _drop(self, rid: str, out: SchedulerOutput) -> None:
        heapq.heappop(self._queue)
        self._queued.discard(rid)
        del self.reqs[rid]
        out.dropped.append(rid)

    def _keeps_members(self, inst: _Inst, step_s: float, now_s: float) -> bool:
        """Would every member that makes its deadline at the instance's step latency now still make it
        at ``step_s``? (A member already late at today's latency imposes no constraint: it cannot be
        saved by refusing others, and would otherwise close the instance to everyone.)"""
        now_step_s = self.cost.latency_envelope(inst.view.config, inst.load)
        if step_s <= now_step_s:  # the step is no slower with it (a flat stretch of the curve)
            return True
        safety = self.params.place_safety
        for rid in inst.members:
            m = self.reqs[rid]
            room, need = m.deadline_s - now_s, safety * self._steps_at_floor(m)
            if need * now_step_s <= room < need * step_s:
                return False
        return True

    def _fits_deadline(self, r: _Req, step_s: float, now_s: float) -> bool:
        """Expected time at the lowest allowed τ, every step at ``step_s``, × place_safety fits?"""
        return now_s + self.params.place_safety * self._steps_at_floor(r) * step_s <= r.deadline_s

    def _steps_at_floor(self, r: _Req) -> float:
        """Steps left at its lowest allowed τ; cached until its progress or the predictor changes (the
        admission check asks for every member of an instance at every placement)."""
        version, committed, steps = r.plan
        if version != self._predictor_version or committed != r.progress.committed:
            floor = r.view.min_threshold if self.params.honour_floor else 0.0
            tau = allowed_thresholds(self.params.threshold.candidates, 1.0, floor)[-1]
            steps = self.predictor.steps_left(r.progress.masked_left(r.view.output_len), tau)
            r.plan = (self._predictor_version, r.progress.committed, steps)
        return steps

    def _migrate(self, out: SchedulerOutput, now_s: float) -> None:
        boundary, self._boundary = self._boundary, []
        for rid in boundary:
            r = self.reqs.get(rid)
            if r is None or not r.at_boundary or r.instance_id is None:
                continue
            r.at_boundary = False  # consumed: the worker starts the next block right after
            src = self.insts.get(r.instance_id)
            if src is None:
                continue
            draining = src.view.draining
            if not (draining or self.params.migrate):
                continue
            dst, _ = self._best_instance(r, now_s, exclude=r.instance_id)
            if dst is None:
                continue
            if draining or self._gains(r, src, dst, now_s):
                self._detach(r)
                self._attach(r, dst)
                r.at_boundary = False
                out.migrations.append(Migration(rid, src.view.instance_id, dst.view.instance_id))

    def _gains(self, r: _Req, src: _Inst, dst: _Inst, now_s: float) -> bool:
        """Worth moving by ``migrate_gain``? Same configuration: the step latency with it added vs the
        source's now. Across configurations (see _best_instance): only a request that would miss its
        deadline here, for one that finishes that much sooner there."""
        keep = 1.0 - self.params.migrate_gain
        if src.view.config == dst.view.config:
            dst_lat = self.cost.latency_envelope(dst.view.config, dst.load + r.footprint)
            return dst_lat < self.cost.latency_envelope(src.view.config, src.load) * keep
        here = self._time_on(r, src.view.config, max(0.0, src.load - r.footprint))
        return now_s + here > r.deadline_s and self._time_on(r, dst.view.config, dst.load) < here * keep

    def _load_control(self, now_s: float, out: SchedulerOutput) -> dict[str, float]:
        assert self.load_controller is not None
        items = [self._load_item(r) for r in self.reqs.values()]
        supply = sum(self.params.lc_utilization * self.cost.throughput(i.view.config, i.budget)
                     for i in self.insts.values() if not i.view.draining)
        if self._shedding() and supply > 0:
            # in the controller's order, not a set's: a set of strings iterates in a per-process
            # (hash-seeded) order, so a replay in another process would drop the same requests in another order
            shed = list(dict.fromkeys(self.load_controller.shed(self._queued_items(now_s), supply, now_s,
                                                                self.predictor, self.params.shed_threshold)))
            for rid in shed:
                self._queued.discard(rid)  # its heap entry is skipped as stale by _place
                del self.reqs[rid]
                out.dropped.append(rid)
            gone = set(shed)
            items = [i for i in items if i.request_id not in gone]
        window = self.params.global_slo_s or self._median_slo()
        caps = self.load_controller.caps(items, supply, window, now_s, self.predictor,
                                         base_threshold=self._shed_base())
        changed = {}
        for rid, cap in caps.items():
            r = self.reqs[rid]
            if r.cap != cap:
                self._set_cap(r, cap)
                changed[rid] = cap
        return changed

    def _shedding(self) -> bool:
        return self.params.shed_threshold is not None and self.params.drop_expired

    def _shed_base(self) -> float | None:
        """With shedding on, the load already fits at the shedding τ: caps start there, not at the lowest."""
        return self.params.shed_threshold if self._shedding() else None

    def _queued_items(self, now_s: float) -> list[LoadItem]:
        """The queue in placement order, each with its latest start: planning deadline (arrival + margin ×
        SLO, as §4.3 plans) minus its steps at the shedding τ × the step latency of a full instance."""
        steps = [self.cost.latency(i.view.config, i.budget) for i in self.insts.values() if not i.view.draining]
        step_s, margin, tau = min(steps, default=0.0), self.params.threshold.margin, self.params.shed_threshold or 0.0
        out = []
        for r in sorted((r for r in self.reqs.values() if r.instance_id is None and r.view.request_id in self._queued),
                        key=self._key):
            it = self._load_item(r)
            plan = r.view.arrival_s + margin * (r.deadline_s - r.view.arrival_s)
            it.start_by_s = plan - step_s * max(it.n_refresh, self.predictor.steps_left(it.masked_left, tau))
            out.append(it)
        return out

    def _load_item(self, r: _Req) -> LoadItem:
        v, p = r.view, r.progress
        return LoadItem(v.request_id, p.masked_left(v.output_len), refresh_left(v.num_blocks, p.blocks_refreshed),
                        v.full_len, v.block_len, p.committed / max(1, v.output_len), r.deadline_s, v.min_threshold,
                        droppable=r.instance_id is None and v.request_id in self._queued,
                        priority=v.priority if self.params.use_priority else 0)

    def _median_slo(self) -> float:
        slos = sorted(r.deadline_s - r.view.arrival_s for r in self.reqs.values())
        return slos[len(slos) // 2] if slos else 1.0
