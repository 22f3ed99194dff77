"""A request the scheduler refuses or sheds (its deadline cannot be met) gets HTTP 503
``deadline_unmeetable`` with Retry-After — before a stream starts — or an SSE error event after it
started; never a 500. ``GET /v1/requests/{id}`` shows the ``rejected`` state with its code.

The gateway app runs in-process against the session's real NATS and Redis. The JetStream hand-off is
replaced by a stand-in scheduler that refuses every request the way the scheduler does: it records
``deadline_refusal(...)`` in Redis (the atomic finish) and, only if that recorded it, publishes it on
the request's done subject. No real scheduler or worker sees these requests.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import STREAM_HOLD_S, create_app
from shared import subjects
from shared.config import load_config
from shared.schemas.requests import DEADLINE_UNMEETABLE, SubmitRequest, deadline_refusal
from shared.telemetry import setup_telemetry

C, CHAT = "/v1/completions", "/v1/chat/completions"
PROMPT = {"model": "dilaserve-tiny", "prompt": "123+456=", "max_tokens": 8, "slo_ms": 500}
MESSAGES = {"model": "dilaserve-tiny", "messages": [{"role": "user", "content": "123+456="}], "max_tokens": 8,
            "slo_ms": 500}


class StandInScheduler:
    """Refuses every submission: at once (inside the submit, so before the stream could start) or
    ``refuse_after_s`` later (after a stream's 200 went out)."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.refuse_after_s = 0.0
        self.refused: list[str] = []

    async def js_publish(self, subject: str, msg: SubmitRequest, headers=None, timeout_s: float = 5.0) -> int:
        if self.refuse_after_s <= 0:
            await self._refuse(msg, shed=False)
        else:
            self.gw.spawn(self._refuse(msg, shed=True, delay_s=self.refuse_after_s))
        return 1

    async def _refuse(self, msg: SubmitRequest, shed: bool, delay_s: float = 0.0) -> None:
        await asyncio.sleep(delay_s)
        store, rid = self.gw.store, msg.request_id
        while not await store.get_state(rid):  # the gateway writes the record beside the submission
            await asyncio.sleep(0.005)
        fin = deadline_refusal(rid, len(msg.prompt_ids), time.time(), shed)
        if await store.finish(fin, time.time()):
            await self.gw.bus.publish(subjects.request_done(rid), fin)
            self.refused.append(rid)


@pytest.fixture(scope="module")
def client(nats_url, redis_url):
    cfg = load_config(env={"DILASERVE_NATS_URL": nats_url, "DILASERVE_REDIS_URL": redis_url + "/6",
                           "DILASERVE_GATEWAY_OFFER_SUBMISSIONS": "false", "DILASERVE_SECURITY_RETRY_AFTER_S": "2"})
    app = create_app(cfg, setup_telemetry("gateway-refusal", env={"OTEL_SDK_DISABLED": "true"}))
    gw = app.state.gateway
    with TestClient(app, raise_server_exceptions=False) as c:
        c.scheduler = StandInScheduler(gw)
        gw.bus.js_publish = c.scheduler.js_publish
        yield c


@pytest.fixture
def scheduler(client) -> StandInScheduler:
    client.scheduler.refuse_after_s = 0.0
    return client.scheduler


def _assert_refusal_503(r) -> dict:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "2"
    err = r.json()["error"]
    assert err["code"] == DEADLINE_UNMEETABLE and err["type"] == "deadline_error"
    assert "the deadline cannot be met" in err["message"] and "slo_ms=500" in err["message"]
    return err


def _sse(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("path,body", [(C, PROMPT), (CHAT, MESSAGES)])
def test_refusal_is_503_deadline_unmeetable(client, scheduler, path, body):
    err = _assert_refusal_503(client.post(path, json=body))
    assert scheduler.refused[-1] in err["message"]


@pytest.mark.parametrize("path,body", [(C, PROMPT), (CHAT, MESSAGES)])
def test_refusal_before_the_stream_starts_is_503(client, scheduler, path, body):
    _assert_refusal_503(client.post(path, json={**body, "stream": True}))


@pytest.mark.parametrize("path,body", [(C, PROMPT), (CHAT, MESSAGES)])
def test_refusal_after_the_stream_started_is_an_sse_error(client, scheduler, path, body):
    scheduler.refuse_after_s = STREAM_HOLD_S + 0.5
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert events[-1] == "[DONE]", r.text
    err = json.loads(events[-2])["error"]
    assert err["code"] == DEADLINE_UNMEETABLE and err["type"] == "deadline_error"
    assert "the deadline cannot be met" in err["message"]
    assert all("error" not in json.loads(e) for e in events[:-2])  # chat: only the role delta before it


def test_get_shows_the_rejected_state_and_its_code(client, scheduler):
    client.post(C, json=PROMPT)
    rid = scheduler.refused[-1]
    r = client.get(f"/v1/requests/{rid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "rejected" and body["slo_ms"] == 500
    res = body["result"]
    assert res["error_code"] == DEADLINE_UNMEETABLE and res["finish_reason"] == "rejected"
    assert "the deadline cannot be met" in res["error"] and res["dlm"]["status"] == "rejected"


def test_delete_of_a_refused_request_is_409(client, scheduler):
    client.post(C, json=PROMPT)
    r = client.delete(f"/v1/requests/{scheduler.refused[-1]}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "request_finished"
    assert "(rejected)" in r.json()["error"]["message"]


def test_refusals_are_counted_apart_from_failures(client, scheduler):
    def count(outcome: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("dilaserve_requests_total{") and f'outcome="{outcome}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before, failed = count("deadline_unmeetable"), count("failed")
    client.post(C, json=PROMPT)
    assert count("deadline_unmeetable") == before + 1 and count("failed") == failed
