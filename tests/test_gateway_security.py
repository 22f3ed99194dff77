"""Security and limits: API keys (401), per-key rate limit (429 + Retry-After), body size (413), prompt length,
overload (503 + Retry-After), and a client disconnect stopping the work on the worker.

Two extra gateway processes, configured only through the environment like any deployment:
- `secure`: API keys + limits, on the shared cluster (real scheduler and workers);
- `busy`: at most 2 requests in flight, on a NATS of its own with no scheduler (and Redis db 1), so its
  requests wait forever, which makes the overload deterministic without loading the workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from services.common.processes import free_port, start_nats, start_service, wait_port, wait_ready
from shared.config import hash_api_key, load_config
from shared.transport import Store
from tests.conftest import NUM_WORKERS, _stop

C, CHAT = "/v1/completions", "/v1/chat/completions"
KEYS = {name: f"sk-test-{name}-0123456789" for name in ("auth", "rate", "other", "body", "prompt", "gone", "gone2")}
HASHED_KEY = "sk-test-given-as-hash"  # configured only by its digest
RATE_PER_S, BURST = 0.2, 5
MAX_BODY, MAX_PROMPT = 2048, 40
LONG = {"prompt": "rev:abcdefghijklmnopqrstuvwx=", "max_tokens": 96, "min_threshold": 1.0}  # τ=1: ~1 token/step


def _auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def _start_gateway(cluster, name: str, extra: dict[str, str]) -> tuple[str, object]:
    port = free_port()
    env = {**cluster.env, "DILASERVE_GATEWAY_PORT": str(port), "DILASERVE_GATEWAY_GATEWAY_ID": name, **extra}
    proc = start_service(name, ["gateway"], cluster.run_dir, env)
    wait_port(port, 120, proc)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def secure(cluster):
    url, proc = _start_gateway(cluster, "gateway-secure", {
        "DILASERVE_SECURITY_API_KEYS": ",".join(KEYS.values()),
        "DILASERVE_SECURITY_API_KEY_HASHES": hash_api_key(HASHED_KEY),
        "DILASERVE_SECURITY_RATE_LIMIT_PER_S": str(RATE_PER_S), "DILASERVE_SECURITY_RATE_LIMIT_BURST": str(BURST),
        "DILASERVE_SECURITY_MAX_BODY_BYTES": str(MAX_BODY), "DILASERVE_SECURITY_MAX_PROMPT_TOKENS": str(MAX_PROMPT),
    })
    wait_ready(url, NUM_WORKERS, [proc], 120, progress=False)  # /readyz needs no key
    yield url, proc
    _stop(proc)


@pytest.fixture(scope="module")
def busy(cluster):
    nats_port = free_port()
    nats = start_nats(cluster.run_dir / "nats-busy", nats_port)
    wait_port(nats_port, 30, nats)
    url, proc = _start_gateway(cluster, "gateway-busy", {
        "DILASERVE_NATS_URL": f"nats://127.0.0.1:{nats_port}", "DILASERVE_REDIS_URL": cluster.redis_url + "/1",
        "DILASERVE_SECURITY_MAX_INFLIGHT": "2", "DILASERVE_SECURITY_RETRY_AFTER_S": "3",
    })
    yield url
    _stop(proc)
    _stop(nats)


def _assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["code"] == code, err
    return err


# -- configuration (no I/O) ----------------------------------------------------------------------------
def test_config_keeps_only_digests():
    cfg = load_config(env={"DILASERVE_SECURITY_API_KEYS": "alpha, beta",
                           "DILASERVE_SECURITY_API_KEY_HASHES": hashlib.sha256(b"gamma").hexdigest().upper()})
    sec = cfg.security
    assert sec.api_keys == [] and sorted(sec.api_key_hashes) == sorted(hashlib.sha256(k).hexdigest()
                                                                      for k in (b"alpha", b"beta", b"gamma"))
    assert "alpha" not in repr(cfg) and hash_api_key("alpha") not in repr(cfg)
    assert load_config(env={}).security.api_key_hashes == []  # default: auth off


def test_config_rejects_a_bad_digest_without_echoing_it():
    with pytest.raises(ValueError) as info:
        load_config(env={"DILASERVE_SECURITY_API_KEY_HASHES": "not-a-digest-secret"})
    assert "api_key_hashes" in str(info.value) and "not-a-digest-secret" not in str(info.value)


def test_token_bucket(redis_url):
    async def run() -> list[float]:
        store = await Store.connect(redis_url + "/2")
        try:
            got = [await store.take_token("t", 2.0, 3) for _ in range(5)]
            await asyncio.sleep(0.6)  # refills 1.2 tokens
            got.append(await store.take_token("t", 2.0, 3))
            got.append(await store.take_token("other", 2.0, 3))  # buckets are independent
            return got
        finally:
            await store.close()

    got = asyncio.run(run())
    assert got[:3] == [0.0, 0.0, 0.0] and 0 < got[3] <= 0.5 and got[5] == 0.0 and got[6] == 0.0, got


# -- API keys ----------------------------------------------------------------------------------------
def test_no_key_401(secure):
    url, _ = secure
    for method, path, kw in [("POST", C, {"json": {"prompt": "1+1=", "max_tokens": 4}}), ("GET", "/v1/models", {}),
                             ("POST", CHAT, {"json": {"messages": [{"role": "user", "content": "hi"}]}}),
                             ("GET", "/v1/requests/cmpl-x", {}), ("DELETE", "/v1/requests/cmpl-x", {})]:
        r = httpx.request(method, url + path, timeout=30, **kw)
        _assert_error(r, 401, "missing_api_key")
        assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_key_401(secure):
    url, _ = secure
    for header in ["Bearer sk-wrong", f"Basic {KEYS['auth']}", "Bearer", f"bearer {KEYS['auth']}x"]:
        r = httpx.post(url + C, json={"prompt": "1+1="}, headers={"authorization": header}, timeout=30)
        assert r.status_code == 401, (header, r.text)
        assert KEYS["auth"] not in r.text and "sk-wrong" not in r.text


def test_right_key_200(secure):
    url, _ = secure
    r = httpx.post(url + C, json={"prompt": "123+456=", "max_tokens": 8}, headers=_auth("auth"), timeout=120)
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    st = httpx.get(f"{url}/v1/requests/{rid}", headers=_auth("auth"), timeout=30)
    assert st.status_code == 200 and st.json()["status"] == "completed"
    # the key given to the gateway only as its digest works too, and the scheme is case-insensitive
    m = httpx.get(url + "/v1/models", headers={"authorization": f"bearer {HASHED_KEY}"}, timeout=30)
    assert m.status_code == 200 and m.json()["data"][0]["id"] == "dilaserve-tiny"


def test_probes_and_metrics_need_no_key(secure):
    url, _ = secure
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(url + "/readyz", timeout=10).status_code == 200
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_keys_never_logged(secure):
    _, proc = secure
    log = Path(proc.log_path).read_text(errors="replace")
    assert "authentication on" in log
    for secret in [*KEYS.values(), HASHED_KEY, *(hash_api_key(k) for k in [*KEYS.values(), HASHED_KEY])]:
        assert secret not in log and secret[:16] not in log


def test_open_gateway_says_so_once(cluster):
    log = cluster.procs["gateway"].log_path.read_text(errors="replace")
    assert log.count("authentication is OFF") == log.count(" ready on ") >= 1  # once per start
    r = httpx.get(cluster.url + "/v1/models", timeout=10)  # no key needed, a stray one is ignored
    assert r.status_code == 200 and httpx.get(cluster.url + "/v1/models", headers={"authorization": "Bearer x"}).status_code == 200


# -- rate limit ---------------------------------------------------------------------------------------
def test_rate_limit_429_with_retry_after(secure):
    url, _ = secure
    codes = [httpx.get(url + "/v1/models", headers=_auth("rate"), timeout=10).status_code for _ in range(BURST)]
    assert codes == [200] * BURST
    r = httpx.get(url + "/v1/models", headers=_auth("rate"), timeout=10)
    err = _assert_error(r, 429, "rate_limit_exceeded")
    retry = r.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= int(1 / RATE_PER_S) + 1, retry
    assert KEYS["rate"] not in json.dumps(err)
    # generation is limited by the same bucket; another key has a bucket of its own
    _assert_error(httpx.post(url + C, json={"prompt": "1+1="}, headers=_auth("rate"), timeout=10), 429, "rate_limit_exceeded")
    assert httpx.get(url + "/v1/models", headers=_auth("other"), timeout=10).status_code == 200
    # the refused generation request is counted (a refused /v1/models is not a request)
    assert _rejected_count(url) == 1


def _rejected_count(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("dilaserve_requests_total{") and 'outcome="rejected"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- sizes --------------------------------------------------------------------------------------------
def test_body_too_large_413(secure):
    url, _ = secure
    big = json.dumps({"prompt": "1+1=", "user": "x" * (MAX_BODY + 10)}).encode()
    r = httpx.post(url + C, content=big, headers={"content-type": "application/json", **_auth("body")}, timeout=30)
    _assert_error(r, 413, "request_too_large")

    def chunks():  # no Content-Length: caught while the body is read
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    r = httpx.post(url + CHAT, content=chunks(), headers={"content-type": "application/json", **_auth("body")}, timeout=30)
    _assert_error(r, 413, "request_too_large")
    assert "content-length" not in r.request.headers


def test_prompt_too_long(secure):
    url, _ = secure
    r = httpx.post(url + C, json={"prompt": "7" * (MAX_PROMPT + 1), "max_tokens": 4}, headers=_auth("prompt"), timeout=30)
    err = _assert_error(r, 400, "prompt_too_long")
    assert err["param"] == "prompt" and str(MAX_PROMPT) in err["message"]
    r = httpx.post(url + CHAT, json={"messages": [{"role": "user", "content": "7" * (MAX_PROMPT + 1)}]},
                   headers=_auth("prompt"), timeout=30)
    assert _assert_error(r, 400, "prompt_too_long")["param"] == "messages"
    r = httpx.post(url + C, json={"prompt": list(range(5, 5 + MAX_PROMPT + 1))}, headers=_auth("prompt"), timeout=30)
    _assert_error(r, 400, "prompt_too_long")


# -- overload -----------------------------------------------------------------------------------------
def test_overload_503_with_retry_after(busy):
    async def run() -> None:
        async with httpx.AsyncClient(base_url=busy, timeout=30) as client:
            body = {"prompt": "1+1=", "max_tokens": 4, "stream": True}
            async with client.stream("POST", C, json=body) as s1, client.stream("POST", C, json=body) as s2:
                assert s1.status_code == s2.status_code == 200  # accepted; nothing will ever run them
                r = await client.post(C, json={"prompt": "1+1=", "max_tokens": 4})
                _assert_error(r, 503, "server_overloaded")
                assert r.headers["retry-after"] == "3"
                assert _rejected_count(busy) >= 1  # counted as rejected
                assert (await client.get("/v1/models")).status_code == 200  # only generation is bounded
            # The clients went away: their slots are free again.
            for _ in range(100):
                async with client.stream("POST", C, json=body) as s3:
                    if s3.status_code == 200:
                        return
                await asyncio.sleep(0.05)
            raise AssertionError("in-flight slots were not released after the clients disconnected")

    asyncio.run(run())


# -- disconnects --------------------------------------------------------------------------------------
# Polled through the cluster's open gateway (same Redis), so polling spends none of the keys' rate budget.
def _wait_final(cluster, rid: str, timeout_s: float = 60) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        st = httpx.get(f"{cluster.url}/v1/requests/{rid}", timeout=10).json()
        if st["status"] in ("completed", "cancelled", "failed") and st["result"] is not None:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{rid} did not finish: {st}")


def _assert_stopped_on_worker(cluster, rid: str) -> None:
    st = _wait_final(cluster, rid)
    assert st["status"] == "cancelled", st
    res = st["result"]
    assert res["finish_reason"] == "cancelled" and res["dlm"]["steps"] < LONG["max_tokens"], res
    # A worker that kept going would record "completed" when done (a result is written once; the gateway's
    # cancel writes none, so this one came from whoever stopped it): the record stays cancelled.
    time.sleep(3)
    again = httpx.get(f"{cluster.url}/v1/requests/{rid}", timeout=10).json()
    assert again["status"] == "cancelled" and again["result"] == res, again


def test_stream_disconnect_cancels_on_worker(cluster, secure):
    url, _ = secure
    body = {"messages": [{"role": "user", "content": LONG["prompt"]}], "max_tokens": LONG["max_tokens"],
            "min_threshold": 1.0, "stream": True}
    with httpx.stream("POST", url + CHAT, json=body, headers=_auth("gone"), timeout=60) as resp:
        assert resp.status_code == 200
        first = next(line for line in resp.iter_lines() if line.startswith("data: "))
        rid = json.loads(first[len("data: "):])["id"]
    # leaving the block closed the connection mid-stream
    _assert_stopped_on_worker(cluster, rid)


def test_non_stream_disconnect_cancels_on_worker(cluster, secure):
    url, _ = secure
    t0 = time.time()
    # The client gives up and closes the connection. On a fast machine LONG's 96 steps take about half a
    # second, so the client leaves early enough for the cancel to reach the worker before it finishes.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + C, json=LONG, headers=_auth("gone2"), timeout=httpx.Timeout(30, read=0.15))
    rid = asyncio.run(_request_from(cluster.redis_url + "/0", "gateway-secure", t0))
    _assert_stopped_on_worker(cluster, rid)


async def _request_from(redis_url: str, gateway_id: str, since_s: float) -> str:
    """The id of the one request a gateway accepted since `since_s` (the client never saw it)."""
    store = await Store.connect(redis_url)
    try:
        found = []
        async for key in store.r.scan_iter(match="dlm:req:*", count=1000):
            rec = await store.get_record(key.decode().removeprefix("dlm:req:"))
            if rec and rec.submit.gateway_id == gateway_id and rec.submit.arrival_s >= since_s:
                found.append(rec.request_id)
        assert len(found) == 1, found
        return found[0]
    finally:
        await store.close()
