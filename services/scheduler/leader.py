"""Leader election for the schedulers: one leads (consumes submissions, places requests), others stand by.

A standby tries to take the lease every ``lease_renew_s``; the leader renews it as often. A leader that
cannot renew (the lease expired and someone else took it, or Redis stayed unreachable for a whole TTL)
steps down: it stops consuming and its process exits, to come back as a standby. Safety does not rest on
these timings: every placement is a compare-and-set fenced by the lease value (Store.transition), so a
deposed leader that has not noticed yet cannot place anything.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.transport.lease import Lease

log = logging.getLogger("dilaserve.scheduler")


class Election:
    def __init__(self, lease: Lease, ttl_s: float, renew_s: float) -> None:
        self.lease = lease
        self.ttl_s = ttl_s
        self.renew_s = renew_s

    async def _bounded(self, aw):
        """One Redis call, bounded by the renew period (the store's own retries would take ~20 s)."""
        return await asyncio.wait_for(aw, timeout=max(self.renew_s, 0.25))

    async def campaign(self) -> None:
        """Return once this instance holds the lease."""
        last_seen = None
        while True:
            try:
                if await self._bounded(self.lease.try_acquire()):
                    log.info("scheduler %s leads (lease token %d)", self.lease.holder, self.lease.token)
                    return
                current = await self._bounded(self.lease.current())
                if current != last_seen:
                    log.info("scheduler %s stands by; leader: %s", self.lease.holder, current or "none")
                    last_seen = current
            except Exception as exc:  # Redis down or failing over: keep trying
                log.warning("lease not taken (%s: %s); retrying", type(exc).__name__, exc)
            await asyncio.sleep(self.renew_s)

    async def hold(self) -> str:
        """Renew until the lease is lost; returns why. A lease found expired but free is taken again
        (a Redis restart outlasting the TTL), under a new token."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                if await self._bounded(self.lease.renew()) or await self._bounded(self.lease.try_acquire()):
                    last_ok = time.monotonic()
                    continue
                return f"the lease is held by {await self._bounded(self.lease.current()) or 'nobody'}"
            except Exception as exc:
                if time.monotonic() - last_ok > self.ttl_s:
                    return f"not renewed for {time.monotonic() - last_ok:.1f}s ({type(exc).__name__}: {exc})"
                log.warning("lease renewal failed (%s); retrying", type(exc).__name__)
