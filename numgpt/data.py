"""Training text: where it comes from, and how it is cut into batches.

Three sources of text, chosen by :func:`load_text`'s ``spec``:

``"default"`` — a built-in corpus that needs no download and no file
    (:func:`default_corpus`).  It is the English documentation of the
    Python standard library, read from the running interpreter's own
    source files: for each module of a fixed, sorted list of pure-Python
    standard-library modules (``_CORPUS_MODULES``), its source is parsed
    with :mod:`ast` (nothing is imported or executed) and its docstrings are
    taken in source order — the module's own, then each public top-level
    class and function, each class followed by its public methods.  Each
    docstring is dedented with :func:`inspect.cleandoc`; doctest examples (a
    ``>>>`` line and the lines up to the next blank line) are dropped,
    trailing spaces are stripped and runs of blank lines collapse to one,
    so paragraph breaks survive.  Docstrings shorter than
    ``_MIN_DOC_CHARS`` characters after cleaning are dropped, as are exact
    repeats; the rest are joined by blank lines.  The result is about
    0.7 MB of technical English with some code and about 100 distinct
    characters (CPython 3.10-3.13: 673-695 thousand characters, 99-102
    distinct), built in about a second.  It is deterministic for a given
    Python version and unaffected by anything the running program has
    imported or patched, but the standard library's documentation changes
    a little between releases, so the exact text (and hence a character
    vocabulary built from it) differs slightly between, say, Python 3.11
    and 3.12.

``"shakespeare"`` — tiny Shakespeare (1,115,394 bytes, 40,000 lines of the
    plays, 65 distinct characters), the data set of Karpathy's char-rnn and
    nanoGPT.  :func:`download_shakespeare` fetches it once into a cache
    directory and checks its SHA-256; offline, pass the file's path instead.

any other string — the path of a UTF-8 text file, used byte-exact (no
    newline translation; a leading UTF-8 byte-order mark is dropped).

Once tokenized, the ids form one long 1-D array.  :func:`split_train_val`
holds out its tail for validation, and :func:`get_batch` draws random
windows from it: ``x`` is ``block_size`` consecutive tokens and ``y`` the
same window shifted one token to the right, so ``y[b, t]`` is the token
that follows ``x[b, :t+1]`` — ``block_size`` next-token predictions from
every window.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import http.client
import inspect
import os
import pathlib
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
import warnings

import numpy as np

__all__ = [
    "DataError",
    "default_corpus",
    "SHAKESPEARE_URL",
    "SHAKESPEARE_SHA256",
    "SHAKESPEARE_SIZE",
    "default_cache_dir",
    "download_shakespeare",
    "load_text",
    "split_train_val",
    "check_data_fits",
    "get_batch",
]


class DataError(ValueError):
    """The training text or token data cannot be used, with the reason why."""


# ---------------------------------------------------------------------------
# The built-in corpus
# ---------------------------------------------------------------------------

# Pure-Python modules whose source ships with every CPython 3.10-3.13
# install, none of them deprecated for removal in that range, chosen for
# their prose documentation (GUI, demo and test modules are left out).
_CORPUS_MODULES = tuple(sorted("""
    abc argparse ast asyncio.events asyncio.queues asyncio.streams asyncio.tasks
    base64 bdb bisect calendar cmd code codecs codeop collections collections.abc
    colorsys concurrent.futures configparser contextlib copy copyreg csv
    dataclasses datetime decimal difflib dis doctest email.headerregistry
    email.message email.parser email.policy email.utils enum filecmp fileinput
    fnmatch fractions ftplib functools getopt getpass gettext glob graphlib gzip
    hashlib heapq hmac html html.parser http.client http.cookiejar http.cookies
    http.server imaplib importlib importlib.abc inspect io ipaddress json
    json.decoder json.encoder keyword linecache locale logging logging.config
    logging.handlers mailbox mimetypes modulefinder netrc numbers operator
    optparse os pathlib pdb pickle pickletools pkgutil platform plistlib poplib
    posixpath pprint profile pstats py_compile pyclbr queue quopri random re
    reprlib runpy sched secrets selectors shelve shlex shutil smtplib socket
    socketserver statistics string struct subprocess symtable sysconfig tabnanny
    tarfile tempfile textwrap threading timeit token tokenize trace traceback
    tracemalloc types typing unittest.case unittest.loader unittest.mock
    unittest.runner unittest.suite urllib.parse urllib.request
    urllib.robotparser uuid warnings wave weakref wsgiref.handlers
    wsgiref.simple_server wsgiref.validate xml.dom.minidom xml.dom.pulldom
    xml.etree.ElementTree xml.sax.handler xml.sax.saxutils xml.sax.xmlreader
    xmlrpc.client xmlrpc.server zipapp zipfile zipimport zoneinfo
""".split()))

# One-liners ("Return self.") teach little English; keep real paragraphs.
_MIN_DOC_CHARS = 80


def _clean_docstring(doc: str) -> str:
    """Dedent, drop doctest blocks, strip trailing spaces, and collapse runs
    of blank lines to a single blank line."""
    lines = []
    in_doctest = False
    for line in inspect.cleandoc(doc).splitlines():
        line = line.rstrip()
        if line.lstrip().startswith(">>>"):
            in_doctest = True
        if in_doctest:
            # A doctest example runs until the next blank line: its input,
            # continuation lines and expected output all go.
            if line:
                continue
            in_doctest = False
        if not line and (not lines or not lines[-1]):
            continue
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _module_source(stdlib: pathlib.Path, module_name: str) -> pathlib.Path | None:
    """The source file of a standard-library module, found without importing it."""
    base = stdlib.joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _docstrings_in(tree: ast.Module):
    """Yield the raw docstrings of a parsed module in source order: the
    module's, then each public top-level class and function, each class
    followed by its public methods.  Definitions inside top-level
    ``if``/``try`` blocks count (both branches: the source, not the
    platform, decides)."""

    def public_defs(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not node.name.startswith("_"):
                    yield node
            elif isinstance(node, ast.If):
                yield from public_defs(node.body)
                yield from public_defs(node.orelse)
            elif isinstance(node, ast.Try):
                yield from public_defs(node.body)
                for handler in node.handlers:
                    yield from public_defs(handler.body)
                yield from public_defs(node.orelse)
                yield from public_defs(node.finalbody)

    yield ast.get_docstring(tree, clean=False)
    for node in public_defs(tree.body):
        yield ast.get_docstring(node, clean=False)
        if isinstance(node, ast.ClassDef):
            for member in public_defs(node.body):
                if not isinstance(member, ast.ClassDef):
                    yield ast.get_docstring(member, clean=False)


@functools.lru_cache(maxsize=None)
def default_corpus() -> str:
    """The built-in corpus: cleaned docstrings of the Python standard library.

    See the module docstring for exactly what it contains.  Deterministic
    for a given Python version; computed once per process (about a second
    on this project's machine, nearly all of it in ``ast.parse``) and
    cached.
    """
    stdlib = pathlib.Path(sysconfig.get_path("stdlib"))
    seen: set[str] = set()
    docs: list[str] = []
    for module_name in _CORPUS_MODULES:
        path = _module_source(stdlib, module_name)
        if path is None:
            continue  # an unusual install without it: the corpus is just smaller
        try:
            with warnings.catch_warnings():
                # Old escape sequences in some sources warn when parsed.
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for doc in _docstrings_in(tree):
            if doc is None:
                continue
            doc = _clean_docstring(doc)
            if len(doc) < _MIN_DOC_CHARS or doc in seen:
                continue
            seen.add(doc)
            docs.append(doc)
    if not docs:
        raise DataError(
            f"the built-in 'default' corpus is read from the standard library's source files, "
            f"but none were found under {stdlib}; use --data PATH with a text file instead"
        )
    return "\n\n".join(docs) + "\n"


# ---------------------------------------------------------------------------
# Tiny Shakespeare
# ---------------------------------------------------------------------------

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_SIZE = 1_115_394
_SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
_CHUNK = 1 << 16


def default_cache_dir() -> pathlib.Path:
    """``$NUMGPT_CACHE`` if set, else ``~/.cache/numgpt``."""
    env = os.environ.get("NUMGPT_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "numgpt"


def _sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_shakespeare(
    cache_dir=None,
    *,
    url: str = SHAKESPEARE_URL,
    timeout: float = 30,
    sha256: str = SHAKESPEARE_SHA256,
    size: int = SHAKESPEARE_SIZE,
) -> pathlib.Path:
    """Return the path of a verified local copy of tiny Shakespeare.

    A copy already in ``cache_dir`` (default :func:`default_cache_dir`) whose
    SHA-256 is ``sha256`` is returned without touching the network.
    Otherwise the file is downloaded from ``url`` into a temporary file in
    the cache directory, its size and SHA-256 are checked, and only then is
    it moved into place (``os.replace``), so the cache never holds a partial
    or wrong file.  ``sha256`` and ``size`` exist so tests can use a small
    file; leave them alone otherwise.

    Raises :class:`DataError` when offline or on any network error, and on
    a size or checksum mismatch (the bad download is deleted).
    """
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / _SHAKESPEARE_FILENAME
    advice = f"use --data PATH with a local copy of the file (from {SHAKESPEARE_URL})"
    if target.is_file():
        try:
            if _sha256_of(target) == sha256:
                return target
        except OSError:
            pass  # unreadable cache entry: fetch a fresh copy over it
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create the cache directory {cache} ({err}); set NUMGPT_CACHE to a "
            f"writable directory, or {advice}"
        ) from None

    fd, tmp_name = tempfile.mkstemp(prefix=".tinyshakespeare-", suffix=".part", dir=cache)
    tmp = pathlib.Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > size:
                        break  # already wrong; no need to fetch the rest
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(
                f"could not download tiny Shakespeare from {url} ({reason}); {advice}"
            ) from None
        if received != size:
            got = f"more than {size}" if received > size else str(received)
            raise DataError(
                f"the file downloaded from {url} has {got} bytes, expected {size}; "
                f"it was not kept; {advice}"
            )
        if digest.hexdigest() != sha256:
            raise DataError(
                f"the file downloaded from {url} has SHA-256 {digest.hexdigest()}, "
                f"expected {sha256}; it was not kept; {advice}"
            )
        os.replace(tmp, target)
    finally:
        # After a successful os.replace the temporary name no longer exists.
        tmp.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------
# Loading text
# ---------------------------------------------------------------------------


def _read_text_file(path: pathlib.Path) -> str:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"data path {path} is a directory; give the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read data file {path}: {err.strerror or err}") from None
    if not raw:
        raise DataError(f"data file {path} is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # utf-8-sig skips a 3-byte BOM before decoding; err.start counts from
        # after it, so add it back to report a true file offset.
        offset = err.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(
            f"data file {path} is not UTF-8 text: invalid byte 0x{raw[offset]:02x} at byte "
            f"offset {offset}; convert it to UTF-8 first"
        ) from None
    if not text:
        raise DataError(f"data file {path} is empty (only a byte-order mark)")
    return text


def load_text(spec) -> tuple[str, str]:
    """Load training text; return ``(text, description)``.

    ``spec`` is ``"default"`` (the built-in corpus), ``"shakespeare"``
    (downloaded and cached tiny Shakespeare) or the path of a UTF-8 text
    file (a ``str`` or ``os.PathLike``; write ``./default`` for a file that
    is really called ``default``).  The description is a one-line summary
    for logs.  Any problem raises :class:`DataError` naming the path.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a str or path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec == "default":
        text = default_corpus()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return text, (
            f"built-in corpus: Python {version} standard-library docstrings "
            f"({len(text):,} characters)"
        )
    if isinstance(spec, str) and spec == "shakespeare":
        path = download_shakespeare()
        text = _read_text_file(path)
        return text, f"tiny Shakespeare ({path}, {len(text):,} characters)"
    if isinstance(spec, str) and not spec:
        raise DataError("data spec is empty; give 'default', 'shakespeare' or a file path")
    path = pathlib.Path(spec).expanduser()
    text = _read_text_file(path)
    return text, f"{path} ({len(text):,} characters)"


# ---------------------------------------------------------------------------
# Splitting and batching token ids
# ---------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_ids(name: str, data) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of token ids, got {type(data).__name__}")
    if data.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {data.shape}")
    if data.size and not np.issubdtype(data.dtype, np.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {data.dtype}")
    return data


def split_train_val(ids: np.ndarray, val_fraction: float = 0.1):
    """Split a 1-D id array into ``(train, val)``: the first
    ``1 - val_fraction`` of the tokens and the rest (views, not copies).

    A contiguous tail rather than random windows, so no validation text
    overlaps the training text.
    """
    _check_ids("ids", ids)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating)):
        raise TypeError(f"val_fraction must be a number, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n = len(ids)
    n_train = int(n * (1.0 - val_fraction))
    if n_train < 1 or n_train >= n:
        raise DataError(
            f"cannot split {n} tokens into non-empty training and validation parts "
            f"with val_fraction={val_fraction}; more text is needed"
        )
    return ids[:n_train], ids[n_train:]


def check_data_fits(data: np.ndarray, block_size: int, what: str = "the data") -> None:
    """Raise :class:`DataError` unless ``data`` holds at least one training
    window: ``block_size`` inputs plus the one extra target token."""
    block_size = _check_positive_int("block_size", block_size)
    n = len(data)
    if n < block_size + 1:
        hint = (
            f"use a smaller --block_size (at most {n - 1}) or more text"
            if n >= 2
            else "use more text"
        )
        raise DataError(
            f"{what} has {n} tokens but block_size + 1 = {block_size + 1} are needed "
            f"for one training window; {hint}"
        )


def get_batch(data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator):
    """Draw ``batch_size`` random windows from ``data``.

    Returns ``(x, y)``, both int64 arrays of shape ``(batch_size,
    block_size)``, with ``y[:, t] == x[:, t + 1]`` for ``t < block_size - 1``
    and ``y[:, -1]`` the token after the window.  Window starts are uniform
    over every position that leaves room for the window and its last
    target.  The same ``rng`` state gives the same batch.
    """
    _check_ids("data", data)
    batch_size = _check_positive_int("batch_size", batch_size)
    check_data_fits(data, block_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    starts = rng.integers(0, len(data) - block_size, size=batch_size)
    # One fancy-indexing gather of all windows at once: row b is
    # data[starts[b] : starts[b] + block_size + 1].
    windows = data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)
    x = np.ascontiguousarray(windows[:, :-1])
    y = np.ascontiguousarray(windows[:, 1:])
    return x, y


# ---------------------------------------------------------------------------
# Training data: a tokenized text split 90/10, or a synthetic task
# ---------------------------------------------------------------------------


class TextData:
    """Token ids of a text, split 90/10, with the tokenizer that made them."""

    def __init__(self, tokenizer, train_ids, val_ids, description):
        self.tokenizer, self.train_ids, self.val_ids, self.description = tokenizer, train_ids, val_ids, description
        self.vocab_size = tokenizer.vocab_size
        self.task = None

    def batch(self, split, batch_size, block_size, rng):
        return get_batch(self.train_ids if split == "train" else self.val_ids, batch_size, block_size, rng)


class TaskData:
    """Batches of a synthetic task; validation batches come from held-out problems."""

    def __init__(self, task):
        self.task = task
        self.tokenizer = None
        self.vocab_size = task.vocab_size
        self.description = f"synthetic task {task!r}"

    def batch(self, split, batch_size, block_size, rng):
        return self.task.sample(batch_size, rng, split="train" if split == "train" else "test")


class TokenFileData:
    """Token ids in files (see :mod:`numgpt.tokenfiles`), read a batch at a time, never loaded whole.

    The same interface as :class:`TextData`; ``train_ids`` and ``val_ids``
    are read-only memmaps.  :meth:`batch` draws the same windows as
    :func:`get_batch` with the same ``rng`` but reads each with one small
    file read (:meth:`numgpt.tokenfiles.TokenFile.windows` says why), so
    resident memory does not grow with the files.  ``tokenizer`` is None for
    nanoGPT or llm.c files with no vocabulary beside them.  Pickling sends
    the file names, not the tokens: the other side opens the same files.
    """

    def __init__(self, train_file, val_file, tokenizer, vocab_size, description):
        self.train_file, self.val_file = train_file, val_file
        self.tokenizer, self.vocab_size, self.description = tokenizer, vocab_size, description
        self.task = None
        self._open()

    def _open(self):
        self.train_ids, self.val_ids = self.train_file.open(), self.val_file.open()
        self._handles = {"train": open(self.train_file.path, "rb"), "val": open(self.val_file.path, "rb")}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("train_ids", "val_ids", "_handles")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def batch(self, split, batch_size, block_size, rng):
        split = "train" if split == "train" else "val"
        ids, file = (self.train_ids, self.train_file) if split == "train" else (self.val_ids, self.val_file)
        batch_size = _check_positive_int("batch_size", batch_size)
        check_data_fits(ids, block_size)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        starts = rng.integers(0, len(ids) - block_size, size=batch_size)     # as get_batch draws them
        windows = file.windows(self._handles[split], starts, block_size + 1)
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def _is_directory_spec(spec) -> bool:
    if isinstance(spec, str) and spec in ("default", "shakespeare", ""):
        return False
    return isinstance(spec, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(os.fspath(spec)))


def build_tokenizer(kind, text, vocab_size=512, log=print):
    """A ``"char"``, ``"byte"`` or freshly trained ``"bpe"`` tokenizer for ``text``."""
    from .tokenizers import TOKENIZER_KINDS, ByteTokenizer, CharTokenizer

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer must be one of {', '.join(map(repr, TOKENIZER_KINDS))}, got {kind!r}")
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    import time

    from .bpe import tokens_per_char, train_bpe

    start = time.perf_counter()
    tok = train_bpe(text, vocab_size)
    log(f"trained a byte-level BPE tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - start:.1f}s, "
        f"{tokens_per_char(tok, text[:200_000]):.3f} tokens per character")
    return tok


def prepare_data(spec, *, block_size, task="", tokenizer_kind="char", vocab_size=512, tokenizer=None, log=print):
    """:class:`TextData` of the text ``spec`` names (see :func:`load_text`), or :class:`TaskData` for ``task``.

    ``tokenizer`` (from a checkpoint) is reused when given; otherwise one of
    ``tokenizer_kind`` is built from the text.

    A directory ``spec`` holds token files (:mod:`numgpt.tokenfiles`:
    ``numgpt prepare``'s, nanoGPT's or llm.c's) and gives a
    :class:`TokenFileData`; the vocabulary is the prepared directory's
    tokenizer, else ``tokenizer``'s, else ``vocab_size``.
    """
    if task:
        from .tasks import make_task

        return TaskData(make_task(task))
    if _is_directory_spec(spec):
        # Token files written by numgpt prepare (or nanoGPT's, or llm.c's): mapped, never loaded.
        from .tokenfiles import open_token_dir

        found = open_token_dir(os.path.expanduser(os.fspath(spec)), vocab_size=vocab_size, tokenizer=tokenizer)
        data = TokenFileData(found.train, found.val, found.tokenizer, found.vocab_size, found.description)
        check_data_fits(data.train_ids, block_size, f"the training tokens ({found.train.path})")
        check_data_fits(data.val_ids, block_size, f"the validation tokens ({found.val.path})")
        return data
    from .tokenizers import encode_array

    text, description = load_text(spec)
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_kind, text, vocab_size, log)
    ids = encode_array(tokenizer, text)
    needed = 10 * (block_size + 1) + 1       # the 10% validation tail must hold one window
    if len(ids) < needed:
        raise DataError(f"{description} gives only {len(ids)} tokens; a 90/10 split with block_size "
                        f"{block_size} needs at least {needed}: use more text or a smaller --block_size")
    train_ids, val_ids = split_train_val(ids, 0.1)
    check_data_fits(train_ids, block_size, "the training split")
    check_data_fits(val_ids, block_size, "the validation split (the last 10% of the text)")
    return TextData(tokenizer, train_ids, val_ids, description)
