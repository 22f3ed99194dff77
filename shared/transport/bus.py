"""NATS bus: typed publish/subscribe, request/reply and a JetStream durable work queue.

Every payload is a shared.schemas Message (msgspec JSON); trace context rides in message headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js import api

from shared.schemas.base import Message
from shared.schemas.codec import decode, encode

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
Headers = dict[str, str]
MSG_ID = "Nats-Msg-Id"  # JetStream de-duplicates publishes by this header (within its duplicate window)
JS_ATTEMPT_S = 1.0  # one JetStream publish attempt (they take milliseconds when the stream has a leader)
JS_RETRY_PAUSE_S = 0.1
# what a JetStream publish raises when no stream leader answers (dead, or an election under way)
JS_UNANSWERED = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError)


class NoResponders(Exception):
    """A request found no subscriber at all on its subject (e.g. the worker process is gone)."""


@dataclass
class Delivery(Generic[M]):
    """A decoded JetStream message; call ``ack()`` once its effect is persisted."""

    message: M
    headers: Headers
    num_delivered: int
    _msg: Msg

    async def ack(self) -> None:
        await self._msg.ack()

    async def in_progress(self) -> None:
        await self._msg.in_progress()

    async def term(self) -> None:
        await self._msg.term()

    async def nak(self) -> None:
        """Hand the message back: JetStream redelivers it at once (e.g. to the next scheduler)."""
        await self._msg.nak()


class Bus:
    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, name: str, connect_timeout_s: float = 5.0, reconnect_time_wait_s: float = 0.5,
                      reconnect_buffer_bytes: int = 16 * 1024 * 1024) -> Bus:
        """``url``: one server, or a comma-separated list (a cluster; the client fails over between them
        and also learns the others from the servers). Reconnects forever (every ``reconnect_time_wait_s``) after a NATS outage; while reconnecting,
        publishes are buffered (up to ``reconnect_buffer_bytes``) and sent once the connection is back,
        and subscriptions are re-established. Core NATS is at-most-once: what matters is persisted
        first (Redis, JetStream) and the services reconcile from there."""

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        async def on_disconnected() -> None:
            if not (nc.is_closed or nc.is_draining):
                log.warning("nats disconnected; reconnecting (publishes are buffered)")

        async def on_reconnected() -> None:
            log.warning("nats reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

        servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: every server's URL
        nc = await nats.connect(
            servers, name=name, connect_timeout=connect_timeout_s, max_reconnect_attempts=-1,
            reconnect_time_wait=reconnect_time_wait_s, error_cb=on_error, disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected, pending_size=reconnect_buffer_bytes,
            ping_interval=10, max_outstanding_pings=3,  # a silent (partitioned) server is noticed in ~30 s
        )
        return cls(nc)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing / connection lost: nothing left to flush
                await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    # -- core NATS ------------------------------------------------------------------------------
    async def publish(self, subject: str, msg: Message, headers: Headers | None = None) -> None:
        await self.nc.publish(subject, encode(msg), headers=headers or None)

    async def subscribe(
        self, subject: str, type_: type[M], handler: Callable[[M, Headers], Awaitable[None]], queue: str = ""
    ):
        """Handlers run one message at a time per subscription; undecodable messages are logged, not fatal."""

        async def cb(raw: Msg) -> None:
            try:
                obj = decode(raw.data, type_)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.error("dropping undecodable message on %s: %s", raw.subject, exc)
                return
            try:
                await handler(obj, dict(raw.headers or {}))
            except Exception:
                log.exception("handler for %s failed", raw.subject)

        return await self.nc.subscribe(subject, queue=queue, cb=cb)

    async def subscribe_queue(self, subject: str, type_: type[M]) -> tuple[object, asyncio.Queue]:
        """Subscription feeding an asyncio.Queue of (message, headers); for per-request relays."""
        q: asyncio.Queue = asyncio.Queue()

        async def handler(obj: M, headers: Headers) -> None:
            q.put_nowait((obj, headers))

        sub = await self.subscribe(subject, type_, handler)
        return sub, q

    async def request(
        self, subject: str, msg: Message, reply_type: type[R], timeout_s: float, headers: Headers | None = None
    ) -> R:
        try:
            reply = await self.nc.request(subject, encode(msg), timeout=timeout_s, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        return decode(reply.data, reply_type)

    async def serve(
        self, subject: str, type_: type[M], handler: Callable[[M, Headers], Awaitable[Message]]
    ):
        """Reply to each request with the handler's Message."""

        async def cb(raw: Msg) -> None:
            try:
                obj = decode(raw.data, type_)
                reply = await handler(obj, dict(raw.headers or {}))
            except Exception:
                log.exception("request handler for %s failed", raw.subject)
                return
            if raw.reply:
                await self.nc.publish(raw.reply, encode(reply))

        return await self.nc.subscribe(subject, cb=cb)

    async def flush(self, timeout_s: float = 2.0) -> None:
        await self.nc.flush(timeout=timeout_s)

    # -- JetStream ------------------------------------------------------------------------------
    async def ensure_stream(self, name: str, subjects: list[str], max_age_s: float, replicas: int = 1) -> None:
        """File-backed work-queue stream: a message lives until acked (or max_age), never lost on restart.
        ``replicas`` > 1 keeps it on that many servers of a cluster. An existing stream's replica count is
        never lowered: services configured alike may start in any order, and a caller that asks for
        fewer (a default) must not undo the replication another one set up."""
        config = api.StreamConfig(
            name=name, subjects=subjects, storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE, max_age=max_age_s, num_replicas=max(1, replicas),
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            current = await self.js.stream_info(name)
            config.num_replicas = max(config.num_replicas or 1, current.config.num_replicas or 1)
            await self.js.update_stream(config)

    async def js_publish_once(self, subject: str, msg: Message, headers: Headers | None, timeout_s: float) -> int:
        """One attempt: the stream sequence once JetStream has stored the message."""
        ack = await self.js.publish(subject, encode(msg), timeout=max(0.01, timeout_s), headers=headers or None)
        return ack.seq

    async def js_publish(self, subject: str, msg: Message, headers: Headers | None = None, timeout_s: float = 5.0) -> int:
        """Returns the stream sequence once JetStream has stored the message. A message with a MSG_ID
        header is retried (attempts of at most JS_ATTEMPT_S) until ``timeout_s``: a replicated stream
        whose leader died answers nothing until its peers elect another (nats-server's raft: ≈ 4-9 s)
        and drops what was sent meanwhile; JetStream's duplicate window on that id makes retries safe."""
        retry = bool(headers and headers.get(MSG_ID))
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            attempt_s = min(JS_ATTEMPT_S, end - loop.time()) if retry else timeout_s
            try:
                return await self.js_publish_once(subject, msg, headers, attempt_s)
            except JS_UNANSWERED:
                if not retry or loop.time() + JS_RETRY_PAUSE_S >= end:
                    raise
                await asyncio.sleep(JS_RETRY_PAUSE_S)

    async def js_api(self, subject: str, body: dict, timeout_s: float = 2.0) -> dict:
        """A request to nats-server's JetStream API (``$JS.API.…``); raises on an error answer."""
        reply = json.loads((await self.nc.request(subject, json.dumps(body).encode(), timeout=timeout_s)).data)
        if reply.get("error"):
            raise RuntimeError(f"{subject}: {reply['error'].get('description', reply['error'])}")
        return reply

    async def js_consume(
        self, subject: str, stream: str, durable: str, type_: type[M],
        handler: Callable[[Delivery[M]], Awaitable[None]], ack_wait_s: float,
    ):
        """Durable push consumer with explicit acks: unacked messages are redelivered after ack_wait_s
        or to the next consumer instance after a restart."""
        config = api.ConsumerConfig(
            durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait_s,
            deliver_policy=api.DeliverPolicy.ALL, max_ack_pending=100_000,
        )

        async def cb(raw: Msg) -> None:
            try:
                obj = decode(raw.data, type_)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.error("terminating undecodable submission: %s", exc)
                await raw.term()
                return
            meta = raw.metadata
            try:
                await handler(Delivery(obj, dict(raw.headers or {}), meta.num_delivered, raw))
            except Exception:
                log.exception("submission handler failed (message will be redelivered)")

        return await self.js.subscribe(
            subject, durable=durable, stream=stream, cb=cb, manual_ack=True, config=config
        )
