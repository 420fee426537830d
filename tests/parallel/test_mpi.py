"""Tests for training under MPI (numgpt.parallel.mpi): ``mpiexec -n N`` against one process.

Every MPI test starts a real job, ``mpiexec -n N python mpi_job.py`` (or
``python -m numgpt train``), with a deadline, and compares with a one-process
run in this process:

* N = 2 and 3 ranks with the same global batch give the losses, evaluations
  and parameters of one process (float64, to round-off), with and without
  gradient accumulation, with even and uneven shares of the rows;
* the same seed and N give bit-identical runs, and every rank ends with the
  same parameters;
* every rank reads the same prepared token files (memmapped) and trains its rows;
* ``--resume`` under MPI continues exactly as an uninterrupted run; a
  checkpoint written under MPI resumes in one process and the other way round;
* rank 0 alone writes (checkpoint, metrics log) and prints;
* a rank that raises or is killed ends the whole job within seconds, a
  failure on one rank during setup fails every rank without an abort, and
  SIGTERM or SIGINT to ``mpiexec`` stops every rank at one iteration with a
  checkpoint.

mpi4py and MPICH come with ``pip install -e '.[mpi]'``; without them these
tests skip (and fail under NUMGPT_FORBID_SKIPS=1, as in CI).
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numgpt.checkpoint import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, load_checkpoint
from numgpt.config import TrainConfig
from numgpt.parallel import mpi
from numgpt.rundir import METRICS_NAME
from numgpt.train import train

from test_train import english_text, quiet

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_job.py")
DEADLINE = 240          # seconds for one mpiexec job on a busy 2-core machine; they take a few


def _mpiexec():
    pytest.importorskip("mpi4py", reason="MPI tests need mpi4py and MPICH: pip install -e '.[mpi]'")
    # The launcher installed beside this Python (MPICH's wheel) matches mpi4py's MPI; a system one may not.
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    path = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    assert path is not None, "mpi4py is installed but no mpiexec is: pip install -e '.[mpi]' brings MPICH's"
    return path


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


def settings(textfile, out_dir, **overrides):
    """A tiny float64 run (as test_train's ``tiny``), as TrainConfig keyword arguments."""
    values = {"data": str(textfile), "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16,
              "batch_size": 4, "max_iters": 8, "eval_interval": 4, "eval_iters": 2, "log_interval": 1,
              "warmup_iters": 2, "lr_decay_iters": 8, "learning_rate": 3e-3, "min_lr": 3e-4,
              "sample_tokens": 0, "out_dir": str(out_dir), "seed": 0, "dtype": "float64"}
    values.update(overrides)
    return values


def run_job(tmp_path, n, runs, name="job", **extra):
    """Run ``runs`` (``[(name, settings)]``) under ``mpiexec -n n``; ``(summary, params, process)``."""
    result = tmp_path / name
    spec = {"runs": [{"name": k, "settings": s} for k, s in runs], "result": str(result), **extra}
    spec_path = tmp_path / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    proc = subprocess.run([_mpiexec(), "-n", str(n), sys.executable, JOB, str(spec_path)],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
    params = dict(np.load(tmp_path / f"{name}.npz"))
    return summary, params, proc


def assert_same_training(mpi_run, mpi_params, one, rtol=1e-10):
    """An MPI run's losses, evaluation and parameters against a one-process TrainResult (float64 round-off)."""
    np.testing.assert_allclose(mpi_run["losses"], one.losses, rtol=rtol)
    assert mpi_run["last_eval"] == pytest.approx(one.last_eval, rel=rtol)
    assert mpi_run["best_val_loss"] == pytest.approx(one.best_val_loss, rel=rtol)
    np.testing.assert_allclose(mpi_params, one.model.flat_params, rtol=1e-8, atol=1e-10)
    assert len(set(mpi_run["digests"])) == 1, "the ranks' parameters differ"


# --- without a launcher -----------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [({}, False), ({"PMI_SIZE": "1"}, False), ({"PMI_SIZE": "2"}, True),
                                           ({"OMPI_COMM_WORLD_SIZE": "4"}, True), ({"PMIX_RANK": "0"}, True)])
def test_mpi_is_detected_from_the_launchers_environment(monkeypatch, env, expected):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "NUMGPT_MPI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert mpi.launched_by_mpi() is expected
    if not expected:
        assert mpi.mpi_world() is None              # a plain run never imports mpi4py
        monkeypatch.setenv("PMI_SIZE", "2")
        monkeypatch.setenv("NUMGPT_MPI", "0")       # forced off
        assert mpi.mpi_world() is None


def test_numgpt_mpi_setting_is_checked(monkeypatch):
    monkeypatch.setenv("NUMGPT_MPI", "yes")
    with pytest.raises(ValueError, match="NUMGPT_MPI must be 0, 1 or auto, got 'yes'"):
        mpi.mpi_setting()
    monkeypatch.setenv("NUMGPT_MPI", " AUTO ")
    assert mpi.mpi_setting() == "auto"


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setenv("NUMGPT_MPI", "1")
    monkeypatch.setitem(sys.modules, "mpi4py", None)      # import mpi4py now fails
    with pytest.raises(ImportError, match=r"pip install 'numgpt\[mpi\]'.*NUMGPT_MPI=0"):
        mpi.mpi_world()


# --- N ranks train as one process ----------------------------------------------------------------------

@pytest.mark.timeout(2 * DEADLINE, method="thread")
@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_train_as_one_process(textfile, tmp_path, n):
    # Even and uneven shares of the rows (2 ranks: 4 = 2+2 and 5 = 2+3; 3 ranks: 6 = 2+2+2 and 4 = 1+1+2),
    # each without and with gradient accumulation (one all-reduce per optimizer step); and dropout, whose
    # masks follow each row's place in the batch, not the rank that runs it.
    cases = {"even": {"batch_size": 2 * n}, "uneven": {"batch_size": 2 * n - 1 if n == 2 else 4},
             "even-accumulation": {"batch_size": 2 * n, "gradient_accumulation_steps": 3},
             "uneven-accumulation": {"batch_size": 5 if n == 2 else 4, "gradient_accumulation_steps": 2},
             "uneven-dropout": {"batch_size": 2 * n - 1 if n == 2 else 4, "dropout": 0.2}}
    runs = [(name, settings(textfile, tmp_path / f"mpi-{name}", **extra)) for name, extra in cases.items()]
    summary, params, proc = run_job(tmp_path, n, runs)
    for name, extra in cases.items():
        one = train(TrainConfig(**settings(textfile, tmp_path / f"one-{name}", **extra)), log=quiet)
        assert_same_training(summary[name], params[name], one)
    # rank 0 alone printed: one "training:" line per run, not one per rank
    assert proc.stdout.count("training: 8 iterations") == len(cases)
    assert f"parallel: {n} MPI ranks x 1 worker per step" in proc.stdout


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_ranks_train_from_prepared_token_files_as_one_process(textfile, tmp_path):
    # Every rank opens the same token files (numgpt prepare) and draws its rows of the global batch.
    from numgpt.tokenfiles import prepare

    tokens = tmp_path / "tokens"
    prepare(str(textfile), str(tokens), "char", log=quiet, progress_stream=io.StringIO())
    run = settings(tokens, tmp_path / "mpi-tokens", batch_size=5)
    summary, params, _ = run_job(tmp_path, 2, [("tokens", run)])
    one = train(TrainConfig(**settings(tokens, tmp_path / "one-tokens", batch_size=5)), log=quiet)
    assert_same_training(summary["tokens"], params["tokens"], one)


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_same_seed_same_ranks_same_bits_and_resume_continues_exactly(textfile, tmp_path):
    # Bit-identical runs (float32, dropout: masks drawn per row from the step's seed), and a run
    # resumed under MPI that reproduces the uninterrupted one bit for bit. Rank 0 alone writes.
    common = {"dtype": "float32", "dropout": 0.1, "max_iters": 8, "gradient_accumulation_steps": 2}
    runs = [("a", settings(textfile, tmp_path / "a", **common)),
            ("b", settings(textfile, tmp_path / "b", **common)),
            ("first", settings(textfile, tmp_path / "split", **{**common, "max_iters": 4})),
            ("second", settings(textfile, tmp_path / "split", **common, resume=True))]
    summary, params, _ = run_job(tmp_path, 2, runs)
    assert summary["a"]["losses"] == summary["b"]["losses"]
    np.testing.assert_array_equal(params["a"], params["b"])
    assert len(set(summary["a"]["digests"])) == 1
    assert summary["first"]["losses"] + summary["second"]["losses"] == summary["a"]["losses"]
    np.testing.assert_array_equal(params["second"], params["a"])
    assert sorted(os.listdir(tmp_path / "split")) == sorted([CHECKPOINT_NAME, METRICS_NAME])   # lock released
    steps = [e["iter"] for e in map(json.loads, (tmp_path / "split" / METRICS_NAME).read_text().splitlines())
             if "loss" in e]
    assert steps == list(range(1, 9))          # one log line per step: no rank wrote a second one


@pytest.mark.timeout(3 * DEADLINE, method="thread")
def test_checkpoints_move_between_mpi_and_one_process(textfile, tmp_path):
    whole = train(TrainConfig(**settings(textfile, tmp_path / "whole")), log=quiet)
    half = dict(settings(textfile, tmp_path / "from-one"), max_iters=4)
    train(TrainConfig(**half), log=quiet)                          # one process, then MPI
    runs = [("first", dict(settings(textfile, tmp_path / "from-mpi"), max_iters=4)),      # MPI, then one process
            ("resumed", settings(textfile, tmp_path / "from-one", resume=True))]
    summary, params, _ = run_job(tmp_path, 2, runs)
    np.testing.assert_allclose(summary["resumed"]["losses"], whole.losses[4:], rtol=1e-10)
    np.testing.assert_allclose(params["resumed"], whole.model.flat_params, rtol=1e-8, atol=1e-10)
    resumed = train(TrainConfig(**settings(textfile, tmp_path / "from-mpi", resume=True)), log=quiet)
    np.testing.assert_allclose(summary["first"]["losses"] + resumed.losses, whole.losses, rtol=1e-10)
    np.testing.assert_allclose(resumed.model.flat_params, whole.model.flat_params, rtol=1e-8, atol=1e-10)


# --- failures end the job ---------------------------------------------------------------------------------

def _start(tmp_path, n, args, **popen):
    return subprocess.Popen([_mpiexec(), "-n", str(n), sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def _finish(proc, within):
    """Wait at most ``within`` seconds for the job; (returncode, stdout, stderr). Kills it if it hangs."""
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job still ran after {within} s (a rank hangs): {out}\n{err}")
    return proc.returncode, out, err


def _train_args(textfile, out, max_iters=100000):
    return ["-m", "numgpt", "train", "--data", str(textfile), "--n_layer", "2", "--n_embd", "32",
            "--block_size", "32", "--batch_size", "8", "--eval_interval", "50", "--eval_iters", "2",
            "--log_interval", "1", "--max_iters", str(max_iters), "--lr_decay_iters", "100000",
            "--sample_tokens", "0", "--out_dir", str(out)]


def _wait_for_iterations(proc, n, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith(f"iter {n:>6}"):
            return lines
        if not line and proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the MPI job did not reach iteration {n}: {''.join(lines)}{proc.stderr.read()}")


class _FakeWorld:
    """Rank 1 of 2, whose Abort records its code (and ends the block, as the real one ends the process)."""

    def Get_rank(self):
        return 1

    def Get_size(self):
        return 2

    def Abort(self, code):
        raise SystemExit(code)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_training_ends_the_job_as_a_plain_run_would(signum, monkeypatch, capsys):
    # Ctrl-C while the data loads under mpiexec: one line per rank and a plain run's exit code, not a
    # traceback presented as a rank failure with exit code 1.
    from numgpt.train import Stopped

    monkeypatch.setattr(mpi, "ABORT_GRACE", 0.0)
    with pytest.raises(SystemExit) as info:
        with mpi.stop_job_on_error(_FakeWorld()):
            raise Stopped(signum)
    assert info.value.code == 128 + signum
    err = capsys.readouterr().err
    assert err == (f"numgpt: MPI rank 1 of 2: interrupted (stopped by {signal.Signals(signum).name} before "
                   f"training began; nothing was written)\n")


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_a_rank_that_raises_ends_the_job_with_its_message(textfile, tmp_path):
    spec = {"runs": [{"name": "a", "settings": settings(textfile, tmp_path / "a", max_iters=1000,
                                                         lr_decay_iters=1000)}],
            "result": str(tmp_path / "result"), "fail": {"rank": 1, "call": 3}}
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    proc = _start(tmp_path, 2, [JOB, str(tmp_path / "spec.json")])
    start = time.monotonic()
    code, out, err = _finish(proc, DEADLINE)
    assert code != 0
    assert "MPI rank 1 of 2 failed, stopping the job" in err and "injected failure on rank 1" in err, err
    assert time.monotonic() - start < DEADLINE
    assert not (tmp_path / "result.json").exists()


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_a_killed_rank_ends_the_job_within_seconds(textfile, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = {"runs": [{"name": "a", "settings": settings(textfile, tmp_path / "a", max_iters=100000,
                                                         lr_decay_iters=100000, log_interval=1)}],
            "result": str(tmp_path / "result"), "pid_dir": str(pids)}
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    proc = _start(tmp_path, 2, [JOB, str(tmp_path / "spec.json")])
    _wait_for_iterations(proc, 3)
    os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)
    killed = time.monotonic()
    code, _, _ = _finish(proc, 60)
    assert code != 0 and time.monotonic() - killed < 30


@pytest.mark.timeout(2 * DEADLINE, method="thread")
@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "terminated (SIGTERM): saved"),
                                          (signal.SIGINT, "interrupted (Ctrl-C): saved")], ids=["sigterm", "sigint"])
def test_a_signal_to_mpiexec_stops_every_rank_at_one_iteration_and_saves(textfile, tmp_path, signum, said):
    out = tmp_path / "run"
    proc = _start(tmp_path, 2, _train_args(textfile, out))
    _wait_for_iterations(proc, 3)
    proc.send_signal(signum)                     # to mpiexec alone: it forwards the signal to the ranks
    code, stdout, err = _finish(proc, 60)
    assert code == 128 + signum, stdout + err
    assert stdout.count(said) == 1 and stdout.count("resume with:") == 1, stdout
    saved = load_checkpoint(out / CHECKPOINT_NAME)[1]["iter_num"]
    entries = [json.loads(line) for line in (out / METRICS_NAME).read_text().splitlines()]
    assert saved == max(e["iter"] for e in entries) >= 3
    # rank 0 kept the evaluated checkpoint of iteration 0 aside before the signal's replaced it
    assert sorted(os.listdir(out)) == sorted([CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, METRICS_NAME])
    assert load_checkpoint(out / BEST_CHECKPOINT_NAME)[1]["iter_num"] == 0


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_a_refused_out_dir_is_one_message_and_no_abort(textfile, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**settings(textfile, out, dtype="float32", max_iters=2)), log=quiet)
    before = (out / CHECKPOINT_NAME).read_bytes()
    code, stdout, err = _finish(_start(tmp_path, 2, _train_args(textfile, out, max_iters=2)), DEADLINE)
    assert code == 1
    assert err.count("already holds a trained model") == 1 and "Abort" not in err, err
    assert (out / CHECKPOINT_NAME).read_bytes() == before


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_a_setup_failure_on_one_rank_fails_every_rank_without_abort(textfile, tmp_path):
    # Rank 1 cannot load its data: rank 0, which could, must not wait for it in a collective.
    spec = {"runs": [{"name": "a", "settings": settings(textfile, tmp_path / "a")}],
            "result": str(tmp_path / "result"), "no_data_on_rank": 1}
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    code, _, err = _finish(_start(tmp_path, 2, [JOB, str(tmp_path / "spec.json")]), DEADLINE)
    assert code != 0
    assert "DataError: injected: no data on rank 1" in err and "RankFailed: MPI rank 1 failed" in err, err
    assert "MPI_Abort" not in err
    assert os.listdir(tmp_path / "a") == []          # rank 0 released the lock it held meanwhile
