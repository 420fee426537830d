"""The gradient sink: worker threads adding their slices' gradients into one buffer in a fixed order."""

import threading
import time

import numpy as np


class WorkerFailed(RuntimeError):
    """Another worker of the same step raised; its exception is the one reported."""


class GradientOrderError(RuntimeError):
    """A worker's turn to add a gradient can never come (a bug in the order of additions), or no
    addition was made for ``GradientSink.timeout`` seconds while it waited."""


class GradientSink:
    """Adds the gradients of one step's batch slices into the model's gradient buffers.

    Worker ``k`` hands its gradients to ``sink.add(k, name, value, path)``, in
    the order of ``GPT.backward`` (``functools.partial(sink.add, k)`` is that
    method's ``add``), then calls ``sink.finish(k)``.

    With one worker it is a plain ``grads[name] += value``. With several workers
    sharing the buffers, worker k's part of a parameter is added only after
    workers 0..k-1 have added theirs, and a parameter's second path (the tied
    ``wte``: lm head, then embedding) only after every worker's first path. The
    additions thus happen in one fixed order: the sums, and so training runs,
    are the same on every run, and no worker needs its own copy of the
    gradients (497 MB at GPT-2 124M).

    With ``overwrite``, the first addition into each slot (worker 0's first
    path, first in the fixed order) copies instead of adding, which saves
    zeroing the buffer first; every slot receives such a first addition.

    A worker never stops to wait for its turn: an addition that cannot be made
    yet is queued (the gradient array is kept) and made as soon as the worker's
    next :meth:`add` finds it allowed, or in :meth:`finish`, the only call that
    blocks. A worker only ever waits for an addition that comes earlier in the
    fixed order, so no two wait on each other; a worker that fails calls
    :meth:`fail` to release the others.

    Should that order be broken (a path never added, wrong turn arithmetic), the
    step must fail, not hang: once every worker is waiting or finished and no
    waiting worker's turn has come, no addition can ever be made, and the
    worker that sees it raises :class:`GradientOrderError` naming what each
    worker waits for (the others get :class:`WorkerFailed`). As a last resort a
    wait also ends with that error after ``timeout`` seconds without any
    worker's addition (a worker stuck outside the sink).
    """

    timeout = 600.0     # seconds; a slice's slowest stretch between two additions is far shorter

    def __init__(self, grads, n_workers=1, overwrite=False):
        self.grads = grads
        self.n_workers = n_workers
        self.overwrite = overwrite
        self._added = {}               # (name, path) -> how many workers have added
        self._queues = [[] for _ in range(n_workers)]
        self._cond = threading.Condition()
        self._failed = False
        self._waiting = {}             # worker -> the (name, path) it waits to add
        self._finished = set()         # workers whose every addition is made
        self._last_addition = time.monotonic()

    def add(self, worker, name, value, path=0):
        if value is None or name not in self.grads:      # absent biases when bias=False (GPT.backward skips them)
            return
        if self.n_workers == 1:
            self._put(worker, name, path, value)
            return
        self._queues[worker].append((name, path, value))
        self._drain(worker, block=False)

    def finish(self, worker):
        """Make every queued addition of ``worker``, waiting for its turn where needed."""
        if self.n_workers > 1:
            self._drain(worker, block=True)
            with self._cond:
                self._finished.add(worker)
                self._cond.notify_all()       # the waiting workers re-check whether any can go on

    def _turn(self, worker, name, path):
        return self._added.get((name, path), 0) == worker and \
            (path == 0 or self._added.get((name, path - 1), 0) == self.n_workers)

    def _drain(self, worker, block):
        queue = self._queues[worker]
        while queue:
            name, path, value = queue[0]
            with self._cond:
                if block:
                    self._wait_for_turn(worker, name, path)
                if self._failed:
                    raise WorkerFailed("another worker of this step failed")
                if not self._turn(worker, name, path):
                    return
            self._put(worker, name, path, value)   # outside the lock: no other worker may touch this slot now
            queue.pop(0)
            with self._cond:
                self._added[(name, path)] = worker + 1
                self._last_addition = time.monotonic()
                self._cond.notify_all()

    def _wait_for_turn(self, worker, name, path):
        """Wait (holding ``self._cond``) until ``worker`` may add ``(name, path)`` or the step failed."""
        self._waiting[worker] = (name, path)
        try:
            while not (self._failed or self._turn(worker, name, path)):
                if len(self._waiting) + len(self._finished) == self.n_workers and \
                        not any(self._turn(w, *item) for w, item in self._waiting.items()):
                    self._give_up("no worker can ever add again")
                remaining = self._last_addition + self.timeout - time.monotonic()
                if remaining <= 0:
                    self._give_up(f"no worker added a gradient for {self.timeout:g} s")
                self._cond.wait(remaining)
        finally:
            del self._waiting[worker]

    def _give_up(self, why):
        self._failed = True
        self._cond.notify_all()
        waits = "; ".join(f"worker {w} waits to add {name!r} (path {path}), which needs "
                          + self._needs(w, name, path) for w, (name, path) in sorted(self._waiting.items()))
        finished = f"; finished: workers {sorted(self._finished)}" if self._finished else ""
        raise GradientOrderError(f"gradient additions out of order, {why}: {waits}{finished}")

    def _needs(self, worker, name, path):
        text = f"{worker} earlier worker(s) to have added it ({self._added.get((name, path), 0)} have)"
        if path:
            text += (f" and all {self.n_workers} workers to have added path {path - 1} "
                     f"({self._added.get((name, path - 1), 0)} have)")
        return text

    def _put(self, worker, name, path, value):
        if self.overwrite and worker == 0 and path == 0:
            np.copyto(self.grads[name], value)
        else:
            self.grads[name] += value

    def fail(self):
        with self._cond:
            self._failed = True
            self._cond.notify_all()
