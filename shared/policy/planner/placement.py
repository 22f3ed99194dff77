"""GPU packing and placement of instances on nodes (docs/planner.md §Placement).

TP degrees are powers of two, so instance sizes divide each other. For such sizes a multiset of
instances fits into nodes with free capacities f_n iff, for every size level d,

    Σ_{instances i with d_i ≥ d} d_i  ≤  Σ_n d · ⌊f_n / d⌋                      (pack_d)

(place sizes in decreasing order: what larger instances used in a node is a multiple of d, so the node
still offers exactly ⌊f_n/d⌋ − used/d slots of size d). The MILP therefore needs only per-configuration
counts x_g plus one row per level — no per-node integers and none of their symmetry — and the
per-node layout is recovered exactly here, keeping as many existing instances as possible.
"""

from __future__ import annotations

from shared.policy.planner.types import Layout


def levels(tps: list[int]) -> list[int]:
    return sorted(set(tps), reverse=True)


def level_capacity(free: list[int], d: int) -> int:
    """GPUs usable by instances of size ≥ d: Σ_n d·⌊f_n/d⌋."""
    return sum(d * (f // d) for f in free if f > 0)


def fits(sizes: dict[int, int], free: list[int]) -> bool:
    """Do ``sizes[d]`` instances of each TP degree d fit into nodes with ``free`` GPUs (pack_d rows)?"""
    for d in levels(list(sizes)):
        need = sum(dd * n for dd, n in sizes.items() if dd >= d)
        if need > level_capacity(free, d):
            return False
    return True


def layout_fits(layout: Layout, tp_of: dict[str, int], gpus_per_node: list[int]) -> bool:
    """The layout names known configurations only and no node is over-committed (or gone)."""
    for n, node in enumerate(layout.nodes):
        used = 0
        for name, c in node.items():
            if c and name not in tp_of:
                return False
            used += tp_of.get(name, 0) * c
        if used > (gpus_per_node[n] if n < len(gpus_per_node) else 0):
            return False
    return True


def _sizes(counts: dict[str, int], tp_of: dict[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for name, c in counts.items():
        if c > 0:
            out[tp_of[name]] = out.get(tp_of[name], 0) + c
    return out


def _keep(need: dict[str, int], current: Layout, tp_of: dict[str, int], free: list[int],
          nodes: list[dict[str, int]]) -> int:
    """Keep existing instances, largest first, while what is still to place keeps fitting."""
    kept = 0
    order = sorted(need, key=lambda g: (-tp_of[g], g))
    for g in order:
        for n, cur in enumerate(current.nodes[:len(free)]):
            for _ in range(min(cur.get(g, 0), need[g])):
                if free[n] < tp_of[g]:
                    break
                free[n] -= tp_of[g]
                need[g] -= 1
                if not fits(_sizes(need, tp_of), free):
                    free[n] += tp_of[g]  # keeping it would strand a larger instance elsewhere
                    need[g] += 1
                    break
                nodes[n][g] = nodes[n].get(g, 0) + 1
                kept += 1
    return kept


def _place_rest(need: dict[str, int], tp_of: dict[str, int], free: list[int],
                nodes: list[dict[str, int]]) -> bool:
    """Largest first, each into the fullest node that still has room (best fit keeps big holes)."""
    for g in sorted(need, key=lambda g: (-tp_of[g], g)):
        d = tp_of[g]
        for _ in range(need[g]):
            cands = [(free[n], n) for n in range(len(free)) if free[n] >= d]
            if not cands:
                return False
            _, n = min(cands)
            free[n] -= d
            nodes[n][g] = nodes[n].get(g, 0) + 1
        need[g] = 0
    return True


def place(counts: dict[str, int], tp_of: dict[str, int], gpus_per_node: list[int],
          current: Layout | None) -> tuple[list[dict[str, int]], int] | None:
    """Per-node layout for ``counts`` keeping existing instances; None when they cannot fit."""
    free = [max(0, g) for g in gpus_per_node]
    if not fits(_sizes(counts, tp_of), list(free)):
        return None
    nodes: list[dict[str, int]] = [{} for _ in free]
    need = {g: c for g, c in counts.items() if c > 0}
    kept = _keep(need, current, tp_of, free, nodes) if current is not None else 0
    if not _place_rest(need, tp_of, free, nodes):
        return None  # cannot happen when `fits` holds; kept as a guard, never a crash
    return [dict(sorted(n.items())) for n in nodes], kept
