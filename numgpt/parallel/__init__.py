"""Batch parallelism: one model, each batch split across threads, forked processes or MPI ranks.

:class:`DataParallel` wraps a :class:`numgpt.model.GPT` (as PyTorch's DDP
wraps a module) and is the one interface the trainer uses::

    dp = DataParallel(model, n_workers=2, processes="auto")
    optimizer = AdamW(dp.flat_params, dp.flat_grads, ...)   # after wrapping: see DataParallel
    loss, grads = dp.loss_and_grads(x, y)                   # the whole batch's loss and gradient
    dp.loss(x, y)                                           # evaluation, split the same way
    dp.close()                                              # stops forked workers, if any

The pieces, each in its own file: ``threads`` (the shared thread pool, also
used by AdamW), ``sink`` (worker threads adding into one gradient buffer in a
fixed order), ``forked`` (worker processes), ``mpi`` (ranks on one or more
machines; mpi4py is imported only when MPI is used), ``data_parallel`` (the
wrapper: splitting a batch, weighting each slice by its targets, reducing the
flat gradient buffer). ``numgpt.model`` imports nothing from here.
"""

from .data_parallel import PROCESS_GRADS_LIMIT, DataParallel
from .forked import ForkedWorkers, WorkerProcessDied, fork_available, shared_zeros
from .sink import GradientOrderError, GradientSink, WorkerFailed
from .threads import default_processes, default_threads, run_parallel, split

__all__ = ["DataParallel", "PROCESS_GRADS_LIMIT", "GradientSink", "GradientOrderError", "WorkerFailed",
           "ForkedWorkers", "WorkerProcessDied", "fork_available", "shared_zeros", "default_threads",
           "default_processes", "run_parallel", "split"]
