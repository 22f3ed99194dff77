"""What every plan actuator offers: carry a published ``Plan`` out, report what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from shared.schemas.cluster import Plan


@dataclass
class ActuationResult:
    plan_id: str
    actuator: str
    targets: dict[str, int] = field(default_factory=dict)  # instances per configuration asked for
    ready: dict[str, int] = field(default_factory=dict)  # ready instances per configuration afterwards
    drained: list[str] = field(default_factory=list)  # instances removed (worker ids = pod names)
    unknown: dict[str, int] = field(default_factory=dict)  # configurations this actuator cannot run
    timed_out: list[str] = field(default_factory=list)  # Deployments that did not settle in time
    delegated: bool = False  # carried out elsewhere (the node supervisors), not by the actuator

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.timed_out


class Actuator(Protocol):
    """Carries plans out. ``apply`` returns once the plan is in force (or the actuator gave up)."""

    name: str

    async def start(self) -> None: ...

    async def apply(self, plan: Plan) -> ActuationResult: ...

    async def observed(self) -> dict[str, int] | None:
        """Instances per configuration deployed now, where the actuator can see them (else None)."""
        ...

    async def close(self) -> None: ...


def plan_totals(plan: Plan) -> dict[str, int]:
    """Instances per configuration the plan wants (configurations it leaves out: none)."""
    out: dict[str, int] = {}
    for ic in plan.instances:
        out[ic.config] = out.get(ic.config, 0) + max(0, ic.count)
    return out
