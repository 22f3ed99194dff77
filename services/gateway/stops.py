"""What of a stream's committed text may be sent while stop strings are in play."""

from __future__ import annotations

from shared.schemas.requests import stop_cut


def streamable_text(text: str, stops: list[str]) -> str:
    """``text`` up to the earliest stop string; without one, less the longest tail that is the start
    of a stop string (later text may complete it, and nothing past a stop may be sent)."""
    if not stops:
        return text
    cut = stop_cut(text, stops)
    if cut is not None:
        return text[:cut]
    return text[: len(text) - _held_tail(text, stops)]


def _held_tail(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    longest = min(len(text), max(len(s) for s in stops) - 1)
    for n in range(longest, 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0
