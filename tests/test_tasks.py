"""Tests for numgpt.tasks: example layout, correctness, the split, scoring."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numgpt.tasks import TASKS, AdditionTask, SortTask, make_task

TASK_CONFIGS = [
    SortTask(),
    SortTask(length=10, num_digits=10),
    AdditionTask(),
    AdditionTask(n_digits=1),
    AdditionTask(n_digits=4),
]
IDS = [repr(t) for t in TASK_CONFIGS]


def _answers_from_y(task, y):
    return y[:, task.prompt_length - 1 :]


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=IDS)
def test_sample_layout(task):
    x, y = task.sample(64, np.random.default_rng(0))
    assert task.block_size == task.prompt_length + task.answer_length - 1
    assert x.shape == y.shape == (64, task.block_size)
    assert x.dtype == y.dtype == np.int64
    assert ((0 <= x) & (x < task.vocab_size)).all()
    # Targets: -1 on the prompt, the answer tokens after it.
    assert (y[:, : task.prompt_length - 1] == -1).all()
    answers = _answers_from_y(task, y)
    assert answers.shape == (64, task.answer_length)
    assert ((0 <= answers) & (answers < task.vocab_size)).all()
    # y is x shifted by one wherever it is not masked.
    assert np.array_equal(y[:, task.prompt_length - 1 : -1], x[:, task.prompt_length :])
    # and the answers are the correct ones for the prompts in x.
    assert np.array_equal(answers, task.solve(x[:, : task.prompt_length]))


def test_sort_answers_are_the_sorted_prompts():
    task = SortTask()
    assert (task.vocab_size, task.prompt_length, task.answer_length, task.block_size) == (3, 6, 6, 11)
    x, y = task.sample(200, np.random.default_rng(1))
    prompts, answers = x[:, :6], _answers_from_y(task, y)
    assert (np.diff(answers, axis=1) >= 0).all()
    for p, a in zip(prompts, answers):
        assert sorted(p.tolist()) == a.tolist()


def test_addition_answers_are_reversed_sums():
    task = AdditionTask(n_digits=2)
    assert (task.vocab_size, task.prompt_length, task.answer_length, task.block_size) == (10, 4, 3, 6)
    x, y = task.sample(300, np.random.default_rng(2))
    for row_x, row_y in zip(x, y):
        a = int("".join(map(str, row_x[:2])))
        b = int("".join(map(str, row_x[2:4])))
        answer = row_y[3:].tolist()
        assert int("".join(map(str, answer[::-1]))) == a + b
        assert task.answer_value(answer) == a + b


@given(n_digits=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_addition_solve_property(n_digits, seed):
    task = AdditionTask(n_digits=n_digits)
    prompts, answers = task.sample_problems(20, np.random.default_rng(seed), "train")
    a, b = task.operands(prompts)
    assert ((0 <= a) & (a < 10**n_digits) & (0 <= b) & (b < 10**n_digits)).all()
    values = answers[:, ::-1] @ (10 ** np.arange(n_digits, -1, -1))
    assert np.array_equal(values, a + b)


def test_known_examples_and_formatting():
    add = AdditionTask(n_digits=2)
    prompt = np.array([[3, 7, 8, 5]])
    assert add.solve(prompt).tolist() == [[2, 2, 1]]
    assert add.format_problem(prompt[0]) == "37 + 85 ="
    assert add.format_problem(prompt[0], [2, 2, 1]) == "37 + 85 = 122 (answer tokens, reversed: 221)"
    assert add.decode_example([3, 7, 8, 5]).startswith("37 + 85 = 122")
    x, y = add.sample(1, np.random.default_rng(0))
    a, b = add.operands(x[:, :4])
    assert add.decode_example(x[0], y[0]).startswith(f"{a[0]} + {b[0]} = {a[0] + b[0]} ")

    sort = SortTask()
    assert sort.solve(np.array([[2, 0, 1, 1, 0, 2]])).tolist() == [[0, 0, 1, 1, 2, 2]]
    assert sort.decode_example([2, 0, 1, 1, 0, 2]) == "sort 2 0 1 1 0 2 -> 0 0 1 1 2 2"
    assert sort.decode_example([2, 0, 1, 1, 0, 2, 0, 0, 1, 1, 2, 2]) == "sort 2 0 1 1 0 2 -> 0 0 1 1 2 2"
    with pytest.raises(ValueError, match="got 5 tokens"):
        sort.decode_example([1, 2, 0, 1, 2])


@pytest.mark.parametrize("task", [SortTask(), AdditionTask(), AdditionTask(n_digits=1)], ids=repr)
def test_train_and_test_problems_are_disjoint(task):
    rng = np.random.default_rng(3)
    train, _ = task.sample_problems(3000, rng, "train")
    test, _ = task.sample_problems(3000, rng, "test")
    train_set = {tuple(p) for p in train.tolist()}
    test_set = {tuple(p) for p in test.tolist()}
    assert train_set and test_set
    assert not train_set & test_set
    # The split of the whole problem space is about test_fraction and stable.
    everything = task._all_prompts()
    is_test = task.is_test(everything)
    assert len(everything) == task.num_problems
    assert 0.15 < is_test.mean() < 0.35
    assert np.array_equal(task.is_test(everything), is_test)
    # Sampling covers its split: with 3000 draws, most problems show up.
    if task.num_problems <= 729:
        assert len(train_set) > 0.9 * (~is_test).sum()


def _reference_fraction(tokens):
    """The documented problem hash, in plain Python integers: an FNV-style
    fold of the tokens, each step finished by SplitMix64's mixer."""
    mask = (1 << 64) - 1

    def mix(h):
        h ^= h >> 30
        h = (h * 0xBF58476D1CE4E5B9) & mask
        h ^= h >> 27
        h = (h * 0x94D049BB133111EB) & mask
        return h ^ (h >> 31)

    h = 0xCBF29CE484222325
    for t in tokens:
        h = mix(((h ^ t) * 0x100000001B3) & mask)
    return (h >> 11) / 2**53


def test_split_is_a_fixed_function_of_the_problem():
    # Unlike Python's salted hash(), the split must be the same in every
    # process and on every platform, or "unseen" test problems would leak
    # into training between runs.
    task = SortTask()
    everything = task._all_prompts()
    expected = [_reference_fraction(p) < 0.25 for p in everything.tolist()]
    assert task.is_test(everything).tolist() == expected
    assert np.flatnonzero(expected).tolist()[:8] == [0, 2, 8, 9, 16, 18, 19, 20]
    add = AdditionTask(n_digits=3)
    prompts, _ = add.sample_problems(50, np.random.default_rng(0), "test")
    assert all(_reference_fraction(p) < 0.25 for p in prompts.tolist())


def test_sample_x_and_y_respect_the_split():
    task = AdditionTask(n_digits=2)
    x, _ = task.sample(500, np.random.default_rng(4), split="test")
    assert task.is_test(x[:, : task.prompt_length]).all()
    x, _ = task.sample(500, np.random.default_rng(4))
    assert not task.is_test(x[:, : task.prompt_length]).any()


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=IDS)
def test_evaluate_oracle_and_wrong_predictors(task):
    rng = np.random.default_rng(5)
    seen = []

    def oracle(prompts):
        assert prompts.dtype == np.int64 and prompts.shape[1] == task.prompt_length
        assert task.is_test(prompts).all()  # evaluation uses test problems
        seen.append(len(prompts))
        return task.solve(prompts)

    assert task.evaluate(oracle, 200, rng) == 1.0

    def off_by_one(prompts):
        answers = task.solve(prompts)
        answers[:, -1] = (answers[:, -1] + 1) % task.vocab_size
        return answers

    assert task.evaluate(off_by_one, 200, rng) == 0.0

    def constant(prompts):
        return np.zeros((len(prompts), task.answer_length), dtype=np.int64)

    assert task.evaluate(constant, 200, rng) < 0.05


def test_evaluate_batches_and_partial_credit():
    task = SortTask()
    calls = []

    def half_right(prompts):
        calls.append(len(prompts))
        answers = task.solve(prompts)
        answers[::2, 0] = (answers[::2, 0] + 1) % 3
        return answers

    score = task.evaluate(half_right, 100, np.random.default_rng(6), batch_size=32)
    assert calls == [32, 32, 32, 4]
    assert score == pytest.approx(0.5)


def test_evaluate_is_deterministic_per_seed():
    task = AdditionTask()

    def noisy(prompts):
        answers = task.solve(prompts)
        answers[prompts[:, 0] % 3 == 0, 0] += 1
        return answers % 10

    a = task.evaluate(noisy, 300, np.random.default_rng(7))
    b = task.evaluate(noisy, 300, np.random.default_rng(7))
    assert a == b and 0.5 < a < 0.8


def test_evaluate_rejects_bad_predictions():
    task = SortTask()
    with pytest.raises(ValueError, match=r"shape \(10, 6\).*got shape \(10, 5\)"):
        task.evaluate(lambda p: np.zeros((len(p), 5), dtype=np.int64), 10, np.random.default_rng(0))
    with pytest.raises(TypeError, match="callable"):
        task.evaluate("model", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n must be >= 1"):
        task.evaluate(task.solve, 0, np.random.default_rng(0))


def test_argument_validation():
    with pytest.raises(ValueError, match="num_digits must be >= 2, got 1"):
        SortTask(num_digits=1)
    with pytest.raises(ValueError, match="length must be >= 1, got 0"):
        SortTask(length=0)
    with pytest.raises(TypeError, match="length must be an int"):
        SortTask(length=2.5)
    with pytest.raises(ValueError, match="n_digits must be between 1 and 18, got 19"):
        AdditionTask(n_digits=19)
    with pytest.raises(ValueError, match="too few to hold out a test set"):
        SortTask(length=1, num_digits=2, test_fraction=0.01)
    with pytest.raises(ValueError, match="test_fraction"):
        SortTask(test_fraction=1.0)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        SortTask().sample(4, np.random.default_rng(0), split="val")
    with pytest.raises(TypeError, match="Generator"):
        SortTask().sample(4, 0)
    with pytest.raises(ValueError, match=r"prompts must have shape \(n, 6\)"):
        SortTask().solve(np.zeros((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="prompt tokens must be in 0..2"):
        SortTask().solve(np.full((2, 6), 3))
    assert SortTask().sample(0, np.random.default_rng(0))[0].shape == (0, 11)


def test_make_task():
    assert set(TASKS) == {"sort", "add"}
    task = make_task("sort", length=4, num_digits=5)
    assert isinstance(task, SortTask) and task.block_size == 7 and task.vocab_size == 5
    assert isinstance(make_task("add"), AdditionTask)
    with pytest.raises(ValueError, match="unknown task 'reverse'; available tasks: add, sort"):
        make_task("reverse")
    with pytest.raises(TypeError, match="task 'add'.*n_digit"):
        make_task("add", n_digit=3)


# --- typed problems: parse_prompt, format_answer (numgpt sample --prompt) ----------------------------

@pytest.mark.parametrize("text", ["2 0 1 1 0 2", "201102", " 2,0, 1 1\t0 2 ", "2, 0, 1, 1, 0, 2"])
def test_sort_parse_prompt_forms(text):
    prompt = SortTask().parse_prompt(text)
    assert prompt.dtype == np.int64 and prompt.tolist() == [2, 0, 1, 1, 0, 2]


@pytest.mark.parametrize("text, fragment", [
    ("2 0 1", "got '2 0 1' (3 numbers)"),
    ("2011022", "(7 numbers)"),
    ("", "(0 numbers)"),
    ("2 0 1 1 0 3", "and 3 is not from 0 to 2"),
    ("2 0 1 1 0 99999999999999999999999", "and 99999999999999999999999 is not from 0 to 2"),  # > int64
    ("2 0 1 1 0 " + "9" * 5000, "and a number of 5000 digits is not from 0 to 2"),        # > int()'s limit
    ("2 0 1 1 0 -1", "got '2 0 1 1 0 -1'"),
    ("two 0 1 1 0 2", "got 'two 0 1 1 0 2'"),
])
def test_sort_parse_prompt_errors_name_the_expected_form(text, fragment):
    with pytest.raises(ValueError) as info:
        SortTask().parse_prompt(text)
    message = str(info.value)
    assert message.startswith("a sort problem is 6 digits from 0 to 2, separated by spaces or not, "
                              "e.g. '2 0 1 1 0 2' or '201102'")
    assert fragment in message


def test_sort_with_more_than_ten_digits_needs_spaces():
    task = SortTask(length=3, num_digits=12)
    assert task.parse_prompt("11 0 7").tolist() == [11, 0, 7]
    with pytest.raises(ValueError, match="3 numbers from 0 to 11 separated by spaces.*got '1107'"):
        task.parse_prompt("1107")
    with pytest.raises(ValueError, match="12 is not from 0 to 11"):
        task.parse_prompt("12 0 7")


@pytest.mark.parametrize("text, expected", [
    ("37+85", [3, 7, 8, 5]), (" 37 + 85 = ", [3, 7, 8, 5]), ("3+4", [0, 3, 0, 4]), ("0+99", [0, 0, 9, 9]),
    ("07+5", [0, 7, 0, 5]), ("3 7 8 5", [3, 7, 8, 5]), ("3785", [3, 7, 8, 5]), ("37 85", [3, 7, 8, 5]),
])
def test_addition_parse_prompt_forms(text, expected):
    prompt = AdditionTask(n_digits=2).parse_prompt(text)
    assert prompt.dtype == np.int64 and prompt.tolist() == expected


@pytest.mark.parametrize("text, fragment", [
    ("123+4", "123 has more than 2 digit(s)"),
    ("4+" + "9" * 5000, "a number of 5000 digits has more than 2 digit(s)"),   # > int()'s limit
    ("99999999999999999999999+1", "99999999999999999999999 has more than 2 digit(s)"),
    ("37-85", "got '37-85'"),
    ("378", "(3 digits)"),
    ("5 7", "(2 digits)"),
    ("+", "got '+'"),
])
def test_addition_parse_prompt_errors_name_the_expected_form(text, fragment):
    with pytest.raises(ValueError) as info:
        AdditionTask(n_digits=2).parse_prompt(text)
    message = str(info.value)
    assert message.startswith("an addition problem is 'A+B' with A and B from 0 to 99 (e.g. '37+85'), or the 4 "
                              "prompt digits")
    assert fragment in message


@given(n_digits=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_addition_parse_prompt_reads_every_form_of_a_problem(n_digits, seed):
    task = AdditionTask(n_digits=n_digits)
    prompts, answers = task.sample_problems(5, np.random.default_rng(seed))
    a, b = task.operands(prompts)
    for prompt, x, y, answer in zip(prompts, a, b, answers):
        for text in (f"{x}+{y}", f"{x} + {y} =", " ".join(map(str, prompt)), "".join(map(str, prompt))):
            assert task.parse_prompt(text).tolist() == prompt.tolist(), text
        assert task.format_answer(answer) == str(x + y)


@given(length=st.integers(1, 8), num_digits=st.integers(2, 10), seed=st.integers(0, 2**32 - 1))
def test_sort_parse_prompt_reads_what_format_shows(length, num_digits, seed):
    assume(num_digits**length >= 16)   # fewer problems may leave a split empty; the constructor refuses those
    task = SortTask(length=length, num_digits=num_digits)
    prompts, answers = task.sample_problems(5, np.random.default_rng(seed))
    for prompt, answer in zip(prompts, answers):
        shown = task.format_problem(prompt)                     # "sort 2 0 1 1 0 2 ->"
        assert task.parse_prompt(shown[len("sort "):-len(" ->")]).tolist() == prompt.tolist()
        assert task.format_answer(answer) == " ".join(map(str, answer))


def test_parse_prompt_wants_a_string():
    with pytest.raises(TypeError, match="prompt must be a str, got list"):
        SortTask().parse_prompt([2, 0, 1, 1, 0, 2])
    with pytest.raises(TypeError, match="prompt must be a str, got int"):
        AdditionTask().parse_prompt(3785)


@pytest.mark.parametrize("name", ["sort", "add"])
def test_solve_refuses_float_prompts(name):
    # 1.7 used to be truncated to 1: the answer to a problem nobody asked.
    task = make_task(name)
    prompts = np.zeros((1, task.prompt_length)) + 1.7
    with pytest.raises(TypeError, match="prompts must be integer token ids, got dtype float64"):
        task.solve(prompts)
