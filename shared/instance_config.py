"""Instance configuration names (``tp4-dual``: tensor-parallel degree, then cache mode), as workers, the
supervisor and the planner spell them."""

from __future__ import annotations


def tp_of(config: str) -> int:
    """``tp4-dual`` → 4; a name without a ``tp<N>`` head is one GPU."""
    head = config.split("-", 1)[0]
    return int(head[2:]) if head.startswith("tp") and head[2:].isdigit() else 1


def cache_of(config: str) -> str:
    """``tp4-dual`` → ``dual``; a name without a cache part uses the dual cache."""
    return config.split("-", 1)[1] if "-" in config else "dual"
