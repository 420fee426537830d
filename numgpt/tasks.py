"""Synthetic tasks with exactly checkable answers.

A language model trained on text is judged by its loss, which says little
about whether it "gets" anything.  These tasks (after minGPT's demos) are
tiny algorithmic problems posed as token sequences, so a trained model can
be graded by exact-match accuracy on problems it never saw.

Every problem is a *prompt* of ``prompt_length`` tokens followed by an
*answer* of ``answer_length`` tokens.  The model reads the whole sequence
but is only asked to predict the answer: a training example is

    x = (prompt + answer)[:-1]          length block_size = P + A - 1
    y = (prompt + answer)[1:]           with y[:, :P-1] = -1

where -1 is the loss's ``ignore_index``.  ``y[t]`` is the token after
``x[:t+1]``; the first ``P - 1`` targets are prompt tokens, which are random
and cannot be predicted, so they are masked and the loss only counts the
``A`` answer tokens.  (The last answer token never appears in ``x``: the
model never needs to read it.)

**Train/test separation.**  Each problem gets a fixed pseudo-random hash of
its prompt tokens (an FNV-style fold of the tokens followed by the SplitMix64
finaliser, all in uint64 arithmetic, so it is the same on every machine and
in every process, unlike Python's salted ``hash``).  A problem is a *test*
problem when its hash, read as a fraction in [0, 1), is below
``test_fraction`` (default 1/4).  ``sample(..., split="train")`` only ever
returns training problems and ``evaluate`` (default ``split="test"``) only
test problems, so a reported accuracy is on unseen problems.

**Evaluation.**  ``evaluate(predict, n, rng)`` draws ``n`` test problems and
calls ``predict(prompts)`` with an int64 array of shape ``(n,
prompt_length)``; ``predict`` must return int64 ``(n, answer_length)``,
usually by greedy decoding ``answer_length`` tokens from the model.  The
score is the fraction of problems whose whole answer is right.  This module
does not import the model: the caller supplies ``predict``.

The tasks:

* :class:`SortTask` — the prompt is ``length`` digits from
  ``0..num_digits-1``; the answer is the same digits sorted ascending.
* :class:`AdditionTask` — the prompt is the ``n_digits`` digits of ``a``
  then of ``b`` (most significant first, zero-padded); the answer is the
  ``n_digits + 1`` digits of ``a + b`` *reversed*, least significant first.
  Reversal is minGPT's trick: written that way, each answer digit depends
  only on digits already seen plus the carry out of the digit just
  produced, the order in which a person adds by hand, so a small model
  learns it far more easily than producing the most significant digit
  (which depends on every carry) first.
"""

from __future__ import annotations

import operator
import re

import numpy as np

__all__ = ["Task", "SortTask", "AdditionTask", "TASKS", "make_task"]

IGNORE_INDEX = -1

_SPLITS = ("train", "test")

# Problem spaces up to this size are enumerated once at construction to
# check that both splits are non-empty; larger ones surely are.
_ENUMERATE_LIMIT = 1 << 16


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 that scrambles bits well."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _problem_hash_fraction(prompts: np.ndarray) -> np.ndarray:
    """Map each row of ``prompts`` to a deterministic pseudo-random float in [0, 1)."""
    h = np.full(prompts.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 products wrap around by design
        for column in prompts.T.astype(np.uint64):
            h = _mix64((h ^ column) * np.uint64(0x100000001B3))
    # The top 53 bits as a double in [0, 1).
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _split_numbers(text: str) -> list[str] | None:
    """The runs of digits in ``text`` separated by spaces or commas, or None if anything else is there."""
    pieces = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not all(re.fullmatch(r"[0-9]+", p) for p in pieces):
        return None
    return pieces


def _digit_count(digits: str) -> int:
    """How many digits the number written as ``digits`` (a run of 0-9) has, without converting it:
    Python refuses int() of over 4300 digits and int64 overflows far sooner."""
    return max(1, len(digits.lstrip("0")))


def _shown(digits: str) -> str:
    return digits if len(digits) <= 24 else f"a number of {_digit_count(digits)} digits"


def _check_split(split) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


class Task:
    """Shared machinery: masking, the train/test split, sampling, scoring.

    Subclasses set ``vocab_size``, ``prompt_length``, ``answer_length`` and
    ``num_problems`` and implement ``_random_prompts(m, rng)``,
    ``solve(prompts)``, ``_all_prompts()`` (for small problem spaces),
    ``format_problem(prompt, answer)``, and for typed problems (``numgpt
    sample --prompt``) ``parse_prompt(text)``, ``format_answer(answer)`` and
    ``prompt_form()``.
    """

    name = "task"
    vocab_size: int
    prompt_length: int
    answer_length: int
    num_problems: int

    def __init__(self, test_fraction: float = 0.25):
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
            raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
        self.test_fraction = float(test_fraction)
        if self.num_problems <= _ENUMERATE_LIMIT:
            n_test = int(self.is_test(self._all_prompts()).sum())
            if n_test == 0 or n_test == self.num_problems:
                raise ValueError(
                    f"{self!r} has only {self.num_problems} distinct problems, too few to hold "
                    f"out a test set with test_fraction={self.test_fraction}; make the task larger"
                )

    # -- to be provided by subclasses ------------------------------------
    def _random_prompts(self, m: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _all_prompts(self) -> np.ndarray:
        raise NotImplementedError

    def solve(self, prompts: np.ndarray) -> np.ndarray:
        """The correct answers, int64 ``(n, answer_length)``, for int64 prompts ``(n, prompt_length)``."""
        raise NotImplementedError

    def format_problem(self, prompt, answer=None) -> str:
        raise NotImplementedError

    def parse_prompt(self, text: str) -> np.ndarray:
        """The prompt, int64 ``(prompt_length,)``, that ``text`` (a problem as a person types it) stands for.

        Raises ValueError naming the accepted forms when ``text`` is not one of them.
        """
        raise NotImplementedError

    def format_answer(self, answer) -> str:
        """An answer row as a person reads it."""
        raise NotImplementedError

    def prompt_form(self) -> str:
        """The forms ``parse_prompt`` accepts, in words, with an example (for error messages and help)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------
    @property
    def block_size(self) -> int:
        """The context length a model needs: the whole sequence but its last token."""
        return self.prompt_length + self.answer_length - 1

    def is_test(self, prompts: np.ndarray) -> np.ndarray:
        """Boolean ``(n,)``: which problems belong to the held-out test split."""
        prompts = self._check_prompts(prompts)
        return _problem_hash_fraction(prompts) < self.test_fraction

    def sample_problems(self, n: int, rng: np.random.Generator, split: str = "train"):
        """``n`` random problems of ``split``: ``(prompts, answers)``, int64
        arrays of shapes ``(n, prompt_length)`` and ``(n, answer_length)``."""
        n = _check_int("n", n, 0)
        _check_split(split)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                f"got {type(rng).__name__}"
            )
        want_test = split == "test"
        kept, have = [], 0
        # Rejection sampling: draw problems uniformly, keep those in the
        # split.  Each round draws enough to finish on average.
        fraction = self.test_fraction if want_test else 1.0 - self.test_fraction
        for _ in range(1000):
            if have >= n:
                break
            m = int((n - have) / fraction * 1.2) + 16
            candidates = self._random_prompts(m, rng)
            candidates = candidates[self.is_test(candidates) == want_test]
            kept.append(candidates)
            have += len(candidates)
        else:  # pragma: no cover - only for absurdly lopsided tiny tasks
            raise RuntimeError(f"could not draw {n} {split} problems from {self!r}")
        prompts = np.concatenate(kept)[:n] if kept else np.zeros((0, self.prompt_length), np.int64)
        return prompts, self.solve(prompts)

    def sample(self, n: int, rng: np.random.Generator, split: str = "train"):
        """``n`` training examples ``(x, y)``, int64 ``(n, block_size)``.

        ``x`` is prompt + answer without its last token, ``y`` the same
        sequence shifted by one with every non-answer target set to -1.
        """
        prompts, answers = self.sample_problems(n, rng, split)
        sequence = np.concatenate([prompts, answers], axis=1)
        x = np.ascontiguousarray(sequence[:, :-1])
        y = sequence[:, 1:].copy()
        y[:, : self.prompt_length - 1] = IGNORE_INDEX
        return x, y

    def evaluate(self, predict, n: int, rng: np.random.Generator, split: str = "test",
                 batch_size: int | None = None) -> float:
        """Exact-match accuracy of ``predict`` on ``n`` problems of ``split``.

        ``predict(prompts)`` gets int64 ``(m, prompt_length)`` and must
        return ``(m, answer_length)`` integer predictions; with
        ``batch_size`` it is called on chunks of at most that many prompts.
        """
        n = _check_int("n", n, 1)
        if not callable(predict):
            raise TypeError(f"predict must be callable, got {type(predict).__name__}")
        step = n if batch_size is None else _check_int("batch_size", batch_size, 1)
        prompts, answers = self.sample_problems(n, rng, split)
        correct = 0
        for start in range(0, n, step):
            chunk = prompts[start : start + step]
            predicted = np.asarray(predict(chunk.copy()))
            expected_shape = (len(chunk), self.answer_length)
            if predicted.shape != expected_shape:
                raise ValueError(
                    f"predict must return an array of shape {expected_shape} "
                    f"(prompts, answer_length), got shape {predicted.shape}"
                )
            correct += int(np.all(predicted == answers[start : start + step], axis=1).sum())
        return correct / n

    def decode_example(self, x, y=None) -> str:
        """Show one example as text.

        ``x`` is a row of ``sample``'s ``x`` (then ``y``'s row supplies the
        final answer token), or a full prompt + answer sequence (``y``
        omitted), or just a prompt (its correct answer is added).
        """
        x = np.asarray(x, dtype=np.int64).reshape(-1)
        if y is not None:
            x = np.concatenate([x, np.asarray(y, dtype=np.int64).reshape(-1)[-1:]])
        if len(x) == self.prompt_length:
            return self.format_problem(x, self.solve(x[None, :])[0])
        total = self.prompt_length + self.answer_length
        if len(x) != total:
            raise ValueError(
                f"expected a prompt ({self.prompt_length} tokens), a full sequence ({total}) "
                f"or an x row ({self.block_size}) with its y row; got {len(x)} tokens"
            )
        return self.format_problem(x[: self.prompt_length], x[self.prompt_length :])

    def _check_prompts(self, prompts) -> np.ndarray:
        prompts = np.asarray(prompts)
        if prompts.dtype.kind not in "iu":       # floats would be truncated into other problems
            raise TypeError(f"prompts must be integer token ids, got dtype {prompts.dtype}")
        if prompts.ndim != 2 or prompts.shape[1] != self.prompt_length:
            raise ValueError(
                f"prompts must have shape (n, {self.prompt_length}), got {prompts.shape}"
            )
        if prompts.size and (prompts.min() < 0 or prompts.max() >= self.vocab_size):
            raise ValueError(f"prompt tokens must be in 0..{self.vocab_size - 1}")
        return prompts.astype(np.int64, copy=False)


class SortTask(Task):
    """Sort ``length`` digits drawn from ``0..num_digits-1`` (minGPT's demo:
    length 6, 3 digits).  Example: prompt ``2 0 1 1 0 2``, answer ``0 0 1 1 2 2``."""

    name = "sort"

    def __init__(self, length: int = 6, num_digits: int = 3, *, test_fraction: float = 0.25):
        self.length = _check_int("length", length, 1)
        self.num_digits = _check_int("num_digits", num_digits, 2)
        self.vocab_size = self.num_digits
        self.prompt_length = self.length
        self.answer_length = self.length
        self.num_problems = self.num_digits**self.length
        super().__init__(test_fraction)

    def _random_prompts(self, m, rng):
        return rng.integers(0, self.num_digits, size=(m, self.length), dtype=np.int64)

    def _all_prompts(self):
        # Every sequence, as the base-num_digits digits of 0..num_problems-1.
        codes = np.arange(self.num_problems, dtype=np.int64)[:, None]
        powers = self.num_digits ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return (codes // powers) % self.num_digits

    def solve(self, prompts):
        return np.sort(self._check_prompts(prompts), axis=1)

    def format_problem(self, prompt, answer=None) -> str:
        shown = " ".join(str(int(t)) for t in prompt)
        if answer is None:
            return f"sort {shown} ->"
        return f"sort {shown} -> {' '.join(str(int(t)) for t in answer)}"

    def prompt_form(self) -> str:
        """The forms ``parse_prompt`` accepts, in words, with an example."""
        example = [(2, 0, 1, 1, 0, 2)[i % 6] % self.num_digits for i in range(self.length)]
        spaced = " ".join(map(str, example))
        if self.num_digits > 10:
            return f"{self.length} numbers from 0 to {self.num_digits - 1} separated by spaces, e.g. {spaced!r}"
        return (f"{self.length} digits from 0 to {self.num_digits - 1}, separated by spaces or not, "
                f"e.g. {spaced!r} or {''.join(map(str, example))!r}")

    def parse_prompt(self, text: str) -> np.ndarray:
        """``'2 0 1 1 0 2'``, ``'2,0,1,1,0,2'`` or ``'201102'`` (when every digit is one character)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        pieces = _split_numbers(text)
        if pieces is not None and len(pieces) == 1 and self.num_digits <= 10:
            pieces = list(pieces[0])                       # '201102': one digit per character
        if pieces is None or len(pieces) != self.length:
            found = "" if pieces is None else f" ({len(pieces)} number{'s' * (len(pieces) != 1)})"
            raise ValueError(f"a sort problem is {self.prompt_form()}; got {text!r}{found}")
        too_long = [p for p in pieces if _digit_count(p) > len(str(self.num_digits - 1))]
        if too_long:
            raise ValueError(f"a sort problem is {self.prompt_form()}; got {text!r}, and {_shown(too_long[0])} "
                             f"is not from 0 to {self.num_digits - 1}")
        values = np.array([int(p) for p in pieces], dtype=np.int64)
        if values.max() >= self.num_digits:
            raise ValueError(f"a sort problem is {self.prompt_form()}; got {text!r}, and {int(values.max())} "
                             f"is not from 0 to {self.num_digits - 1}")
        return values

    def format_answer(self, answer) -> str:
        return " ".join(str(int(t)) for t in np.asarray(answer).reshape(-1))

    def __repr__(self) -> str:
        return f"SortTask(length={self.length}, num_digits={self.num_digits})"


class AdditionTask(Task):
    """``a + b`` for ``0 <= a, b < 10**n_digits``, answer digits reversed.

    Tokens are the digits 0-9.  Prompt: the ``n_digits`` digits of ``a``
    then of ``b``, most significant first, zero-padded.  Answer: the
    ``n_digits + 1`` digits of the sum, zero-padded, least significant
    first (see the module docstring for why).  Example with ``n_digits=2``:
    ``37 + 85 = 122`` is prompt ``3 7 8 5``, answer ``2 2 1``.
    """

    name = "add"

    def __init__(self, n_digits: int = 2, *, test_fraction: float = 0.25):
        # 18 digits keep a + b below 2**63, so int64 arithmetic is exact.
        self.n_digits = _check_int("n_digits", n_digits, 1, 18)
        self.vocab_size = 10
        self.prompt_length = 2 * self.n_digits
        self.answer_length = self.n_digits + 1
        self.num_problems = 10 ** (2 * self.n_digits)
        super().__init__(test_fraction)

    def _digits(self, values: np.ndarray, width: int) -> np.ndarray:
        """Digits of each value, most significant first, shape (n, width)."""
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        return (values[:, None] // powers) % 10

    def _number(self, digits: np.ndarray) -> np.ndarray:
        powers = 10 ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64)
        return digits @ powers

    def _random_prompts(self, m, rng):
        limit = 10**self.n_digits
        a = rng.integers(0, limit, size=m, dtype=np.int64)
        b = rng.integers(0, limit, size=m, dtype=np.int64)
        return np.concatenate([self._digits(a, self.n_digits), self._digits(b, self.n_digits)], axis=1)

    def _all_prompts(self):
        return self._digits(np.arange(self.num_problems, dtype=np.int64), self.prompt_length)

    def operands(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` as int64 arrays, read from prompts ``(n, 2 * n_digits)``."""
        prompts = self._check_prompts(prompts)
        return self._number(prompts[:, : self.n_digits]), self._number(prompts[:, self.n_digits :])

    def solve(self, prompts):
        a, b = self.operands(prompts)
        return self._digits(a + b, self.answer_length)[:, ::-1].copy()

    def answer_value(self, answer) -> int:
        """The number a (reversed-digit) answer row stands for."""
        digits = np.asarray(answer, dtype=np.int64).reshape(1, -1)[:, ::-1]
        return int(self._number(digits)[0])

    def format_problem(self, prompt, answer=None) -> str:
        a, b = self.operands(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
        head = f"{int(a[0])} + {int(b[0])} ="
        if answer is None:
            return head
        raw = "".join(str(int(t)) for t in answer)
        return f"{head} {self.answer_value(answer)} (answer tokens, reversed: {raw})"

    def prompt_form(self) -> str:
        """The forms ``parse_prompt`` accepts, in words, with examples."""
        n, top = self.n_digits, 10**self.n_digits - 1
        a, b = int(("37" * n)[:n]), int(("85" * n)[:n])
        digits = f"{a:0{n}d}{b:0{n}d}"
        return (f"'A+B' with A and B from 0 to {top} (e.g. '{a}+{b}'), or the {2 * n} prompt digits, "
                f"A's then B's zero-padded, separated by spaces or not (e.g. {' '.join(digits)!r} or {digits!r})")

    def parse_prompt(self, text: str) -> np.ndarray:
        """``'37+85'`` (spaces and a final ``=`` allowed), or the prompt digits: ``'3 7 8 5'``, ``'3785'``."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        sum_form = re.fullmatch(r"\s*([0-9]+)\s*\+\s*([0-9]+)\s*=?\s*", text)
        if sum_form:
            too_long = [g for g in sum_form.groups() if _digit_count(g) > self.n_digits]
            if too_long:
                raise ValueError(f"an addition problem is {self.prompt_form()}; got {text!r}, and "
                                 f"{_shown(too_long[0])} has more than {self.n_digits} digit(s)")
            a, b = (int(g) for g in sum_form.groups())
            return np.concatenate([self._digits(np.array([a]), self.n_digits),
                                   self._digits(np.array([b]), self.n_digits)], axis=1)[0].astype(np.int64)
        pieces = _split_numbers(text)
        digits = "".join(pieces) if pieces is not None else ""
        if pieces is None or len(digits) != self.prompt_length:
            found = "" if pieces is None else f" ({len(digits)} digit{'s' * (len(digits) != 1)})"
            raise ValueError(f"an addition problem is {self.prompt_form()}; got {text!r}{found}")
        return np.array([int(d) for d in digits], dtype=np.int64)

    def format_answer(self, answer) -> str:
        return str(self.answer_value(answer))

    def __repr__(self) -> str:
        return f"AdditionTask(n_digits={self.n_digits})"


TASKS = {"sort": SortTask, "add": AdditionTask}


def make_task(name: str, **kwargs) -> Task:
    """Build the task called ``name`` (a key of :data:`TASKS`) with ``kwargs``."""
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; available tasks: {', '.join(sorted(TASKS))}"
        )
    try:
        return TASKS[name](**kwargs)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise TypeError(f"task {name!r}: {err}") from None
