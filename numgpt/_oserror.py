"""Operating-system errors as one sentence a person can act on, not raw errno text.

``[Errno 17] File exists: 'afile'`` says what the C library saw; a user needs
to hear which path is in the way and what to do about it. Used by the run
directory, the trainer and the command line.
"""

import errno
import os

__all__ = ["describe_os_error"]


def _blocking_file(path):
    """The first ancestor of ``path`` (or ``path`` itself) that exists but is not a directory, or None.

    Ancestors are spelt as in ``path``, so a relative path gives a relative answer, as the user typed it.
    """
    candidates = []
    while path and path not in candidates:
        candidates.append(path)
        path = os.path.dirname(path)
    for candidate in reversed(candidates):
        if os.path.lexists(candidate) and not os.path.isdir(candidate):
            return candidate
    return None


def describe_os_error(e, path=None):
    """One sentence for an OSError: what is wrong (naming the path) and, where it helps, what to do.

    ``path`` names the file when the error itself does not. A message numgpt
    wrote itself (an OSError whose text is not the system's wording for its
    errno) is kept as it is.
    """
    name = e.filename if e.filename is not None else e.filename2 if e.filename2 is not None else path
    path = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None
    shown = path if path is not None else "a file"
    code = e.errno
    system_text = os.strerror(code) if isinstance(code, int) else None
    if code is None or e.strerror is None or e.strerror != system_text:
        return str(e.strerror) if e.strerror is not None else (str(e) or type(e).__name__)
    if code == errno.ENOENT:
        return f"no such file or directory: {shown}"
    if code in (errno.EEXIST, errno.ENOTDIR):
        blocker = _blocking_file(path) if path is not None else None
        if blocker is not None and os.path.normpath(blocker) != os.path.normpath(path):
            return (f"{blocker} exists and is not a directory, so {path} cannot be made; "
                    f"remove or rename it, or choose another path")
        if code == errno.EEXIST and path is not None and os.path.isdir(path):
            return f"{path} already exists; choose another path"
        return f"{shown} exists and is not a directory; remove or rename it, or choose another path"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {shown} (check its permissions or choose another path)"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk is full while writing {shown}: free some space and try again, or choose another path"
    if code == errno.EROFS:
        return f"{shown} is on a read-only file system; choose another path"
    if code == errno.EISDIR:
        return f"{shown} is a directory, but a file is needed there"
    if code == errno.ENAMETOOLONG:
        return f"the file name is too long: {shown}"
    return f"{e.strerror[:1].lower()}{e.strerror[1:]}: {shown}" if path is not None else e.strerror
