"""MPI for data-parallel training on several processes or machines (``mpiexec -n N numgpt train``).

Every rank holds the whole model and draws the same global batch; each
trains on its rows (:class:`numgpt.parallel.DataParallel` with ``comm=``) and
one in-place all-reduce of the flat gradient buffer per optimizer step gives
every rank the same gradient, hence the same AdamW step.

mpi4py is imported only here and only when MPI is in use: the library itself
needs NumPy alone (``pip install 'numgpt[mpi]'`` adds mpi4py and MPICH).
Whether training uses MPI is ``$NUMGPT_MPI``: ``1`` always, ``0`` never,
``auto`` (the default) when the process was started by an MPI launcher for a
job of more than one rank, which MPICH's and Open MPI's launchers announce in
each rank's environment.

Failures must end the whole job, not leave the other ranks waiting forever in
a collective: :func:`stop_job_on_error` prints a rank's error and calls
``MPI_Abort``, and :func:`agree` runs a step that may fail on some ranks only
(opening the run directory, loading data) and turns any rank's failure into
an error on every rank.
"""

import contextlib
import os
import sys
import time
import traceback

import numpy as np

# What MPI launchers put in each rank's environment: world size (MPICH's hydra, Intel MPI,
# Open MPI, MVAPICH) or, for PMIx launchers, the rank alone.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ONLY_VARIABLES = ("PMIX_RANK",)
ABORT_GRACE = 0.5      # seconds between printing a rank's error and aborting the job (see stop_job_on_error)


class RankFailed(RuntimeError):
    """Another MPI rank failed; its message is in this one, and that rank reported its own error."""


def mpi_setting():
    """``$NUMGPT_MPI``: ``"1"``, ``"0"`` or ``"auto"`` (the default)."""
    value = os.environ.get("NUMGPT_MPI", "auto").strip().lower() or "auto"
    if value not in ("0", "1", "auto"):
        raise ValueError(f"NUMGPT_MPI must be 0, 1 or auto, got {os.environ.get('NUMGPT_MPI')!r}")
    return value


def launched_by_mpi():
    """True when an MPI launcher started this process as one rank of a job of more than one."""
    for name in _SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "")) > 1:
                return True
        except ValueError:
            pass
    return any(name in os.environ for name in _RANK_ONLY_VARIABLES)


def mpi_world():
    """mpi4py's ``COMM_WORLD`` if training is to use MPI (see :func:`mpi_setting`), else None."""
    setting = mpi_setting()
    if setting == "0" or (setting == "auto" and not launched_by_mpi()):
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"this process runs under an MPI launcher (or NUMGPT_MPI=1) but mpi4py cannot be "
                          f"imported ({e}); install it with: pip install 'numgpt[mpi]' (or set NUMGPT_MPI=0 "
                          f"to train each process on its own)") from None
    return MPI.COMM_WORLD


def allreduce_sum(comm, array):
    """Replace ``array`` (contiguous NumPy) on every rank by its sum over the ranks, in place."""
    from mpi4py import MPI

    comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)


def max_over_ranks(comm, value):
    """The largest of the ranks' integers ``value``, on every rank (one small all-reduce)."""
    from mpi4py import MPI

    buffer = np.array([int(value)], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.MAX)
    return int(buffer[0])


def local_ranks(comm):
    """How many ranks of ``comm`` run on this machine (they share its cores)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def workers_per_rank(comm):
    """Workers (and BLAS threads) for each rank: ``$NUMGPT_THREADS`` if set, else this machine's
    cores shared among its ranks (at least 1, at most 4)."""
    from .threads import default_threads

    if os.environ.get("NUMGPT_THREADS"):
        return default_threads()
    return max(1, min(4, (os.cpu_count() or 1) // local_ranks(comm)))


def quiet_other_ranks(comm):
    """Discard the standard output of every rank but 0 from now on (standard error stays for failures).

    ``mpiexec`` merges every rank's output; the job's progress and results
    are rank 0's alone, including what a caller prints after training.
    """
    if comm.Get_rank() != 0 and not getattr(sys.stdout, "numgpt_discarded", False):
        sys.stdout.flush()
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
        sys.stdout.numgpt_discarded = True


def agree(comm, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on every rank; if it raised on any rank, raise on every rank.

    A failing rank raises its own error, the others :class:`RankFailed`
    naming the first failing rank; all are marked ``collective`` (raised on
    every rank alike, so nobody waits and no abort is needed) and all but the
    first failing rank's ``mpi_quiet``, so that the job reports the failure
    once (``numgpt train`` prints nothing for a quiet error).
    """
    if comm is None:
        return fn(*args, **kwargs)
    result, error = None, None
    try:
        result = fn(*args, **kwargs)
    except Exception as e:          # noqa: BLE001  (re-raised below, on every rank)
        error = e
    outcomes = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
    if not failed:
        return result
    first, text = failed[0]
    if error is None:
        error = RankFailed(f"MPI rank {first} failed: {text}")
    error.collective = True
    error.mpi_quiet = comm.Get_rank() != first
    raise error


@contextlib.contextmanager
def stop_job_on_error(comm):
    """On an error not raised on every rank alike, print it (naming the rank) and abort the whole job.

    The other ranks may be waiting in a collective that this rank will never
    join; ``MPI_Abort`` ends them all within moments, with exit code 1.
    """
    if comm is None:
        yield
        return
    try:
        yield
    except BaseException as e:
        if getattr(e, "collective", False):
            raise
        where = f"numgpt: MPI rank {comm.Get_rank()} of {comm.Get_size()}"
        if isinstance(e, KeyboardInterrupt):       # Ctrl-C or SIGTERM before training began (train.Stopped)
            print(f"{where}: interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr, flush=True)
            time.sleep(ABORT_GRACE)
            comm.Abort(128 + int(getattr(e, "signum", 2)))     # the exit code of a plain run so stopped
        expected = isinstance(e, (ValueError, TypeError, OSError)) or type(e).__name__ == "TrainingError"
        text = f"{type(e).__name__}: {e}" if expected else "".join(traceback.format_exception(e)).rstrip()
        print(f"{where} failed, stopping the job: {text}", file=sys.stderr, flush=True)
        # Give mpiexec a moment to forward the message: MPI_Abort kills the launcher's I/O proxies,
        # and under load the message was lost with them (1 run in 8 of tests/parallel/test_mpi.py::
        # test_a_rank_that_raises_ends_the_job_with_its_message with a busy core; 16 of 16 with this).
        time.sleep(ABORT_GRACE)
        comm.Abort(1)
        raise                       # not reached: Abort ends this process too
