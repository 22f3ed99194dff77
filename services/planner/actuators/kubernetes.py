"""The Kubernetes actuator: one worker Deployment per configuration, scaled through its Scale subresource.

A changed plan is carried out the way the node supervisor does it, drains first:

1. **scale-downs**: the drain rule (``shared.policy.planner.drain.to_drain``: the busiest stay, then
   the oldest) picks the pods to remove, using each worker's load from its heartbeats (worker id = pod
   name). They are marked with the lowest ``pod-deletion-cost`` so the ReplicaSet removes exactly
   those, then ``spec.replicas`` is patched down. Each removed pod runs the worker's graceful stop (the
   chart's preStop hook, then SIGTERM): no new assignments, checkpoints at the block boundary, a
   draining heartbeat on which the scheduler re-places its requests. The step waits until those pods
   are gone and the scheduler no longer lists them;
2. **scale-ups**: ``spec.replicas`` is patched up and the step waits until ``readyReplicas`` matches
   (the worker's readiness probe: its own heartbeat, model loaded, not draining).

Each wait is bounded by ``planner.k8s_ready_timeout_s``; a Deployment that does not settle in time is
reported in ``ActuationResult.timed_out`` and the next changed plan starts from what is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from services.planner.actuators.base import ActuationResult, plan_totals
from services.planner.actuators.cluster_view import ClusterView
from services.planner.actuators.kube_api import KubeApi, PodInfo
from shared.config import PlannerConfig, deployment_map
from shared.policy.planner.drain import Running, to_drain
from shared.schemas.cluster import Plan

log = logging.getLogger("dilaserve.planner")

DRAIN_COST = -1000  # below every unmarked pod (default cost 0)
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class KubernetesActuator:
    name = "kubernetes"

    def __init__(self, cfg: PlannerConfig, api: KubeApi, bus=None) -> None:
        self.deployments = deployment_map(cfg.k8s_deployments)
        self.api = api
        self.bus = bus
        self.view = ClusterView()
        self.timeout_s = cfg.k8s_ready_timeout_s
        self.poll_s = cfg.k8s_poll_s
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self.bus is not None:
            await self.view.start(self.bus)

    async def close(self) -> None:
        await self.view.close()
        await asyncio.to_thread(self.api.close)

    async def observed(self) -> dict[str, int] | None:
        return {g: await asyncio.to_thread(self.api.get_scale, d) for g, d in self.deployments.items()}

    # -- a plan ---------------------------------------------------------------------------------
    async def apply(self, plan: Plan) -> ActuationResult:
        async with self._lock:  # plans are carried out one at a time, in order
            res = ActuationResult(plan.plan_id, self.name)
            want = plan_totals(plan)
            res.unknown = {g: n for g, n in want.items() if g not in self.deployments and n > 0}
            for g, n in res.unknown.items():
                log.error("plan %s: %s x %d has no Deployment (planner.k8s_deployments)", plan.plan_id, g, n)
            res.targets = {g: want.get(g, 0) for g in self.deployments}
            current = {g: await asyncio.to_thread(self.api.get_scale, d) for g, d in self.deployments.items()}
            downs = [g for g, n in res.targets.items() if n < current[g]]
            ups = [g for g, n in res.targets.items() if n > current[g]]
            await asyncio.gather(*(self._scale_down(g, current[g], res.targets[g], res) for g in downs))
            await asyncio.gather(*(self._scale_up(g, res.targets[g], res) for g in ups))
            for g, d in self.deployments.items():
                res.ready[g] = (await asyncio.to_thread(self.api.deployment, d)).ready
            log.info("plan %s on Kubernetes: targets %s, ready %s, drained %s%s", plan.plan_id, res.targets,
                     res.ready, res.drained, f", timed out {res.timed_out}" if res.timed_out else "")
            return res

    # -- scale-down: choose, mark, patch, wait for the drain ------------------------------------
    async def _scale_down(self, config: str, have: int, target: int, res: ActuationResult) -> None:
        name = self.deployments[config]
        state = await asyncio.to_thread(self.api.deployment, name)
        pods = [p for p in await asyncio.to_thread(self.api.pods, state.selector) if not p.terminating]
        victims = self.choose_victims(config, pods, target)
        for pod in victims:
            await asyncio.to_thread(self.api.set_deletion_cost, pod, DRAIN_COST)
        for p in pods:  # a mark left by an earlier scale-down that timed out must not pick a keeper
            if p.deletion_cost and p.name not in victims:
                await asyncio.to_thread(self.api.set_deletion_cost, p.name, 0)
        await asyncio.to_thread(self.api.set_scale, name, target)
        log.info("%s: %d -> %d, draining %s", name, have, target, victims)
        if await self._wait(lambda: self._drained(name, state.selector, set(victims), target)):
            res.drained.extend(victims)
        else:
            res.timed_out.append(name)

    def choose_victims(self, config: str, pods: list[PodInfo], target: int) -> list[str]:
        """The drain rule over the pods, oldest first; a pod's load is its worker's last heartbeat."""
        ordered = sorted(pods, key=lambda p: (p.created or _EPOCH, p.name))
        running = [Running(p.name, config, self.view.load.get(p.name, 0)) for p in ordered]
        return to_drain(running, {config: target})

    async def _drained(self, name: str, selector: str, victims: set[str], target: int) -> bool:
        state = await asyncio.to_thread(self.api.deployment, name)
        left = {p.name for p in await asyncio.to_thread(self.api.pods, selector)} & victims
        return state.settled and state.current <= target and not left and self.view.scheduler_released(victims)

    # -- scale-up: patch, wait for readiness ----------------------------------------------------
    async def _scale_up(self, config: str, target: int, res: ActuationResult) -> None:
        name = self.deployments[config]
        await asyncio.to_thread(self.api.set_scale, name, target)
        log.info("%s: scaling up to %d", name, target)
        if not await self._wait(lambda: self._ready(name, target)):
            res.timed_out.append(name)

    async def _ready(self, name: str, target: int) -> bool:
        state = await asyncio.to_thread(self.api.deployment, name)
        return state.settled and state.current == target and state.ready >= target

    async def _wait(self, done) -> bool:
        """Poll ``done()`` every ``k8s_poll_s`` until it holds or ``k8s_ready_timeout_s`` passes."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if await done():
                    return True
            except Exception as exc:  # an API blip is retried until the deadline
                log.warning("Kubernetes API: %s", exc)
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_s)
