"""A leader lease in Redis with a fencing token.

The lease is one key, ``<holder> <token>``, with a TTL (``SET ... PX``, written only while the key is
absent or held under the same holder name). The token comes from a counter (``INCR``) and so grows with
every acquisition; the whole value is the fence: a holder passes it to fenced writes
(``Store.transition(..., fence=lease.fence)``), which change nothing once the key holds another value.
A holder that stalls past its TTL and wakes up therefore cannot act on a stale belief that it leads.
"""

from __future__ import annotations

from shared.transport.store import Store, _text

LEADER_KEY = "dlm:scheduler:leader"
EPOCH_KEY = "dlm:scheduler:epoch"

# KEYS: lease, epoch; ARGV: holder, ttl ms → {1, value} when acquired, {0, current value} when held by another.
# The same holder name may take the lease over at once: it is the same instance restarted (a pod name,
# a local service name), whose predecessor is gone; it still gets a new token.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*) %d+$') ~= ARGV[1] then return {0, cur} end
local value = ARGV[1] .. ' ' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', tonumber(ARGV[2]))
return {1, value}
"""

# KEYS: lease; ARGV: value, ttl ms → 1 if still ours (TTL extended), else 0
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

# KEYS: lease; ARGV: value → 1 if it was ours and is now free
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, store: Store, holder: str, ttl_s: float, key: str = LEADER_KEY, epoch_key: str = EPOCH_KEY) -> None:
        if not holder or " " in holder:
            raise ValueError(f"lease holder name must be non-empty without spaces, got {holder!r}")
        self.store = store
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.key, self.epoch_key = key, epoch_key
        self.value = ""  # "<holder> <token>" while held
        self._acquire = store.r.register_script(_ACQUIRE)
        self._renew = store.r.register_script(_RENEW)
        self._release = store.r.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return bool(self.value)

    @property
    def token(self) -> int:
        return int(self.value.rsplit(" ", 1)[1]) if self.value else 0

    @property
    def fence(self) -> tuple[str, str]:
        """(key, value) for fenced writes; a value that matches nothing before the lease is held."""
        return self.key, self.value or "-"

    async def try_acquire(self) -> bool:
        ok, value = await self._acquire(keys=[self.key, self.epoch_key], args=[self.holder, self.ttl_ms])
        if ok == 1:
            self.value = _text(value)
        return ok == 1

    async def renew(self) -> bool:
        """Extend the TTL; False (and no longer held) if the key expired or holds another value."""
        if self.value and await self._renew(keys=[self.key], args=[self.value, self.ttl_ms]) == 1:
            return True
        self.value = ""
        return False

    async def release(self) -> None:
        """Give it up now (a graceful stop): a standby takes over without waiting for the TTL."""
        value, self.value = self.value, ""
        if value:
            await self._release(keys=[self.key], args=[value])

    async def current(self) -> str:
        """The value now in Redis ('' when nobody holds the lease)."""
        v = await self.store.r.get(self.key)
        return _text(v) if v is not None else ""
