"""Front door for the API: API keys, per-client rate limit, body size and in-flight admission.

A pure ASGI middleware (not BaseHTTPMiddleware) so streamed responses and client disconnects pass through
untouched. Every path is guarded except the probes and the scrape target. Checks run cheapest first:
key (in memory) → Content-Length → token bucket (one Redis round trip) → in-flight bound; the body size is
enforced again while the body is read, for chunked or lying clients. Keys and their digests are never
logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ApiError, error_body
from shared.config import SecurityConfig, hash_api_key

log = logging.getLogger("dilaserve.gateway")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
GENERATE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
# (bucket id, rate/s, burst) → seconds to wait (0.0 = allowed)
TakeToken = Callable[[str, float, int], Awaitable[float]]


@dataclass
class GuardState:
    """Shared by the middleware and the app (the in-flight count is readable for tests and metrics)."""

    sec: SecurityConfig
    take_token: TakeToken | None = None  # set once the store is connected
    backend_timeout_s: float = 5.0
    inflight: int = 0
    on_refused: Callable[[], None] | None = None  # a generation request refused (429/503): counted as "rejected"

    def __post_init__(self) -> None:
        self.key_hashes = frozenset(self.sec.api_key_hashes)
        self.burst = self.sec.rate_limit_burst or max(1, math.ceil(self.sec.rate_limit_per_s))

    @property
    def auth_on(self) -> bool:
        return bool(self.key_hashes)


class Guard:
    def __init__(self, app: ASGIApp, state: GuardState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        try:
            client = self._authenticate(scope)
            self._check_content_length(scope)
            await self._rate_limit(client)
        except ApiError as exc:
            if exc.status == 429 and scope["path"] in GENERATE_PATHS:
                self._refused()
            return await exc.response()(scope, receive, send)
        receive = self._limit_body(receive)
        if scope["path"] not in GENERATE_PATHS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        await self._admit(scope, receive, send)

    # -- checks -----------------------------------------------------------------------------------
    def _authenticate(self, scope: Scope) -> str:
        """The rate-limit bucket of this caller: its key's digest, or its address when auth is off."""
        if not self.state.auth_on:
            client = scope.get("client")
            return f"addr:{client[0] if client else 'unknown'}"
        token = _bearer(scope)
        if token is None:
            raise _unauthorized("You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                                "missing_api_key")
        digest = hash_api_key(token)
        if digest not in self.state.key_hashes:
            raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
        return f"key:{digest[:32]}"

    def _check_content_length(self, scope: Scope) -> None:
        raw = _header(scope, b"content-length")
        if raw is not None and raw.isdigit() and int(raw) > self.state.sec.max_body_bytes:
            raise _too_large(self.state.sec.max_body_bytes)

    async def _rate_limit(self, bucket: str) -> None:
        st = self.state
        if st.sec.rate_limit_per_s <= 0 or st.take_token is None:
            return
        try:
            wait_s = await asyncio.wait_for(st.take_token(bucket, st.sec.rate_limit_per_s, st.burst), st.backend_timeout_s)
        except Exception as exc:  # fail open: Redis trouble must not turn into refusing every caller
            log.warning("rate limiter unavailable (%s); request let through", type(exc).__name__)
            return
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            raise ApiError(429, f"Rate limit reached: {st.sec.rate_limit_per_s:g} requests/s (burst {st.burst}) per "
                           f"client. Retry after {retry} s.", code="rate_limit_exceeded", type_="rate_limit_error",
                           headers={"Retry-After": str(retry)})

    def _limit_body(self, receive: Receive) -> Receive:
        limit, seen = self.state.sec.max_body_bytes, 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:  # raised inside request.body(): the app's ApiError handler answers 413
                    raise _too_large(limit)
            return msg

        return limited

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bound on generation requests in flight here (a stream holds its slot until it ends)."""
        st = self.state
        if st.sec.max_inflight and st.inflight >= st.sec.max_inflight:
            self._refused()
            retry = max(1, st.sec.retry_after_s)
            resp = JSONResponse(status_code=503, headers={"Retry-After": str(retry)}, content=error_body(
                f"The gateway is at capacity ({st.sec.max_inflight} requests in flight). Retry after {retry} s.",
                "server_error", None, "server_overloaded"))
            return await resp(scope, receive, send)
        st.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            st.inflight -= 1

    def _refused(self) -> None:
        if self.state.on_refused is not None:
            self.state.on_refused()


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1").strip()
    return None


def _bearer(scope: Scope) -> str | None:
    raw = _header(scope, b"authorization")
    if not raw:
        return None
    scheme, _, token = raw.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is larger than this gateway accepts ({limit} bytes).",
                    code="request_too_large")
