"""Nothing lost, nothing mixed up: the run directory, signals and failing writes.

Each test pins one promise of numgpt.train and numgpt.rundir:

* a fresh run never replaces a trained model unless asked to (--overwrite),
  and starts its own metrics log; a resumed run cuts the log back to the
  checkpoint, so no iteration is logged twice;
* any number of SIGINT/SIGTERM signals, even during a checkpoint write, end
  the run at a step boundary with a complete checkpoint that the metrics log
  does not run ahead of (tested in-process and on a real `numgpt train`
  process with signals 20 ms apart);
* a checkpoint or log that cannot be written (a full disk) keeps the previous
  checkpoint intact, leaves no temporary file and says so in one sentence;
* the best-validation model outlives a later, worse checkpoint (the end of a
  run, a signal) as best.npz, removed once a better state reaches ckpt.npz;
  ``numgpt sample --best`` loads it;
* one trainer per directory, and a lock left by a killed trainer is taken
  over with a note;
* an unusable --out_dir is reported before any data is loaded.
"""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numgpt.checkpoint import (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, load_checkpoint, load_for_inference, load_run,
                              save_checkpoint)
from numgpt.cli import main
from numgpt.config import TrainConfig
from numgpt.parallel import DataParallel, WorkerProcessDied
from numgpt.rundir import LOCK_NAME, METRICS_NAME, RunDirError, RunDirectory
from numgpt.train import TrainingError, train

from test_train import english_text, quiet, tiny

train_module = importlib.import_module("numgpt.train")     # the module (numgpt.train is also the function)
checkpoint_module = importlib.import_module("numgpt.checkpoint")


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


def metrics_of(out):
    return [json.loads(line) for line in (out / METRICS_NAME).read_text(encoding="utf-8").splitlines()]


def without_timing(entries):
    return [{k: v for k, v in e.items() if k not in ("ms_per_iter", "tokens_per_s", "train_time")} for e in entries]


def checkpoint_iter(out):
    return load_checkpoint(out / CHECKPOINT_NAME)[1]["iter_num"]


# --- 1. a trained model is never replaced silently ----------------------------------------------------

def test_fresh_run_into_a_trained_directory_is_refused(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(textfile, out), log=quiet)
    before = (out / CHECKPOINT_NAME).read_bytes()
    log_before = (out / METRICS_NAME).read_bytes()
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(RunDirError) as err:
        train(tiny(textfile, out, max_iters=5), log=quiet)
    message = str(err.value)
    assert "already holds a trained model" in message and "--resume" in message and "--overwrite" in message
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert (out / METRICS_NAME).read_bytes() == log_before
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])      # the lock is gone too


def test_the_cli_refuses_too_and_names_resume(textfile, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(textfile), "--n_layer", "1", "--n_embd", "16", "--block_size", "16",
            "--eval_iters", "1", "--sample_tokens", "0", "--out_dir", str(out)]
    assert main(args + ["--max_iters", "4"]) == 0
    capsys.readouterr()
    assert main(args + ["--max_iters", "2"]) == 1
    err = capsys.readouterr().err
    assert "already holds a trained model" in err and "--resume" in err and "Traceback" not in err
    assert checkpoint_iter(out) == 4
    assert main(args + ["--max_iters", "2", "--overwrite"]) == 0
    assert checkpoint_iter(out) == 2


def test_overwrite_starts_a_new_run_with_a_new_log(textfile, tmp_path):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=8), log=quiet)
    fresh = train(tiny(textfile, out, max_iters=4, overwrite=True), log=quiet)
    reference = train(tiny(textfile, tmp_path / "ref", max_iters=4), log=quiet)
    assert fresh.losses == reference.losses
    assert checkpoint_iter(out) == 4
    assert without_timing(metrics_of(out)) == without_timing(metrics_of(tmp_path / "ref"))


def test_fresh_run_replaces_a_stray_metrics_log(textfile, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS_NAME).write_text('{"iter": 99, "loss": 1.0}\n', encoding="utf-8")
    train(tiny(textfile, out, max_iters=4), log=quiet)
    assert [e["iter"] for e in metrics_of(out)][0] == 0 and all(e["iter"] <= 4 for e in metrics_of(out))


def test_an_overwrite_that_fails_before_its_first_line_leaves_the_old_log(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=4), log=quiet)
    before = {name: (out / name).read_bytes() for name in (CHECKPOINT_NAME, METRICS_NAME)}

    def out_of_memory(self):
        raise MemoryError("Unable to allocate 127. GiB")

    monkeypatch.setattr(train_module._Run, "evaluate", out_of_memory)
    with pytest.raises(MemoryError):
        train(tiny(textfile, out, max_iters=4, overwrite=True), log=quiet)
    # The checkpoint and its log still belong together.
    assert {name: (out / name).read_bytes() for name in before} == before


def test_resume_and_overwrite_together_are_refused(textfile, tmp_path, capsys):
    with pytest.raises(ValueError, match="resume and overwrite"):
        TrainConfig(resume=True, overwrite=True).validate()
    # On the command line too when there is a checkpoint to resume (whose saved settings say overwrite false).
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=2), log=quiet)
    before = (out / CHECKPOINT_NAME).read_bytes()
    assert main(["train", "--resume", "--overwrite", "--out_dir", str(out), "--max_iters", "4"]) == 2
    assert "resume and overwrite contradict each other" in capsys.readouterr().err
    assert (out / CHECKPOINT_NAME).read_bytes() == before


def test_a_save_killed_midway_leaves_no_temporary_for_good(textfile, tmp_path):
    # kill -9 during a save leaves ".ckpt.npz.<hex>.tmp", a checkpoint's worth of disk; the next run in the
    # directory (which holds its lock) removes such files, and nothing else.
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=4), log=quiet)
    leftovers = [".ckpt.npz.0123456789ab.tmp", ".best.npz.a1b2c3d4e5f6.tmp", ".metrics.jsonl.ffffffffffff.tmp"]
    kept = [".ckpt.npz.notours.tmp", "notes.txt", ".data.bin.0123456789ab.tmp"]
    for name in leftovers + kept:
        (out / name).write_bytes(b"half a checkpoint")
    lines = []
    train(tiny(textfile, out, max_iters=6, resume=True), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert f"note: removed 3 temporary file(s) of an interrupted save from {out}" in lines
    assert sorted(n for n in os.listdir(out) if n not in (CHECKPOINT_NAME, METRICS_NAME, BEST_CHECKPOINT_NAME)) \
        == sorted(kept)


def test_resume_cuts_the_log_back_to_the_checkpoint(textfile, tmp_path):
    # A run killed at iteration 10 left a checkpoint of iteration 4 and a log that runs to 10;
    # resuming must log 5..12 once, exactly as an uninterrupted run does.
    whole = tmp_path / "whole"
    train(tiny(textfile, whole), log=quiet)
    out = tmp_path / "run"
    train(tiny(textfile, out, max_iters=4), log=quiet)
    saved = (out / CHECKPOINT_NAME).read_bytes()
    train(tiny(textfile, out, max_iters=10, resume=True), log=quiet)
    (out / CHECKPOINT_NAME).write_bytes(saved)                   # as if killed after iteration 10
    assert checkpoint_iter(out) == 4 and max(e["iter"] for e in metrics_of(out)) == 10
    train(tiny(textfile, out, resume=True), log=quiet)
    entries = metrics_of(out)
    keys = [(e["iter"], "val_loss" in e) for e in entries]
    assert len(keys) == len(set(keys))                           # no iteration logged twice
    assert without_timing(entries) == without_timing(metrics_of(whole))


# --- 2, 3. signals: finish the step, save, however many arrive ------------------------------------------

def _signals_at(monkeypatch, step, signals):
    original = DataParallel.loss_and_grads
    calls = {"n": 0}

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if calls["n"] == step:
            for signum in signals:
                assert signal.getsignal(signum) not in (signal.default_int_handler, signal.SIG_DFL)
                signal.raise_signal(signum)
        calls["n"] += 1
        return result

    monkeypatch.setattr(DataParallel, "loss_and_grads", wrapped)


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT] * 5,
                                     [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]],
                         ids=["sigint", "sigterm", "five-sigints", "mixed"])
def test_signals_finish_the_step_and_save(textfile, tmp_path, monkeypatch, signals):
    whole = train(tiny(textfile, tmp_path / "whole"), log=quiet)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _signals_at(monkeypatch, 6, signals)
    out = tmp_path / "run"
    stopped = train(tiny(textfile, out), log=quiet)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert stopped.interrupted and stopped.stop_signal == signals[0]
    assert stopped.iter_num == 7 and checkpoint_iter(out) == 7
    assert max(e["iter"] for e in metrics_of(out)) == 7
    monkeypatch.undo()
    rest = train(tiny(textfile, out, resume=True), log=quiet)
    assert stopped.losses + rest.losses == whole.losses
    assert without_timing(metrics_of(out)) == without_timing(metrics_of(tmp_path / "whole"))


def test_signals_during_the_checkpoint_write_do_not_stop_it(textfile, tmp_path, monkeypatch):
    real_write_array = np.lib.format.write_array
    state = {"writes": 0}

    def write_array(*args, **kwargs):
        state["writes"] += 1
        if state["writes"] == 3:                 # in the middle of a checkpoint
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    out = tmp_path / "run"
    stopped = train(tiny(textfile, out), log=quiet)
    monkeypatch.undo()
    # the iteration-0 checkpoint was being written: it completed, and the run stopped right there
    assert stopped.interrupted and stopped.iter_num == 0 and not stopped.losses
    arrays, meta = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["writes"] == len(arrays) + 2           # written once, completely (+ format and meta members)
    assert meta["iter_num"] == 0 and all(k.startswith(("params/", "optim/")) for k in arrays)
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])


def test_cli_exit_codes_and_resume_hint(textfile, tmp_path, monkeypatch, capsys):
    _signals_at(monkeypatch, 2, [signal.SIGTERM])
    out = tmp_path / "run"
    args = ["train", "--data", str(textfile), "--n_layer", "1", "--n_embd", "16", "--block_size", "16",
            "--eval_iters", "1", "--sample_tokens", "0", "--max_iters", "50", "--out_dir", str(out)]
    assert main(args) == 128 + signal.SIGTERM
    stdout = capsys.readouterr().out
    assert f"stopped by SIGTERM at iteration 3; resume with: numgpt train --resume --out_dir {out}" in stdout
    monkeypatch.undo()
    _signals_at(monkeypatch, 1, [signal.SIGINT, signal.SIGINT])
    assert main(["train", "--resume", "--out_dir", str(out)]) == 130
    assert "stopped by Ctrl-C at iteration 5" in capsys.readouterr().out


def _start_trainer(textfile, out, *extra):
    env = dict(os.environ, NUMGPT_THREADS="2", NUMGPT_PROCESSES="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "numgpt", "train", "--data", str(textfile), "--n_layer", "2", "--n_embd", "32",
           "--block_size", "32", "--batch_size", "8", "--eval_interval", "50", "--eval_iters", "2",
           "--log_interval", "1", "--max_iters", "100000", "--lr_decay_iters", "100000", "--sample_tokens", "0",
           "--out_dir", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_for_iterations(proc, n, timeout=60):
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("iter "):
            seen += 1
            if seen >= n:
                return
    proc.kill()
    pytest.fail(f"the trainer printed {seen} of {n} progress lines in {timeout} s: {proc.stderr.read()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_real_trainer_survives_two_signals_20_ms_apart(textfile, tmp_path, signum):
    out = tmp_path / "run"
    proc = _start_trainer(textfile, out)
    try:
        _wait_for_iterations(proc, 3)
        os.killpg(proc.pid, signum)            # the whole process group, as a terminal or Slurm does
        time.sleep(0.02)
        os.killpg(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "numgpt train --resume --out_dir" in stdout and "Traceback" not in stderr
    saved = checkpoint_iter(out)
    assert saved == max(e["iter"] for e in metrics_of(out)) >= 3
    # the signal's checkpoint replaced the evaluated one of iteration 0, which stays as best.npz
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, METRICS_NAME])
    assert load_checkpoint(out / BEST_CHECKPOINT_NAME)[1]["iter_num"] == 0


# --- 4. a full disk --------------------------------------------------------------------------------------

def test_a_failing_metrics_write_is_one_sentence(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    state = {"n": 0}
    real_record = train_module._record

    def failing_write(metrics, entry):
        state["n"] += 1
        if state["n"] == 4:
            class Full:
                name = metrics.name

                def write(self, text):
                    raise OSError(28, "No space left on device")
            return real_record(Full(), entry)
        return real_record(metrics, entry)

    monkeypatch.setattr(train_module, "_record", failing_write)
    with pytest.raises(TrainingError, match=r"could not write the metrics log at iteration 3: the disk is full"):
        train(tiny(textfile, out), log=quiet)
    assert checkpoint_iter(out) == 0
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])


# --- 6. training past the best keeps it ---------------------------------------------------------------------

def _scripted_val(monkeypatch, val_at):
    """Make the evaluation at iteration i report validation loss ``val_at[i]``; returns ``{i: parameters}`` then."""
    real_evaluate = train_module._Run.evaluate
    params_at = {}

    def evaluate(self):
        losses, accuracy, line = real_evaluate(self)
        params_at[self.iter_num] = self.model.flat_params.copy()
        return {**losses, "val": val_at[self.iter_num]}, accuracy, line

    monkeypatch.setattr(train_module._Run, "evaluate", evaluate)
    return params_at


def _run_meta(path):
    model, _, meta, _ = load_run(path)
    return model.flat_params, meta


def test_a_worse_end_keeps_the_best_model_in_best_npz(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    params_at = _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    lines = []
    inode = {}
    real_save = train_module._Run._save

    def save(self, *args, **kwargs):
        inode[self.iter_num] = os.stat(out / CHECKPOINT_NAME).st_ino if self.iter_num else None
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(train_module._Run, "_save", save)
    result = train(tiny(textfile, out), log=lambda *a: lines.append(" ".join(map(str, a))))
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, METRICS_NAME])
    assert os.stat(out / BEST_CHECKPOINT_NAME).st_ino == inode[12]      # a hard link to it: no copy made
    assert result.best_checkpoint == str(out / BEST_CHECKPOINT_NAME)
    best_params, best_meta = _run_meta(out / BEST_CHECKPOINT_NAME)
    np.testing.assert_array_equal(best_params, params_at[4])
    assert (best_meta["iter_num"], best_meta["val_loss"], best_meta["best_val_loss"]) == (4, 2.0, 2.0)
    last_params, last_meta = _run_meta(out / CHECKPOINT_NAME)        # what --resume continues: the end
    np.testing.assert_array_equal(last_params, result.model.flat_params)
    assert (last_meta["iter_num"], last_meta["val_loss"], last_meta["best_val_loss"]) == (12, 2.6, 2.0)
    assert lines[-1].endswith(f"saved {out / CHECKPOINT_NAME} (end); the best val 2.0000 stays in "
                              f"{out / BEST_CHECKPOINT_NAME}")
    # the iteration-8 evaluation was worse and saved nothing, so the best was kept once, at the end
    assert sum("stays in" in line for line in lines) == 1
    np.testing.assert_array_equal(load_for_inference(out, best=True)[0].flat_params, params_at[4])
    np.testing.assert_array_equal(load_for_inference(out)[0].flat_params, params_at[12])


def test_best_npz_lasts_until_a_better_checkpoint_replaces_it(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6, 16: 2.4, 20: 2.2, 24: 1.5})
    train(tiny(textfile, out), log=quiet)
    kept = (out / BEST_CHECKPOINT_NAME).read_bytes()
    # Resumed twice past worse evaluations: the checkpoint on disk was not the best, so best.npz is untouched.
    train(tiny(textfile, out, resume=True, max_iters=16, lr_decay_iters=24), log=quiet)
    train(tiny(textfile, out, resume=True, max_iters=20, lr_decay_iters=24), log=quiet)
    assert (out / BEST_CHECKPOINT_NAME).read_bytes() == kept
    assert _run_meta(out / CHECKPOINT_NAME)[1]["iter_num"] == 20
    # A new best reaches the checkpoint: best.npz would now hold a worse model, and goes.
    result = train(tiny(textfile, out, resume=True, max_iters=24, lr_decay_iters=24), log=quiet)
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME]) and result.best_checkpoint is None
    _, meta = _run_meta(out / CHECKPOINT_NAME)
    assert (meta["iter_num"], meta["val_loss"], meta["best_val_loss"]) == (24, 1.5, 1.5)
    np.testing.assert_array_equal(load_for_inference(out, best=True)[0].flat_params, result.model.flat_params)


def test_a_worker_process_that_dies_saves_the_last_step_and_resume_continues_exactly(textfile, tmp_path,
                                                                                     monkeypatch, capsys):
    # kill -9 or the out-of-memory killer ends a forked worker mid-step: the step never reaches the
    # optimizer, so the last completed step is saved (with the generator as it was before the failed
    # step drew its batch) and one sentence says how to resume; the resumed run is the uninterrupted one.
    whole = train(tiny(textfile, tmp_path / "whole", max_iters=10), log=quiet)
    out = tmp_path / "run"
    real_step = train_module._Run.step

    def dies_in_step_7(self, lr):
        if self.iter_num == 6:
            self.rng.integers(0, 1000, size=8)          # the failed step had drawn its batch
            raise WorkerProcessDied("numgpt worker process 1 ended without replying (exit code -9); the "
                                    "step's gradients are incomplete")
        return real_step(self, lr)

    monkeypatch.setattr(train_module._Run, "step", dies_in_step_7)
    with pytest.raises(TrainingError, match=rf"worker process 1 ended without replying \(exit code -9\).*; saved "
                                            rf"{out / CHECKPOINT_NAME} \(a worker process died\).* at iteration 6\. "
                                            rf"Continue with numgpt train --resume --out_dir {out}"):
        train(tiny(textfile, out, max_iters=10), log=quiet)
    assert checkpoint_iter(out) == 6
    monkeypatch.undo()
    resumed = train(tiny(textfile, out, max_iters=10, resume=True), log=quiet)
    assert resumed.losses == whole.losses[6:]
    np.testing.assert_array_equal(resumed.model.flat_params, whole.model.flat_params)
    # and from the command line it is one sentence, exit 1, no traceback
    monkeypatch.setattr(train_module._Run, "step", dies_in_step_7)
    cli_out = tmp_path / "cli"
    assert main(["train", "--data", str(textfile), "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
                 "--block_size", "16", "--batch_size", "4", "--max_iters", "10", "--eval_iters", "1",
                 "--sample_tokens", "0", "--out_dir", str(cli_out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("numgpt train: numgpt worker process 1 ended without replying")
    assert checkpoint_iter(cli_out) == 6


def test_a_signal_after_the_best_keeps_it(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    params_at = _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    _signals_at(monkeypatch, 5, [signal.SIGINT])
    stopped = train(tiny(textfile, out), log=quiet)
    assert stopped.interrupted and checkpoint_iter(out) == 6
    np.testing.assert_array_equal(_run_meta(out / BEST_CHECKPOINT_NAME)[0], params_at[4])
    assert _run_meta(out / CHECKPOINT_NAME)[1]["val_loss"] is None         # not evaluated at iteration 6


def test_best_npz_is_copied_where_hard_links_are_refused(textfile, tmp_path, monkeypatch):
    links = []

    def refuse(src, dst, *args, **kwargs):
        links.append(dst)
        raise PermissionError(1, "Operation not permitted")

    out = tmp_path / "run"
    params_at = _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    monkeypatch.setattr(os, "link", refuse)
    train(tiny(textfile, out), log=quiet)
    assert len(links) == 1
    np.testing.assert_array_equal(_run_meta(out / BEST_CHECKPOINT_NAME)[0], params_at[4])
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, METRICS_NAME])


def test_a_failed_end_save_leaves_the_best_in_the_checkpoint(textfile, tmp_path, monkeypatch):
    # The disk fills up while the end is written: ckpt.npz still holds the best, and no best.npz repeats it.
    out = tmp_path / "run"
    _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    real_write_array = np.lib.format.write_array
    state = {"fail_at_iter": 12, "before": None}
    run_iter = {"n": 0}
    real_save = train_module._Run._save

    def save(self, *args, **kwargs):
        run_iter["n"] = self.iter_num
        if self.iter_num == state["fail_at_iter"]:
            state["before"] = (out / CHECKPOINT_NAME).read_bytes()
        return real_save(self, *args, **kwargs)

    def write_array(*args, **kwargs):
        if run_iter["n"] == state["fail_at_iter"]:
            raise OSError(28, "No space left on device")
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(train_module._Run, "_save", save)
    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    with pytest.raises(TrainingError, match="could not save the checkpoint at iteration 12: the disk is full"):
        train(tiny(textfile, out), log=quiet)
    assert (out / CHECKPOINT_NAME).read_bytes() == state["before"]
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])
    assert _run_meta(out / CHECKPOINT_NAME)[1]["iter_num"] == 4


def _make_legacy(path):
    """Rewrite a checkpoint as the code before recorded val losses wrote it: no ``val_loss`` in its meta."""
    arrays, meta = load_checkpoint(path)
    del meta["val_loss"]
    save_checkpoint(path, arrays, meta)


@pytest.mark.parametrize("legacy_val", [2.0, 2.3])    # the legacy checkpoint held its run's best, or an end past it
def test_a_legacy_checkpoint_resumed_past_is_kept_aside(textfile, tmp_path, monkeypatch, capsys, legacy_val):
    out = tmp_path / "run"
    params_at = _scripted_val(monkeypatch, {0: 3.0, 4: 2.2, 8: legacy_val, 12: 2.5, 16: 2.6, 20: 2.8})
    first = train(tiny(textfile, out, max_iters=8, lr_decay_iters=16), log=quiet)
    assert (out / BEST_CHECKPOINT_NAME).exists() == (legacy_val != 2.0)
    with contextlib.suppress(FileNotFoundError):
        (out / BEST_CHECKPOINT_NAME).unlink()        # the old code kept no best.npz
    _make_legacy(out / CHECKPOINT_NAME)
    legacy = (out / CHECKPOINT_NAME).read_bytes()
    lines = []
    result = train(tiny(textfile, out, resume=True, max_iters=16, lr_decay_iters=16),
                   log=lambda *a: lines.append(" ".join(map(str, a))))
    # Neither resumed evaluation beat the recorded best (2.0 or 2.2), so the end replaced the checkpoint resumed
    # from; whether or not that held the best, it is kept, as it was on disk.
    assert (out / BEST_CHECKPOINT_NAME).read_bytes() == legacy
    np.testing.assert_array_equal(_run_meta(out / BEST_CHECKPOINT_NAME)[0], first.model.flat_params)
    np.testing.assert_array_equal(load_for_inference(out, best=True)[0].flat_params, params_at[8])
    assert _run_meta(out / CHECKPOINT_NAME)[1]["iter_num"] == 16
    assert lines[-1].endswith(f"(end); the checkpoint resumed from (older than recorded val losses) stays in "
                              f"{out / BEST_CHECKPOINT_NAME}")
    assert (result.best_checkpoint, result.best_is_legacy) == (str(out / BEST_CHECKPOINT_NAME), True)
    # A further resume with no new best leaves it there, and the CLI's closing line still does not call it
    # the best-validation model: its own val loss was never recorded.
    assert main(["train", "--resume", "--out_dir", str(out), "--max_iters", "20", "--sample_tokens", "0"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"checkpoint {out / CHECKPOINT_NAME}; the checkpoint resumed from (older than recorded val losses) is in "
        f"{out / BEST_CHECKPOINT_NAME} (numgpt sample --best)")
    assert (out / BEST_CHECKPOINT_NAME).read_bytes() == legacy


def test_a_legacy_checkpoint_gives_way_to_a_new_best(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 1.5, 12: 2.5})
    train(tiny(textfile, out, max_iters=4, lr_decay_iters=12), log=quiet)
    _make_legacy(out / CHECKPOINT_NAME)
    result = train(tiny(textfile, out, resume=True, max_iters=12, lr_decay_iters=12), log=quiet)
    # The new best (1.5 < the recorded 2.0) reached the checkpoint first: it is better than anything the
    # legacy file held, so nothing older is kept; the worse end then keeps that best as usual.
    meta = _run_meta(out / BEST_CHECKPOINT_NAME)[1]
    assert (meta["iter_num"], meta["val_loss"], meta["best_val_loss"]) == (8, 1.5, 1.5)
    assert (result.best_checkpoint, result.best_is_legacy) == (str(out / BEST_CHECKPOINT_NAME), False)


def test_a_fresh_run_is_refused_over_a_best_npz(textfile, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    train(tiny(textfile, out), log=quiet)
    (out / CHECKPOINT_NAME).unlink()             # the user removed the last checkpoint, not the best one
    kept = (out / BEST_CHECKPOINT_NAME).read_bytes()
    with pytest.raises(RunDirError, match=f"{out / BEST_CHECKPOINT_NAME} already holds a trained model.*--overwrite"):
        train(tiny(textfile, out), log=quiet)
    assert (out / BEST_CHECKPOINT_NAME).read_bytes() == kept
    monkeypatch.undo()
    train(tiny(textfile, out, overwrite=True), log=quiet)     # a new run's first checkpoint is its best
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, METRICS_NAME])


def test_sample_best_loads_best_npz(textfile, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    params_at = _scripted_val(monkeypatch, {0: 3.0, 4: 2.0, 8: 2.5, 12: 2.6})
    assert main(["train", "--data", str(textfile), "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
                 "--block_size", "16", "--batch_size", "4", "--max_iters", "12", "--eval_interval", "4",
                 "--eval_iters", "1", "--sample_tokens", "0", "--out_dir", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"checkpoint {out / CHECKPOINT_NAME}; the model with the best val loss is in {out / BEST_CHECKPOINT_NAME} "
        f"(numgpt sample --best)")
    loaded = []
    real_load = checkpoint_module.load_for_inference

    def spy(*args, **kwargs):
        source = real_load(*args, **kwargs)
        loaded.append(source[0].flat_params)
        return source

    monkeypatch.setattr(checkpoint_module, "load_for_inference", spy)
    assert main(["sample", "--out_dir", str(out), "--best", "--max_new_tokens", "5"]) == 0
    assert main(["sample", "--out_dir", str(out), "--max_new_tokens", "5"]) == 0
    np.testing.assert_array_equal(loaded[0], params_at[4])
    np.testing.assert_array_equal(loaded[1], params_at[12])
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(out), "--best", "--init_from", str(tmp_path)]) == 2
    assert "--best picks a checkpoint in --out_dir; it cannot go with --init_from" in capsys.readouterr().err
    # best.npz removed by hand: --best says the checkpoint is not the best rather than load it quietly
    (out / BEST_CHECKPOINT_NAME).unlink()
    assert main(["sample", "--out_dir", str(out), "--best", "--max_new_tokens", "5"]) == 1
    err = capsys.readouterr().err
    assert (f"{out / BEST_CHECKPOINT_NAME} is missing: {out / CHECKPOINT_NAME} holds iteration 12 (val 2.6000), "
            f"not the run's best (val 2.0000); leave out --best to use it") in err and "Traceback" not in err
    assert len(loaded) == 2


# --- 5. one trainer per directory -------------------------------------------------------------------------

def test_a_second_trainer_is_refused_while_the_first_runs(textfile, tmp_path):
    out = tmp_path / "run"
    with RunDirectory(out, log=quiet):
        with pytest.raises(RunDirError, match=rf"another trainer \(process {os.getpid()} on .*\) is using"):
            train(tiny(textfile, out), log=quiet)
    train(tiny(textfile, out, max_iters=2), log=quiet)          # free again once the first has finished


def test_a_real_second_trainer_is_refused(textfile, tmp_path):
    out = tmp_path / "run"
    first = _start_trainer(textfile, out)
    try:
        _wait_for_iterations(first, 1)
        second = subprocess.run([sys.executable, "-m", "numgpt", "train", "--resume", "--out_dir", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"another trainer (process {first.pid} on" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)


def test_a_killed_trainers_lock_is_taken_over_with_a_note(textfile, tmp_path):
    out = tmp_path / "run"
    proc = _start_trainer(textfile, out)
    _wait_for_iterations(proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)                        # no chance to clean up
    proc.wait(timeout=30)
    time.sleep(0.2)                                             # the worker process ends with its pipe
    assert (out / LOCK_NAME).exists()
    messages = []
    result = train(tiny(textfile, out, max_iters=2, overwrite=True), log=messages.append)
    assert result.iter_num == 2
    notes = [m for m in messages if m.startswith("note: took over the lock")]
    assert len(notes) == 1 and f"left by process {proc.pid}" in notes[0]
    assert not (out / LOCK_NAME).exists()


# --- 10. an unusable out_dir, before any work ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "below-a-file", "read-only"])
def test_unusable_out_dir_is_one_sentence_before_loading_data(textfile, tmp_path, monkeypatch, capsys, kind):
    if kind == "file":
        out = tmp_path / "afile"
        out.write_text("not a directory")
        expected = f"{out} exists and is not a directory"
    elif kind == "below-a-file":
        out = textfile / "out"
        expected = "exists and is not a directory"
    else:
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "access", lambda path, mode: False)
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
        expected = "is not writable"
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    assert main(["train", "--data", str(textfile), "--out_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Errno" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_before_training_begins_stops_at_once(textfile, tmp_path, monkeypatch, capsys, signum):
    # Nothing is saved yet, so there is nothing to wait for: the data preparation is cut short.
    real_prepare = train_module.prepare_data

    def prepare_then_signal(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        signal.raise_signal(signum)
        pytest.fail("the signal did not stop the run")
        return data

    monkeypatch.setattr(train_module, "prepare_data", prepare_then_signal)
    out = tmp_path / "run"
    assert main(["train", "--data", str(textfile), "--out_dir", str(out)]) == 128 + signum
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name} before training began; nothing was written" in err
    assert os.listdir(out) == []                                  # no checkpoint, no log, no lock
    with pytest.raises(train_module.Stopped):
        train(tiny(textfile, tmp_path / "api"), log=quiet)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
