"""A Dream-format checkpoint served end to end: a private cluster whose gateway and worker point at a tiny
random Dream-layout checkpoint (DILASERVE_WORKER_MODEL_DIR / DILASERVE_GATEWAY_MODEL_DIR); a completion
(the same text as the engine in-process), a chat completion through Dream's chat template, a stream."""

from __future__ import annotations

import json

import httpx
import pytest

from private_cluster import PrivateCluster
from services.worker.engine import DenoisingEngine, new_state, output_ids, run_to_completion
from services.worker.model import load_model, load_tokenizer
from services.worker.model.tiny_dream import save_tiny_dream
from shared.profiles import model_block_length

NAME = "tiny-dream"


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return save_tiny_dream(tmp_path_factory.mktemp("dream-ckpt"), seed=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, dream_dir):
    c = PrivateCluster(tmp_path_factory.mktemp("dream-cluster"), DILASERVE_WORKER_MODEL_DIR=str(dream_dir),
                       DILASERVE_GATEWAY_MODEL_DIR=str(dream_dir), DILASERVE_GATEWAY_MODEL_NAME=NAME)
    try:
        c.start("scheduler", ["scheduler"])
        c.start_workers_and_gateway(1)
        yield c
    finally:
        c.close()


def _post(cluster, path: str, body: dict) -> httpx.Response:
    return httpx.post(cluster.url + path, json=body, timeout=180)


def test_completion_is_the_engines_output(cluster, dream_dir):
    assert httpx.get(cluster.url + "/v1/models").json()["data"][0]["id"] == NAME
    prompt = "12+34="
    r = _post(cluster, "/v1/completions", {"model": NAME, "prompt": prompt, "max_tokens": 16})
    assert r.status_code == 200, r.text
    body = r.json()
    tok = load_tokenizer(dream_dir)
    ids = tok.encode(prompt, add_special_tokens=False)
    assert body["usage"]["prompt_tokens"] == len(ids)
    (tau,) = body["dlm"]["thresholds_used"]
    model = load_model(dream_dir)
    state = new_state("x", ids, 16, model.config.mask_token_id, model_block_length(str(dream_dir)), threshold=tau)
    done = run_to_completion(DenoisingEngine(model, cache_mode="dual"), [state]).finished["x"]
    direct = tok.decode(output_ids(done, model.config.eos_token_id), skip_special_tokens=True)
    assert body["choices"][0]["text"] == direct


def test_chat_completion_uses_dreams_template(cluster, dream_dir):
    messages = [{"role": "user", "content": "sort:3142="}]
    r = _post(cluster, "/v1/chat/completions", {"model": NAME, "messages": messages, "max_tokens": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    tok = load_tokenizer(dream_dir)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert body["usage"]["prompt_tokens"] == len(tok.encode(text, add_special_tokens=False))


def test_stream(cluster):
    body = {"model": NAME, "prompt": "rev:abcdef=", "max_tokens": 24, "stream": True}
    with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=180) as resp:
        assert resp.status_code == 200
        events = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["text"] for c in chunks)
    stored = httpx.get(f"{cluster.url}/v1/requests/{chunks[-1]['id']}").json()
    assert stored["status"] == "completed" and stored["result"]["text"] == text
