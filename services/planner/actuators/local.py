"""The local actuator: the node supervisors (services/supervisor) carry plans out.

The planner saves every changed plan in Redis and publishes it on ``subjects.plan_publish()``; each
``dilaserve supervisor`` follows that subject (and the planner's heartbeat, to catch a plan it missed)
and drains and starts its node's worker processes (``Supervisor.apply``). So there is nothing left for
the planner to do once the plan is published: this actuator only records that it was handed on.
"""

from __future__ import annotations

import logging

from services.planner.actuators.base import ActuationResult, plan_totals
from shared.schemas.cluster import Plan

log = logging.getLogger("dilaserve.planner")


class LocalActuator:
    name = "local"

    async def start(self) -> None:
        return None

    async def apply(self, plan: Plan) -> ActuationResult:
        log.debug("plan %s handed to the node supervisors", plan.plan_id)
        return ActuationResult(plan.plan_id, self.name, targets=plan_totals(plan), delegated=True)

    async def observed(self) -> dict[str, int] | None:
        return None  # the supervisors know their workers; the planner does not

    async def close(self) -> None:
        return None
