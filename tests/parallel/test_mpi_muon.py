"""Muon, the modern preset and --max_time under ``mpiexec -n 2`` (helpers from test_mpi.py).

* 2 ranks with --optimizer muon train as one process (float64, to round-off);
* a Muon run resumed under MPI from a one-process checkpoint continues exactly
  (rank 0's Muon buffers reach every rank: otherwise the ranks' parameters
  would part), and the same seed gives the same bits;
* with --max_time every rank stops at the same iteration with the same
  parameters (the ranks take rank 0's clock).
"""

import numpy as np
import pytest

from numgpt.checkpoint import CHECKPOINT_NAME, load_checkpoint
from numgpt.config import TrainConfig
from numgpt.train import train
from parallel.test_mpi import DEADLINE, assert_same_training, run_job, settings
from test_train import english_text, quiet


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


@pytest.mark.timeout(2 * DEADLINE, method="thread")
def test_two_ranks_with_muon_train_as_one_process(textfile, tmp_path):
    cases = {"muon": {"optimizer": "muon", "batch_size": 5},
             "modern": {"preset": "modern", "batch_size": 4, "gradient_accumulation_steps": 2}}
    runs = [(name, settings(textfile, tmp_path / f"mpi-{name}", **extra)) for name, extra in cases.items()]
    summary, params, _ = run_job(tmp_path, 2, runs)
    for name, extra in cases.items():
        one = train(TrainConfig(**settings(textfile, tmp_path / f"one-{name}", **extra)), log=quiet)
        assert_same_training(summary[name], params[name], one)


@pytest.mark.timeout(3 * DEADLINE, method="thread")
def test_a_muon_run_resumed_under_mpi_continues_exactly(textfile, tmp_path):
    common = {"dtype": "float32", "preset": "modern", "max_iters": 8}
    whole = train(TrainConfig(**settings(textfile, tmp_path / "whole", **common)), log=quiet)
    train(TrainConfig(**settings(textfile, tmp_path / "split", **{**common, "max_iters": 4})), log=quiet)
    assert np.abs(load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)[0]["optim/muon_m"]).max() > 0
    runs = [("resumed", settings(textfile, tmp_path / "split", **common, resume=True)),
            ("timed", settings(textfile, tmp_path / "timed", **{**common, "max_iters": 10**6,
                                                                "lr_decay_iters": 10**6, "max_time": 1.0}))]
    summary, params, _ = run_job(tmp_path, 2, runs)
    assert len(set(summary["resumed"]["digests"])) == 1, "the ranks' parameters differ"
    np.testing.assert_allclose(summary["resumed"]["losses"], whole.losses[4:], rtol=1e-5)
    np.testing.assert_allclose(params["resumed"], whole.model.flat_params, rtol=1e-4, atol=1e-6)
    # max_time: one clock for all ranks, so one stopping iteration and the same parameters
    assert len(set(summary["timed"]["digests"])) == 1
    assert 0 < summary["timed"]["iter_num"] < 10**6
    assert load_checkpoint(tmp_path / "timed" / CHECKPOINT_NAME)[1]["train_seconds"] >= 1.0
