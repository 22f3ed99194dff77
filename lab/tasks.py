"""Synthetic task suite with exact ground truth, generated from a seed.

Every problem is a prompt string ending in "=" and an answer string. The train/eval split is by a hash
of the prompt: a problem whose hash falls in the eval bucket is never produced for training, so
evaluation problems cannot appear in training data whatever the seeds.

Short tasks (answers up to 24 characters: one or two blocks of 16):
- add / sub: 3-digit arithmetic; carries and borrows make answer digits depend on one another,
  which is exactly where committing many tokens in parallel can go wrong.
- mul: a 2-digit number times one digit.
Numbers are written zero-padded to a fixed width (operands 3 digits, sums 4, differences 3, products 3):
digit i of every operand then sits at a fixed offset from digit i of the answer, which a small model
learns far more easily than aligning variable-length numbers by their last digit.
- sort: sort a list of digits.
- rev: reverse a string of letters (up to 24 letters).

Long tasks (answers of 24-48 characters: two to three blocks of 16 in the default canvas of 64). In cum,
walk and path the answer tokens depend on one another, so committing many at once can go wrong; in rep
they do not:
- cum: a running sum mod 10 written out step by step, each digit of 12-24 followed by the sum so far
  (`cum:3 1 4 1=` → `33144819`): a sum is (the sum two to its left + the digit just before it) mod 10 —
  easy once its left neighbours are committed, a sum over a growing span when they are not. The copied
  digits can all be committed at once; the sums are a chain. The prompt's digits are space-separated so
  that answer digit i sits at one fixed offset from prompt digit i (2 × the digit count): with rotary
  positions a constant offset is what a small model aligns easily (as in rep); a packed prompt
  (`cum:3141=`) puts them at an offset that grows with i, which a 2.7 M model had not learned after
  2250 fine-tuning steps (docs/engine.md).
- walk: 12-24 moves on an arrangement of three things (`l`, `r`: swap the first two / last two, `s`: the
  ends), each move followed by the arrangement's number (0-5) after it (`walk:l r=` → `l2r3`). Like cum
  a chain, but the moves do not commute: a state two moves on is a composition, not a sum of counts.
  Meant to be harder to compute in parallel than cum; the 2.7 M model still commits it about a block
  of 16 in two steps (docs/engine.md).
- path: a walk whose prompt leaves some moves open (`?`) and names the arrangement it must end at
  (`path:l ? ?>5=` → `l2l0s5`, and `l2r3l5` is as good): the answer writes every move and the number
  after it. Any choice of an open move is right except that the last move (always open) must reach the
  goal. Open moves follow a preference that depends on the arrangement before them (at most 0.8 for
  one move), so a model that has learned the task is unsure of an open move by design, and a state
  two open moves on is a guess until the moves before it are committed: committed one by one the
  answer is consistent, committed all at once it often is not. Checked by `check_path`, not by string
  equality: every written number must be the true arrangement and the last the goal.
- rep: copy 24-48 letters replacing every x by y (`rep:a>e:banana=` → `benene`): every output
  letter is independent of the others; the easy, parallel part of the mix.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import string
from dataclasses import dataclass
from typing import Callable, Literal

Split = Literal["train", "eval"]
SHORT_TASKS = ("add", "sub", "mul", "sort", "rev")
LONG_TASKS = ("cum", "rep", "walk", "path")
TASKS = SHORT_TASKS + LONG_TASKS
EVAL_TASKS = ("cum", "path")  # what `dilaserve eval` measures by default: chains that span several blocks
EVAL_BUCKETS = 10  # 1 in 10 prompts is reserved for evaluation
MAX_ANSWER_CHARS = 48
MAX_REV_CHARS = 24
MAX_REPEATED_DRAWS = 20_000


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str


def split_of(prompt: str) -> Split:
    digest = hashlib.sha256(prompt.encode()).digest()
    return "eval" if digest[0] % EVAL_BUCKETS == 0 else "train"


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"{a:03d}+{b:03d}=", f"{a + b:04d}"


def _sub(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    a, b = max(a, b), min(a, b)
    return f"{a:03d}-{b:03d}=", f"{a - b:03d}"


def _mul(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(2, 9)
    return f"{a:02d}*{b}=", f"{a * b:03d}"


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = [rng.choice(string.digits) for _ in range(rng.randint(2, 16))]
    return f"sort:{''.join(digits)}=", "".join(sorted(digits))


def _rev(rng: random.Random) -> tuple[str, str]:
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, MAX_REV_CHARS)))
    return f"rev:{letters}=", letters[::-1]


def _cum(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(12, 24))]
    out, total = [], 0
    for d in digits:
        total = (total + d) % 10
        out.append(f"{d}{total}")
    return f"cum:{' '.join(map(str, digits))}=", "".join(out)


def _rep(rng: random.Random) -> tuple[str, str]:
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(24, 48)))
    old = rng.choice(letters)
    new = rng.choice([c for c in string.ascii_lowercase if c != old])
    return f"rep:{old}>{new}:{letters}=", letters.replace(old, new)


WALK_MOVES = {"l": (1, 0, 2), "r": (0, 2, 1), "s": (2, 1, 0)}  # swap first two / last two / the ends
WALK_STATES = sorted(itertools.permutations(range(3)))


def _walk_step(state: tuple[int, ...], move: str) -> tuple[int, ...]:
    return tuple(state[i] for i in WALK_MOVES[move])


def _walk(rng: random.Random) -> tuple[str, str]:
    moves = [rng.choice("lrs") for _ in range(rng.randint(12, 24))]
    state, out = (0, 1, 2), []
    for m in moves:
        state = _walk_step(state, m)
        out.append(f"{m}{WALK_STATES.index(state)}")
    return f"walk:{' '.join(moves)}=", "".join(out)


# Preferred open moves per arrangement: a weight for each of "lrs" (sum 1, largest ≤ 0.8).
PATH_PREFS = ((0.80, 0.15, 0.05), (0.10, 0.70, 0.20), (0.30, 0.10, 0.60),
              (0.55, 0.35, 0.10), (0.15, 0.75, 0.10), (0.10, 0.25, 0.65))


def _path(rng: random.Random) -> tuple[str, str]:
    n, open_p = rng.randint(12, 24), rng.uniform(0.3, 0.9)
    state, shown, out = (0, 1, 2), [], []
    for k in range(n):
        m = rng.choices("lrs", weights=PATH_PREFS[WALK_STATES.index(state)])[0]
        state = _walk_step(state, m)
        shown.append("?" if k == n - 1 or rng.random() < open_p else m)
        out.append(f"{m}{WALK_STATES.index(state)}")
    return f"path:{' '.join(shown)}>{WALK_STATES.index(state)}=", "".join(out)


def check_path(prompt: str, output_text: str) -> bool:
    """A path answer is right when it takes the prompt's fixed moves, fills the open ones with any move,
    writes the true arrangement after each move and ends at the goal."""
    body, _, goal = prompt[len("path:"):-1].rpartition(">")
    shown, text = body.split(), output_text.strip()
    if len(text) != 2 * len(shown):
        return False
    state = (0, 1, 2)
    for k, want in enumerate(shown):
        move, number = text[2 * k], text[2 * k + 1]
        if move not in WALK_MOVES or want not in ("?", move):
            return False
        state = _walk_step(state, move)
        if number != str(WALK_STATES.index(state)):
            return False
    return str(WALK_STATES.index(state)) == goal


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "sort": _sort,
    "rev": _rev,
    "cum": _cum,
    "rep": _rep,
    "walk": _walk,
    "path": _path,
}


# Training draws tasks with weights (evaluation stays uniform over tasks). TRAIN_CURRICULUM gives them
# per phase of a run (start = fraction of the run done); `dilaserve train --task-weights` overrides it.
# From scratch the arithmetic is weighted up: fixed-width add/sub are learned by ~step 3000 this way.
TRAIN_CURRICULUM: tuple[tuple[float, dict[str, float]], ...] = (
    (0.0, {"add": 3.0, "sub": 3.0, "mul": 2.0, "sort": 1.5, "rev": 1.0}),
)


def train_weights_at(progress: float) -> dict[str, float]:
    """Task weights at ``progress`` = steps done / total steps (the last phase that has started)."""
    return [w for start, w in TRAIN_CURRICULUM if progress >= start][-1]


def parse_task_weights(spec: str) -> dict[str, float]:
    """``"add=1,sub=1,rev=3"`` → weights (tasks not named get 0); a clear error for anything else."""
    weights: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} in task weights (tasks: {', '.join(TASKS)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"task weight {item!r} is not name=number") from None
        if weights[name] < 0:
            raise ValueError(f"task weight {item!r} is negative")
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"task weights {spec!r} give no task a positive weight")
    return {t: weights.get(t, 0.0) for t in TASKS}


def sample_problem(
    rng: random.Random,
    split: Split,
    tasks: tuple[str, ...] = TASKS,
    weights: dict[str, float] | None = None,
) -> Problem:
    """Draw one problem of the given split (rejection on the prompt hash); ``weights`` biases the task."""
    w = [weights.get(t, 0.0) for t in tasks] if weights else None  # a task not named is not drawn
    while True:
        task = rng.choices(tasks, weights=w)[0] if w else rng.choice(tasks)
        prompt, answer = GENERATORS[task](rng)
        if split_of(prompt) == split:
            return Problem(task, prompt, answer)


def make_problems(n: int, seed: int, split: Split = "eval", tasks: tuple[str, ...] = TASKS) -> list[Problem]:
    """``n`` problems from ``seed``; eval problems are distinct from each other and from training."""
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    repeats = 0  # draws in a row that gave nothing new: the space is (nearly) exhausted
    while len(out) < n:
        p = sample_problem(rng, split, tasks)
        if split == "eval" and p.prompt in seen:
            repeats += 1
            if repeats > MAX_REPEATED_DRAWS:
                raise ValueError(f"asked for {n} distinct {split} problems of {', '.join(tasks)}, but only about "
                                 f"{len(out)} exist (e.g. mul has 800 prompts, a tenth of them eval): ask for fewer")
            continue
        repeats = 0
        seen.add(p.prompt)
        out.append(p)
    return out


def check_answer(problem: Problem, output_text: str) -> bool:
    """Exact match after stripping surrounding whitespace; path answers by `check_path` (many are right)."""
    if problem.task == "path":
        return check_path(problem.prompt, output_text)
    return output_text.strip() == problem.answer
