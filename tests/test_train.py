"""Tests for numgpt.train: learning at all, determinism, exact resume, what a
checkpoint holds, stopping safely (non-finite loss, Ctrl-C), data and
configuration errors, metrics, and synthetic-task training.

Every run is tiny (one layer, width 16, block 16, a few dozen iterations on a
few KB of text) so the whole file takes a few seconds.
"""

import dataclasses
import json
import math
import os
import signal
import sys

import numpy as np
import pytest

from numgpt.parallel import DataParallel, fork_available
from numgpt.checkpoint import load_checkpoint
from numgpt.data import DataError
from numgpt.model import GPT, GPTConfig
from numgpt.optim import AdamW, decay_mask_from_layout
from numgpt.checkpoint import CHECKPOINT_NAME, load_run
from numgpt.config import TrainConfig, load_config_file, resume_settings
from numgpt.rundir import METRICS_NAME, RunDirError
from numgpt.train import TrainingError, train

_SENTENCES = """\
The river ran high after three days of rain, and the ferry kept to its moorings.
Nobody in the village could remember a spring as wet as this one.
She wrote the numbers in a notebook, checked them twice, and then once more.
A small dog followed the postman from door to door, hoping for biscuits.
The old clock in the hall struck nine although it was barely past seven.
Bread, cheese and apples: the meal was plain, but no one complained.
When the wind turned north, the fishermen pulled their boats up the shingle.
He had read every book in the library except the ones on the top shelf.
Questions are cheap; good answers take time, patience and a quiet room.
By noon the fog had lifted and the hills stood sharp against the sky.
""".splitlines()


def english_text(n_sentences=120, seed=0):
    """A few KB of varied English: the sentences above in a seeded random order."""
    rng = np.random.default_rng(seed)
    order = rng.integers(0, len(_SENTENCES), n_sentences)
    paragraphs, lines = [], []
    for k, i in enumerate(order):
        lines.append(_SENTENCES[i])
        if k % 5 == 4:
            paragraphs.append(" ".join(lines))
            lines = []
    return "\n\n".join(paragraphs) + "\n"


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


def quiet(*args, **kwargs):
    pass


def tiny(textfile, out_dir, **overrides):
    settings = {"data": str(textfile), "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
                "batch_size": 4, "max_iters": 12, "eval_interval": 4, "eval_iters": 2, "log_interval": 1,
                "warmup_iters": 2, "lr_decay_iters": 12, "learning_rate": 3e-3, "min_lr": 3e-4,
                "sample_tokens": 0, "out_dir": str(out_dir), "seed": 0}
    settings.update(overrides)
    return TrainConfig(**settings)


# --- learning, determinism --------------------------------------------------------------------------

def test_overfits_one_batch():
    config = GPTConfig(vocab_size=27, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 27, (4, 16))
    y = rng.integers(0, 27, (4, 16))           # arbitrary targets: only memorisation can fit them
    opt = AdamW(model.flat_params, model.flat_grads, decay_mask_from_layout(model.layout), lr=1e-2,
                weight_decay=0.0)
    first = None
    for _ in range(120):
        loss, _ = model.loss_and_grads(x, y)
        first = loss if first is None else first
        opt.step()
    assert first > 3.0
    assert model.loss(x, y) < 0.1


def test_training_reduces_the_loss(textfile, tmp_path):
    result = train(tiny(textfile, tmp_path / "a", max_iters=40, lr_decay_iters=40, learning_rate=1e-2), log=quiet)
    assert len(result.losses) == 40 and result.iter_num == 40
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.3
    assert math.isfinite(result.best_val_loss)
    assert set(result.last_eval) == {"train", "val"}


def test_gradient_accumulation_reports_the_mean_loss(textfile, tmp_path):
    vocab = len(set(english_text()))
    result = train(tiny(textfile, tmp_path / "a", gradient_accumulation_steps=3, max_iters=2), log=quiet)
    # at initialisation the loss is about ln(V); a sum over micro-batches would be three times that
    assert abs(result.losses[0] - math.log(vocab)) < 0.3


def test_same_seed_same_losses(textfile, tmp_path):
    a = train(tiny(textfile, tmp_path / "a", dropout=0.1), log=quiet)
    b = train(tiny(textfile, tmp_path / "b", dropout=0.1), log=quiet)
    c = train(tiny(textfile, tmp_path / "c", dropout=0.1, seed=1), log=quiet)
    assert a.losses == b.losses
    np.testing.assert_array_equal(a.model.flat_params, b.model.flat_params)
    assert a.losses != c.losses


@pytest.mark.skipif(not fork_available(), reason="worker processes need Linux's fork")
def test_worker_processes_train_as_threads_do(textfile, tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.setenv("NUMGPT_THREADS", "2")
    monkeypatch.setenv("NUMGPT_PROCESSES", "0")
    logs = {"t": [], "p": []}
    threads = train(tiny(textfile, tmp_path / "t", dtype="float64", dropout=0.1), log=logs["t"].append)
    monkeypatch.setenv("NUMGPT_PROCESSES", "1")
    forked = train(tiny(textfile, tmp_path / "p", dtype="float64", dropout=0.1), log=logs["p"].append)
    assert "parallel: 2 workers (forked processes) per step" in logs["p"]
    assert "parallel: 2 workers (threads) per step" in logs["t"]
    assert not multiprocessing.active_children()             # train stops its workers when it ends
    # the same masks and batches; only the order of one sum (the tied wte's) differs
    np.testing.assert_allclose(forked.losses, threads.losses, rtol=1e-12)
    np.testing.assert_allclose(forked.model.flat_params, threads.model.flat_params, rtol=1e-9, atol=1e-12)


def test_no_more_workers_than_a_micro_batch_has_rows(textfile, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMGPT_THREADS", "16")
    lines = []
    one = train(tiny(textfile, tmp_path / "one", batch_size=3, max_iters=2, dtype="float64", dropout=0.1),
                log=lines.append)
    assert "note: 16 workers asked for (NUMGPT_THREADS), but a micro-batch has 3 rows: 3 workers" in lines
    assert any(line.startswith("parallel: 3 workers") for line in lines)
    monkeypatch.setenv("NUMGPT_THREADS", "1")
    alone = train(tiny(textfile, tmp_path / "alone", batch_size=3, max_iters=2, dtype="float64", dropout=0.1),
                  log=quiet)
    np.testing.assert_allclose(one.losses, alone.losses, rtol=1e-12)     # dropout included: split-invariant


# --- resume ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"dropout": 0.2}, {"gradient_accumulation_steps": 2, "dtype": "float64"}],
                         ids=["plain", "dropout", "accumulation-float64"])
def test_resume_reproduces_an_uninterrupted_run(textfile, tmp_path, extra):
    N = 12
    whole = train(tiny(textfile, tmp_path / "whole", max_iters=N, **extra), log=quiet)
    first = train(tiny(textfile, tmp_path / "split", max_iters=N // 2, **extra), log=quiet)
    assert first.iter_num == N // 2
    second = train(tiny(textfile, tmp_path / "split", max_iters=N, resume=True, **extra), log=quiet)
    assert second.iter_num == N
    assert len(first.losses) == len(second.losses) == N // 2
    assert first.losses + second.losses == whole.losses
    np.testing.assert_array_equal(second.model.flat_params, whole.model.flat_params)


def test_resume_without_checkpoint_is_a_clear_error(textfile, tmp_path):
    with pytest.raises(RunDirError, match="--resume: no checkpoint"):
        train(tiny(textfile, tmp_path / "nothing", resume=True), log=quiet)


def test_resume_settings_take_the_architecture_from_the_checkpoint(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=4, n_embd=8), log=quiet)
    saved = load_checkpoint(out / CHECKPOINT_NAME)[1]["train_config"]
    settings, notes = resume_settings(saved, {"max_iters": 8, "n_embd": 16, "out_dir": str(out)})
    assert notes == ["n_embd=8 comes from the checkpoint (not 16)"]
    cfg = TrainConfig(**settings).validate()
    assert cfg.resume and not cfg.overwrite and cfg.max_iters == 8 and cfg.n_embd == 8
    assert cfg.out_dir == str(out) and cfg.lr_decay_iters == saved["lr_decay_iters"]
    assert train(cfg, log=quiet).iter_num == 8
    notes = []
    again = TrainConfig.resumed(str(out), log=notes.append, max_iters=10, n_layer=3)
    assert notes == ["note: n_layer=1 comes from the checkpoint (not 3)"]
    assert again.max_iters == 10 and again.n_layer == 1 and again.resume and again.n_embd == 8
    with pytest.raises(ValueError, match="no checkpoint at"):
        TrainConfig.resumed(str(tmp_path / "absent"))


# --- checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_contents_and_load_run(textfile, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(textfile, out), log=quiet)
    path = out / CHECKPOINT_NAME
    assert result.checkpoint == str(path)
    # atomic writes leave no temporary files behind
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])
    arrays, meta = load_checkpoint(path)
    assert meta["kind"] == "numgpt-run"
    assert meta["iter_num"] == 12
    assert meta["optimizer_t"] == 12
    assert meta["dtype"] == "float32"
    assert meta["model_config"] == result.model.config.to_dict()
    assert meta["train_config"]["max_iters"] == 12 and meta["train_config"]["n_embd"] == 16
    assert meta["tokenizer"]["kind"] == "char"
    assert set(meta["tokenizer"]["chars"]) == set(english_text())
    assert meta["rng_state"]["bit_generator"] == "PCG64"
    assert meta["best_val_loss"] == pytest.approx(result.best_val_loss)
    for name, p in result.model.params.items():
        np.testing.assert_array_equal(arrays[f"params/{name}"], p)
    assert arrays["optim/m"].shape == arrays["optim/v"].shape == (result.model.num_params,)
    assert np.abs(arrays["optim/m"]).max() > 0 and (arrays["optim/v"] >= 0).all()

    model, tokenizer, meta2, _ = load_run(path)
    assert meta2 == meta
    assert model.dtype == np.float32
    np.testing.assert_array_equal(model.flat_params, result.model.flat_params)
    assert tokenizer == result.tokenizer
    assert load_run(path, dtype=np.float64)[0].dtype == np.float64


def test_failed_checkpoint_write_keeps_the_previous_one(textfile, tmp_path, monkeypatch):
    # The disk fills up while the checkpoint of iteration 4 is being written: the one of
    # iteration 0 must survive byte for byte, and no temporary file may be left behind.
    out = tmp_path / "run"
    path = out / CHECKPOINT_NAME
    state = {"fail": False, "before": None}
    real_write_array = np.lib.format.write_array

    def write_array(*args, **kwargs):
        if state["fail"]:
            raise OSError(28, "No space left on device")
        return real_write_array(*args, **kwargs)

    def on_call(k, result):
        if k == 2:
            state["before"] = path.read_bytes()
            state["fail"] = True
        return result

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    _patch_loss_and_grads(monkeypatch, on_call)
    with pytest.raises(TrainingError) as err:
        train(tiny(textfile, out, eval_interval=4), log=quiet)
    message = str(err.value)
    assert message.startswith(f"could not save the checkpoint at iteration 4: the disk is full while writing "
                              f"{path}: free some space and try again, or choose another path; the previous "
                              f"checkpoint (iteration 0) is intact.")
    assert f"numgpt train --resume --out_dir {out}" in message
    assert path.read_bytes() == state["before"]
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])
    monkeypatch.undo()
    assert load_run(path)[2]["iter_num"] == 0


def test_resume_with_another_dtype_uses_it(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=4), log=quiet)
    result = train(tiny(textfile, out, max_iters=6, resume=True, dtype="float64"), log=quiet)
    assert result.model.dtype == np.float64
    assert load_run(out / CHECKPOINT_NAME)[0].dtype == np.float64


# --- stopping safely ---------------------------------------------------------------------------------

def _patch_loss_and_grads(monkeypatch, on_call):
    """Wrap DataParallel.loss_and_grads (what the trainer calls); ``on_call(k, result)`` sees the k-th call (0-based) and returns the result."""
    original = DataParallel.loss_and_grads
    calls = {"n": 0}

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        k = calls["n"]
        calls["n"] += 1
        return on_call(k, result)

    monkeypatch.setattr(DataParallel, "loss_and_grads", wrapped)
    return calls


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    path = out / CHECKPOINT_NAME
    snapshot = {}

    def on_call(k, result):
        if k == 6:                       # iteration 6; the eval at iteration 4 has saved a checkpoint
            snapshot["bytes"] = path.read_bytes()
            return float("nan"), result[1]
        return result

    _patch_loss_and_grads(monkeypatch, on_call)
    with pytest.raises(TrainingError, match="iteration 6") as info:
        train(tiny(textfile, out, eval_interval=4), log=quiet)
    assert "nan" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == snapshot["bytes"]
    model, _, meta, _ = load_run(path)
    assert meta["iter_num"] <= 6
    assert np.isfinite(model.flat_params).all()
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])


def test_non_finite_gradient_stops_before_the_update(textfile, tmp_path, monkeypatch):
    def on_call(k, result):
        if k == 2:
            result[1]["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return result

    _patch_loss_and_grads(monkeypatch, on_call)
    with pytest.raises(TrainingError, match="gradient norm.*iteration 2"):
        train(tiny(textfile, tmp_path / "run", grad_clip=1.0), log=quiet)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_clipping_reaches_the_optimizers_as_their_grad_scale(textfile, tmp_path, monkeypatch, optimizer):
    # The trainer clips by handing clip_scale(norm, grad_clip) to each optimizer's step rather than
    # scaling the buffer; the norms logged are before clipping.
    from numgpt.muon import Muon
    from numgpt.optim import clip_scale
    seen = {"AdamW": [], "Muon": []}
    for cls in (AdamW, Muon):
        def spy(self, lr=None, grad_scale=1.0, _step=cls.step, _name=cls.__name__):
            seen[_name].append(grad_scale)
            return _step(self, lr, grad_scale=grad_scale)
        monkeypatch.setattr(cls, "step", spy)
    out = tmp_path / "run"
    train(tiny(textfile, out, grad_clip=0.05, optimizer=optimizer), log=quiet)
    norms = [json.loads(line)["grad_norm"] for line in (out / METRICS_NAME).read_text(encoding="utf-8").splitlines()
             if '"loss"' in line]
    assert len(norms) == 12 and min(norms) > 0.05                 # every step clipped
    assert seen["AdamW"] == pytest.approx([clip_scale(n, 0.05) for n in norms], rel=1e-12)
    assert seen["Muon"] == (seen["AdamW"] if optimizer == "muon" else [])
    assert all(s < 1 for s in seen["AdamW"])
    seen["AdamW"].clear()
    train(tiny(textfile, tmp_path / "off", grad_clip=0.0, optimizer=optimizer), log=quiet)
    assert seen["AdamW"] == [1.0] * 12                            # clipping off: the plain step


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # overflow on the way to the nan
def test_huge_learning_rate_stops_with_training_error(textfile, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite .* at iteration \d+") as info:
        train(tiny(textfile, out, learning_rate=1e6, min_lr=1e5, grad_clip=0.0, max_iters=30,
                   lr_decay_iters=30), log=quiet)
    assert "learning_rate" in str(info.value)
    model, _, meta, _ = load_run(out / CHECKPOINT_NAME)       # the iteration-0 checkpoint survives
    assert meta["iter_num"] == 0 and np.isfinite(model.flat_params).all()


def _send_sigint_at(monkeypatch, calls_to_interrupt):
    def on_call(k, result):
        if k in calls_to_interrupt:
            # Guard: only raise a real SIGINT while train's handler is installed; otherwise it
            # would interrupt the whole test session.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            signal.raise_signal(signal.SIGINT)
        return result
    return _patch_loss_and_grads(monkeypatch, on_call)


def test_ctrl_c_saves_and_resume_continues(textfile, tmp_path, monkeypatch):
    whole = train(tiny(textfile, tmp_path / "whole"), log=quiet)
    handler_before = signal.getsignal(signal.SIGINT)
    _send_sigint_at(monkeypatch, {4})          # during iteration 4 (not an eval iteration after it)
    messages = []
    stopped = train(tiny(textfile, tmp_path / "run"), log=lambda *a: messages.append(" ".join(map(str, a))))
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert stopped.interrupted
    assert stopped.iter_num == 5                # the step in progress is finished
    assert len(stopped.losses) == 5
    assert any("interrupted" in m for m in messages)
    _, meta = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert meta["iter_num"] == 5
    monkeypatch.undo()
    rest = train(tiny(textfile, tmp_path / "run", resume=True), log=quiet)
    assert not rest.interrupted and rest.iter_num == 12
    assert stopped.losses + rest.losses == whole.losses


# --- data errors --------------------------------------------------------------------------------------

def test_data_shorter_than_a_block(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("too short", encoding="utf-8")
    with pytest.raises(DataError, match="block_size"):
        train(tiny(path, tmp_path / "out"), log=quiet)


def test_data_too_short_for_a_validation_split(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 2, encoding="utf-8")   # 90 chars
    with pytest.raises(DataError, match="block_size"):
        train(tiny(path, tmp_path / "out"), log=quiet)


def test_empty_data_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        train(tiny(path, tmp_path / "out"), log=quiet)


def test_non_utf8_data_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(english_text().encode("utf-8")[:500] + "caf\u00e9".encode("latin-1") + b" more text" * 100)
    with pytest.raises(DataError, match="UTF-8.*0xe9"):
        train(tiny(path, tmp_path / "out"), log=quiet)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        train(tiny(tmp_path / "nope.txt", tmp_path / "out"), log=quiet)


# --- metrics, logging, samples -------------------------------------------------------------------------

def test_metrics_jsonl(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, log_interval=3), log=quiet)
    lines = (out / METRICS_NAME).read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    train_lines = [e for e in entries if "loss" in e]
    eval_lines = [e for e in entries if "val_loss" in e]
    assert [e["iter"] for e in train_lines] == [3, 6, 9, 12]
    assert [e["iter"] for e in eval_lines] == [0, 4, 8, 12]
    for e in train_lines:
        assert {"loss", "lr", "ms_per_iter", "tokens_per_s", "grad_norm", "train_time"} <= set(e)
        assert math.isfinite(e["loss"]) and e["lr"] > 0
    for e in eval_lines:
        assert math.isfinite(e["train_loss"]) and math.isfinite(e["val_loss"])
    # the seconds spent in training steps so far (evaluations excluded): from 0, never falling
    times = [e["train_time"] for e in entries]
    assert times[0] == 0.0 and all(a <= b for a, b in zip(times, times[1:])) and times[-1] > 0
    # resuming appends to the same file
    train(tiny(textfile, out, log_interval=3, max_iters=15, resume=True), log=quiet)
    more = [json.loads(line) for line in (out / METRICS_NAME).read_text(encoding="utf-8").splitlines()]
    assert more[:len(entries)] == entries and len(more) > len(entries)


def test_progress_lines_and_final_sample(textfile, tmp_path):
    messages = []
    result = train(tiny(textfile, tmp_path / "run", sample_tokens=30, log_interval=6),
                   log=lambda *a: messages.append(" ".join(map(str, a))))
    text = "\n".join(messages)
    assert "iter      6" in text and "iter     12" in text
    assert "eval      0" in text and "val" in text
    assert "number of parameters" in text
    assert len(result.samples) == 1
    sample = result.samples[0]
    assert len(sample) == 31 and set(sample) <= set(english_text())


def test_eval_only_trains_nothing(textfile, tmp_path):
    out = tmp_path / "run"
    first = train(tiny(textfile, out, max_iters=4), log=quiet)
    before = (out / CHECKPOINT_NAME).read_bytes()
    result = train(tiny(textfile, out, max_iters=4, eval_only=True, resume=True), log=quiet)
    assert result.losses == []
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert result.last_eval["val"] == pytest.approx(first.last_eval["val"])


# --- synthetic tasks ---------------------------------------------------------------------------------

def test_task_training_reports_accuracy(tmp_path):
    cfg = TrainConfig(task="sort", n_layer=1, n_head=2, n_embd=16, batch_size=16, max_iters=8, eval_interval=4,
                      eval_iters=2, log_interval=4, warmup_iters=2, lr_decay_iters=8, sample_tokens=50,
                      out_dir=str(tmp_path / "sort"), seed=0)
    result = train(cfg, log=quiet)
    assert result.iter_num == 8 and len(result.losses) == 8
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
    assert result.tokenizer is None and result.samples is None
    assert result.model.config.block_size == 11 and result.model.config.vocab_size == 3
    entries = [json.loads(line) for line in (tmp_path / "sort" / METRICS_NAME).read_text().splitlines()]
    assert [e["iter"] for e in entries if "accuracy" in e] == [0, 4, 8]
    _, meta = load_checkpoint(tmp_path / "sort" / CHECKPOINT_NAME)
    assert meta["task"] == {"name": "sort"} and meta["tokenizer"] is None
    # resuming a task run works too
    resumed = train(dataclasses.replace(cfg, max_iters=10, resume=True), log=quiet)
    assert resumed.iter_num == 10


# --- configuration ---------------------------------------------------------------------------------------

def test_load_config_file_json(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"n_layer": 2, "learning_rate": 5e-4, "data": "x.txt"}), encoding="utf-8")
    assert load_config_file(path) == {"n_layer": 2, "learning_rate": 5e-4, "data": "x.txt"}
    cfg = TrainConfig(**load_config_file(str(path))).validate()
    assert cfg.n_layer == 2 and cfg.learning_rate == 5e-4


def test_load_config_file_toml(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('n_layer = 3\ndropout = 0.1\nout_dir = "runs/a"\nbias = false\n', encoding="utf-8")
    if sys.version_info >= (3, 11):
        assert load_config_file(path) == {"n_layer": 3, "dropout": 0.1, "out_dir": "runs/a", "bias": False}
    else:  # no tomllib: a clear message instead
        with pytest.raises(ValueError, match="TOML"):
            load_config_file(path)


@pytest.mark.parametrize("name, content, match", [
    ("cfg.json", '{"n_layers": 2}', "unknown setting.*n_layers"),
    ("cfg.json", '{"n_layer": 2,', "not valid JSON"),
    ("cfg.json", "[1, 2]", "table/object"),
    ("cfg.toml", "learning_rat = 1e-3\n", "unknown setting.*learning_rat"),
    ("cfg.toml", "n_layer = = 2\n", "TOML"),
    # A quoted "false" is a non-empty string, which Python reads as true: it would turn the switch on.
    ("cfg.json", '{"overwrite": "false"}', "overwrite must be true or false, got 'false'"),
    ("cfg.toml", 'resume = "false"\n', "resume must be true or false, got 'false'"),
    ("cfg.json", '{"eval_only": 0}', "eval_only must be true or false, got 0"),
    ("cfg.json", '{"qk_norm": "yes"}', r"qk_norm must be true, false or unset \(the preset's\), got 'yes'"),
    ("cfg.json", '{"vocab_size": "abc"}', "vocab_size must be an integer, got 'abc'"),
    ("cfg.json", '{"n_layer": 2.0}', "n_layer must be an integer, got 2.0"),
    ("cfg.json", '{"learning_rate": "1e-3"}', "learning_rate must be a number, got '1e-3'"),
    ("cfg.json", '{"out_dir": null}', "out_dir must be a string, got None"),
])
def test_load_config_file_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_config_file(path)


def test_load_config_file_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_config_file(tmp_path / "absent.json")


@pytest.mark.parametrize("overrides, match", [
    ({"n_layer": 0}, "n_layer"),
    ({"n_head": -1}, "n_head"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"max_iters": -1}, "max_iters"),
    ({"eval_interval": 0}, "eval_interval"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"min_lr": 1e-2, "learning_rate": 1e-3}, "min_lr"),
    ({"beta1": 1.0}, "beta1"),
    ({"beta2": -0.5}, "beta2"),
    ({"dropout": 1.0}, "dropout"),
    ({"n_head": 3, "n_embd": 16}, "divisible"),
    ({"tokenizer": "word"}, "tokenizer"),
    ({"tokenizer": "bpe", "vocab_size": 100}, "vocab_size"),
    ({"dtype": "float16"}, "dtype"),
    ({"task": "reverse"}, "task"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"seed": True}, "seed"),
    ({"overwrite": "false"}, "overwrite must be true or false"),
    ({"vocab_size": 0}, "vocab_size must be >= 1"),
    ({"vocab_size": "abc", "tokenizer": "bpe"}, "vocab_size must be an integer"),
    # Linux hands over a file name of non-UTF-8 bytes as lone surrogates, which no checkpoint can record.
    ({"out_dir": "out\udcfe"}, r"out_dir 'out\\udcfe' is not valid UTF-8: checkpoints record the run's paths"),
    ({"data": "corpus\udcff.txt"}, "data .* is not valid UTF-8"),
])
def test_train_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**overrides).validate()


def test_train_validates_before_touching_anything(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="n_layer"):
        train(TrainConfig(n_layer=0, out_dir=str(out)), log=quiet)
    assert not out.exists()
