"""API fuzz: random and wrong-typed bodies for /v1/completions and /v1/chat/completions never give a 5xx.

The whole gateway app runs in-process (middleware, validation, response formatting) connected to the real
NATS and Redis of the session; only the hand-off to the scheduler is replaced by a stand-in that checks the
accepted request and answers at once, so no worker runs and every example costs milliseconds.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.app import create_app
from services.gateway.http_models import Accepted
from shared.config import load_config
from shared.schemas.codec import decode, encode
from shared.schemas.requests import RequestFinished, RequestStats, SubmitRequest
from shared.telemetry import setup_telemetry

C, CHAT = "/v1/completions", "/v1/chat/completions"
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "stream", "n", "slo_ms", "priority",
          "min_threshold", "dlm", "temperature", "user"]
DLM_FIELDS = ["slo_ms", "priority", "min_threshold", "deadline"]
HEADERS = ["x-slo-ms", "x-priority", "x-min-threshold"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)
messages = st.lists(st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | json_values,
    "content": st.text(max_size=60) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]) | json_values},
                                                                      optional={"text": st.text(max_size=30) | json_values}),
                                               max_size=3) | json_values,
}), max_size=4)
near_valid = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["dilaserve-tiny", "gpt-4"]) | json_values,
    "prompt": st.text(max_size=150) | st.lists(st.integers(min_value=-5, max_value=70000), max_size=140)
              | st.lists(st.text(max_size=20), max_size=2) | json_values,
    "messages": messages | json_values,
    "max_tokens": st.integers(min_value=-5, max_value=200) | json_values,
    "max_completion_tokens": st.integers(min_value=-5, max_value=200) | json_values,
    "stream": st.booleans() | json_values,
    "n": st.integers(min_value=-1, max_value=3) | json_values,
    "slo_ms": st.floats(allow_nan=True, allow_infinity=True) | json_values,
    "priority": st.integers(min_value=-2**70, max_value=2**70) | json_values,
    "min_threshold": st.floats(allow_nan=True, allow_infinity=True) | json_values,
    "dlm": st.dictionaries(st.sampled_from(DLM_FIELDS), json_values, max_size=3) | json_values,
})
finite = st.floats(allow_nan=False, allow_infinity=False)  # slo_ms 1e300 → deadline far beyond any clock
typed = st.fixed_dictionaries({  # right types, mostly valid values (each endpoint ignores the other's field)
    "prompt": st.text(max_size=150) | st.lists(st.integers(min_value=-5, max_value=70000), min_size=1, max_size=140),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                "content": st.text(max_size=60)}), max_size=3),
}, optional={
    "max_tokens": st.integers(min_value=1, max_value=64),
    "stream": st.booleans(),
    "slo_ms": st.floats(min_value=1e-3, max_value=1e300), "priority": st.integers(min_value=-2**63, max_value=2**63 - 1),
    "min_threshold": st.floats(min_value=1e-6, max_value=1.0),
    "dlm": st.fixed_dictionaries({}, optional={"slo_ms": finite, "priority": st.integers(), "min_threshold": finite}),
    "temperature": finite, "user": st.text(max_size=10),
})
bodies = (near_valid.map(lambda d: json.dumps(d).encode())
          | typed.map(lambda d: json.dumps(d).encode())
          | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(lambda d: json.dumps(d).encode())
          | json_values.map(lambda v: json.dumps(v).encode())
          | st.binary(max_size=64))
headers = st.dictionaries(st.sampled_from(HEADERS), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                                            max_size=12), max_size=2)


class _AnsweredRelay:
    """Stands in for the worker's events: the request is finished as soon as it is submitted."""

    def __init__(self, acc: Accepted) -> None:
        stats = RequestStats(worker_id="fuzz", thresholds_used=[0.9], threshold_mean=0.9, num_steps=1)
        self.finished = RequestFinished(request_id=acc.request_id, status="completed", finish_reason="length",
                                        output_ids=[5] * acc.max_tokens, num_prompt_tokens=len(acc.prompt_ids),
                                        stats=stats, finished_s=time.time())
        self.finished_seen_s = time.time()

    async def wait_finished(self, timeout_s: float) -> RequestFinished:
        return self.finished

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def client(nats_url, redis_url):
    cfg = load_config(env={"DILASERVE_NATS_URL": nats_url, "DILASERVE_REDIS_URL": redis_url + "/3"})
    app = create_app(cfg, setup_telemetry("gateway-fuzz", env={"OTEL_SDK_DISABLED": "true"}))
    gw = app.state.gateway
    accepted: list[Accepted] = []

    async def submit(acc: Accepted) -> _AnsweredRelay:
        # Whatever validation let through must be a request the model can run.
        assert acc.prompt_ids and 1 <= acc.max_tokens
        assert len(acc.prompt_ids) + acc.max_tokens <= gw.tokenizer.max_positions
        assert all(0 <= t < gw.tokenizer.vocab_size for t in acc.prompt_ids)
        msg = gw.submit_message(acc)  # what the scheduler would decode: must survive the wire unchanged
        assert decode(encode(msg), SubmitRequest) == msg
        accepted.append(acc)
        return _AnsweredRelay(acc)

    gw.submit = submit
    with TestClient(app, raise_server_exceptions=False) as c:
        c.accepted = accepted
        yield c


def _check(resp) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    elif resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.text.rstrip().endswith("data: [DONE]"), resp.text
    else:
        assert resp.json()["choices"], resp.text


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(body=bodies, hdrs=headers)
def test_completions_fuzz(client, body, hdrs):
    _check(client.post(C, content=body, headers={"content-type": "application/json", **hdrs}))


@FUZZ
@given(body=bodies, hdrs=headers)
def test_chat_completions_fuzz(client, body, hdrs):
    _check(client.post(CHAT, content=body, headers={"content-type": "application/json", **hdrs}))


@pytest.mark.parametrize("path,body,hdrs", [
    (C, {"prompt": "1+1=", "slo_ms": 1e400}, {}),  # JSON overflow
    (C, {"prompt": "1+1=", "dlm": {"slo_ms": 1e308}}, {}),
    (C, {"prompt": "1+1=", "priority": 2**64}, {}),
    (C, {"prompt": "1+1=", "dlm": {"priority": -2**63}}, {}),
    (C, {"prompt": "1+1="}, {"x-slo-ms": "inf"}),
    (C, {"prompt": "1+1="}, {"x-slo-ms": "nan"}),
    (C, {"prompt": "1+1="}, {"x-min-threshold": "nan"}),
    (C, {"prompt": "1+1="}, {"x-priority": "9" * 30}),
    (C, {"prompt": [0] * 200}, {}),
    (C, {"prompt": "1+1=", "max_tokens": 2**63}, {}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, {}),
    (CHAT, {"messages": [{"role": "user", "content": None}], "stream": True}, {}),
])
def test_edge_bodies(client, path, body, hdrs):
    raw = json.dumps(body).replace("Infinity", "1e400").encode()
    _check(client.post(path, content=raw, headers={"content-type": "application/json", **hdrs}))


def test_valid_body_reaches_the_stand_in(client):
    r = client.post(C, json={"prompt": "1+1=", "max_tokens": 4, "stream": False})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
    assert client.accepted
