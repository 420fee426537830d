"""Atomic file writes: a file at a path is either the old one or the new one, never half of each.

The new contents go to a temporary file in the same directory (same file
system, so the final rename is atomic), which is flushed and fsynced before
``os.replace`` puts it in place; the directory is fsynced afterwards so the
rename itself survives a crash. On any error, Ctrl-C included, the temporary
file is removed and whatever was at the path before is untouched.

:func:`atomic_keep` gives a file a second name the same way, so that a later
atomic write to the first name leaves the second holding the old contents.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_keep", "atomic_writer"]


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
    """Yield a file whose contents replace ``path`` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    temp_path, fd = _create_temp_file(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)


def atomic_keep(path: str, kept_path: str) -> None:
    """Make ``kept_path`` hold what ``path`` holds now, atomically, surviving later writes to ``path``.

    A hard link costs no copy and no space: :func:`atomic_writer` replaces
    ``path``'s directory entry rather than rewriting its file, so the link
    keeps the old file. Where hard links are refused (FAT, some network
    file systems) the file is copied instead. ``kept_path`` is either its old
    contents or the new, never part of a copy.
    """
    directory = os.path.dirname(os.path.abspath(kept_path))
    temp_path, fd = _create_temp_file(directory, os.path.basename(kept_path))
    os.close(fd)
    try:
        try:
            os.unlink(temp_path)          # os.link will not replace a name
            os.link(path, temp_path)
        except OSError:
            with open(path, "rb") as src, open(temp_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(temp_path, kept_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    _fsync_directory(directory)


def _create_temp_file(directory: str, basename: str) -> tuple[str, int]:
    # os.open with mode 0o666 lets the umask decide the permissions, as for
    # any freshly created file (tempfile.mkstemp would force 0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp_path = os.path.join(directory, f".{basename}.{secrets.token_hex(6)}.tmp")
        try:
            return temp_path, os.open(temp_path, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as e:      # (read-only, no permission, no space): name the file the user asked for
            raise type(e)(e.errno, e.strerror, os.path.join(directory, basename)) from None


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable.  Not every platform can open a
    # directory (Windows cannot); the data is safe on disk either way.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

