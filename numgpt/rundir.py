"""The run directory: one trainer at a time, no trained model replaced by accident, one metrics log per run.

A training run owns its ``out_dir``:

* **A lock.** ``out_dir/train.lock`` is held with ``flock`` for as long as a
  trainer runs, and records the holder's process id, host and start time.  A
  second trainer on the same directory is refused with the holder's pid.  The
  operating system drops an ``flock`` when its process dies, however it dies,
  so a lock file left by a killed trainer is recognised as stale and taken
  over, with a note.  (Where ``fcntl`` is missing, a lock file whose process
  no longer runs counts as stale.)
* **No silent replacement.** A fresh run into a directory that already holds
  a checkpoint (``ckpt.npz``, or the best-validation ``best.npz``) is refused,
  naming ``--resume`` (continue it) and ``--overwrite`` (replace it).
* **No leftovers.** The temporary files of saves cut short by ``kill -9`` are
  removed once the lock is held (no other trainer can be writing them).
* **One log per run.** A fresh run starts a new ``metrics.jsonl`` with its
  first line (so a run that fails before it, e.g. out of memory, leaves an
  earlier run's log beside that run's checkpoint).  A resumed
  run first cuts the log back to the checkpoint's iteration, so that no
  iteration is logged twice: the step lines up to the checkpoint's iteration
  are kept, and the evaluation at that iteration, if it is due, runs again.

Every message says what is wrong and what to do, and the directory is
checked before any data is loaded or model built.
"""

import contextlib
import errno
import json
import os
import re
import socket
import time

from ._atomic import atomic_writer
from ._oserror import describe_os_error as _describe
from .checkpoint import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME

try:
    import fcntl
except ImportError:      # Windows
    fcntl = None

METRICS_NAME = "metrics.jsonl"
LOCK_NAME = "train.lock"
# numgpt._atomic's temporary names for the files a trainer writes: ".ckpt.npz.<12 hex digits>.tmp"
_LEFTOVER = re.compile(r"\.(?:%s)\.[0-9a-f]{12}\.tmp" % "|".join(
    re.escape(n) for n in (CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, METRICS_NAME)))


class RunDirError(ValueError):
    """The run directory does not fit the settings (out_dir, resume, overwrite); the message says what to do."""


def describe_os_error(err, action, path=None):
    """``"ACTION: what is wrong"`` for an OSError met while ``action``; ``path`` names the file if the error does not."""
    return f"{action}: {_describe(err, path)}"


class RunDirectory:
    """``out_dir`` prepared for a fresh or a resumed run, and locked while in use (a context manager)."""

    def __init__(self, out_dir, *, resume=False, overwrite=False, log=print):
        self.out_dir = os.fspath(out_dir)
        self.checkpoint_path = os.path.join(self.out_dir, CHECKPOINT_NAME)
        self.metrics_path = os.path.join(self.out_dir, METRICS_NAME)
        self.lock_path = os.path.join(self.out_dir, LOCK_NAME)
        self.resume, self.overwrite, self.log = resume, overwrite, log
        self._lock_fd = None

    # --- opening and closing -------------------------------------------------------------------

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def open(self):
        """Create and lock the directory; refuse a run that would lose or mix up earlier work."""
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise RunDirError(describe_os_error(e, f"cannot create the run directory {self.out_dir}")) from None
        if not os.path.isdir(self.out_dir):
            raise RunDirError(f"--out_dir {self.out_dir} exists and is not a directory; choose another --out_dir")
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise RunDirError(f"the run directory {self.out_dir} is not writable; check its permissions "
                              f"or choose another --out_dir")
        self._lock()
        try:
            self._check_checkpoint()
            self._remove_leftover_temporaries()
        except BaseException:
            self.close()
            raise

    def close(self):
        """Release the lock (and remove its file)."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
        self._lock_fd = None

    def _check_checkpoint(self):
        exists = os.path.exists(self.checkpoint_path)
        if self.resume and not exists:
            raise RunDirError(f"--resume: no checkpoint at {self.checkpoint_path}; start a fresh run without "
                              f"--resume, or give the --out_dir of the run to continue")
        if self.resume or self.overwrite:
            return
        # A fresh run replaces both: its first checkpoint is its best so far, and a best.npz beside it would
        # be another run's.
        for path in (self.checkpoint_path, os.path.join(self.out_dir, BEST_CHECKPOINT_NAME)):
            if os.path.exists(path):
                raise RunDirError(f"{path} already holds a trained model. Continue it with --resume, train "
                                  f"into another --out_dir, or pass --overwrite to replace it")

    def _remove_leftover_temporaries(self):
        """Delete the temporary files of saves that a kill -9 or a power cut stopped midway.

        Each is as large as a checkpoint and nothing else would ever remove it; holding the lock
        means no other trainer can be writing one now.
        """
        leftovers = [n for n in os.listdir(self.out_dir) if _LEFTOVER.fullmatch(n)]
        for name in leftovers:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.out_dir, name))
        if leftovers:
            self.log(f"note: removed {len(leftovers)} temporary file(s) of an interrupted save from {self.out_dir}")

    # --- the lock ------------------------------------------------------------------------------

    def _lock(self):
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunDirError(describe_os_error(e, f"cannot create the lock file in {self.out_dir}")) from None
            try:
                if self._try_lock(fd):
                    self._lock_fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)                   # the file was replaced while we locked it: try the new one

    def _try_lock(self, fd):
        """Lock ``fd`` and write our name into it; False if its file was unlinked meanwhile."""
        previous = _read_holder(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunDirError(self._busy_message(previous)) from None
            # A holder that finished between our open and our flock unlinked the file we hold.
            try:
                if os.stat(self.lock_path).st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
            previous = _read_holder(fd)
        elif previous and previous.get("host") == socket.gethostname() and _pid_alive(previous.get("pid")):
            raise RunDirError(self._busy_message(previous))
        if previous:
            self.log(f"note: took over the lock {self.lock_path} left by process {previous.get('pid')} on "
                     f"{previous.get('host')} (started {previous.get('started')}), which no longer runs")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        return True

    def _busy_message(self, holder):
        who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
        return (f"another trainer ({who}) is using {self.out_dir}; wait for it to finish, stop it, "
                f"or train into another --out_dir")

    # --- the metrics log -----------------------------------------------------------------------

    def open_metrics(self, resume_iter=None):
        """The metrics log, opened for appending: new for a fresh run, cut back to ``resume_iter`` on resume."""
        try:
            if resume_iter is None:
                return _FreshLog(self.metrics_path)
            if os.path.exists(self.metrics_path):
                kept = _entries_up_to(self.metrics_path, resume_iter)
                with atomic_writer(self.metrics_path) as f:
                    f.write("".join(kept).encode("utf-8"))
            return open(self.metrics_path, "a", encoding="utf-8")
        except OSError as e:
            raise RunDirError(describe_os_error(e, f"cannot write the metrics log {self.metrics_path}")) from None


class _FreshLog:
    """A fresh run's metrics log, created (replacing any old one) when its first line is written."""

    def __init__(self, path):
        self.name, self._file = path, None

    def write(self, text):
        if self._file is None:
            with atomic_writer(self.name):
                pass
            self._file = open(self.name, "a", encoding="utf-8")
        return self._file.write(text)

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()


def _entries_up_to(path, iteration):
    """The log's lines that belong before a resume at ``iteration``: steps up to it, evaluations before it."""
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
                it = entry["iter"]
            except (ValueError, KeyError, TypeError):
                continue                  # a torn or foreign line: not worth keeping
            if not isinstance(it, int):
                continue
            is_eval = "val_loss" in entry
            if it < iteration or (it == iteration and not is_eval):
                kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def _read_holder(fd):
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
