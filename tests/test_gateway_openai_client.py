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
