"""Task suite: deterministic, exact ground truth, eval problems never generated for training."""

from __future__ import annotations

import random

import pytest

from lab.tasks import MAX_ANSWER_CHARS, TASKS, check_answer, make_problems, sample_problem, split_of


def test_same_seed_same_problems_and_different_seeds_differ():
    assert make_problems(50, seed=3) == make_problems(50, seed=3)
    assert make_problems(50, seed=3) != make_problems(50, seed=4)


def test_eval_problems_never_generated_for_training():
    evals = {p.prompt for p in make_problems(300, seed=0)}
    assert all(split_of(p) == "eval" for p in evals)
    rng = random.Random(99)
    train = {sample_problem(rng, "train").prompt for _ in range(5000)}
    assert not evals & train
    assert all(split_of(p) == "train" for p in train)


def test_training_weights_bias_the_task_mix_and_keep_the_split():
    from lab.tasks import TRAIN_CURRICULUM, train_weights_at

    assert train_weights_at(0.0) is TRAIN_CURRICULUM[0][1] and train_weights_at(1.0) is TRAIN_CURRICULUM[-1][1]
    rng = random.Random(7)
    drawn = [sample_problem(rng, "train", weights=train_weights_at(0.5)) for _ in range(3000)]
    counts = {t: sum(p.task == t for p in drawn) for t in TASKS}
    assert counts["add"] > 2 * counts["rev"] and all(split_of(p.prompt) == "train" for p in drawn)


def test_task_weights_spec():
    from lab.tasks import parse_task_weights

    w = parse_task_weights("add=1, rev=3")
    assert w == {"add": 1.0, "sub": 0.0, "mul": 0.0, "sort": 0.0, "rev": 3.0}
    rng = random.Random(3)
    assert {sample_problem(rng, "train", weights=w).task for _ in range(200)} == {"add", "rev"}
    for bad, msg in (("div=1", "unknown task 'div'"), ("add=x", "not name=number"), ("add=-1", "negative"),
                     ("add=0", "no task a positive weight"), ("", "no task a positive weight")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)


def test_answers_are_exact():
    for p in make_problems(400, seed=1):
        body = p.prompt[:-1]
        if p.task in ("add", "sub", "mul"):
            op = {"add": "+", "sub": "-", "mul": "*"}[p.task]
            a, b = (int(x) for x in body.split(op))
            assert int(p.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[p.task]
            assert len(p.answer) == {"add": 4, "sub": 3, "mul": 3}[p.task]  # fixed width, zero-padded
        elif p.task == "sort":
            assert p.answer == "".join(sorted(body.split(":")[1]))
        else:
            assert p.answer == body.split(":")[1][::-1]
        assert check_answer(p, f" {p.answer} ") and not check_answer(p, p.answer + "0")


def test_every_task_appears_and_some_span_several_blocks():
    problems = make_problems(500, seed=5)
    assert {p.task for p in problems} == set(TASKS)
    assert max(len(p.answer) for p in problems) > 16  # > 2 blocks of 8 in a 32-token canvas
    assert max(len(p.answer) for p in problems) <= MAX_ANSWER_CHARS


def test_asking_for_more_distinct_eval_problems_than_exist_is_a_clear_error() -> None:
    assert len(make_problems(40, seed=1, tasks=("mul",))) == 40  # ~80 distinct eval mul prompts exist
    with pytest.raises(ValueError, match="distinct eval problems of mul"):
        make_problems(200, seed=1, tasks=("mul",))
