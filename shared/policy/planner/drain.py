"""Which instances to drain when a plan wants fewer of a configuration than run (one rule for the
simulated planner and the node supervisor)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Running:
    """An instance as the drain rule sees it. ``load``: requests it holds (0 where unknown)."""

    instance_id: str
    config: str
    load: int = 0


def _ranked(running: Sequence[Running]) -> list[Running]:
    """Keep order: busiest first (draining one migrates its requests), then oldest first (warm, and a
    launch still loading is the newest: it gives up nothing). ``running`` is oldest first."""
    order = {r.instance_id: k for k, r in enumerate(running)}
    return sorted(running, key=lambda r: (-r.load, order[r.instance_id]))


def to_drain(running: Sequence[Running], want: Mapping[str, int]) -> list[str]:
    """Ids to drain so that at most ``want[g]`` instances of each configuration g stay, in keep order
    (the busiest of those drained first). ``running`` lists instances oldest first."""
    left = dict(want)
    out = []
    for r in _ranked(running):
        if left.get(r.config, 0) > 0:
            left[r.config] -= 1
        else:
            out.append(r.instance_id)
    return out


def to_launch(running: Sequence[Running], want: Mapping[str, int]) -> dict[str, int]:
    """Instances per configuration still to start once ``to_drain``'s are gone (in ``want``'s order)."""
    have: dict[str, int] = {}
    for r in running:
        have[r.config] = have.get(r.config, 0) + 1
    return {g: c - have.get(g, 0) for g, c in want.items() if c > have.get(g, 0)}
