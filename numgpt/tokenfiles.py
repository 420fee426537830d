"""Token files: a corpus tokenized once, written as flat arrays of ids, read back through ``np.memmap``.

``numgpt prepare`` (:func:`prepare`) turns a text corpus of any size into a
directory that ``numgpt train --data DIR`` reads without loading it::

    DIR/train.bin   the first 90% of the tokens, a flat little-endian array
    DIR/val.bin     the last 10% (the same split as ``numgpt train`` on text)
    DIR/meta.json   format version, dtype, token counts, largest id and the
                    tokenizer's state (its ``to_state()``), so the ids can be
                    decoded and a checkpoint trained on them samples text

The dtype is uint16 when the vocabulary has at most 65,536 ids (GPT-2's
50,257 fit) and uint32 otherwise.  There is no header: ``np.fromfile(path,
"<u2")`` reads a file, which is also nanoGPT's format.

**Streaming.**  The input is read a chunk at a time (``chunk_bytes``, 4 MB by
default) and decoded as UTF-8 incrementally, and each chunk is encoded and
appended to the output before the next is read, so memory does not grow
with the corpus.  A chunk is cut where encoding the pieces separately gives
exactly the ids of encoding the whole text: anywhere for the char and byte
tokenizers; for byte-level BPE just before a white-space character that
follows a non-space one, which is always a pre-token boundary of GPT-2's
pattern (no pre-token holds a non-space character followed by white space,
and what comes after such a point does not depend on what came before).  A
stretch of text with no such point (megabytes without white space) is held
in memory until one comes.

**Which tokenizer.**  ``"byte"`` needs nothing.  ``"char"`` needs the
vocabulary before the first id is written, so it reads the corpus twice:
a first pass collects the distinct characters, the second encodes.
``"bpe"`` trains a byte-level BPE vocabulary of ``vocab_size`` tokens on a
bounded sample, the first ``bpe_sample_chars`` characters (10 million by
default) of the corpus; on a smaller corpus that is the whole text, so the
vocabulary is the one ``numgpt train --tokenizer bpe`` would train.  Any
other value is a directory holding a GPT-2 vocabulary (``vocab.json`` +
``merges.txt``, or ``encoder.json`` + ``vocab.bpe``), e.g. a Hugging Face
GPT-2 download.

**Inputs.**  A file, or a directory: then every regular file under it
whose name does not start with a dot, in sorted order of relative path, is
one document.  Documents are joined by ``<|endoftext|>`` when the tokenizer
has that special token (GPT-2's and trained BPE vocabularies do), else by a
newline ``"\\n"``; the separator goes between documents, not after the last,
so a directory holding one file gives the same tokens as the file (empty
files are skipped).  Text
must be UTF-8; a leading byte-order mark is dropped, as ``numgpt train``
does.

**Safety.**  Tokens go to temporary files in the output directory that are
renamed into place only at the end, and ``meta.json`` is written last
(atomically), after removing any old one: an interrupted prepare leaves
either no ``meta.json`` or a complete, consistent set.

**Reading.**  :func:`open_token_dir` recognises three layouts: this one;
nanoGPT's ``train.bin``/``val.bin`` (uint16, no header, no ``meta.json``;
its ``meta.pkl`` is never unpickled, so the vocabulary size must be given);
and llm.c's shards ``*_train*.bin``/``*_val*.bin`` (a header of 256 int32:
magic 20240520, version 1, token count; then uint16 tokens; llama-3 shards,
magic 20240801 version 7, hold uint32).  Each split is offered as a
read-only ``np.memmap``, but training batches read their windows with one
``pread`` each (:meth:`TokenFile.windows` says why), so resident memory
stays flat however large the files.  Headers, sizes and (for the foreign
formats, read through a small buffer, which costs about a second per few
hundred MB when training starts) the largest id are checked, with a
:class:`~numgpt.data.DataError` naming the file.  The objects are cheap to
pickle: a :class:`TokenFile` is a path, offset, dtype and count, reopened
on the other side, so every process (e.g. every MPI rank) reads the same
files and draws its own rows.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import multiprocessing
import os
import re
import sys
import time
from collections import deque

import numpy as np

from ._atomic import _create_temp_file, _fsync_directory, atomic_writer
from .data import DataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_NAME",
    "TRAIN_NAME",
    "VAL_NAME",
    "LLMC_MAGIC",
    "TokenFile",
    "token_dtype",
    "text_files",
    "text_pieces",
    "prepare",
    "open_token_dir",
]

FORMAT = "numgpt-tokens"
FORMAT_VERSION = 1
META_NAME = "meta.json"
TRAIN_NAME = "train.bin"
VAL_NAME = "val.bin"
VAL_FRACTION = 0.1                      # as split_train_val in numgpt train

LLMC_MAGIC = 20240520                   # llm.c GPT-2 token shards: version 1, uint16 tokens
LLMC_MAGIC_LLAMA3 = 20240801            # llm.c llama-3 token shards: version 7, uint32 tokens
_LLMC_FORMATS = {LLMC_MAGIC: (1, np.dtype("<u2")), LLMC_MAGIC_LLAMA3: (7, np.dtype("<u4"))}
_LLMC_HEADER_BYTES = 256 * 4

_CHUNK_BYTES = 4 << 20
_SCAN_TOKENS = 4 << 20                  # tokens per read when checking the largest id of a file
_COPY_BYTES = 16 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (``vocab_size <= 65536``), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ---------------------------------------------------------------------------
# Reading text a chunk at a time
# ---------------------------------------------------------------------------


def text_files(path) -> list[str]:
    """The documents of ``path``: the file itself, or every regular file under
    a directory whose name (and whose folders' names) do not start with a dot,
    sorted by relative path."""
    path = os.fspath(os.path.expanduser(os.fspath(path)))
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"data path {path} does not exist")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            full = os.path.join(root, name)
            if not name.startswith(".") and os.path.isfile(full):
                found.append(full)
    if not found:
        raise DataError(f"data directory {path} holds no files (names starting with '.' are skipped)")
    return sorted(found, key=lambda p: os.path.relpath(p, path))


def _decoded_chunks(paths, separator, chunk_bytes):
    """Yield ``(text, bytes_read)``: each file's text in chunks, ``separator``
    between non-empty files, and the number of input bytes read so far."""
    done = 0
    first = True
    for path in paths:
        decoder = codecs.getincrementaldecoder("utf-8")()
        at_start, started = True, False      # before the file's first character; after its first text
        offset = 0
        try:
            f = open(path, "rb")
        except OSError as err:
            raise DataError(f"cannot read data file {path}: {err.strerror or err}") from None
        with f:
            while True:
                raw = f.read(chunk_bytes)
                final = not raw
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(raw, final=final)
                except UnicodeDecodeError as err:
                    at = offset - pending + err.start
                    raise DataError(f"data file {path} is not UTF-8 text: invalid byte at byte offset {at}; "
                                    f"convert it to UTF-8 first") from None
                offset += len(raw)
                done += len(raw)
                if at_start and text:
                    at_start = False
                    if text.startswith("\ufeff"):
                        text = text[1:]          # a byte-order mark is not text (as in numgpt train)
                if text:
                    if not started:
                        started = True
                        if not first:
                            yield separator, done
                        first = False
                    yield text, done
                if final:
                    break
    if first:
        raise DataError(f"the data ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}) is empty")


def _bpe_cut_pattern(tokenizer):
    """A pattern that, searched in the *reversed* text, finds the last safe cut:
    a white-space character preceded by a non-space one."""
    from .bpe import _WHITE_SPACE

    ws = "".join(sorted(_WHITE_SPACE)).encode("unicode_escape").decode("ascii")
    return re.compile(f"[{ws}][^{ws}]")


class _Cutter:
    """Where a text may be cut so that its two parts encode to the ids of the whole."""

    def __init__(self, tokenizer):
        self.pattern = _bpe_cut_pattern(tokenizer) if getattr(tokenizer, "kind", None) == "bpe" else None
        # A special token with white space inside could straddle a cut; such cuts are refused.
        self.special = [t for t in getattr(tokenizer, "special_tokens", ()) if any(c.isspace() for c in t)]

    def cut(self, text: str, window: int = 1 << 20) -> int:
        """The largest safe cut point found in the last ``window`` characters of
        ``text`` (or all of it), or 0 if there is none."""
        if self.pattern is None:
            return len(text)
        lo = 0
        while True:
            start = max(lo, len(text) - window)
            tail = text[start:][::-1]
            for match in self.pattern.finditer(tail):
                at = len(text) - match.start() - 1      # index of the white-space character
                if at > 0 and not self._straddles(text, at):
                    return at
            if start == lo:
                return 0
            window *= 4

    def _straddles(self, text, at):
        for token in self.special:
            begin = max(0, at - len(token) + 1)
            i = text.find(token, begin, at + len(token) - 1)
            while i != -1 and i < at:
                if i + len(token) > at:
                    return True
                i = text.find(token, i + 1, at + len(token) - 1)
        return False


def text_pieces(paths, tokenizer, separator, chunk_bytes=_CHUNK_BYTES):
    """Yield ``(text, bytes_read)`` pieces of the joined documents, each safe to
    encode on its own: the concatenation of the pieces' ids equals the ids of
    the whole joined text."""
    cutter = _Cutter(tokenizer)
    buffer = ""
    for text, done in _decoded_chunks(paths, separator, chunk_bytes):
        buffer = buffer + text if buffer else text
        if len(buffer) >= chunk_bytes:
            at = cutter.cut(buffer)
            if at:
                yield buffer[:at], done
                buffer = buffer[at:]
    if buffer:
        yield buffer, done


# ---------------------------------------------------------------------------
# Progress on stderr
# ---------------------------------------------------------------------------


class _Progress:
    """``label: 12.0/100.0 MB (12%), 3.10 MB/s, ETA 28 s`` on ``stream``: rewritten in
    place on a terminal, a new line every ``interval`` seconds otherwise."""

    def __init__(self, label, total_bytes, stream=None, interval=None):
        self.label, self.total = label, max(int(total_bytes), 1)
        self.stream = sys.stderr if stream is None else stream
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = interval if interval is not None else (0.25 if self.tty else 5.0)
        self.start = self.last = time.perf_counter()
        self.done = 0

    def line(self, done):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f} s" if eta < 1e6 else "?"
        return (f"{self.label}: {done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({100 * done / self.total:.0f}%), "
                f"{rate / 1e6:.2f} MB/s, ETA {eta_text}")

    def update(self, done):
        self.done = done
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self.line(done))

    def finish(self):
        elapsed = time.perf_counter() - self.start
        text = (f"{self.label}: {self.done / 1e6:.1f} MB in {elapsed:.1f} s, "
                f"{self.done / 1e6 / max(elapsed, 1e-9):.2f} MB/s")
        self._write(text)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, text):
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------------
# Writing: numgpt prepare
# ---------------------------------------------------------------------------


def _build_tokenizer(kind, paths, vocab_size, bpe_sample_chars, chunk_bytes, total, log, stream):
    from .tokenizers import ByteTokenizer, CharTokenizer

    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        # The vocabulary must be known before the first id is written: a first pass collects it.
        chars = set()
        progress = _Progress("pass 1/2, collecting characters", total, stream)
        for text, done in _decoded_chunks(paths, "\n", chunk_bytes):
            chars.update(text)
            progress.update(done)
        progress.finish()
        if len(paths) > 1:
            chars.add("\n")
        return CharTokenizer(sorted(chars))
    if kind == "bpe":
        from .bpe import EOT, train_bpe

        parts, size = [], 0
        for text, _ in _decoded_chunks(paths, EOT, min(chunk_bytes, bpe_sample_chars)):
            parts.append(text[: bpe_sample_chars - size])
            size += len(parts[-1])
            if size >= bpe_sample_chars:
                break
        sample = "".join(parts)
        start = time.perf_counter()
        tokenizer = train_bpe(sample, vocab_size)
        log(f"trained a byte-level BPE tokenizer of {tokenizer.vocab_size} tokens on the first "
            f"{len(sample):,} characters in {time.perf_counter() - start:.1f} s")
        return tokenizer
    from .gpt2 import load_gpt2_tokenizer

    if not os.path.isdir(kind):
        raise ValueError(f"tokenizer must be 'char', 'byte', 'bpe' or a GPT-2 tokenizer directory "
                         f"(vocab.json + merges.txt), got {kind!r}")
    tokenizer = load_gpt2_tokenizer(kind)
    if tokenizer is None:
        raise ValueError(f"tokenizer directory {kind} has no vocab.json + merges.txt, tokenizer.json "
                         f"(or encoder.json + vocab.bpe)")
    return tokenizer


def _separator(tokenizer) -> str:
    from .bpe import EOT

    return EOT if getattr(tokenizer, "eot_token", None) is not None else "\n"


def _encode(tokenizer, text, dtype):
    from .tokenizers import encode_array

    return encode_array(tokenizer, text).astype(dtype, copy=False)


_WORKER = {}


def _worker_init(tokenizer, dtype):
    _WORKER["tokenizer"], _WORKER["dtype"] = tokenizer, dtype


def _worker_encode(text):
    return _encode(_WORKER["tokenizer"], text, _WORKER["dtype"])


def _encoded(pieces, tokenizer, dtype, workers):
    """Yield ``(ids, bytes_read)`` for each piece, in order; with ``workers > 1``
    the pieces are encoded by that many processes, at most two each in flight."""
    if workers <= 1:
        for text, done in pieces:
            yield _encode(tokenizer, text, dtype), done
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context(method)
    with context.Pool(workers, initializer=_worker_init, initargs=(tokenizer, dtype)) as pool:
        in_flight = deque()
        for text, done in pieces:
            in_flight.append((pool.apply_async(_worker_encode, (text,)), done))
            if len(in_flight) >= 2 * workers:
                result, at = in_flight.popleft()
                yield result.get(), at
        while in_flight:
            result, at = in_flight.popleft()
            yield result.get(), at


def _usable_workers(workers, pieces, log):
    """``workers`` capped at this machine's cores and at ``pieces``, about how many chunks the text gives.

    Encoding is CPU-bound: a process beyond the cores only waits for one, a process beyond the
    chunks gets none, and every process holds its own copy of the tokenizer; uncapped,
    ``--workers 1000`` would fork a thousand of them.
    """
    cores = os.cpu_count() or 1
    usable = max(1, min(workers, cores, pieces))
    if usable < workers:
        log(f"note: {workers} workers asked for, but this machine has {cores} core(s) and the text gives "
            f"about {pieces} chunk(s) to encode: using {usable}")
    return usable


def prepare(data, out_dir, tokenizer="char", *, vocab_size=512, bpe_sample_chars=10_000_000,
            chunk_bytes=_CHUNK_BYTES, workers=1, overwrite=False, log=print, progress_stream=None) -> dict:
    """Tokenize the text file or directory ``data`` into ``out_dir`` (see the module docstring).

    ``tokenizer`` is ``"char"``, ``"byte"``, ``"bpe"`` (trained on the first
    ``bpe_sample_chars`` characters, ``vocab_size`` tokens) or a GPT-2
    tokenizer directory.  ``workers`` processes encode chunks in parallel
    (1: in this process).  Token files already in ``out_dir`` (numgpt's or
    nanoGPT's) are refused unless ``overwrite``.  Progress goes to
    ``progress_stream`` (default stderr).  Returns the contents of ``meta.json``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be an integer >= 1, got {chunk_bytes!r}")
    if isinstance(bpe_sample_chars, bool) or not isinstance(bpe_sample_chars, int) or bpe_sample_chars < 1:
        raise ValueError(f"bpe_sample_chars must be an integer >= 1, got {bpe_sample_chars!r}")
    kind = os.fspath(tokenizer)
    data = os.path.expanduser(os.fspath(data))
    paths = text_files(data)
    out_dir = os.fspath(out_dir)
    present = [n for n in (TRAIN_NAME, VAL_NAME, META_NAME) if os.path.exists(os.path.join(out_dir, n))]
    if present and not overwrite:
        raise DataError(f"{out_dir} already holds token files ({', '.join(present)}); prepare into another "
                        f"--out, or pass --overwrite to replace them")
    if os.path.isdir(data):
        inside = os.path.relpath(os.path.abspath(out_dir), os.path.abspath(data))
        if not inside.startswith(os.pardir):
            raise DataError(f"the output directory {out_dir} is inside the data directory {data}, whose every "
                            f"file is read as text; choose an output directory outside it")
    total = sum(os.path.getsize(p) for p in paths)
    workers = _usable_workers(workers, total // chunk_bytes + 1, log)
    tok = _build_tokenizer(kind, paths, vocab_size, bpe_sample_chars, chunk_bytes, total, log,
                           progress_stream)
    separator = _separator(tok) if len(paths) > 1 else ""
    dtype = token_dtype(tok.vocab_size)
    os.makedirs(out_dir, exist_ok=True)

    all_path, fd = _create_temp_file(out_dir, TRAIN_NAME)
    val_path = None
    try:
        count, max_id = 0, -1
        label = "pass 2/2, encoding" if kind == "char" else "encoding"
        progress = _Progress(label, total, progress_stream)
        with os.fdopen(fd, "wb") as out:
            pieces = text_pieces(paths, tok, separator, chunk_bytes)
            for ids, done in _encoded(pieces, tok, dtype, workers):
                if ids.size:
                    max_id = max(max_id, int(ids.max()))
                    out.write(ids.tobytes())
                    count += ids.size
                progress.update(done)
            progress.finish()
            n_train = int(count * (1.0 - VAL_FRACTION))
            if n_train < 1 or n_train >= count:
                raise DataError(f"{data} gives only {count} tokens, too few to split 90/10 into training "
                                f"and validation tokens")
            out.flush()
            val_path, val_fd = _create_temp_file(out_dir, VAL_NAME)
            with os.fdopen(val_fd, "wb") as val_out, open(all_path, "rb") as src:
                src.seek(n_train * dtype.itemsize)
                while block := src.read(_COPY_BYTES):
                    val_out.write(block)
                val_out.flush()
                os.fsync(val_out.fileno())
            out.truncate(n_train * dtype.itemsize)
            os.fsync(out.fileno())
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dtype": dtype.name,
            "byteorder": "little",
            "vocab_size": tok.vocab_size,
            "train_tokens": n_train,
            "val_tokens": count - n_train,
            "max_id": max_id,
            "source": {"data": os.path.abspath(os.fspath(data)), "files": len(paths), "bytes": total,
                       "separator": separator},
            "tokenizer": tok.to_state(),
        }
        # Encoded before anything is renamed: a meta.json that cannot be written must not leave new
        # token files behind without one.
        meta_bytes = (json.dumps(meta, ensure_ascii=False) + "\n").encode("utf-8", errors="backslashreplace")
        # meta.json last: without it the directory is not read as prepared tokens, so a prepare
        # interrupted between the renames below never pairs new token files with old counts.
        meta_path = os.path.join(out_dir, META_NAME)
        if os.path.exists(meta_path):
            os.unlink(meta_path)
        os.replace(all_path, os.path.join(out_dir, TRAIN_NAME))
        os.replace(val_path, os.path.join(out_dir, VAL_NAME))
        _fsync_directory(out_dir)
        with atomic_writer(meta_path) as f:
            f.write(meta_bytes)
    except BaseException:
        for path in (all_path, val_path):
            if path is not None and os.path.exists(path):
                os.unlink(path)
        raise
    log(f"wrote {n_train:,} train and {count - n_train:,} val tokens ({dtype.name}, vocabulary "
        f"{tok.vocab_size}) from {len(paths)} file(s), {total:,} bytes, to {out_dir}")
    return meta


# ---------------------------------------------------------------------------
# Reading: token directories for numgpt train
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenFile:
    """A flat array of token ids in a file: where it starts, its dtype and length."""

    path: str
    dtype: str
    offset: int
    count: int

    def open(self) -> np.ndarray:
        """The ids as a read-only memmap (nothing is read until indexed)."""
        if self.count == 0:                     # mmap cannot map nothing
            empty = np.empty(0, dtype=np.dtype(self.dtype))
            empty.flags.writeable = False
            return empty
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                         shape=(self.count,))

    def windows(self, f, starts, length) -> np.ndarray:
        """``ids[start : start + length]`` for each start, as the rows of an int64
        array, read from the open file ``f`` with one ``pread`` per row.

        Why not index the memmap: on Linux a page fault in a mapped file maps
        its neighbours too (fault-around, and whole large folios of the page
        cache), so random windows over a memmap were measured to make nearly
        the whole file resident after a hundred batches (clean, reclaimable
        page cache, but counted in the process's RSS).  Reads into a small
        buffer keep the process's memory flat.
        """
        dtype = np.dtype(self.dtype)
        nbytes = length * dtype.itemsize
        out = np.empty((len(starts), length), dtype=dtype)
        if not hasattr(os, "pread"):                        # Windows: gather from the memmap
            return self.open()[np.asarray(starts)[:, None] + np.arange(length)].astype(np.int64)
        fd = f.fileno()
        for row, start in zip(out, np.asarray(starts).tolist()):
            raw = os.pread(fd, nbytes, self.offset + start * dtype.itemsize)
            if len(raw) != nbytes:
                raise DataError(f"{self.path}: the file ended early (it is shorter than its {self.count:,} "
                                f"tokens; was it changed after it was opened?)")
            row[:] = np.frombuffer(raw, dtype=dtype)
        return out.astype(np.int64)

    def max_id(self) -> int:
        """The largest id, read through a small reused buffer (not the memmap,
        whose pages would stay resident)."""
        dtype = np.dtype(self.dtype)
        buffer = np.empty(min(self.count, _SCAN_TOKENS), dtype=dtype)
        largest, left = -1, self.count
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while left:
                view = buffer[: min(left, len(buffer))]
                got = f.readinto(memoryview(view).cast("B"))
                if got != view.nbytes:
                    raise DataError(f"{self.path}: the file ended early (read {got} of {view.nbytes} bytes)")
                largest = max(largest, int(view.max()))
                left -= len(view)
        return largest


@dataclasses.dataclass(frozen=True)
class TokenDir:
    """What :func:`open_token_dir` found: the two splits, the tokenizer (or None),
    the vocabulary size and a one-line description."""

    train: TokenFile
    val: TokenFile
    tokenizer: object
    vocab_size: int
    description: str


def _layout(directory):
    names = set(os.listdir(directory))
    if META_NAME in names:
        return "numgpt", None
    if TRAIN_NAME in names and VAL_NAME in names:
        return "nanogpt", None
    train = sorted(n for n in names if re.fullmatch(r".*_train.*\.bin", n))
    val = sorted(n for n in names if re.fullmatch(r".*_val.*\.bin", n))
    if train or val:
        return "llmc", (train, val)
    return None, None


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError as err:
        raise DataError(f"cannot read token file {path}: {err.strerror or err}") from None


def _read_meta(directory):
    path = os.path.join(directory, META_NAME)
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: expected format {FORMAT!r} (written by numgpt prepare), found {found!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: format version {meta.get('version')!r}, this numgpt reads version "
                        f"{FORMAT_VERSION}; prepare the data again with this numgpt")
    for key in ("vocab_size", "train_tokens", "val_tokens", "max_id"):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), int) or meta[key] < 0:
            raise DataError(f"{path}: {key!r} must be a non-negative integer, found {meta.get(key)!r}")
    if meta.get("dtype") not in ("uint16", "uint32") or meta.get("byteorder") != "little":
        raise DataError(f"{path}: expected dtype uint16 or uint32, little-endian; found "
                        f"{meta.get('dtype')!r}, {meta.get('byteorder')!r}")
    return meta


def _numgpt_dir(directory, tokenizer):
    from .tokenizers import tokenizer_from_state

    meta = _read_meta(directory)
    meta_path = os.path.join(directory, META_NAME)
    try:
        own = tokenizer_from_state(meta.get("tokenizer"))
    except (TypeError, ValueError) as err:
        raise DataError(f"{meta_path}: bad tokenizer state ({err})") from None
    if own.vocab_size != meta["vocab_size"]:
        raise DataError(f"{meta_path}: vocab_size {meta['vocab_size']} but its tokenizer has "
                        f"{own.vocab_size} tokens")
    if tokenizer is not None and tokenizer != own:
        raise DataError(f"the tokens in {directory} were made by {own!r} (its {META_NAME}), not by the "
                        f"tokenizer this run uses ({tokenizer!r}, from the checkpoint or --init_from); "
                        f"prepare the data with that tokenizer")
    if meta["max_id"] >= own.vocab_size:
        raise DataError(f"{meta_path}: largest token id {meta['max_id']} is not below vocab_size {own.vocab_size}")
    dtype = np.dtype("<u2" if meta["dtype"] == "uint16" else "<u4")
    files = []
    for name, key in ((TRAIN_NAME, "train_tokens"), (VAL_NAME, "val_tokens")):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise DataError(f"{directory} has {META_NAME} but no {name}")
        size, expected = _file_size(path), meta[key] * dtype.itemsize
        if size != expected:
            raise DataError(f"{path}: {META_NAME} says {meta[key]:,} {meta['dtype']} tokens ({expected:,} "
                            f"bytes) but the file has {size:,} bytes")
        files.append(TokenFile(path, dtype.str, 0, meta[key]))
    description = (f"token files in {directory} ({own.kind} tokenizer, "
                   f"{meta['train_tokens'] + meta['val_tokens']:,} tokens)")
    return files, own, own.vocab_size, description


def _llmc_file(path):
    size = _file_size(path)
    if size < _LLMC_HEADER_BYTES:
        raise DataError(f"{path}: truncated llm.c token file: its header needs {_LLMC_HEADER_BYTES} bytes, "
                        f"the file has {size}")
    header = np.fromfile(path, dtype="<i4", count=256)
    magic, version, count = (int(v) for v in header[:3])
    if magic not in _LLMC_FORMATS:
        raise DataError(f"{path}: not an llm.c token file: magic number {magic}, expected {LLMC_MAGIC} "
                        f"(GPT-2 tokens) or {LLMC_MAGIC_LLAMA3} (llama-3 tokens)")
    expected_version, dtype = _LLMC_FORMATS[magic]
    if version != expected_version:
        raise DataError(f"{path}: llm.c token file with magic {magic} has version {version}, expected "
                        f"{expected_version}")
    body = size - _LLMC_HEADER_BYTES
    if count < 0 or body != count * dtype.itemsize:
        raise DataError(f"{path}: the header says {count:,} tokens ({count * dtype.itemsize:,} bytes after the "
                        f"header) but the file has {body:,} bytes after it")
    return TokenFile(path, dtype.str, _LLMC_HEADER_BYTES, count)


def _raw_uint16_file(path):
    size = _file_size(path)
    if size % 2:
        raise DataError(f"{path}: {size:,} bytes is not a whole number of uint16 tokens (a truncated file?)")
    return TokenFile(path, "<u2", 0, size // 2)


def _check_not_wider_ids(file):
    """Refuse nanoGPT-layout files that hold 32- or 64-bit ids, which read as uint16 would train on garbage.

    ``ids.tofile(...)`` of an int32 or int64 array (NumPy's default integer) writes every id
    below 65,536 as a uint16 followed by zero halves; read as uint16, every second token is 0.
    Genuine uint16 text tokens with zeros at every odd position over this many tokens do not occur.
    """
    n = min(file.count, 1 << 20)                # the head is evidence enough
    if n < 64:
        return
    with open(file.path, "rb") as f:
        head = np.frombuffer(f.read(2 * n), dtype="<u2")
    if head[0::2].any() and not head[1::2].any():
        wide = "int64" if not (head[2::4].any() or head[3::4].any()) else "int32/uint32"
        raise DataError(f"{file.path}: every second uint16 of its first {n:,} is zero, so it looks like "
                        f"{wide} ids, but nanoGPT's train.bin/val.bin hold uint16; write the ids with "
                        f"ids.astype(np.uint16).tofile(path) (ids below 65,536), as nanoGPT's prepare.py does")


def _starts_with_llmc_magic(path):
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and int.from_bytes(head, "little") in _LLMC_FORMATS


def _foreign_dir(directory, layout, found, tokenizer, vocab_size):
    from .gpt2 import load_gpt2_tokenizer

    if layout == "nanogpt":
        paths = [os.path.join(directory, n) for n in (TRAIN_NAME, VAL_NAME)]
        if all(_starts_with_llmc_magic(p) for p in paths):
            files, what = [_llmc_file(p) for p in paths], "llm.c"
        else:
            files, what = [_raw_uint16_file(p) for p in paths], "nanoGPT"
            for file in files:
                _check_not_wider_ids(file)
    else:
        train, val = found
        if len(train) != 1 or len(val) != 1:
            raise DataError(f"{directory}: expected one llm.c train shard and one val shard (*_train*.bin, "
                            f"*_val*.bin), found train {train[:4]} and val {val[:4]}; numgpt reads one of "
                            f"each: put the pair you want in a directory of its own")
        files, what = [_llmc_file(os.path.join(directory, n)) for n in (train[0], val[0])], "llm.c"
    if tokenizer is None:
        tokenizer = load_gpt2_tokenizer(directory)      # a vocab.json + merges.txt beside the tokens
    if tokenizer is not None:
        vocab_size, source = tokenizer.vocab_size, "its tokenizer"
    else:
        source = "--vocab_size"
        note = "; meta.pkl is not read (numgpt never unpickles)" if os.path.exists(
            os.path.join(directory, "meta.pkl")) else ""
        source += note
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise DataError(f"{directory} holds {what} token files without a vocabulary: give its size with "
                        f"--vocab_size, got {vocab_size!r}")
    for file in files:
        if file.count:
            largest = file.max_id()
            if largest >= vocab_size:
                raise DataError(f"{file.path}: holds token id {largest}, not below the vocabulary size "
                                f"{vocab_size} (from {source}); give the vocabulary the tokens were made "
                                f"with, e.g. --vocab_size {largest + 1} or more")
    total = files[0].count + files[1].count
    description = f"{what} token files in {directory} ({total:,} tokens, vocabulary size from {source})"
    return files, tokenizer, vocab_size, description


def open_token_dir(directory, *, vocab_size=None, tokenizer=None) -> TokenDir:
    """Find and check the token files of ``directory`` (see the module docstring).

    ``tokenizer`` (from a checkpoint or a GPT-2 directory) must be the one
    that made the tokens of a prepared directory; for nanoGPT and llm.c files
    it gives the vocabulary size, else ``vocab_size`` does.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"{directory} is not a directory")
    layout, found = _layout(directory)
    if layout is None:
        listing = sorted(os.listdir(directory))
        raise DataError(
            f"{directory} holds no token files: expected {META_NAME} + {TRAIN_NAME} + {VAL_NAME} (numgpt "
            f"prepare), {TRAIN_NAME} + {VAL_NAME} (nanoGPT) or *_train*.bin + *_val*.bin (llm.c); it holds "
            f"{listing[:8]}{' ...' if len(listing) > 8 else ''}. To train on the text files in it, run "
            f"numgpt prepare --data {directory} --out TOKENS_DIR first")
    if layout == "numgpt":
        files, tok, size, description = _numgpt_dir(directory, tokenizer)
    else:
        files, tok, size, description = _foreign_dir(directory, layout, found, tokenizer, vocab_size)
    return TokenDir(files[0], files[1], tok, size, description)
