"""The training that tests/parallel/test_mpi.py runs under ``mpiexec -n N python mpi_job.py SPEC.json``.

SPEC holds ``runs``: a list of ``{"name", "settings"}`` (TrainConfig fields),
trained one after the other on every rank, and ``result``: where rank 0
writes what the test compares (``RESULT.json`` with each run's losses,
evaluation, iteration and a digest of every rank's parameters, and
``RESULT.npz`` with rank 0's final parameters). ``fail`` (optional,
``{"rank", "call"}``) makes that rank raise in that call of the step,
``no_data_on_rank`` (optional) makes that rank's data preparation fail, and
``pid_dir`` (optional) receives one file per rank holding its process id.
"""

import hashlib
import json
import os
import sys

import numpy as np


def main(spec_path):
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    from mpi4py import MPI

    from numgpt.parallel import DataParallel
    from numgpt.train import TrainConfig, train

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if spec.get("pid_dir"):
        with open(os.path.join(spec["pid_dir"], f"rank{rank}"), "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
    if spec.get("no_data_on_rank") == rank:
        from numgpt.data import DataError

        def no_data(*args, **kwargs):
            raise DataError(f"injected: no data on rank {rank}")
        sys.modules["numgpt.train"].prepare_data = no_data      # the module (numgpt.train is also the function)
    fail = spec.get("fail")
    if fail and fail["rank"] == rank:
        original = DataParallel.loss_and_grads
        calls = {"n": 0}

        def failing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == fail["call"]:
                raise ArithmeticError(f"injected failure on rank {rank}")
            return original(self, *args, **kwargs)
        DataParallel.loss_and_grads = failing

    summary, arrays = {}, {}
    for run in spec["runs"]:
        result = train(TrainConfig(**run["settings"]))
        digest = hashlib.sha256(result.model.flat_params.tobytes()).hexdigest()
        digests = comm.allgather(digest)
        if rank == 0:
            summary[run["name"]] = {"losses": result.losses, "iter_num": result.iter_num,
                                    "best_val_loss": result.best_val_loss, "last_eval": result.last_eval,
                                    "digests": digests, "interrupted": result.interrupted}
            arrays[run["name"]] = result.model.flat_params
    if rank == 0:
        np.savez(spec["result"] + ".npz", **arrays)
        with open(spec["result"] + ".json", "w", encoding="utf-8") as f:
            json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1])
