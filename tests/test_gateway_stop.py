"""Stop strings and sampling parameters without a cluster: the cut rule, the stream's hold-back, the
worker's stop watch, the gateway's validation."""

from __future__ import annotations

import pytest

from services.gateway.errors import ApiError
from services.gateway.http_models import CompletionBody, parse_body, sampling_params
from services.gateway.stops import streamable_text
from services.worker.engine import new_state
from services.worker.engine.stops import StopWatch
from shared.schemas.requests import stop_cut

CHARS = "\x00\x01abcdefghijklmnopqrstuvwxyz "  # token id i is CHARS[i]; 0 = EOS, 1 = mask


def _decode(ids: list[int]) -> str:
    return "".join(CHARS[i] for i in ids)


def _ids(text: str) -> list[int]:
    return [CHARS.index(c) for c in text]


def test_stop_cut_is_the_earliest_match():
    assert stop_cut("hello world", ["world", "o"]) == 4
    assert stop_cut("hello", ["x"]) is None
    assert stop_cut("hello", []) is None


@pytest.mark.parametrize("text, stops, sent", [
    ("hello wor", ["world"], "hello "),  # "wor" may become "world": held back
    ("hello world and", ["world"], "hello "),
    ("abc", ["x"], "abc"),
    ("abcab", ["abd", "bx"], "abc"),  # the longest possible start wins ("ab" of "abd")
    ("aaa", ["aab"], "a"),
    ("", ["a"], ""),
])
def test_streamable_text(text, stops, sent):
    assert streamable_text(text, stops) == sent


def test_a_streamed_prefix_is_always_a_prefix_of_the_final_text():
    final = "the quick brown fox jumps"
    stops = ["fox j", "quack"]
    cut = final[: stop_cut(final, stops)]
    for n in range(len(final) + 1):
        assert cut.startswith(streamable_text(final[:n], stops))


def _state(canvas: str, masked_from: int | None = None):
    st = new_state("r", [2], len(canvas), 1, 8)
    ids = _ids(canvas)
    if masked_from is not None:
        ids[masked_from:] = [1] * (len(ids) - masked_from)
    st.canvas_ids = ids
    return st


def test_stop_watch_sees_only_the_committed_prefix_and_cuts_after_the_match():
    w = StopWatch(["cd"], _decode, eos_token_id=0)
    st = _state("abcdef")
    st.canvas_ids[1] = 1  # a mask before the match: nothing is final past it
    assert w.check(st) is None
    st = _state("abcdef")
    assert w.check(st) == _ids("abcd")  # the output ends just past the stop string
    w = StopWatch(["ef"], _decode, eos_token_id=0)
    st = _state("abcdef")
    st.canvas_ids[3] = 0  # EOS before the match: the text ended
    assert w.check(st) is None


def test_stop_watch_checks_each_growth_once():
    w = StopWatch(["zz"], _decode, eos_token_id=0)
    st = _state("abcdefgh", masked_from=4)
    assert w.check(st) is None and w.checked_len == 4
    assert w.check(st) is None  # no growth: not decoded again
    st = _state("abczzfgh")
    assert w.check(st) == _ids("abczz")


def _sampling(body: bytes):
    return sampling_params(parse_body(body, CompletionBody))


def test_sampling_params_defaults_and_drawn_seed():
    assert _sampling(b'{"prompt": "x"}') is None
    assert _sampling(b'{"temperature": 0}') is None
    s = _sampling(b'{"temperature": 0.7}')
    assert s.seed_drawn and 0 <= s.seed < 2**63 and s.top_p == 1.0
    s = _sampling(b'{"temperature": 1, "top_p": 0.5, "seed": -4, "stop": "\\n"}')
    assert (s.temperature, s.top_p, s.seed, s.seed_drawn, s.stop) == (1.0, 0.5, -4, False, ["\n"])
    assert _sampling(b'{"stop": ["a", "b"]}').stop == ["a", "b"]
    assert _sampling(b'{"stop": []}') is None


@pytest.mark.parametrize("body, param", [
    (b'{"temperature": 2.01}', "temperature"),
    (b'{"temperature": -1}', "temperature"),
    (b'{"temperature": "hot"}', "temperature"),
    (b'{"top_p": 0}', "top_p"),
    (b'{"top_p": 1.5}', "top_p"),
    (b'{"seed": 9223372036854775808}', "seed"),
    (b'{"seed": 1.5}', "seed"),
    (b'{"seed": true}', "seed"),
    (b'{"stop": ""}', "stop"),
    (b'{"stop": ["a", ""]}', "stop[1]"),
    (b'{"stop": ["a", 3]}', "stop[1]"),
    (b'{"stop": ["1", "2", "3", "4", "5"]}', "stop"),
])
def test_bad_sampling_values(body, param):
    with pytest.raises(ApiError) as exc:
        _sampling(body)
    assert exc.value.status == 400 and exc.value.param == param


def test_sampling_travels_losslessly_to_the_worker():
    from shared.schemas.codec import decode, encode
    from shared.schemas.records import RequestRecord
    from shared.schemas.requests import Assignment, Sampling, SubmitRequest

    s = Sampling(temperature=0.7, top_p=0.9, seed=-(2**63), seed_drawn=True, stop=["\n", "END"])
    sub = SubmitRequest(request_id="r", model="m", prompt_ids=[5], max_tokens=8, arrival_s=1.0, gateway_id="g", sampling=s)
    rec = RequestRecord(request_id="r", state="queued", submit=sub)
    assert decode(encode(rec), RequestRecord).submit.sampling == s  # the scheduler's view after a restart
    a = Assignment(request_id="r", prompt_ids=[5], max_tokens=8, arrival_s=1.0, assigned_s=1.1, threshold_cap=0.9,
                   sampling=s)
    assert decode(encode(a), Assignment) == a
    old = b'{"type":"assignment","request_id":"r","prompt_ids":[5],"max_tokens":8,"arrival_s":1.0,"assigned_s":1.1,"threshold_cap":0.9}'
    assert decode(old, Assignment).sampling is None  # a message without the field is greedy, no stops


def test_worker_takes_a_stopped_request_out_of_the_batch_at_once():
    from types import SimpleNamespace

    import torch

    from services.worker.engine import DenoisingEngine, output_ids, run_to_completion
    from services.worker.model import LLaDAConfig, LLaDAModelLM
    from services.worker.service import WorkerService
    from shared.config import WorkerConfig

    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig(d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=48, vocab_size=64,
                                     embedding_size=64, max_sequence_length=64, mask_token_id=1, eos_token_id=0,
                                     pad_token_id=0)).eval()
    engine = DenoisingEngine(model, "dual")
    decode = lambda ids: "".join(chr(48 + i) for i in ids)  # noqa: E731 - one character per token
    prompt = next(p for p in ([k, k + 3, k + 7] for k in range(2, 50))
                  if len(output_ids(run_to_completion(engine, [new_state("g", p, 24, 1, 8, threshold=0.5)], 1)
                                    .finished["g"], 0)) >= 12)
    full = output_ids(run_to_completion(engine, [new_state("g", prompt, 24, 1, 8, threshold=0.5)], 1).finished["g"], 0)
    stop = decode(full[2:4])
    svc = WorkerService(WorkerConfig(), "w", None, None, engine, None, control=object(), decode=decode)
    svc.meta["s"] = SimpleNamespace(stop=svc._stop_watch(SimpleNamespace(stop=[stop])))
    engine.add(new_state("s", prompt, 24, 1, 8, threshold=0.5))
    engine.add(new_state("other", prompt, 24, 1, 8, threshold=0.5))
    for _ in range(24):
        out = engine.step()
        stopped = svc._take_stopped(out, {s.request_id: s for s in out.finished})
        if stopped:
            break
    state, ids = stopped["s"]
    assert not engine.has("s") and "s" not in {s.request_id for s in out.finished}  # out before the canvas is done
    assert state.num_masked > 0 and engine.has("other")
    assert decode(ids).startswith(decode(full[: decode(full).find(stop)]) + stop) and len(ids) <= 4
