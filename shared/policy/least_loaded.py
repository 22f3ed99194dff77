"""Least-loaded placement: the live scheduler's default policy (pure: plain data in, plain data out).

Order: priority class first (higher first), then earliest deadline, then arrival. Each request goes to
the instance with the fewest active tokens that still has room in its token budget; when nothing has
room the request stays queued (no overload). Caps are a fixed default: this policy does no load control.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.policy.types import InstanceView, Placement, RequestView, SchedulerOutput


@dataclass
class LeastLoadedPolicy:
    default_cap: float = 0.9
    default_token_budget: int = 4096  # tokens (prompt + canvas) in flight per instance
    _turn: int = 0  # rotates the tie-break so equally loaded instances take turns

    def schedule(
        self,
        now_s: float,
        queued: list[RequestView],
        instances: list[InstanceView],
        active_tokens: dict[str, int],
    ) -> SchedulerOutput:
        """``active_tokens``: instance id → Σ full_len of the requests already on it."""
        load = {i.instance_id: active_tokens.get(i.instance_id, 0) for i in instances if not i.draining}
        budget = {i.instance_id: i.token_budget or self.default_token_budget for i in instances}
        out = SchedulerOutput()
        for req in sorted(queued, key=lambda r: (-r.priority, r.deadline_s, r.arrival_s)):
            fits = [iid for iid, used in load.items() if used + req.full_len <= budget[iid] or used == 0]
            if not fits:
                continue  # a smaller request behind it may still fit somewhere
            order = {iid: (i - self._turn) % len(load) for i, iid in enumerate(sorted(load))}
            target = min(fits, key=lambda iid: (load[iid], order[iid]))
            self._turn += 1
            load[target] += req.full_len
            out.placements.append(Placement(request_id=req.request_id, instance_id=target,
                                            cap=max(self.default_cap, req.min_threshold), deadline_s=req.deadline_s))
        return out
