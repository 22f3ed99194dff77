"""Bad requests: a 4xx with an OpenAI-style error body naming the field, and nothing reaches the workers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared import subjects
from shared.transport import Bus

C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_MSGS = [{"role": "user", "content": "1+1="}]

CASES = [
    # (path, body (bytes = raw), headers, status, param)
    (C, b"{not json", {}, 400, None),
    (C, b"", {}, 400, None),
    (C, b"[1, 2]", {}, 400, None),
    (C, {"max_tokens": 4}, {}, 400, "prompt"),
    (C, {"prompt": ""}, {}, 400, "prompt"),
    (CHAT, {"max_tokens": 4}, {}, 400, "messages"),
    (CHAT, {"messages": []}, {}, 400, "messages"),
    (CHAT, {"messages": "hi"}, {}, 400, "messages"),
    (CHAT, {"messages": [{"content": "hi"}]}, {}, 400, "messages[0].role"),
    (C, {"prompt": "1+1=", "max_tokens": 0}, {}, 400, "max_tokens"),
    (C, {"prompt": "1+1=", "max_tokens": -3}, {}, 400, "max_tokens"),
    (C, {"prompt": "1+1=", "max_tokens": 100000}, {}, 400, "max_tokens"),
    (CHAT, {"messages": OK_MSGS, "max_completion_tokens": 500}, {}, 400, "max_completion_tokens"),
    (C, {"prompt": "1+1=", "max_tokens": "ten"}, {}, 400, "max_tokens"),
    (C, {"prompt": "1+1=", "max_tokens": 4.5}, {}, 400, "max_tokens"),
    (C, {"prompt": 5}, {}, 400, "prompt"),
    (C, {"prompt": "1+1=", "stream": "yes"}, {}, 400, "stream"),
    (C, {"prompt": "1+1=", "model": "gpt-4"}, {}, 404, "model"),
    (CHAT, {"messages": OK_MSGS, "model": "nope"}, {}, 404, "model"),
    (C, {"prompt": "1+1=", "slo_ms": 0}, {}, 400, "slo_ms"),
    (C, {"prompt": "1+1=", "slo_ms": -5}, {}, 400, "slo_ms"),
    (C, {"prompt": "1+1=", "slo_ms": "fast"}, {}, 400, "slo_ms"),
    (C, {"prompt": "1+1=", "dlm": {"slo_ms": 0}}, {}, 400, "dlm.slo_ms"),
    (C, {"prompt": "1+1=", "dlm": {"deadline": 3}}, {}, 400, "dlm.deadline"),
    (C, {"prompt": "1+1="}, {"x-slo-ms": "0"}, 400, "x-slo-ms"),
    (C, {"prompt": "1+1="}, {"x-slo-ms": "soon"}, 400, "x-slo-ms"),
    (C, {"prompt": "1+1=", "min_threshold": 0}, {}, 400, "min_threshold"),
    (C, {"prompt": "1+1=", "min_threshold": 1.5}, {}, 400, "min_threshold"),
    (CHAT, {"messages": OK_MSGS, "dlm": {"min_threshold": -0.1}}, {}, 400, "dlm.min_threshold"),
    (C, {"prompt": "1+1=", "priority": "high"}, {}, 400, "priority"),
    (C, {"prompt": "1+1=", "n": 2}, {}, 400, "n"),
    (C, {"prompt": "x" * 200}, {}, 400, "prompt"),
    (C, {"prompt": "1+1=", "temperature": 2.5}, {}, 400, "temperature"),
    (C, {"prompt": "1+1=", "temperature": "warm"}, {}, 400, "temperature"),
    (CHAT, {"messages": OK_MSGS, "temperature": -1}, {}, 400, "temperature"),
    (C, {"prompt": "1+1=", "top_p": 0}, {}, 400, "top_p"),
    (CHAT, {"messages": OK_MSGS, "top_p": 1.01}, {}, 400, "top_p"),
    (C, {"prompt": "1+1=", "seed": 2**63}, {}, 400, "seed"),
    (C, {"prompt": "1+1=", "seed": "42"}, {}, 400, "seed"),
    (C, {"prompt": "1+1=", "stop": ""}, {}, 400, "stop"),
    (CHAT, {"messages": OK_MSGS, "stop": ["=", ""]}, {}, 400, "stop[1]"),
    (C, {"prompt": "1+1=", "stop": ["1", "2", "3", "4", "5"]}, {}, 400, "stop"),
    (C, {"prompt": "1+1=", "stop": "s" * 257}, {}, 400, "stop"),
    (C, {"prompt": "1+1=", "stop": {"a": 1}}, {}, 400, "stop"),
]


async def _submitted_count(nats_url: str) -> int:
    bus = await Bus.connect(nats_url, "test-probe")
    try:
        info = await bus.js.stream_info(subjects.SUBMIT_STREAM)
        return info.state.last_seq
    finally:
        await bus.close()


@pytest.mark.parametrize("path,body,headers,status,param", CASES)
def test_bad_request(cluster, path, body, headers, status, param):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(cluster.url + path, headers={"content-type": "application/json", **headers}, timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    if param:
        assert param.split(".")[-1].split("[")[0] in err["message"] or param in err["message"], err


def test_bad_requests_reach_no_worker(cluster):
    before = asyncio.run(_submitted_count(cluster.nats_url))
    for path, body, headers, _, _ in CASES:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        httpx.post(cluster.url + path, headers={"content-type": "application/json", **headers}, timeout=30, **kw)
    assert asyncio.run(_submitted_count(cluster.nats_url)) == before


def test_unknown_route_and_request(cluster):
    r = httpx.get(cluster.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(cluster.url + "/v1/requests/cmpl-unknown")
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
