"""Denoising engine: step shapes, commit rules, batch invariance, resume, validation."""

from __future__ import annotations

import random

import pytest
import torch

from services.worker.engine import DenoisingEngine, new_state, output_ids, run_to_completion
from services.worker.engine.decoding import fixed_schedule_count, select_commits
from services.worker.model import Segment, load_tokenizer
from lab.tasks import EVAL_TASKS, check_answer, make_problems


def test_segment_shapes_match_full_forward(random_model):
    m = random_model
    ids = torch.randint(2, 64, (30,))
    ref = m(ids[None]).logits[0]
    full = Segment("full", ids, torch.arange(30), torch.arange(30), keep_cache=30)
    assert torch.allclose(m.forward_segments([full])[0], ref, atol=1e-5)
    # dual: block tokens only, K/V slots overwritten in the full-length cache -> same logits while unchanged
    dual = Segment("dual", ids[16:24], torch.arange(16, 24), torch.arange(8), cache=full.new_cache)
    assert torch.allclose(m.forward_segments([dual])[0], ref[16:24], atol=1e-5)
    # prefix: block start -> end against the cached prefix
    pre = Segment("full", ids, torch.arange(30), torch.arange(1), keep_cache=16)
    m.forward_segments([pre])
    assert pre.new_cache.length == 16
    suffix = Segment("prefix", ids[16:], torch.arange(16, 30), torch.arange(14), cache=pre.new_cache)
    assert torch.allclose(m.forward_segments([suffix])[0], ref[16:], atol=1e-5)


def _random_states(seed: int, n: int):
    rng = random.Random(seed)
    return [
        new_state(
            f"r{i}", [rng.randrange(2, 64) for _ in range(rng.randint(1, 40))], rng.choice([5, 8, 16, 32]), 1,
            rng.choice([4, 8]), threshold=rng.choice([1.0, 0.9, 0.5, 0.2]), decoding=rng.choice(["threshold", "strict"]),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_invariance_random_model(random_model, cache):
    engine = DenoisingEngine(random_model, cache)
    states = _random_states(1, 16)
    alone = {s.request_id: run_to_completion(engine, [s], 1).finished[s.request_id].canvas_ids for s in states}
    together = run_to_completion(engine, states, 16).finished
    assert {k: v.canvas_ids for k, v in together.items()} == alone
    assert all(1 not in c for c in alone.values())


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_batch_invariance_shipped_model(shipped_model, cache):
    model, tok = shipped_model
    engine = DenoisingEngine(model, cache)
    problems = make_problems(16, seed=123)
    states = [
        new_state(f"q{i}", tok(p.prompt)["input_ids"], 64, engine.mask_token_id, model.config.block_length,
                  threshold=[0.9, 0.7, 0.5][i % 3])
        for i, p in enumerate(problems)
    ]
    alone = {s.request_id: run_to_completion(engine, [s], 1).finished[s.request_id].canvas_ids for s in states}
    together = run_to_completion(engine, states, 16).finished
    assert {k: v.canvas_ids for k, v in together.items()} == alone


def test_step_reports_kinds_and_progress(random_model):
    engine = DenoisingEngine(random_model, "dual")
    engine.add(new_state("a", [5, 6, 7], 16, 1, 8, threshold=1.0, decoding="strict"))
    out = engine.step()
    r = out.requests[0]
    assert r.step_kind == "refresh" and r.num_tokens_executed == 19 and len(r.committed_positions) == 1
    assert 0 <= r.committed_positions[0] < 8
    out = engine.step()
    assert out.requests[0].step_kind == "reuse" and out.requests[0].num_tokens_executed == 8
    assert out.elapsed_s > 0
    steps = 2
    while engine.num_requests:
        out = engine.step()
        steps += 1
    assert steps == 16  # strict: one token per step
    (st,) = out.finished
    assert st.num_refresh_steps == 2 and st.num_reuse_steps == 14


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_resume_from_block_checkpoint_is_identical(random_model, cache):
    from msgspec import msgpack

    from services.worker.engine import rewind_to_block_start
    from shared.schemas.engine import DecodeState

    engine = DenoisingEngine(random_model, cache)
    prompt = [random.Random(7).randrange(2, 64) for _ in range(12)]
    s = new_state("x", prompt, 32, 1, 8, threshold=0.5)
    uninterrupted = run_to_completion(engine, [s], 1).finished["x"].canvas_ids
    for steps_before_crash in (1, 3, 6):
        engine.add(s)
        for _ in range(steps_before_crash):
            engine.step()
        saved = rewind_to_block_start(engine.remove("x"))
        wire = msgpack.encode(saved)  # what the worker checkpoints to Redis
        other = DenoisingEngine(random_model, cache)  # another worker, no K/V
        resumed = run_to_completion(other, [msgpack.decode(wire, type=DecodeState)], 1).finished["x"]
        assert resumed.canvas_ids == uninterrupted


def test_threshold_rule_commits_all_confident_or_the_best():
    s = new_state("a", [5], 8, 1, 8, threshold=0.6)
    conf = torch.tensor([0.2, 0.7, 0.65, 0.1])
    assert sorted(select_commits(s, conf, 4).tolist()) == [1, 2]
    conf = torch.tensor([0.2, 0.3, 0.25])
    assert select_commits(s, conf, 3).tolist() == [1]
    strict = new_state("b", [5], 8, 1, 8, decoding="strict")
    assert select_commits(strict, torch.tensor([0.99, 0.999, 0.98]), 3).tolist() == [1]


def test_fixed_schedule_spreads_masks_evenly():
    assert [fixed_schedule_count(8, 3, i) for i in range(3)] == [3, 3, 2]
    assert [fixed_schedule_count(8, 8, i) for i in range(8)] == [1] * 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_ids=[]), "prompt is empty"),
        (dict(prompt_ids=[5] * 90), "exceeds the model's 96 positions"),
        (dict(prompt_ids=[5, 64]), "outside the vocabulary"),
        (dict(prompt_ids=[5, -1]), "outside the vocabulary"),
        (dict(threshold=0.0), "threshold must be in (0, 1]"),
        (dict(threshold=1.5), "threshold must be in (0, 1]"),
        (dict(max_tokens=0), "canvas is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(random_model, kwargs, message):
    args = dict(request_id="r", prompt_ids=[5, 6], max_tokens=8, mask_token_id=1, block_length=8, threshold=0.9)
    args.update(kwargs)
    engine = DenoisingEngine(random_model, "dual")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        engine.add(new_state(**args))
    assert engine.num_requests == 0


def test_set_threshold_validates(random_model):
    engine = DenoisingEngine(random_model, "dual")
    engine.add(new_state("a", [5], 8, 1, 8))
    with pytest.raises(ValueError, match="threshold"):
        engine.step(thresholds={"a": 0})
    with pytest.raises(ValueError, match="already in the batch"):
        engine.add(new_state("a", [5], 8, 1, 8))


def _decode_problems(model, tok, problems, **kw):
    engine = DenoisingEngine(model, "dual")
    states = [new_state(f"p{i}", tok(p.prompt)["input_ids"], 64, engine.mask_token_id, model.config.block_length, **kw)
              for i, p in enumerate(problems)]
    done = run_to_completion(engine, states, 32).finished
    outs = [done[f"p{i}"] for i in range(len(problems))]
    correct = sum(check_answer(p, tok.decode(output_ids(st, engine.eos_token_id))) for p, st in zip(problems, outs))
    content = sum(len(output_ids(st, engine.eos_token_id)) for st in outs)
    return correct / len(problems), content / sum(st.num_steps for st in outs)


def test_shipped_model_solves_tasks(shipped_model):
    """The committed checkpoint really works: fresh eval problems of the evaluation suite (chains over
    several blocks of 16), at τ 0.9 with the dual cache. An untrained model scores 0 here."""
    model, tok = shipped_model
    accuracy, _ = _decode_problems(model, tok, make_problems(48, seed=2024, tasks=EVAL_TASKS), threshold=0.9)
    assert accuracy >= 0.9, f"only {accuracy:.2f} correct"


def test_shipped_model_trades_speed_for_quality(shipped_model):
    """τ has something to trade: path at τ 0.5 commits far more tokens per step than at τ 0.9, and gets
    fewer answers right (a model that commits whole blocks at once would give a ratio near 1)."""
    model, tok = shipped_model
    problems = make_problems(32, seed=2025, tasks=("path",))
    acc_hi, speed_hi = _decode_problems(model, tok, problems, threshold=0.9)
    acc_lo, speed_lo = _decode_problems(model, tok, problems, threshold=0.5)
    assert speed_lo >= 1.8 * speed_hi, (speed_lo, speed_hi)
    assert acc_lo <= acc_hi - 0.1, (acc_lo, acc_hi)


def test_tokenizer_matches_training_codec(shipped_model):
    from lab.train import CharCodec

    _, tok = shipped_model
    codec = CharCodec()
    for text in ["123+456=", "rev:abcxyz=", "sort:9081=", "Mixed Case: 7*8="]:
        assert tok(text, add_special_tokens=False)["input_ids"] == codec.encode(text)
    assert tok.mask_token_id == codec.mask and tok.eos_token_id == codec.eos


@pytest.fixture(scope="module")
def shipped_model():
    from services.worker.model import default_model_dir, load_model

    path = default_model_dir()
    return load_model(path), load_tokenizer(path)
