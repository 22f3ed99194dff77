"""Stop strings: watch a request's committed contiguous prefix (as text) for one of them.

A diffusion model commits positions out of order; only the contiguous prefix (up to the first mask
or EOS) is final text, so only it is searched. The cut rule is shared with the gateway
(shared.schemas.requests.stop_cut): the earliest match in the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from services.worker.engine.batch_engine import output_ids
from shared.schemas.engine import DecodeState
from shared.schemas.requests import stop_cut

Decode = Callable[[list[int]], str]


@dataclass
class StopWatch:
    stops: list[str]
    decode: Decode
    eos_token_id: int
    checked_len: int = 0  # prefix length (tokens) already searched

    def check(self, state: DecodeState) -> list[int] | None:
        """The output token ids if the prefix now holds a stop string (the shortest token prefix whose
        text reaches past the match), None otherwise."""
        ids = output_ids(state, self.eos_token_id)
        if len(ids) <= self.checked_len:
            return None
        self.checked_len = len(ids)
        text = self.decode(ids)
        cut = stop_cut(text, self.stops)
        if cut is None:
            return None
        end = min(cut + len(s) for s in self.stops if text.startswith(s, cut))
        return ids[: self._tokens_covering(ids, text[:end])]

    def _tokens_covering(self, ids: list[int], head: str) -> int:
        """Fewest leading tokens whose text starts with ``head`` (binary search: text grows with tokens)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.decode(ids[:mid]).startswith(head):
                hi = mid
            else:
                lo = mid + 1
        return hi
