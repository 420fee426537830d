"""Forked worker processes for training: batch slices in parallel without the GIL.

Why: the training step cuts the batch into one slice per core (see
``DataParallel.loss_and_grads``). On threads the slices share one interpreter lock, and
every stretch of Python between two NumPy calls of one slice may wait for the
other slice's. At the 4 x 128 model that cost was measured at about 10% of the
step: a half batch took 28.8 ms alone in a process, 28.9 with a twin process
beside it, and about 32.5 ms beside its twin on a thread. Forked processes run
the same slices with no lock between them. Their price: one private gradient
buffer per extra worker, added into the model's in a fixed order after the
step, and one fork when the workers start.

How: the wrapper moves the model's parameters into anonymous shared memory
(``shared_zeros``), so a child forked from the training process always reads
the parameters the optimizer last wrote. Each child receives jobs through a pipe, runs them (its
result lands in shared memory), and replies with a small picklable value.
Only ``fork`` gives the child the parent's model without pickling it, so this
runs on Linux only; elsewhere the threads do the work.
"""

import mmap
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
import warnings
import weakref

import numpy as np

from .._blas import set_blas_threads


def shared_zeros(n, dtype):
    """A zero-filled 1-D array of ``n`` elements in anonymous shared memory.

    Processes forked after this call see every later write to it (MAP_SHARED),
    unlike ordinary memory, which a fork copies on write.
    """
    dtype = np.dtype(dtype)
    buffer = mmap.mmap(-1, max(1, n * dtype.itemsize))      # anonymous maps come zero-filled
    return np.frombuffer(buffer, dtype=dtype, count=n)


def fork_available():
    """True where :class:`ForkedWorkers` can run: Linux, with the ``fork`` start method."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class WorkerProcessDied(RuntimeError):
    """A worker process ended without replying (killed, or out of memory)."""


class ForkedWorkers:
    """``n`` forked processes, each running ``target(*job)`` for the jobs sent to it.

    ``submit(k, job)`` hands worker k a job (a tuple of picklable arguments) and
    returns at once; ``result(k)`` waits for its reply: the return value, or the
    worker's exception raised again here with the worker's traceback as a note.
    ``target`` is fixed at the fork, with everything it refers to as it was
    then, except shared memory, which stays shared.

    A reply that was never collected (the caller raised between ``submit`` and
    ``result``) is read and dropped before that worker's next job. Workers
    ignore Ctrl-C (the parent decides) and exit when the parent closes their
    pipe, so they end with the parent even if :meth:`close` is never called.
    """

    def __init__(self, n, target):
        if not fork_available():
            raise RuntimeError("forked worker processes need Linux's fork start method")
        context = multiprocessing.get_context("fork")
        self._conns, self._procs, self._pending = [], [], []
        self.closed = False
        self._finalizer = weakref.finalize(self, _stop, self._conns, self._procs)
        try:
            for k in range(n):
                parent_end, child_end = context.Pipe()
                # The child must not hold the parent's ends of any pipe, or a pipe would stay
                # open after the parent closes it and that worker would never see EOF.
                proc = context.Process(target=_child_main, args=(child_end, [parent_end] + self._conns, target),
                                       name=f"numgpt-worker-{k + 1}", daemon=True)
                with warnings.catch_warnings():
                    # Python 3.12+ warns on forking a process that has threads (BLAS's, numgpt's
                    # pool): a child could inherit a lock some thread held. The child here only
                    # runs NumPy in its one thread; glibc and OpenBLAS reset their locks at fork.
                    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
                    proc.start()
                child_end.close()
                self._conns.append(parent_end)
                self._procs.append(proc)
                self._pending.append(False)
        except BaseException:
            self.close()
            raise

    def __len__(self):
        return len(self._procs)

    def submit(self, k, job):
        if self.closed:
            raise RuntimeError("these worker processes are closed")
        if self._pending[k]:          # an earlier step stopped before reading this reply
            self._receive(k)
        try:
            self._conns[k].send(job)
        except OSError:               # BrokenPipeError: the worker has ended
            self._died(k)
        self._pending[k] = True

    def result(self, k):
        status, value, trace = self._receive(k)
        if status == "error":
            value.add_note(f"(raised in numgpt worker process {k + 1}; its traceback:)\n{trace}")
            raise value
        return value

    def _receive(self, k):
        try:
            reply = self._conns[k].recv()
        except (EOFError, OSError):
            self._died(k)
        self._pending[k] = False
        return reply

    def _died(self, k):
        self.close()                  # joins the workers, so the exit code is known
        raise WorkerProcessDied(f"numgpt worker process {k + 1} ended without replying (exit code "
                                f"{self._procs[k].exitcode}); the step's gradients are incomplete") from None

    def close(self):
        """Stop the workers (idempotent; also runs when this object is collected or at exit)."""
        self.closed = True
        self._finalizer()


def _stop(conns, procs):
    for conn in conns:
        try:
            conn.close()                # the worker sees EOF and exits
        except OSError:
            pass
    for proc in procs:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2.0)


def _child_main(conn, parent_ends, target):
    for end in parent_ends:
        end.close()
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the parent decides when to stop,
    # and the worker ends when the parent closes its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_blas_threads(1)                            # one core per worker, as on the threads
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):                # the parent closed the pipe or ended
            break
        try:
            reply = ("ok", target(*job), None)
        except BaseException as e:                 # noqa: BLE001  (sent to the parent, raised there)
            reply = ("error", _picklable(e), traceback.format_exc())
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    conn.close()
    os._exit(0)                                    # no atexit handlers or finalizers of the parent's objects


def _picklable(error):
    """``error`` if it survives pickling, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:                              # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
