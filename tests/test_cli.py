"""Tests for numgpt.cli: an end-to-end train -> checkpoint -> sample run, the
nanoGPT flag names, precedence of flags over a --config file, resuming, and
clear one-line errors (never a traceback) for bad flags, data and checkpoints."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from numgpt.checkpoint import load_checkpoint
from numgpt.cli import main
from numgpt.parallel import DataParallel

_SENTENCES = [
    "The lighthouse keeper climbed the stairs at dusk and lit the lamp.",
    "Four geese crossed the road in single file while the traffic waited.",
    "A letter arrived with no stamp, no address and a faint smell of pine.",
    "They argued about the map for an hour and then took the wrong turning.",
    "Snow fell quietly on the orchard, covering the last of the apples.",
    "Every Tuesday the baker saved one loaf for the schoolteacher.",
    "The experiment failed twice before anyone thought to check the fuse.",
    "Her grandmother kept buttons in a tin that once held peppermints.",
]

TINY_FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
              "--eval_interval", "10", "--eval_iters", "2", "--warmup_iters", "2", "--lr_decay_iters", "20",
              "--log_interval", "5", "--sample_tokens", "0", "--seed", "0"]


@pytest.fixture
def textfile(tmp_path):
    rng = np.random.default_rng(0)
    lines = [_SENTENCES[i] for i in rng.integers(0, len(_SENTENCES), 100)]
    path = tmp_path / "input.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_traceback_env(monkeypatch):
    monkeypatch.delenv("NUMGPT_TRACEBACK", raising=False)


def train_args(textfile, out_dir, *extra):
    return ["train", "--data", str(textfile), "--out_dir", str(out_dir), *TINY_FLAGS, *extra]


def assert_clean_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


# --- end to end ---------------------------------------------------------------------------------

def test_train_checkpoint_sample_end_to_end(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "20")) == 0
    stdout = capsys.readouterr().out
    assert "done: 20 iterations" in stdout
    assert (out / "ckpt.npz").is_file() and (out / "metrics.jsonl").is_file()
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["iter_num"] == 20
    assert meta["model_config"]["n_embd"] == 16 and meta["model_config"]["n_layer"] == 1
    for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)

    assert main(["sample", "--out_dir", str(out), "--max_new_tokens", "50", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert len(text.rstrip("\n")) >= 50
    vocabulary = set(textfile.read_text(encoding="utf-8"))
    assert set(text) <= vocabulary
    # seeded: the same text again
    assert main(["sample", "--out_dir", str(out), "--max_new_tokens", "50", "--seed", "1"]) == 0
    assert capsys.readouterr().out == text
    # a prompt, several samples, a stop string
    assert main(["sample", "--out_dir", str(out), "--prompt", "The ", "--num_samples", "2",
                 "--max_new_tokens", "20", "--seed", "2", "--top_k", "5", "--temperature", "0.7"]) == 0
    text = capsys.readouterr().out
    assert text.count("--- sample") == 2 and text.count("The ") >= 2


def test_train_help_lists_every_nanogpt_flag_with_its_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMGPT_TRACEBACK"}
    proc = subprocess.run([sys.executable, "-m", "numgpt", "train", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())          # undo argparse's line wrapping
    defaults = {"--n_layer": "4", "--n_head": "4", "--n_embd": "128", "--block_size": "64", "--batch_size": "12",
                "--max_iters": "2000", "--learning_rate": "0.001", "--min_lr": "0.0001", "--warmup_iters": "100",
                "--lr_decay_iters": "2000", "--weight_decay": "0.1", "--beta1": "0.9", "--beta2": "0.99",
                "--grad_clip": "1.0", "--dropout": "0.0", "--eval_interval": "250", "--eval_iters": "20",
                "--seed": "1337", "--out_dir": "'out'", "--dtype": "'float32'", "--log_interval": "10",
                "--resume": "False"}
    for flag in list(defaults) + ["--config"]:
        assert f"[{flag}" in text, f"{flag} missing from the usage line"
    options = text[text.index("options:"):]
    for flag, default in defaults.items():
        start = options.index(f" {flag} ")
        described = options[start:start + 250]
        assert f"(default: {default})" in described, (flag, described)


# --- bad flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["train", "--n_layers", "2"], "unrecognized arguments"),
    (["train", "--max_iters", "abc"], "expected an integer"),
    (["train", "--learning_rate", "fast"], "expected a number"),
    (["train", "--dtype", "float16"], "invalid choice"),
    (["sample", "--max_new_tokens", "0"], "positive integer"),
    (["sample", "--temperature", "-1"], ">= 0"),
    (["frobnicate"], "invalid choice"),
    ([], "COMMAND"),
])
def test_argparse_rejects_bad_flags(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert_clean_error(capsys, fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--n_head", "3", "--n_embd", "128"], "divisible"),
    (["--dropout", "1.5"], "dropout"),
    (["--min_lr", "0.1", "--learning_rate", "0.01"], "min_lr"),
    (["--beta2", "1.0"], "beta2"),
    (["--batch_size", "0"], "batch_size"),
])
def test_bad_values_give_one_line_errors(textfile, tmp_path, extra, fragment, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2", *extra)) == 2      # a usage error
    err = assert_clean_error(capsys, "numgpt train: error:", fragment)
    assert len(err.strip().splitlines()) == 1
    assert not (out / "ckpt.npz").exists()


# --- config file and resume -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_flags_override_the_config_file(textfile, tmp_path, suffix, capsys):
    settings = {"data": str(textfile), "n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 16, "batch_size": 4,
                "max_iters": 5, "eval_interval": 5, "eval_iters": 2, "warmup_iters": 1, "lr_decay_iters": 10,
                "sample_tokens": 0, "out_dir": str(tmp_path / "from_file")}
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings), encoding="utf-8")
    else:
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")
    out = tmp_path / "from_flag"
    argv = ["train", "--config", str(path), "--max_iters", "7", "--out_dir", str(out)]
    if suffix == ".toml" and sys.version_info < (3, 11):      # no tomllib: a clear error instead
        assert main(argv) == 1
        assert_clean_error(capsys, "TOML")
        return
    assert main(argv) == 0
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["iter_num"] == 7                                   # the flag wins
    assert meta["model_config"]["n_embd"] == 8                     # the file is used where no flag is given
    assert meta["train_config"]["lr_decay_iters"] == 10
    assert not (tmp_path / "from_file").exists()


def test_config_file_with_unknown_key(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text('{"n_layers": 2}', encoding="utf-8")
    assert main(["train", "--config", str(path)]) == 1
    assert_clean_error(capsys, "n_layers")


def test_resume_continues(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "10", "--n_embd", "8")) == 0
    before = (out / "metrics.jsonl").read_text(encoding="utf-8")
    # only out_dir and the new max_iters: everything else comes from the checkpoint
    assert main(["train", "--resume", "--out_dir", str(out), "--max_iters", "20"]) == 0
    stdout = capsys.readouterr().out
    assert "resumed from" in stdout and "at iteration 10" in stdout
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["iter_num"] == 20
    assert meta["model_config"]["n_embd"] == 8
    after = (out / "metrics.jsonl").read_text(encoding="utf-8")
    assert after.startswith(before) and len(after) > len(before)
    # max_iters counts the whole run: a smaller one has nothing left to do, and says so
    assert main(["train", "--resume", "--out_dir", str(out), "--max_iters", "5"]) == 0
    assert ("note: max_iters counts all the run's iterations, and the checkpoint is at 20 already: nothing to "
            "train (a larger --max_iters continues it)") in capsys.readouterr().out
    assert load_checkpoint(out / "ckpt.npz")[1]["iter_num"] == 20


def test_a_quoted_false_in_a_config_file_does_not_replace_a_trained_model(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2")) == 0
    before = (out / "ckpt.npz").read_bytes()
    path = tmp_path / "cfg.json"
    path.write_text('{"overwrite": "false"}', encoding="utf-8")
    capsys.readouterr()
    assert main(train_args(textfile, out, "--max_iters", "2", "--config", str(path))) == 1
    assert_clean_error(capsys, "overwrite must be true or false, got 'false'")
    assert (out / "ckpt.npz").read_bytes() == before


def test_a_bad_setting_for_a_resumed_run_is_a_usage_error(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2")) == 0
    before = (out / "ckpt.npz").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out_dir", str(out), "--learning_rate", "-1"]) == 2    # as a fresh run
    assert_clean_error(capsys, "numgpt train: error: learning_rate must be a finite number >= 0, got -1.0")
    assert (out / "ckpt.npz").read_bytes() == before


def test_eval_only_says_what_it_evaluated_and_that_nothing_was_saved(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--eval_only")) == 0
    stdout = capsys.readouterr().out
    assert "evaluating only (eval_only)" in stdout and "training:" not in stdout
    assert re.search(r"done: evaluated a new model at iteration 0: train loss \d\.\d{4}, val loss \d\.\d{4} "
                     r"\(eval_only: nothing saved\)$", stdout.rstrip())
    assert not (out / "ckpt.npz").exists()
    assert main(train_args(textfile, out, "--max_iters", "2")) == 0       # a fresh run: nothing was in the way
    capsys.readouterr()
    assert main(["train", "--resume", "--eval_only", "--out_dir", str(out)]) == 0
    assert f"done: evaluated the checkpoint {out / 'ckpt.npz'} at iteration 2:" in capsys.readouterr().out


def test_out_of_memory_is_one_line_and_a_huge_model_is_refused_before_it_is_built(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--n_layer", "100000000")) == 1
    assert_clean_error(capsys, "numgpt train: error: a model of n_layer 100000000 x n_embd 16",
                       "more than this machine's", "make n_layer, n_embd, block_size or the vocabulary smaller")
    assert main(train_args(textfile, out, "--batch_size", "1000000000000")) == 1      # 100 TB of ids alone
    assert_clean_error(capsys, "numgpt train: error: not enough memory (Unable to allocate",
                       "try a smaller --batch_size, --block_size or model")


def test_resume_from_elsewhere_says_the_recorded_data_path_is_relative(textfile, tmp_path, monkeypatch, capsys):
    work = textfile.parent
    monkeypatch.chdir(work)
    assert main(train_args(textfile.name, "run", "--max_iters", "2")) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--resume", "--out_dir", str(work / "run"), "--max_iters", "4"]) == 1
    assert_clean_error(capsys, f"data file {textfile.name} does not exist: the run in {work / 'run'} recorded its "
                               f"--data relative to the directory it was started in, not {elsewhere}; resume from "
                               f"that directory, or give --data")
    assert main(["train", "--resume", "--out_dir", str(work / "run"), "--max_iters", "4", "--data", str(textfile)]) == 0


def test_resume_without_checkpoint(tmp_path, capsys):
    assert main(["train", "--resume", "--out_dir", str(tmp_path / "empty")]) == 1
    assert_clean_error(capsys, "no checkpoint")


def test_no_bias_flag(textfile, tmp_path):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2", "--no-bias")) == 0
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["model_config"]["bias"] is False
    assert not any(name.endswith(".bias") for name in arrays)


# --- errors at run time ----------------------------------------------------------------------------------

def test_sample_prompt_outside_the_vocabulary(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2")) == 0
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(out), "--prompt", "Zebra \u2603", "--max_new_tokens", "5"]) == 1
    assert_clean_error(capsys, "numgpt sample: error:", "not in the vocabulary", "'\u2603'")


def test_sample_bad_top_p(textfile, tmp_path, capsys):
    # a value out of the flag's range is a usage error (exit code 2), found before the checkpoint is read
    with pytest.raises(SystemExit) as info:
        main(["sample", "--out_dir", str(tmp_path / "out"), "--top_p", "1.5", "--max_new_tokens", "5"])
    assert info.value.code == 2
    assert_clean_error(capsys, "--top_p must be in (0, 1], got 1.5")


def test_sample_without_checkpoint(tmp_path, capsys):
    assert main(["sample", "--out_dir", str(tmp_path / "nothing"), "--max_new_tokens", "5"]) == 1
    assert_clean_error(capsys, "no checkpoint", "numgpt train")


def test_sample_from_a_task_checkpoint(tmp_path, capsys):
    out = tmp_path / "sort"
    assert main(["train", "--task", "sort", "--out_dir", str(out), "--max_iters", "2", "--n_layer", "1",
                 "--n_head", "2", "--n_embd", "8", "--batch_size", "4", "--eval_iters", "1",
                 "--eval_interval", "2"]) == 0
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(out), "--max_new_tokens", "5"]) == 1
    assert_clean_error(capsys, "synthetic-task checkpoint")


def test_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.npz").write_bytes(b"not a zip file")
    assert main(["sample", "--out_dir", str(out)]) == 1
    assert_clean_error(capsys, "ckpt.npz")


@pytest.mark.parametrize("content, fragment", [(b"", "empty"), (b"\xff\xfe" + b"abc" * 500, "UTF-8"),
                                               (b"short", "block_size")])
def test_unusable_data(tmp_path, content, fragment, capsys):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    assert main(train_args(path, tmp_path / "out", "--max_iters", "2")) == 1
    assert_clean_error(capsys, "numgpt train: error:", fragment)


def test_shakespeare_offline_points_to_data_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NUMGPT_CACHE", str(tmp_path / "cache"))      # no cached copy
    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable (simulated)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["train", "--data", "shakespeare", "--out_dir", str(tmp_path / "out"), "--max_iters", "1"]) == 1
    assert attempts, "the download was not attempted through urllib.request.urlopen"
    assert_clean_error(capsys, "--data PATH", "shakespeare")
    assert not list((tmp_path / "cache").glob("*.part"))


def test_non_finite_loss_is_reported_without_traceback(textfile, tmp_path, monkeypatch, capsys):
    original = DataParallel.loss_and_grads

    def nan_loss(self, *args, **kwargs):
        _, grads = original(self, *args, **kwargs)
        return float("nan"), grads

    monkeypatch.setattr(DataParallel, "loss_and_grads", nan_loss)
    assert main(train_args(textfile, tmp_path / "out", "--max_iters", "5")) == 1
    assert_clean_error(capsys, "non-finite loss", "iteration 0")


def test_ctrl_c_saves_and_prints_how_to_resume(textfile, tmp_path, monkeypatch, capsys):
    original = DataParallel.loss_and_grads
    calls = {"n": 0}

    def interrupt_at_3(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(DataParallel, "loss_and_grads", interrupt_at_3)
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "20")) == 130
    stdout = capsys.readouterr().out
    assert "--resume" in stdout and str(out) in stdout
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["iter_num"] == 3
    monkeypatch.undo()
    assert main(["train", "--resume", "--out_dir", str(out)]) == 0
    _, meta = load_checkpoint(out / "ckpt.npz")
    assert meta["iter_num"] == 20


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--method", "adjoint"]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "checks passed" in out and "FAIL" not in out


def test_unusable_out_dir_is_a_clear_error(textfile, tmp_path, capsys):
    # out_dir below a regular file cannot be created: one line naming the path, no traceback
    bad = textfile / "out"
    assert main(train_args(textfile, bad, "--max_iters", "1")) == 1
    assert_clean_error(capsys, "numgpt train: error:", str(bad))


# --- sample from a synthetic-task checkpoint (issue 12, item 12) ------------------------------------------

TINY_TASK_FLAGS = ["--max_iters", "2", "--n_layer", "1", "--n_head", "2", "--n_embd", "8", "--batch_size", "4",
                   "--eval_iters", "1", "--eval_interval", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    """A barely trained sort and addition checkpoint: {task name: out_dir}."""
    runs = {}
    for name in ("sort", "add"):
        out = tmp_path_factory.mktemp(f"task-{name}")
        assert main(["train", "--task", name, "--out_dir", str(out), *TINY_TASK_FLAGS]) == 0
        runs[name] = out
    return runs


def greedy_answer(out_dir, prompt):
    from numgpt.checkpoint import load_for_inference
    from numgpt.sample import generate

    model, _, task = load_for_inference(out_dir)
    return generate(model, np.asarray([prompt], dtype=np.int64), task.answer_length, temperature=0)[0, len(prompt):]


@pytest.mark.parametrize("prompt", ["2 0 1 1 0 2", "201102", "2,0,1,1,0,2"])
def test_sample_answers_a_sort_problem(task_runs, prompt, capsys):
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(task_runs["sort"]), "--prompt", prompt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    shown = re.fullmatch(r"sort 2 0 1 1 0 2 -> ([0-2](?: [0-2]){5})", lines[0])
    assert shown, lines[0]
    model_answer = greedy_answer(task_runs["sort"], [2, 0, 1, 1, 0, 2]).tolist()
    assert shown.group(1) == " ".join(map(str, model_answer))          # what the model emitted, greedily
    assert lines[1] == ("correct" if model_answer == [0, 0, 1, 1, 2, 2] else "wrong: the answer is 0 0 1 1 2 2")


@pytest.mark.parametrize("prompt", ["37+85", "37 + 85 =", "3 7 8 5", "3785"])
def test_sample_answers_an_addition_problem(task_runs, prompt, capsys):
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(task_runs["add"]), "--prompt", prompt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    shown = re.fullmatch(r"37 \+ 85 = ([0-9]+) \(answer tokens, reversed: ([0-9]{3})\)", lines[0])
    assert shown, lines[0]
    emitted = greedy_answer(task_runs["add"], [3, 7, 8, 5]).tolist()
    assert shown.group(2) == "".join(map(str, emitted))                 # the model's tokens, least significant first
    assert int(shown.group(1)) == int(shown.group(2)[::-1])             # the number, in normal digit order
    assert lines[1] == ("correct" if shown.group(1) == "122" else "wrong: the answer is 122")


def test_sample_says_correct_when_the_model_is_right(task_runs, monkeypatch, capsys):
    # an oracle in place of greedy decoding: the printed verdict follows the answer
    import numgpt.sample
    from numgpt.tasks import SortTask

    def oracle(model, idx, max_new_tokens, **kwargs):
        assert kwargs.get("temperature") == 0 and max_new_tokens == 6
        return np.concatenate([idx, SortTask().solve(idx)], axis=1)

    monkeypatch.setattr(numgpt.sample, "generate", oracle)
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(task_runs["sort"]), "--prompt", "1 2 0 2 1 0"]) == 0
    assert capsys.readouterr().out == "sort 1 2 0 2 1 0 -> 0 0 1 1 2 2\ncorrect\n"


@pytest.mark.parametrize("name, prompt, fragments", [
    ("sort", "2 0 1", ["a sort problem is 6 digits from 0 to 2", "'2 0 1 1 0 2'", "got '2 0 1' (3 numbers)"]),
    ("sort", "2 0 1 1 0 7", ["7 is not from 0 to 2"]),
    ("add", "123+4", ["'A+B' with A and B from 0 to 99", "123 has more than 2 digit(s)"]),
    ("add", "12*34", ["an addition problem is", "got '12*34'"]),
    ("sort", "", ["synthetic-task checkpoint", "--prompt", "'2 0 1 1 0 2'"]),
])
def test_sample_rejects_a_malformed_task_problem(task_runs, name, prompt, fragments, capsys):
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(task_runs[name]), "--prompt", prompt]) == 1
    err = assert_clean_error(capsys, "numgpt sample: error:", *fragments)
    assert len(err.strip().splitlines()) == 1
