"""Sampled commits: temperature / top_p draws seeded per request, batch-invariant, resumable; temperature 0
is the greedy engine."""

from __future__ import annotations

import random

import msgspec
import pytest
import torch

from services.worker.engine import DenoisingEngine, new_state, rewind_to_block_start, run_to_completion
from services.worker.engine.decoding import candidate_tokens, sample_tokens, step_uniforms
from shared.schemas.engine import DecodeState


def _mixed_states(seed: int, n: int) -> list[DecodeState]:
    """Greedy and sampled requests of every rule; several share a seed (their draws must not interfere)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        temperature = rng.choice([0.0, 0.5, 1.0, 1.5])
        out.append(new_state(
            f"r{i}", [rng.randrange(2, 64) for _ in range(rng.randint(1, 40))], rng.choice([5, 8, 16, 32]), 1,
            rng.choice([4, 8]), threshold=rng.choice([0.9, 0.5, 0.2]), decoding=rng.choice(["threshold", "strict"]),
            temperature=temperature, top_p=rng.choice([1.0, 0.9, 0.5]), seed=rng.choice([0, 7, 2**40, -3]),
        ))
    return out


def _run(engine: DenoisingEngine, states: list[DecodeState], batch: int) -> dict[str, list[int]]:
    return {k: v.canvas_ids for k, v in run_to_completion(engine, states, batch).finished.items()}


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_sampled_outputs_are_batch_invariant(random_model, cache):
    engine = DenoisingEngine(random_model, cache)
    states = _mixed_states(3, 16)
    alone = {s.request_id: _run(engine, [s], 1)[s.request_id] for s in states}
    assert _run(engine, states, 16) == alone
    assert _run(engine, list(reversed(states)), 5) == alone  # other batch compositions and join orders
    assert all(1 not in c for c in alone.values())


def test_same_seed_same_output_other_seed_differs(random_model):
    engine = DenoisingEngine(random_model, "dual")
    prompt = [5, 9, 13, 17, 21]

    def sample(seed: int, rid: str = "s") -> list[int]:
        st = new_state(rid, prompt, 32, 1, 8, threshold=0.5, temperature=1.0, seed=seed)
        return _run(engine, [st], 1)[rid]

    first = sample(11)
    assert sample(11) == first
    assert sample(11, rid="another-id") == first  # the draws follow the seed, not the request id
    assert any(sample(s) != first for s in (12, 13, 14))
    greedy = _run(engine, [new_state("g", prompt, 32, 1, 8, threshold=0.5)], 1)["g"]
    assert first != greedy  # a random model's flat distributions: sampling really samples


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_temperature_zero_is_greedy(random_model, cache):
    engine = DenoisingEngine(random_model, cache)
    rng = random.Random(5)
    prompts = [[rng.randrange(2, 64) for _ in range(rng.randint(1, 30))] for _ in range(6)]
    greedy = [new_state(f"g{i}", p, 16, 1, 8, threshold=0.7) for i, p in enumerate(prompts)]
    zero = [new_state(f"g{i}", p, 16, 1, 8, threshold=0.7, temperature=0.0, top_p=0.3, seed=99)
            for i, p in enumerate(prompts)]
    assert _run(engine, zero, 6) == _run(engine, greedy, 6)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_resume_from_block_checkpoint_redraws_the_same(random_model, cache):
    engine = DenoisingEngine(random_model, cache)
    s = new_state("x", [7, 8, 9, 10, 11, 12], 32, 1, 8, threshold=0.3, temperature=0.8, top_p=0.9, seed=2024)
    uninterrupted = _run(engine, [s], 1)["x"]
    for steps_before_crash in (1, 3, 6):
        engine.add(s)
        for _ in range(steps_before_crash):
            engine.step()
        wire = msgspec.msgpack.encode(rewind_to_block_start(engine.remove("x")))
        other = DenoisingEngine(random_model, cache)
        resumed = _run(other, [msgspec.msgpack.decode(wire, type=DecodeState)], 1)
        assert resumed["x"] == uninterrupted


def test_step_uniforms_are_a_function_of_seed_block_and_step():
    a = step_uniforms(5, 2, 1, 8)
    assert torch.equal(a, step_uniforms(5, 2, 1, 8))
    assert not torch.equal(a, step_uniforms(5, 2, 2, 8))
    assert not torch.equal(a, step_uniforms(5, 3, 1, 8))
    assert not torch.equal(a, step_uniforms(6, 2, 1, 8))
    assert torch.equal(step_uniforms(-1, 0, 0, 4), step_uniforms(2**64 - 1, 0, 0, 4))  # seeds taken mod 2^64
    assert bool(((a >= 0) & (a < 1)).all())


def test_sample_tokens_follows_the_nucleus_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(4000, 1)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens, conf = sample_tokens(probs, 1.0, u)
    freq = torch.bincount(tokens, minlength=4).float() / 4000
    assert torch.allclose(freq, probs[0], atol=0.03)
    assert torch.allclose(conf, probs[0][tokens])  # confidence: the drawn token's probability
    tokens, conf = sample_tokens(probs, 0.8, u)  # nucleus {0, 1}: 0.5 + 0.3 >= 0.8
    assert set(tokens.tolist()) == {0, 1}
    assert torch.allclose(conf, torch.tensor([0.625, 0.375])[tokens])
    tokens, _ = sample_tokens(probs, 0.01, u)  # a tiny top_p keeps only the most likely token
    assert set(tokens.tolist()) == {0}
    tokens, _ = sample_tokens(probs[:1], 1.0, torch.tensor([1.0 - 1e-12]))  # rounding up never leaves the nucleus
    assert tokens.tolist() == [3]


def test_candidates_never_propose_the_mask_token():
    logits = torch.zeros(64, 8)
    logits[:, 1] = 50.0  # the mask token would win every draw
    tokens, _ = candidate_tokens(logits, 1, temperature=2.0, top_p=1.0, uniforms=torch.rand(64, dtype=torch.float64))
    assert 1 not in tokens.tolist()


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_sampling_parameters_raise(random_model, kwargs, message):
    engine = DenoisingEngine(random_model, "dual")
    with pytest.raises(ValueError, match=message):
        engine.add(new_state("r", [5, 6], 8, 1, 8, **kwargs))
    assert engine.num_requests == 0
