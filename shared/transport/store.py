"""Redis store: request records (one hash per request), the deadline index, checkpoints, plans.

Keys
  dlm:req:<id>        hash: state, worker_id, updated_s, submit (JSON SubmitRequest), result (JSON RequestFinished)
  dlm:deadlines       sorted set of *active* request ids scored by deadline_s (+inf without an SLO)
  dlm:ckpt:<id>       JSON DecodeState of the last committed block (resume point after a crash)
  dlm:plan            JSON Plan currently in force
  dlm:rl:<bucket>     hash: tokens, ts — a gateway rate-limit token bucket (expires once full again)
  dlm:scheduler:leader, dlm:scheduler:epoch   the schedulers' leader lease and its fencing counter (lease.py)
State changes go through small Lua scripts so concurrent services cannot overwrite each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from shared.schemas.cluster import Plan
from shared.schemas.codec import decode, encode
from shared.schemas.engine import DecodeState
from shared.schemas.records import TERMINAL_STATES, RequestRecord
from shared.schemas.requests import RequestFinished, SubmitRequest

if TYPE_CHECKING:
    from shared.config import RedisConfig

DEADLINES = "dlm:deadlines"
PLAN = "dlm:plan"

# KEYS[1]=hash; ARGV: new_state, now, worker_id, allowed states...  → {1 if done else 0, previous state or ""}
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
for i = 4, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_s', ARGV[2], 'worker_id', ARGV[3])
    return {1, cur}
  end
end
return {0, cur}
"""

# The same, fenced: KEYS[2] = a lease key that must still hold ARGV[1] (the caller's lease value), else
# nothing changes and {0, 'fenced'} comes back — a scheduler that lost its lease cannot place anything.
# ARGV[2..]: as _TRANSITION's ARGV.
_FENCED_TRANSITION = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0, 'fenced'} end
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {0, ''} end
for i = 5, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_s', ARGV[3], 'worker_id', ARGV[4])
    return {1, cur}
  end
end
return {0, cur}
"""
FENCED = "fenced"  # transition()'s "previous state" when the fence no longer holds

# KEYS: hash, deadlines, ckpt; ARGV: status, result, now, ttl, id, finisher token → 1 if recorded (or
# already recorded by this same token: a retried call), 0 if already finished by someone else
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then
  if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'finished_by') == ARGV[6] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'result', ARGV[2], 'updated_s', ARGV[3], 'finished_by', ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('DEL', KEYS[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

# KEYS: hash; ARGV: now → 1 if it is now cancelled, else the (terminal) current state, "" if missing.
# The terminal set comes from TERMINAL_STATES, so a new terminal state is never cancelled over.
_CANCEL = """
local terminal = {%s}
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return '' end
if terminal[cur] then return cur end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated_s', ARGV[1])
return 1
""" % ", ".join(f"['{s}'] = true" for s in sorted(TERMINAL_STATES))


# KEYS: bucket hash; ARGV: rate/s, burst, cost → {1 if taken else 0, ms until enough tokens}.
# Redis's own clock, so every gateway replica shares one bucket per client without clock skew.
_TOKEN_BUCKET = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local taken, wait_ms = 0, 0
if tokens >= cost then
  tokens, taken = tokens - cost, 1
else
  wait_ms = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, wait_ms}
"""


def _req_key(request_id: str) -> str:
    return f"dlm:req:{request_id}"


def _ckpt_key(request_id: str) -> str:
    return f"dlm:ckpt:{request_id}"


def _text(v: bytes | str | int) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Store:
    def __init__(self, client: aioredis.Redis, result_ttl_s: int = 3600) -> None:
        self.r = client
        self.result_ttl_s = result_ttl_s
        self._transition = client.register_script(_TRANSITION)
        self._fenced_transition = client.register_script(_FENCED_TRANSITION)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._token_bucket = client.register_script(_TOKEN_BUCKET)

    @classmethod
    async def connect(cls, url: str, result_ttl_s: int = 3600, max_connections: int = 64,
                      pool_timeout_s: float = 10.0) -> Store:
        """``url``: ``redis://host:port/db``, or ``redis+sentinel://host:port,host:port/<master name>/<db>``
        to find the master through Redis Sentinel and follow it when Sentinel fails it over."""
        # A Redis restart (AOF reload included) is ridden out: every command is retried with backoff
        # for ~20 s before the error reaches the caller. State changes are Lua compare-and-sets, so a
        # retried command whose first attempt did land is harmless (see finish()).
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=45,
                      supported_errors=(RedisConnectionError, RedisTimeoutError, BusyLoadingError))
        # A blocking pool: under a burst, commands wait (up to pool_timeout_s) for one of
        # max_connections connections. redis-py's default pool instead fails at once with "Too many
        # connections" past 100 concurrent commands (200 streaming clients hit that). Redis runs
        # commands one at a time, so more connections would add no throughput.
        options = dict(max_connections=max_connections, timeout=pool_timeout_s, socket_connect_timeout=5,
                       health_check_interval=30, retry=retry,
                       retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError])
        if url.startswith(SENTINEL_SCHEME):
            pool = _sentinel_pool(url, options)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(url, **options)
        client = aioredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # aclose() also closes the pool we built
        await client.ping()
        return cls(client, result_ttl_s)

    @classmethod
    async def from_config(cls, cfg: RedisConfig) -> Store:
        """From a ``RedisConfig`` (url, TTL and pool settings)."""
        return await cls.connect(cfg.url, cfg.result_ttl_s, cfg.max_connections, cfg.pool_timeout_s)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except Exception:
            return False

    # -- request lifecycle ---------------------------------------------------------------------
    async def create_request(self, submit: SubmitRequest, now_s: float) -> None:
        deadline = submit.deadline_s if submit.deadline_s is not None else math.inf
        async with self.r.pipeline(transaction=True) as p:
            p.hset(_req_key(submit.request_id), mapping={
                "state": "queued", "worker_id": "", "updated_s": repr(now_s), "submit": encode(submit),
            })
            p.zadd(DEADLINES, {submit.request_id: deadline})
            await p.execute()

    async def transition(self, request_id: str, new_state: str, allowed_from: tuple[str, ...], now_s: float,
                         worker_id: str = "", fence: tuple[str, str] | None = None) -> tuple[bool, str]:
        """Atomic compare-and-set of the state: (done, previous state; '' if the request is unknown).
        ``fence`` = (key, value): only while that key holds that value (a lease), else (False, FENCED)."""
        args = [new_state, repr(now_s), worker_id, *allowed_from]
        if fence is None:
            done, prev = await self._transition(keys=[_req_key(request_id)], args=args)
        else:
            done, prev = await self._fenced_transition(keys=[_req_key(request_id), fence[0]], args=[fence[1], *args])
        return done == 1, _text(prev)

    async def finish(self, finished: RequestFinished, now_s: float, token: str = "") -> bool:
        """Record the result once (atomic): True for the one caller whose result is recorded — only it
        may announce the completion. False if a result was already recorded by another finisher (or
        the request is unknown). A retry with the same non-empty ``token`` returns True again."""
        rid = finished.request_id
        res = await self._finish(
            keys=[_req_key(rid), DEADLINES, _ckpt_key(rid)],
            args=[finished.status, encode(finished), repr(now_s), self.result_ttl_s, rid, token],
        )
        return res == 1

    async def cancel(self, request_id: str, now_s: float) -> str | None:
        """None when the request is now cancelled; else its terminal state, or '' when unknown."""
        res = await self._cancel(keys=[_req_key(request_id)], args=[repr(now_s)])
        return None if res == 1 else _text(res)

    async def get_record(self, request_id: str) -> RequestRecord | None:
        return _record(request_id, await self.r.hgetall(_req_key(request_id)))

    async def get_state(self, request_id: str) -> str:
        v = await self.r.hget(_req_key(request_id), "state")
        return _text(v) if v is not None else ""

    async def get_states(self, request_ids: list[str]) -> list[str]:
        """States of many requests in one round trip ('' for an unknown one)."""
        if not request_ids:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for rid in request_ids:
                p.hget(_req_key(rid), "state")
            rows = await p.execute()
        return [_text(v) if v is not None else "" for v in rows]

    async def active_requests(self) -> list[RequestRecord]:
        """Every request not yet finished, earliest deadline first (the scheduler's rebuild input)."""
        ids = [_text(i) for i in await self.r.zrange(DEADLINES, 0, -1)]
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for rid in ids:
                p.hgetall(_req_key(rid))
            rows = await p.execute()
        return [rec for rid, row in zip(ids, rows) if (rec := _record(rid, row)) is not None]

    # -- rate limiting -------------------------------------------------------------------------
    async def take_token(self, bucket: str, rate_per_s: float, burst: int) -> float:
        """Atomic token bucket: 0.0 when a token was taken, else seconds until one will be available."""
        taken, wait_ms = await self._token_bucket(keys=[f"dlm:rl:{bucket}"], args=[rate_per_s, burst, 1])
        return 0.0 if taken == 1 else max(int(wait_ms), 1) / 1000

    # -- checkpoints and plans -----------------------------------------------------------------
    async def save_checkpoint(self, state: DecodeState) -> None:
        await self.r.set(_ckpt_key(state.request_id), encode(state), ex=self.result_ttl_s)

    async def load_checkpoint(self, request_id: str) -> DecodeState | None:
        raw = await self.r.get(_ckpt_key(request_id))
        return decode(raw, DecodeState) if raw else None

    async def save_plan(self, plan: Plan) -> None:
        await self.r.set(PLAN, encode(plan))

    async def load_plan(self) -> Plan | None:
        raw = await self.r.get(PLAN)
        return decode(raw, Plan) if raw else None


SENTINEL_SCHEME = "redis+sentinel://"


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master discovery (a connection asks Sentinel where the master is, and a demoted
    master's READONLY answer sends it asking again) with the blocking pool's wait for a free connection."""


def _sentinel_pool(url: str, options: dict) -> SentinelConnectionPool:
    hosts, _, rest = url[len(SENTINEL_SCHEME):].partition("/")
    master, _, db = rest.partition("/")
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis url {url!r}: sentinel address {h!r} is not host:port")
        sentinels.append((host, int(port)))
    if not master:
        raise ValueError(f"redis url {url!r} names no master: {SENTINEL_SCHEME}host:port,.../<master>/<db>")
    manager = Sentinel(sentinels, socket_timeout=1.0, socket_connect_timeout=1.0)
    return _BlockingSentinelPool(master, manager, db=int(db or 0), **options)


def _record(request_id: str, row: dict) -> RequestRecord | None:
    if not row or b"submit" not in row:
        return None
    result = row.get(b"result")
    return RequestRecord(
        request_id=request_id,
        state=_text(row[b"state"]),  # type: ignore[arg-type]
        submit=decode(row[b"submit"], SubmitRequest),
        worker_id=_text(row.get(b"worker_id", b"")),
        updated_s=float(row.get(b"updated_s", b"0")),
        result=decode(result, RequestFinished) if result else None,
    )
