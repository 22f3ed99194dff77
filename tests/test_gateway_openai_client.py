"""The official `openai` package, unchanged, against the gateway."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def client(cluster):
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(client):
    assert [m.id for m in client.models.list()] == ["dilaserve-tiny"]


def test_completion(client):
    c = client.completions.create(model="dilaserve-tiny", prompt="123+456=", max_tokens=16,
                                  extra_body={"dlm": {"slo_ms": 30000}})
    assert c.choices[0].finish_reason in ("stop", "length") and isinstance(c.choices[0].text, str)
    assert c.usage.prompt_tokens == 8
    assert c.model_extra["dlm"]["slo_ms"] == 30000


def test_completion_stream(client):
    chunks = list(client.completions.create(model="dilaserve-tiny", prompt="rev:abcdefghijkl=", max_tokens=32, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens <= 32
    assert all(c.id == chunks[0].id for c in chunks)


def test_chat(client):
    c = client.chat.completions.create(model="dilaserve-tiny", messages=[{"role": "user", "content": "sort:3142="}],
                                       max_tokens=8, extra_headers={"x-slo-ms": "30000"})
    assert c.choices[0].message.role == "assistant" and c.choices[0].finish_reason in ("stop", "length")
    assert c.model_extra["dlm"]["slo_ms"] == 30000


def test_chat_stream(client):
    stream = client.chat.completions.create(model="dilaserve-tiny", messages=[{"role": "user", "content": "rev:abc="}],
                                            max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage is not None


def test_errors_map_to_openai_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="1+1=", max_tokens=4)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="dilaserve-tiny", prompt="1+1=", max_tokens=0)
    assert exc.value.body["param"] == "max_tokens"


# -- stop, temperature, top_p, seed -----------------------------------------------------------------
# Stop strings are chosen from the greedy output the test first obtains (the task makes it long and
# varied: rev reverses its letters), never from a fixed expected text.
REV = "rev:abcdefghijklmnop="
# Outside what the model was trained on (cum has 12-24 digits): its distributions are flat here, so
# different draws give different texts and a non-deterministic draw would show.
FREE = "cum:3 1 4="


def _complete(client, **kw):
    return client.completions.create(model="dilaserve-tiny", prompt=kw.pop("prompt", REV), max_tokens=32, **kw)


def _stream_text(client, **kw) -> tuple[list[str], str | None]:
    chunks = list(_complete(client, stream=True, **kw))
    return [c.choices[0].text for c in chunks], chunks[-1].choices[0].finish_reason


@pytest.fixture(scope="module")
def greedy(cluster) -> str:
    c = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    text = _complete(c).choices[0].text
    assert len(text) >= 8, f"the model's answer to {REV!r} is too short to pick stop strings from: {text!r}"
    return text


def test_stop_cuts_the_text_and_finishes_with_stop(client, greedy):
    stop = greedy[4:6]
    c = _complete(client, stop=stop)
    assert c.choices[0].text == greedy[: greedy.find(stop)]
    assert c.choices[0].finish_reason == "stop"
    assert c.model_extra["dlm"]["sampling"]["stop"] == [stop]
    # a list: the earliest match wins, whichever string it is
    c = _complete(client, stop=[greedy[6:8], greedy[2:4], "never-in-the-output"])
    assert c.choices[0].text == greedy[:2] and c.choices[0].finish_reason == "stop"
    c = _complete(client, stop=greedy[0])
    assert c.choices[0].text == "" and c.choices[0].finish_reason == "stop"


def test_stop_frees_the_request_early(client, greedy):
    full = _complete(client)
    early = _complete(client, stop=greedy[1:3])
    assert early.usage.completion_tokens < full.usage.completion_tokens
    assert early.model_extra["dlm"]["steps"] <= full.model_extra["dlm"]["steps"]


def test_stop_streaming_sends_nothing_past_the_stop(client, greedy):
    stop = greedy[5:7]
    pieces, reason = _stream_text(client, stop=stop)
    assert "".join(pieces) == greedy[: greedy.find(stop)] and reason == "stop"
    # the start of a stop string that never completes is held back, then sent: nothing is lost
    pieces, reason = _stream_text(client, stop=greedy[-3:] + "\x7f")
    assert "".join(pieces) == greedy and reason == _complete(client).choices[0].finish_reason


def test_chat_stop(client):
    msgs = [{"role": "user", "content": REV}]
    full = client.chat.completions.create(model="dilaserve-tiny", messages=msgs, max_tokens=32).choices[0].message.content
    if len(full) < 4:
        pytest.skip(f"chat answer too short to cut: {full!r}")
    c = client.chat.completions.create(model="dilaserve-tiny", messages=msgs, max_tokens=32, stop=[full[2:4]])
    assert c.choices[0].message.content == full[: full.find(full[2:4])] and c.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="dilaserve-tiny", messages=msgs, max_tokens=32,
                                                 stop=[full[2:4]], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == c.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_same_seed_same_output_alone_twice_and_in_a_batch(client):
    from concurrent.futures import ThreadPoolExecutor

    kw = dict(prompt=FREE, temperature=1.0, top_p=0.95, seed=1234)
    first = _complete(client, **kw).choices[0].text
    assert _complete(client, **kw).choices[0].text == first
    with ThreadPoolExecutor(6) as pool:  # the same request among others with other seeds and prompts
        others = [pool.submit(_complete, client, prompt=p, temperature=1.0, seed=s)
                  for p, s in ((FREE, 1), ("123+456=", 2), (REV, 3), (FREE, 4), ("rev:zyx=", 5))]
        mine = pool.submit(_complete, client, **kw)
        assert mine.result().choices[0].text == first
        assert all(f.result().choices[0].finish_reason in ("stop", "length") for f in others)
    pieces, _ = _stream_text(client, **kw)
    assert "".join(pieces) == first
    # sampling really samples: another seed gives another output for some seed
    assert any(_complete(client, **{**kw, "seed": s}).choices[0].text != first for s in (1, 2, 3, 4))


def test_temperature_zero_is_the_greedy_output(client, greedy):
    c = _complete(client, temperature=0, top_p=0.5, seed=7)
    assert c.choices[0].text == greedy
    assert c.model_extra["dlm"]["sampling"]["temperature"] == 0 and c.model_extra["dlm"]["sampling"]["seed"] is None
    pieces, _ = _stream_text(client, temperature=0.0)
    assert "".join(pieces) == greedy


def test_unseeded_sampling_returns_its_seed_and_can_be_replayed(client):
    kw = dict(prompt=FREE, temperature=1.0)
    c = _complete(client, **kw)
    s = c.model_extra["dlm"]["sampling"]
    assert s["seed_drawn"] is True and isinstance(s["seed"], int)
    again = _complete(client, **kw, seed=s["seed"])
    assert again.choices[0].text == c.choices[0].text
    assert again.model_extra["dlm"]["sampling"]["seed_drawn"] is False


@pytest.mark.parametrize("kw, param", [
    (dict(temperature=2.5), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.2), "top_p"),
    (dict(seed=2**64), "seed"),
    (dict(stop=""), "stop"),
    (dict(stop=["ok", ""]), "stop[1]"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(stop="x" * 300), "stop"),
])
def test_bad_sampling_values_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as exc:
        _complete(client, **kw)
    assert exc.value.body["param"] == param
    with pytest.raises(openai.BadRequestError):
        _complete(client, stream=True, **kw)
