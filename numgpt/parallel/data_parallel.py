"""DataParallel: one model, its batch cut into slices that run at once, one summed gradient.

``DataParallel(model, n_workers=2)`` wraps a :class:`numgpt.model.GPT` as
PyTorch's DDP wraps a module. ``loss_and_grads`` and ``loss`` take the whole
batch, cut its rows into one contiguous slice per worker (:func:`split`), run
the model's :meth:`~numgpt.model.GPT.loss_forward` and
:meth:`~numgpt.model.GPT.backward` on each slice at once, and leave the
batch's gradient in ``model.flat_grads``. Each slice's loss gradient is
weighted by its share of the batch's targets, so the result is the gradient
of the whole batch's mean loss: the one-worker result up to rounding.

Three kinds of worker, which combine:

* **threads** (``processes=False``): NumPy releases the interpreter lock in
  BLAS and in ufuncs, so threads keep the cores busy; every thread adds into
  the model's one gradient buffer through a :class:`GradientSink`, in a fixed
  order, so runs are bitwise reproducible.
* **forked processes** (``processes=True``, Linux): no interpreter lock
  between the slices, for one private gradient buffer per extra worker,
  added in worker order after the step (numgpt/parallel/forked.py). The
  workers must read the parameters the optimizer writes, so wrapping moves
  the model's ``flat_params`` into shared memory (:meth:`GPT.use_param_buffer`):
  **build the optimizer on ``dp.flat_params`` after wrapping** (the trainer does).
* **MPI ranks** (``comm=``, an mpi4py communicator; numgpt/parallel/mpi.py):
  every rank holds the whole model and is given the same global batch; rank r
  takes its share of the rows (``split`` again; uneven shares are fine), cuts
  it further among its own workers, and one in-place ``Allreduce(SUM)`` over
  the flat gradient buffer gives every rank the batch's gradient.
"""

import functools
import mmap
import weakref

import numpy as np

from .._blas import blas_threads
from ..model import OverwritingAdd, count_targets, param_views
from .forked import ForkedWorkers, fork_available, shared_zeros
from .sink import GradientSink, WorkerFailed
from .threads import default_threads, parallel_add, run_parallel, split

# processes="auto" forks workers only while their private gradient buffers stay this small
PROCESS_GRADS_LIMIT = 256 << 20


class DataParallel:
    """``model`` with each batch split across ``n_workers`` workers (and, with ``comm``, across MPI ranks).

    ``n_workers``: workers in this process (default ``$NUMGPT_THREADS``, else
    the cores, at most 4); 1 runs each batch (or this rank's rows) whole.
    ``processes``: True runs every slice after the first in a forked worker
    process, False on threads, ``"auto"`` forks where that is available, the
    private gradient buffers take at most ``PROCESS_GRADS_LIMIT`` bytes in all
    and there is no ``comm`` (under MPI the workers stay threads). The
    workers are forked by the first step that needs them and see later
    parameter values (shared memory) but no other change made after the
    fork. :meth:`close` stops them (they also end with this process).
    """

    def __init__(self, model, n_workers=None, processes=False, comm=None):
        if n_workers is None:
            n_workers = default_threads()
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        if not (isinstance(processes, bool) or (isinstance(processes, str) and processes == "auto")):
            raise ValueError(f"processes must be True, False or 'auto', got {processes!r}")
        self.model = model
        self.n_workers = int(n_workers)
        if processes == "auto":
            grads_bytes = (self.n_workers - 1) * model.num_params * model.dtype.itemsize
            processes = comm is None and fork_available() and grads_bytes <= PROCESS_GRADS_LIMIT
        self.processes = bool(processes) and fork_available()
        self.comm = comm
        self._workers = None            # the forked workers, started by the first step that needs them
        self._worker_grads = []         # one flat gradient buffer per worker process, in shared memory
        if self.processes and self.n_workers > 1 and not _is_shared(model.flat_params):
            model.use_param_buffer(shared_zeros(model.num_params, model.dtype))

    # --- what the optimizer and the trainer see ---------------------------------------------------

    @property
    def flat_params(self):
        return self.model.flat_params

    @property
    def flat_grads(self):
        return self.model.flat_grads

    @property
    def params(self):
        return self.model.params

    @property
    def grads(self):
        return self.model.grads

    @property
    def rank(self):
        return 0 if self.comm is None else self.comm.Get_rank()

    @property
    def n_ranks(self):
        return 1 if self.comm is None else self.comm.Get_size()

    def describe(self):
        """One phrase: how a step is split, e.g. ``"2 MPI ranks x 1 worker"``."""
        kind = "forked processes" if self.processes and self.n_workers > 1 else "threads"
        local = f"{self.n_workers} worker{'s' if self.n_workers > 1 else ''}" + \
            (f" ({kind})" if self.n_workers > 1 else "")
        return local if self.comm is None else f"{self.n_ranks} MPI ranks x {local}"

    def memory_estimate(self, batch_size, block_size=None):
        """The model's estimate for this rank's share of ``batch_size`` rows, plus the workers' gradient buffers."""
        rows = -(-batch_size // self.n_ranks)
        estimate = self.model.memory_estimate(rows, block_size)
        model = self.model
        workers = (self.n_workers - 1) * model.num_params * model.dtype.itemsize if self.processes else 0
        estimate["worker_gradients"] = workers
        estimate["total"] += workers
        return estimate

    # --- the step ----------------------------------------------------------------------------

    def loss_and_grads(self, idx, targets, *, ignore_index=-1, dropout_rng=None, accumulate=False,
                       loss_scale=1.0, sync=True):
        """What ``GPT.loss_and_grads`` computes, with the batch split across the workers (and ranks).

        Returns ``(loss, model.grads)``: the whole batch's mean loss and its
        gradient (times ``loss_scale``; added to what is there with
        ``accumulate``). Under MPI ``idx`` and ``targets`` are the global batch,
        the same on every rank, and ``sync=False`` skips the all-reduce (for
        every micro-batch but the last when accumulating, as DDP's no_sync):
        the buffer then holds this rank's part only until a later call syncs.
        """
        model = self.model
        model.check_targets(idx, targets)
        total = count_targets(targets, ignore_index)
        # One draw from the run's generator per call, whatever the split, so the generator (saved in
        # checkpoints, the same on every rank) and every later batch do not depend on the worker or
        # rank count; each row's masks then come from that seed and the row's place in the batch.
        step_seed = None if dropout_rng is None else int(dropout_rng.integers(0, 2**63))
        first_row = 0
        if self.comm is not None:
            rows = self._rank_rows(idx.shape[0])
            idx, targets, first_row = idx[rows], targets[rows], rows.start
        losses = self._local_step(idx, targets, total, ignore_index, step_seed, first_row, accumulate,
                                  loss_scale)
        if self.comm is not None and sync:
            from .mpi import allreduce_sum
            allreduce_sum(self.comm, model.flat_grads)
        return self._mean(losses, total), model.grads

    def _local_step(self, idx, targets, total, ignore_index, step_seed, first_row, accumulate, loss_scale):
        """This process's rows: their gradient, each slice weighted by its targets over ``total``, into
        ``flat_grads``; returns ``[(mean loss, targets)]`` of the slices run. Row ``i`` here is row
        ``first_row + i`` of the batch, whose dropout masks come from ``step_seed`` and that index."""
        model = self.model
        parts = self._parts(idx.shape[0])
        counts = [int(np.count_nonzero(targets[s] != ignore_index)) for s in parts]
        if sum(counts) == 0:                       # this rank's rows predict nothing: it adds nothing
            if not accumulate:
                model.flat_grads[...] = 0.0
            return []
        if len(parts) > 1 and min(counts) == 0:    # a slice without targets: run the rows whole
            parts, counts = [slice(None)], [sum(counts)]
        scales = [loss_scale * n / total for n in counts]
        seeds = [None if step_seed is None else (step_seed, first_row + (s.start or 0)) for s in parts]
        if len(parts) == 1:
            loss, cache = model.loss_forward(idx, targets, ignore_index=ignore_index, dropout_rng=_rng(seeds[0]))
            # Without accumulation the first addition into each slot is a copy: no zeroing pass.
            model.backward(cache, scales[0], add=None if accumulate else OverwritingAdd(model.grads))
            return [(loss, counts[0])]
        if self.processes:
            losses = self._forked_step(idx, targets, parts, scales, seeds, ignore_index, accumulate)
        else:
            sink = GradientSink(model.grads, len(parts), overwrite=not accumulate)
            jobs = [(idx[s], targets[s], sink, k, scale, ignore_index, _rng(seed))
                    for k, (s, scale, seed) in enumerate(zip(parts, scales, seeds))]
            losses = run_parallel(self._thread_slice, jobs, secondary=(WorkerFailed,))
        return list(zip(losses, counts))

    def _thread_slice(self, idx, targets, sink, worker, loss_scale, ignore_index, dropout_rng):
        """One slice on a thread, adding its gradients through ``sink`` as ``worker``; its mean loss."""
        try:
            loss, cache = self.model.loss_forward(idx, targets, ignore_index=ignore_index, dropout_rng=dropout_rng)
            self.model.backward(cache, loss_scale, add=functools.partial(sink.add, worker))
            sink.finish(worker)
            return loss
        except BaseException:
            sink.fail()           # the other workers must not wait for this one's additions
            raise

    def _forked_step(self, idx, targets, parts, scales, seeds, ignore_index, accumulate):
        """The slices after the first run in worker processes, the first one here; returns their losses.

        Each worker writes its slice's gradient into its own shared buffer; they
        are added into ``flat_grads`` after this process's own slice, in worker
        order, so the sums are the same on every run.
        """
        model = self.model
        workers = self._start_workers()
        for k in range(1, len(parts)):
            s = parts[k]
            workers.submit(k - 1, ("grads", k - 1, idx[s], targets[s], scales[k], ignore_index, seeds[k]))
        with blas_threads(1):           # the other cores run the workers
            loss, cache = model.loss_forward(idx[parts[0]], targets[parts[0]], ignore_index=ignore_index,
                                             dropout_rng=_rng(seeds[0]))
            model.backward(cache, scales[0], add=None if accumulate else OverwritingAdd(model.grads))
        losses = [loss]
        for k in range(1, len(parts)):
            losses.append(workers.result(k - 1))
            parallel_add(model.flat_grads, self._worker_grads[k - 1], self.n_workers)   # the cores are free now
        return losses

    def _worker_slice(self, k, idx, targets, loss_scale, ignore_index, seed):
        """Runs in worker process ``k``: one slice's loss, its gradient written to that worker's buffer."""
        model = self.model
        loss, cache = model.loss_forward(idx, targets, ignore_index=ignore_index, dropout_rng=_rng(seed))
        model.backward(cache, loss_scale, add=OverwritingAdd(param_views(self._worker_grads[k], model.layout)))
        return loss

    # --- evaluation ------------------------------------------------------------------------------

    def loss(self, idx, targets, ignore_index=-1):
        """The whole batch's mean loss (evaluation mode), its slices evaluated at once.

        With worker processes the slices run one per worker; under MPI each
        rank evaluates its rows and the sums are added over the ranks. The
        slices' means are weighted by their target counts: the whole batch's
        mean up to rounding.
        """
        model = self.model
        if self.comm is None and not self.processes:
            return model.loss(idx, targets, ignore_index)
        model.check_targets(idx, targets)
        total = count_targets(targets, ignore_index)
        if self.comm is not None:
            rows = self._rank_rows(idx.shape[0])
            idx, targets = idx[rows], targets[rows]
        return self._mean(self._local_losses(idx, targets, ignore_index), total)

    def _local_losses(self, idx, targets, ignore_index):
        """``[(mean loss, targets)]`` of this process's slices of ``idx``."""
        model = self.model
        parts = self._parts(idx.shape[0])
        counts = [int(np.count_nonzero(targets[s] != ignore_index)) for s in parts]
        if sum(counts) == 0:
            return []
        if len(parts) == 1 or min(counts) == 0 or not self.processes:
            return [(model.loss(idx, targets, ignore_index), sum(counts))]
        workers = self._start_workers()
        for k in range(1, len(parts)):
            workers.submit(k - 1, ("loss", idx[parts[k]], targets[parts[k]], ignore_index))
        with blas_threads(1):
            losses = [model.loss(idx[parts[0]], targets[parts[0]], ignore_index)]
        losses += [workers.result(k - 1) for k in range(1, len(parts))]
        return list(zip(losses, counts))

    # --- splitting and reducing ------------------------------------------------------------------

    def _parts(self, B):
        return [slice(lo, hi) for lo, hi in split(B, self.n_workers)]

    def _rank_rows(self, B):
        """This rank's rows of a global batch of ``B`` (empty when there are more ranks than rows)."""
        lo, hi = B * self.rank // self.n_ranks, B * (self.rank + 1) // self.n_ranks
        return slice(lo, hi)

    def _mean(self, losses, total):
        """The batch's mean loss from its slices' ``[(mean, targets)]`` (summed over the ranks under MPI)."""
        if self.comm is None and len(losses) == 1:
            return losses[0][0]
        loss_sum = sum(loss * n for loss, n in losses)
        if self.comm is not None:
            from .mpi import allreduce_sum

            buffer = np.array([loss_sum], dtype=np.float64)
            allreduce_sum(self.comm, buffer)
            loss_sum = float(buffer[0])
        return loss_sum / total

    # --- worker processes ------------------------------------------------------------------------

    def _start_workers(self):
        if self._workers is None or self._workers.closed:
            n, model = self.n_workers - 1, self.model
            self._worker_grads = [shared_zeros(model.num_params, model.dtype) for _ in range(n)]
            # A weak reference: the workers must not keep this wrapper alive (its finalizer stops them).
            self._workers = ForkedWorkers(n, functools.partial(_run_worker_job, weakref.ref(self)))
        return self._workers

    def close(self):
        """Stop the worker processes, if any (a later step starts new ones)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
            self._worker_grads = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _run_worker_job(dp_ref, kind, *args):
    """What a worker process runs: a slice's gradient ("grads") or its evaluation loss ("loss")."""
    dp = dp_ref()
    return dp._worker_slice(*args) if kind == "grads" else dp.model.loss(*args)


def _rng(seed):
    """The dropout generator of a slice: ``(step_seed, first row)`` -> :class:`RowGenerators`."""
    return None if seed is None else RowGenerators(*seed)


class RowGenerators:
    """Random numbers drawn row by row, each batch row from a stream of its own.

    Dropout masks drawn this way are a function of the step's seed and of each row's place in the
    whole batch only, so the same run gives the same masks (and the same losses, to round-off)
    however the batch is split across threads, worker processes or MPI ranks. Quacks like the one
    ``numpy.random.Generator`` method dropout calls: ``random(shape, dtype)`` with the batch first.
    """

    def __init__(self, step_seed, first_row):
        self.step_seed, self.first_row = step_seed, first_row
        self._rows = []

    def random(self, shape, dtype=np.float64):
        while len(self._rows) < shape[0]:          # a row's stream persists through the step's layers
            self._rows.append(np.random.default_rng([self.step_seed, self.first_row + len(self._rows)]))
        out = np.empty(shape, dtype=dtype)
        for row, generator in zip(out, self._rows):
            generator.random(row.shape, dtype=dtype, out=row)
        return out


def _is_shared(array):
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)
