"""Gateway app factory: OpenAI-compatible routes, DLM extensions, native request routes, health, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway import responses as R
from services.gateway.errors import ApiError, bad_request, deadline_unmeetable, error_body
from services.gateway.guard import Guard, GuardState
from services.gateway.http_models import (
    Accepted, ChatBody, CompletionBody, chat_messages, check_common, completion_prompt, dlm_params, parse_body,
    sampling_params,
)
from services.gateway.relay import Event, Relay, stored_result
from services.gateway.stops import streamable_text
from services.gateway.tokenizer import ModelTokenizer
from shared import subjects
from shared.telemetry import names as tn
from shared.config import Config
from shared.profiles import model_dir
from shared.schemas.cluster import SchedulerHeartbeat
from shared.schemas.records import TERMINAL_STATES
from shared.schemas.requests import BlockCommitted, CancelRequest, RequestFinished, SubmitRequest
from shared.transport.bus import MSG_ID
from shared.transport.lanes import LanePublisher, ensure_lanes

log = logging.getLogger("dilaserve.gateway")
T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A stream's 200 waits this long for the first event, so that a refusal on arrival (the scheduler
# answers within milliseconds) still gets its HTTP 503; a later refusal becomes an SSE error event.
STREAM_HOLD_S = 0.25


class Gateway:
    """State shared by the routes: connections, tokenizer, cluster view."""

    def __init__(self, cfg: Config, tel) -> None:
        self.cfg = cfg
        self.gcfg = cfg.gateway
        self.tel = tel
        self.gateway_id = self.gcfg.gateway_id or f"gateway-{os.getpid()}"
        self.model_name = self.gcfg.model_name
        self.tokenizer = ModelTokenizer(model_dir(self.gcfg.model_dir))
        self.bus = None
        self.lanes: LanePublisher | None = None  # the submit lanes, once connected
        self.store = None
        self.cluster: SchedulerHeartbeat | None = None
        self.cluster_seen_mono = 0.0
        self.guard = GuardState(cfg.security, backend_timeout_s=self.gcfg.backend_timeout_s,
                                on_refused=lambda: self.tel.metrics.request_finished("rejected"))
        self._tasks: set[asyncio.Task] = set()  # strong refs: the loop keeps only weak ones

    async def connect(self) -> None:
        from shared.transport import Bus, Store

        self.bus = await Bus.connect(self.cfg.nats.url, name=self.gateway_id)
        self.store = await Store.from_config(self.cfg.redis)
        self.guard.take_token = self.store.take_token
        self.lanes = LanePublisher(self.bus, await ensure_lanes(self.bus, self.cfg.nats))
        await self.bus.subscribe(subjects.scheduler_heartbeat(), SchedulerHeartbeat, self._on_cluster)

    async def close(self) -> None:
        if self.bus:
            await self.bus.close()
        if self.store:
            await self.store.close()

    async def backend(self, aw: Awaitable[T], what: str) -> T:
        """One Redis/NATS wait on the request path, bounded: a hung backend becomes a 503, not a hang."""
        try:
            return await asyncio.wait_for(aw, self.gcfg.backend_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, f"{what}: no answer within {self.gcfg.backend_timeout_s:g}s", code="service_unavailable",
                           type_="server_error") from None
        except Exception as exc:
            log.exception("%s failed", what)
            raise ApiError(503, f"{what} failed: {type(exc).__name__}", code="service_unavailable",
                           type_="server_error") from None

    def spawn(self, aw: Awaitable) -> None:
        """Run cleanup in a task of its own: callers may be inside a cancelled scope (client gone)."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_cluster(self, hb: SchedulerHeartbeat, headers: dict) -> None:
        self.cluster, self.cluster_seen_mono = hb, time.monotonic()

    # -- validation -----------------------------------------------------------------------------
    def accept(self, kind: str, raw: bytes, headers) -> Accepted:
        arrival_s, arrival_mono = time.time(), time.monotonic()
        if kind == "completion":
            body = parse_body(raw, CompletionBody)
            check_common(body, self.model_name)
            prompt = completion_prompt(body)
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
            bad = [t for t in ids if not 0 <= t < self.tokenizer.vocab_size]
            if bad:
                raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {self.tokenizer.vocab_size})", "prompt")
            max_tokens, mt_param = body.max_tokens, "max_tokens"
        else:
            body = parse_body(raw, ChatBody)
            check_common(body, self.model_name)
            ids = self.tokenizer.encode_chat(chat_messages(body))
            max_tokens, mt_param = (body.max_completion_tokens, "max_completion_tokens") if body.max_completion_tokens is not None else (body.max_tokens, "max_tokens")
        if not ids:
            raise bad_request("the prompt is empty after applying the chat template", "messages" if kind == "chat" else "prompt")
        dlm = dlm_params(body, headers)
        sampling = sampling_params(body)
        self._check_prompt_length(kind, ids)
        room = self.tokenizer.max_positions - len(ids)
        if room < 1:
            raise bad_request(f"prompt is {len(ids)} tokens; the model's limit is {self.tokenizer.max_positions} positions "
                              "(prompt + output)", "messages" if kind == "chat" else "prompt", "context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(self.gcfg.default_max_tokens, room)
        elif max_tokens <= 0:
            raise bad_request(f"{mt_param} must be >= 1, got {max_tokens}", mt_param)
        elif max_tokens > room:
            raise bad_request(f"{mt_param}={max_tokens} is above the model's limit: prompt ({len(ids)} tokens) + output "
                              f"must fit {self.tokenizer.max_positions} positions, so at most {room}", mt_param,
                              "context_length_exceeded")
        prefix = "cmpl" if kind == "completion" else "chatcmpl"
        return Accepted(kind, f"{prefix}-{uuid.uuid4().hex}", ids, max_tokens, body.stream, dlm, arrival_s, arrival_mono,
                        sampling=sampling)

    def _check_prompt_length(self, kind: str, ids: list[int]) -> None:
        limit = self.cfg.security.max_prompt_tokens
        if limit and len(ids) > limit:
            param = "messages" if kind == "chat" else "prompt"
            raise bad_request(f"{param} is {len(ids)} tokens; this gateway accepts prompts of at most {limit} tokens",
                              param, "prompt_too_long")

    # -- submission -----------------------------------------------------------------------------
    def submit_message(self, acc: Accepted) -> SubmitRequest:
        deadline_s = acc.arrival_s + acc.dlm.slo_ms / 1000 if acc.dlm.slo_ms is not None else None
        return SubmitRequest(
            request_id=acc.request_id, model=self.model_name, prompt_ids=acc.prompt_ids, max_tokens=acc.max_tokens,
            arrival_s=acc.arrival_s, gateway_id=self.gateway_id, slo_ms=acc.dlm.slo_ms, deadline_s=deadline_s,
            priority=acc.dlm.priority, min_threshold=acc.dlm.min_threshold, sampling=acc.sampling,
        )

    async def submit(self, acc: Accepted) -> Relay:
        """Subscribe to the request's events first, then persist and submit (so nothing is missed)."""
        msg = self.submit_message(acc)
        sub, queue = await self.bus.subscribe_queue(subjects.request_events(acc.request_id), BlockCommitted | RequestFinished)
        relay = Relay(sub, queue, poll=lambda: stored_result(self.store, acc.request_id))
        try:
            # Both writes at once (one round trip, not two), plus the core-NATS offer. The scheduler
            # tolerates seeing the submission before the Redis record (it retries, scheduler.record_wait_s).
            headers = self.tel.inject({})
            if self.gcfg.offer_submissions:
                self._offer(msg, headers)
            await asyncio.wait_for(asyncio.gather(
                self.store.create_request(msg, acc.arrival_s),
                # under its id (Nats-Msg-Id) it is retried until the bound, on the other submit lane
                # of a NATS cluster when one goes unanswered (shared/transport/lanes.py)
                self.lanes.publish(msg, {**headers, MSG_ID: acc.request_id}, self.gcfg.backend_timeout_s)),
                self.gcfg.backend_timeout_s)
        except Exception as exc:
            await relay.close()
            log.exception("submission of %s failed", acc.request_id)
            # Half a submission may have landed: mark it cancelled so a 503 really means "not run".
            self.spawn(self.cancel_quietly(acc.request_id, "submission failed"))
            self.tel.metrics.request_finished("rejected")
            reason = f"no answer within {self.gcfg.backend_timeout_s:g}s" if isinstance(exc, asyncio.TimeoutError) else exc
            raise ApiError(503, f"could not submit the request: {reason}", code="service_unavailable", type_="server_error") from None
        self.tel.metrics.request_admitted()
        return relay

    def _offer(self, msg: SubmitRequest, headers: dict[str, str]) -> None:
        """The core-NATS copy of a submission (subjects.request_offer): best effort, never awaited —
        the JetStream publish decides whether the request is accepted."""
        async def send() -> None:
            try:
                await self.bus.publish(subjects.request_offer(), msg, headers)
            except Exception as exc:
                log.debug("offer of %s not sent: %s", msg.request_id, exc)
        self.spawn(send())

    async def cancel(self, request_id: str, reason: str) -> str | None:
        current = await self.backend(self.store.cancel(request_id, time.time()), "cancel")
        if current is None:
            await self.bus.publish(subjects.request_cancel(request_id), CancelRequest(request_id=request_id, reason=reason))
        return current

    async def cancel_quietly(self, request_id: str, reason: str) -> None:
        try:
            await self.cancel(request_id, reason)
        except ApiError as exc:
            log.warning("could not cancel %s (%s): %s", request_id, reason, exc.message)

    def finish_metrics(self, acc: Accepted, fin: RequestFinished, latency_s: float) -> None:
        refused = fin.status == "rejected"
        slo_met = None if acc.dlm.slo_ms is None else not refused and latency_s * 1000 <= acc.dlm.slo_ms
        queue_s = fin.stats.queue_s if fin.stats else 0.0
        outcome = tn.OUTCOME_DEADLINE_UNMEETABLE if refused else fin.status
        self.tel.metrics.request_finished(outcome=outcome, slo_met=slo_met, latency_s=latency_s, queue_s=queue_s)

    def refusal(self, acc: Accepted, fin: RequestFinished) -> ApiError:
        """The 503 for a request the scheduler refused or shed (its deadline cannot be met)."""
        retry_s = max(1, self.cfg.security.retry_after_s)
        why = fin.error or "the deadline cannot be met"
        slo = f" (slo_ms={acc.dlm.slo_ms:g})" if acc.dlm.slo_ms is not None else ""
        return deadline_unmeetable(f"request {acc.request_id} was not run{slo}: {why}. Retry after {retry_s} s, "
                                   "or with a larger slo_ms.", retry_s)


def create_app(cfg: Config, tel) -> FastAPI:
    gw = Gateway(cfg, tel)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.connect()
        log.info("gateway %s ready on %s:%d", gw.gateway_id, cfg.gateway.host, cfg.gateway.port)
        yield
        await gw.close()

    app = FastAPI(title="DiLaServe gateway", lifespan=lifespan)
    app.state.gateway = gw
    app.add_middleware(Guard, state=gw.guard)
    _log_auth_mode(gw)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), "invalid_request_error"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        fresh = gw.cluster is not None and time.monotonic() - gw.cluster_seen_mono < 3.0
        workers = gw.cluster.worker_ids if fresh and gw.cluster else []
        body = {
            "nats": bool(gw.bus and gw.bus.connected), "redis": bool(gw.store and await _ping(gw)),
            "scheduler": fresh, "planner": bool(fresh and gw.cluster and gw.cluster.planner_alive),
            "workers": workers,
        }
        body["ready"] = bool(body["nats"] and body["redis"] and fresh and workers)
        return JSONResponse(status_code=200 if body["ready"] else 503, content=body)

    @app.get("/metrics")
    async def metrics():
        body, ctype = tel.prometheus_text()
        return Response(content=body, media_type=ctype)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": gw.model_name, "object": "model", "created": 0, "owned_by": "dilaserve",
                                             "max_model_len": gw.tokenizer.max_positions}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(gw, "completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(gw, "chat", request)

    @app.get("/v1/requests/{request_id}")
    async def get_request(request_id: str):
        rec = await gw.backend(gw.store.get_record(request_id), "reading the request record")
        if rec is None:
            raise ApiError(404, f"no request with id {request_id!r}", param="request_id", code="request_not_found")
        return R.request_status(gw, rec)

    @app.delete("/v1/requests/{request_id}")
    async def delete_request(request_id: str):
        current = await gw.cancel(request_id, "cancelled by DELETE /v1/requests")
        if current == "":
            raise ApiError(404, f"no request with id {request_id!r}", param="request_id", code="request_not_found")
        if current is not None:
            raise ApiError(409, f"request {request_id} already finished ({current}); nothing to cancel",
                           param="request_id", code="request_finished")
        return {"id": request_id, "object": "dlm.request", "status": "cancelled"}

    tel.instrument_fastapi(app)  # continue the caller's trace (W3C traceparent) into the gateway span
    return app


async def _generate(gw: Gateway, kind: str, request: Request):
    with gw.tel.tracer.start_as_current_span(tn.SPAN_GATEWAY_COMPLETION if kind == "completion" else tn.SPAN_GATEWAY_CHAT) as span:
        acc = gw.accept(kind, await request.body(), request.headers)
        span.set_attribute(tn.ATTR_REQUEST_ID, acc.request_id)
        relay = await gw.submit(acc)
    if acc.stream:
        first = await _hold_stream(relay)
        fin = relay.finished
        if fin is not None and fin.status == "rejected":
            await relay.close()
            gw.finish_metrics(acc, fin, time.monotonic() - acc.arrival_mono)
            raise gw.refusal(acc, fin)
        # The id up front: a client whose gateway dies mid-stream reads the result from another one
        # (GET /v1/requests/{id}); the request itself carries on in the cluster.
        headers = {**SSE_HEADERS, "X-Request-Id": acc.request_id}
        return StreamingResponse(_stream(gw, acc, relay, first), media_type="text/event-stream", headers=headers)
    try:
        fin = await _wait_or_disconnect(relay, request, gw.gcfg.request_timeout_s)
        if fin is None:  # the client gave up: stop the work, nobody will read the answer
            gw.spawn(gw.cancel_quietly(acc.request_id, "client disconnected"))
            return Response(status_code=499)
    except asyncio.TimeoutError:
        await gw.cancel_quietly(acc.request_id, "gateway timeout")
        raise ApiError(504, f"request {acc.request_id} did not finish within {gw.gcfg.request_timeout_s:.0f}s; cancelled",
                       code="timeout", type_="server_error") from None
    finally:
        await relay.close()
    latency_s = time.monotonic() - acc.arrival_mono
    gw.finish_metrics(acc, fin, latency_s)
    if fin.status == "rejected":
        raise gw.refusal(acc, fin)
    if fin.status == "failed":
        raise ApiError(500, f"request failed on the worker: {fin.error}", code="worker_error", type_="server_error")
    return JSONResponse(R.final_body(gw, acc, fin, latency_s, relay.finished_seen_s))


async def _hold_stream(relay: Relay) -> Event | None:
    """The first event, waited for up to STREAM_HOLD_S before the stream's 200 goes out (None if none came)."""
    if relay.finished is not None:
        return relay.finished
    try:
        return await relay.next(STREAM_HOLD_S)
    except asyncio.TimeoutError:
        return None


async def _stream(gw: Gateway, acc: Accepted, relay: Relay, first: Event | None = None) -> AsyncIterator[bytes]:
    """SSE: committed text in order (one chunk per block that extends the prefix), then the final chunk.
    ``first``: the event the hold already took from the relay. Text that is, or may become, the start
    of a stop string is held back until the result says where the text ends."""
    sent = ""
    finished = False
    try:
        if acc.kind == "chat":
            yield _sse(R.chunk(gw, acc, {"role": "assistant", "content": ""}))
        loop = asyncio.get_running_loop()
        end = loop.time() + gw.gcfg.request_timeout_s
        evt = first
        while True:
            if isinstance(evt, BlockCommitted):
                text, _ = gw.tokenizer.text_until_eos(relay.blocks.prefix)
                text = streamable_text(text, R.stops_of(acc.sampling))
                if len(text) > len(sent) and text.startswith(sent):
                    yield _sse(R.chunk(gw, acc, text[len(sent):]))
                    sent = text
            if relay.finished is not None:
                break
            evt = await relay.next(max(0.0, end - loop.time()))
        fin = relay.finished
        finished = True
        latency_s = time.monotonic() - acc.arrival_mono
        gw.finish_metrics(acc, fin, latency_s)
        if fin.status == "rejected":  # after the 200: the same error as the 503 body, then [DONE]
            err = gw.refusal(acc, fin)
            yield _sse(error_body(err.message, err.type, None, err.code))
        elif fin.status == "failed":
            yield _sse(error_body(f"request failed on the worker: {fin.error}", "server_error", None, "worker_error"))
        else:
            text = R.output_text(gw, fin, acc.sampling)
            rest = text[len(sent):] if text.startswith(sent) else ""
            yield _sse(R.final_chunk(gw, acc, fin, rest, latency_s))
        yield b"data: [DONE]\n\n"
    except asyncio.TimeoutError:
        yield _sse(error_body(f"request did not finish within {gw.gcfg.request_timeout_s:.0f}s", "server_error", None, "timeout"))
    finally:
        # On a client disconnect this runs inside a cancelled scope where any await is cancelled again,
        # so the cleanup goes to tasks of its own.
        gw.spawn(relay.close())
        if not finished:  # client went away or timeout: do not keep computing for nobody
            gw.spawn(gw.cancel_quietly(acc.request_id, "client disconnected"))


async def _wait_or_disconnect(relay: Relay, request: Request, timeout_s: float) -> RequestFinished | None:
    """The result, or None as soon as the client disconnects (the body is read, so receive() only reports that)."""
    finished = asyncio.ensure_future(relay.wait_finished(timeout_s))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
        return finished.result() if finished.done() else None
    finally:
        for t in (finished, gone):
            t.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _ping(gw: Gateway) -> bool:
    try:
        return await asyncio.wait_for(gw.store.ping(), gw.gcfg.backend_timeout_s)
    except asyncio.TimeoutError:
        return False


def _log_auth_mode(gw: Gateway) -> None:
    """Once per gateway. Counts only: a key or its digest never reaches a log."""
    sec = gw.cfg.security
    if gw.guard.auth_on:
        log.info("API key authentication on (%d key(s))", len(gw.guard.key_hashes))
    else:
        log.warning("API key authentication is OFF: no keys configured (security.api_key_hashes or "
                    "DILASERVE_SECURITY_API_KEYS); anyone who can reach %s:%d may use this gateway",
                    gw.gcfg.host, gw.gcfg.port)
    log.info("limits: body %d bytes, prompt %s tokens, in flight %s, rate %s", sec.max_body_bytes,
             sec.max_prompt_tokens or "model-limited", sec.max_inflight or "unbounded",
             f"{sec.rate_limit_per_s:g}/s burst {gw.guard.burst}" if sec.rate_limit_per_s > 0 else "unlimited")


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


__all__ = ["create_app", "Gateway", "TERMINAL_STATES"]
