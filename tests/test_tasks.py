"""Task suite: deterministic, exact ground truth, eval problems never generated for training."""

from __future__ import annotations

import itertools
import random

import pytest

from lab.tasks import GENERATORS, EVAL_TASKS, MAX_ANSWER_CHARS, TASKS, Problem, check_answer, make_problems, sample_problem, split_of


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
    assert w == {t: {"add": 1.0, "rev": 3.0}.get(t, 0.0) for t in TASKS}
    rng = random.Random(3)
    assert {sample_problem(rng, "train", weights=w).task for _ in range(200)} == {"add", "rev"}
    for bad, msg in (("div=1", "unknown task 'div'"), ("add=x", "not name=number"), ("add=-1", "negative"),
                     ("add=0", "no task a positive weight"), ("", "no task a positive weight")):
        with pytest.raises(ValueError, match=msg):
            parse_task_weights(bad)


def _long_answer(task: str, body: str) -> str:
    """The long tasks' answers computed a second, independent way."""
    if task == "cum":
        digits = body.split(":")[1].replace(" ", "")
        return "".join(f"{d}{sum(int(x) for x in digits[: i + 1]) % 10}" for i, d in enumerate(digits))
    _, swap, letters = body.split(":")
    old, new = swap.split(">")
    return "".join(new if c == old else c for c in letters)


def _walk_answer(moves: list[str]) -> str:
    """walk computed on the arrangement itself: numbered by its rank among the six orders of "abc"."""
    orders = sorted("".join(o) for o in itertools.permutations("abc"))
    cur, out = list("abc"), []
    for m in moves:
        i, j = {"l": (0, 1), "r": (1, 2), "s": (0, 2)}[m]
        cur[i], cur[j] = cur[j], cur[i]
        out.append(f"{m}{orders.index(''.join(cur))}")
    return "".join(out)


def test_walk_does_not_commute():
    """Two moves in the other order end elsewhere: a state is a composition, not a count of moves."""
    assert _walk_answer(["l", "r"])[-1] != _walk_answer(["r", "l"])[-1]
    assert GENERATORS["walk"](random.Random(0))[1] == _walk_answer(GENERATORS["walk"](random.Random(0))[0][5:-1].split())


def test_answers_are_exact():
    for p in make_problems(400, seed=1, tasks=TASKS):
        body = p.prompt[:-1]
        if p.task in ("cum", "rep"):
            assert p.answer == _long_answer(p.task, body)
        elif p.task == "walk":
            assert p.answer == _walk_answer(body.split(":")[1].split())
        elif p.task == "path":
            shown, goal = body.split(":")[1].split(">")
            moves = p.answer[::2]
            assert p.answer == _walk_answer(list(moves)) and p.answer[-1] == goal
            assert all(s in ("?", m) for s, m in zip(shown.split(), moves)) and shown.endswith("?")
        elif p.task in ("add", "sub", "mul"):
            op = {"add": "+", "sub": "-", "mul": "*"}[p.task]
            a, b = (int(x) for x in body.split(op))
            assert int(p.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[p.task]
            assert len(p.answer) == {"add": 4, "sub": 3, "mul": 3}[p.task]  # fixed width, zero-padded
        elif p.task == "sort":
            assert p.answer == "".join(sorted(body.split(":")[1]))
        else:
            assert p.answer == body.split(":")[1][::-1]
        assert check_answer(p, f" {p.answer} ") and not check_answer(p, p.answer + "0")


def test_every_task_appears_and_long_ones_span_several_blocks():
    problems = make_problems(500, seed=5, tasks=TASKS)
    assert {p.task for p in problems} == set(TASKS)
    assert max(len(p.answer) for p in problems) <= MAX_ANSWER_CHARS
    long = make_problems(300, seed=5, tasks=EVAL_TASKS)  # the evaluation suite: long tasks only
    assert {p.task for p in long} == set(EVAL_TASKS) == {"cum", "path"}
    assert min(len(p.answer) for p in long) >= 24  # at least 2 blocks of 16 hold content
    assert max(len(p.answer) for p in long) > 32  # and some 3


def test_cum_chains_its_answer_tokens():
    """Each running sum follows from the sum two to its left and the digit just before it (a local rule),
    which is what makes committing many of them at once risky and one at a time safe."""
    from lab.tasks import GENERATORS

    for seed in range(50):
        prompt, ans = GENERATORS["cum"](random.Random(seed))
        digits = prompt[4:-1].replace(" ", "")
        assert len(ans) == 2 * len(digits) and ans[0::2] == digits
        assert len(prompt) - 4 == 2 * len(digits)  # answer digit i sits 2n positions after prompt digit i
        assert all(prompt[4 + 2 * i] == d for i, d in enumerate(digits))
        sums = [int(c) for c in ans[1::2]]
        assert all(sums[i] == (sums[i - 1] + int(digits[i])) % 10 for i in range(1, len(sums)))


def test_path_accepts_every_consistent_answer_and_nothing_else():
    """Open moves may be anything; the numbers must be the true arrangements and the last the goal."""
    prompt = "path:l ? ?>5="
    right = [a for a in ("".join(ms) for ms in itertools.product("lrs", repeat=3))
             if a[0] == "l" and _walk_answer(list(a))[-1] == "5"]
    assert len(right) == 3  # l then any middle move, then the one last move that reaches 5
    problem = Problem("path", prompt, _walk_answer(list(right[0])))
    for moves in right:
        assert check_answer(problem, _walk_answer(list(moves)))
    assert not check_answer(problem, _walk_answer(list("rls")))  # the first move is fixed to l
    assert not check_answer(problem, "l2l0s4")  # a wrong number
    assert not check_answer(problem, _walk_answer(list("lll")))  # does not end at the goal
    assert not check_answer(problem, "l2l0") and not check_answer(problem, "l2l0s5s2")
    assert not check_answer(problem, "l2x0s5")
