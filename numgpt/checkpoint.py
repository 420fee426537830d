"""Training checkpoints as plain NumPy ``.npz`` files, never pickle.

A checkpoint must capture everything needed to resume training exactly:
the parameters, the optimizer's moment estimates, and a pile of small
Python values (model config, tokenizer state, iteration count, the state
of the random generator).  Python's pickle would store all of that in one
call, but unpickling a file runs whatever code the file asks for, so a
checkpoint downloaded from somewhere could take over the machine.  numgpt
therefore stores only two kinds of things, neither of which can execute
code when loaded:

* arrays, in NumPy's ``.npy`` format, which describes a plain block of
  numbers by dtype and shape;
* everything else as one JSON document.

The container is an ordinary uncompressed ``.npz`` file, i.e. a zip archive
with one ``<name>.npy`` member per array, exactly what :func:`numpy.savez`
produces, so ``np.load(path)`` can inspect a checkpoint too.  Three entries
are reserved:

``__numgpt_format__``
    a 0-d string array, ``"numgpt-checkpoint-v1"``.  It tells a numgpt
    checkpoint apart from any other ``.npz`` file and lets a later version of
    the format be recognised (and refused by this reader) instead of being
    misread.
``__numgpt_meta__``
    the JSON-encoded ``meta`` dict as a 1-D uint8 array of UTF-8 bytes.
    JSON integers have no size limit, which matters: the state of NumPy's
    PCG64 generator holds 128-bit integers.
the user's arrays
    every other member, under its own name.  Names may contain dots and
    slashes (``"params/h.0.attn.c_attn.weight"``); zip member names are
    arbitrary strings, so they are stored as they are.

Loading always passes ``allow_pickle=False`` to NumPy, so an object array
(the one ``.npy`` variant that embeds a pickle) is refused, never unpickled.

What loading guarantees.  For any file at all, :func:`load_checkpoint`
either returns the arrays and meta that :func:`save_checkpoint` stored, or
raises :class:`CheckpointError` with a message naming the file and what is
wrong with it (FileNotFoundError if there is no file).  Damage is caught
(but for the one-in-four-billion chance of a CRC-32 collision): every
member carries a CRC-32, and the reader checks that the archive lists every
member its end record promises.  A hostile file, whose CRCs are right but
whose sizes lie, cannot make the reader allocate more than the file holds:
members must be stored uncompressed (as save_checkpoint writes them), each
member's size is checked against the file's, and each ``.npy`` header's
shape and dtype against its member's size, before NumPy allocates an array.
``tests/test_fuzz_checkpoint.py`` checks this with damaged and forged files
drawn by Hypothesis.

Saving is atomic.  The archive is written to a temporary file in the same
directory, flushed and fsynced, and then renamed over ``path`` in one
step.  A crash at any moment therefore leaves either the old checkpoint or
the new one at ``path``, never a torn mixture: the one file a long training
run cannot afford to lose is never half-written.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from ._atomic import atomic_writer

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT", "CHECKPOINT_NAME",
           "BEST_CHECKPOINT_NAME", "save_run", "load_run", "load_for_inference"]

FORMAT_KEY = "__numgpt_format__"
META_KEY = "__numgpt_meta__"
_FORMAT_PREFIX = "numgpt-checkpoint-v"
FORMAT_VERSION = 1
FORMAT = f"{_FORMAT_PREFIX}{FORMAT_VERSION}"

_NPY_SUFFIX = ".npy"
# Fixed member timestamps make the file a pure function of its contents.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class CheckpointError(ValueError):
    """A file is not a loadable numgpt checkpoint (the message says why)."""


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_checkpoint(path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
    """Save ``arrays`` and the JSON-able ``meta`` dict to ``path`` atomically.

    ``path`` is used exactly as given (unlike :func:`numpy.savez`, no
    ``.npz`` is appended).  ``meta`` may nest dicts with string keys, lists,
    tuples, strings, numbers of any size, booleans and None; tuples come back
    as lists.  Object arrays are refused with a TypeError, since storing them
    would need pickle.  If saving fails, the previous file at ``path`` is
    untouched and no temporary file remains.
    """
    path = os.fspath(path)
    checked = _check_arrays(arrays)
    meta_bytes = _encode_meta(meta)

    members = {
        FORMAT_KEY: np.array(FORMAT),
        META_KEY: np.frombuffer(meta_bytes, dtype=np.uint8),
        **checked,
    }
    with atomic_writer(path) as f:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED) as archive:
            for name, array in members.items():
                info = zipfile.ZipInfo(name + _NPY_SUFFIX, date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16  # a regular, readable file
                # force_zip64 because the member size is not known up front
                # and a parameter array may exceed the 4 GB limit of plain zip.
                with archive.open(info, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise TypeError(
            f"save_checkpoint: arrays must be a dict of name -> numpy array, "
            f"got {type(arrays).__name__}"
        )
    checked = {}
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"save_checkpoint: array names must be strings, got {name!r}")
        if name in (FORMAT_KEY, META_KEY):
            raise ValueError(f"save_checkpoint: the name {name!r} is reserved for numgpt")
        if not name:
            raise ValueError("save_checkpoint: array names must be non-empty, got ''")
        # zipfile rewrites some names (it cuts at a NUL byte, and on Windows
        # turns backslashes into slashes); such a name would load back under
        # a different key, so refuse it now rather than silently rename it.
        stored = zipfile.ZipInfo(name + _NPY_SUFFIX).filename
        if stored != name + _NPY_SUFFIX:
            raise ValueError(
                f"save_checkpoint: array name {name!r} cannot be stored unchanged "
                f"in a zip archive (it would become {stored[:-len(_NPY_SUFFIX)]!r})"
            )
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"save_checkpoint: array {name!r} must be a numpy array, "
                f"got {type(array).__name__}"
            )
        if array.dtype.hasobject:
            raise TypeError(
                f"save_checkpoint: array {name!r} has dtype {array.dtype}, which "
                "holds Python objects; storing it would need pickle"
            )
        checked[name] = array
    return checked


def _encode_meta(meta: dict) -> bytes:
    if not isinstance(meta, dict):
        raise TypeError(f"save_checkpoint: meta must be a dict, got {type(meta).__name__}")
    _check_json_value(meta, "meta", set())
    return json.dumps(meta, ensure_ascii=False).encode("utf-8")


def _check_json_value(value, where: str, open_containers: set[int]) -> None:
    """Refuse what JSON would reject, or silently change, with the exact location.

    json.dumps would turn an int key into a string key without a word, and
    its own errors do not say where in a nested dict the bad value sits.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (dict, list, tuple)):
        if id(value) in open_containers:
            raise ValueError(f"save_checkpoint: {where} contains itself (circular reference)")
        open_containers.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"save_checkpoint: {where} has key {key!r} of type "
                        f"{type(key).__name__}; JSON object keys must be strings"
                    )
                _check_json_value(item, f"{where}[{key!r}]", open_containers)
        else:
            for index, item in enumerate(value):
                _check_json_value(item, f"{where}[{index}]", open_containers)
        open_containers.discard(id(value))
        return
    raise TypeError(
        f"save_checkpoint: {where} is a {type(value).__module__}.{type(value).__name__}, "
        "which JSON cannot store (use str, int, float, bool, None, list or dict; "
        "store arrays in `arrays`, and convert NumPy scalars with .item())"
    )


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns ``(arrays, meta)``.  Every array is read fully into memory, so
    the file may be overwritten as soon as this returns.  Raises
    FileNotFoundError if there is no file at ``path`` and
    :class:`CheckpointError` if the file is not an intact numgpt checkpoint
    (see "What loading guarantees" in the module docstring).  Nothing is
    ever unpickled.
    """
    return _load(path, with_arrays=True)


def load_checkpoint_meta(path) -> dict:
    """The metadata of a checkpoint alone, with the same checks as :func:`load_checkpoint`
    on the archive's directory but without reading the arrays (a GPT-2 run's are gigabytes)."""
    return _load(path, with_arrays=False)[1]


def _load(path, with_arrays: bool) -> tuple[dict[str, np.ndarray], dict]:
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, "no checkpoint file at this path", path) from None
    with f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            archive = zipfile.ZipFile(f)
        # NotImplementedError: a (forged) "version needed to extract" above
        # what zipfile supports.
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
                NotImplementedError) as exc:
            raise CheckpointError(
                f"{path}: not a zip/npz archive, so not a numgpt checkpoint "
                f"(empty, truncated or corrupt file?): {exc}"
            ) from None
        with archive:
            _check_member_count(path, f, file_size, archive)
            return _read_archive(path, archive, file_size, with_arrays)


# The records at the end of a zip archive (see PKWARE's APPNOTE.TXT): the
# end of central directory record, and, before it in a zip64 archive, the
# zip64 end record and its locator.  Only the fields read here are named.
_END_RECORD = struct.Struct("<4s4x2H8xH")      # signature, entries here, entries in all, comment length
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4s16x")       # signature
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_END_RECORD = struct.Struct("<4s20xQQ16x")  # signature, entries here, entries in all
_ZIP64_END_SIGNATURE = b"PK\x06\x06"


def _check_member_count(path: str, f, file_size: int, archive: zipfile.ZipFile) -> None:
    """Check that zipfile listed as many members as the end record promises.

    zipfile walks the central directory entry by entry and stops when it has
    consumed the directory's stated size, without comparing the count.  A
    corrupt length field inside one entry makes it skip the entries after it,
    and the checkpoint would silently load without those arrays.
    """
    end_at = file_size - _END_RECORD.size - len(archive.comment)
    f.seek(end_at)
    signature, here, total, _ = _END_RECORD.unpack(f.read(_END_RECORD.size))
    if signature != _END_SIGNATURE:
        # zipfile also accepts bytes after the end record; save_checkpoint never writes any.
        raise CheckpointError(
            f"{path}: the zip end record is not at the end of the file (bytes appended?)"
        )
    locator_at = end_at - _ZIP64_LOCATOR.size
    if locator_at >= 0:
        f.seek(locator_at)
        if _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))[0] == _ZIP64_LOCATOR_SIGNATURE:
            # zipfile reads the zip64 end record from right before the locator.
            record_at = locator_at - _ZIP64_END_RECORD.size
            if record_at >= 0:
                f.seek(record_at)
                signature, here, total = _ZIP64_END_RECORD.unpack(f.read(_ZIP64_END_RECORD.size))
            if record_at < 0 or signature != _ZIP64_END_SIGNATURE:
                raise CheckpointError(f"{path}: the zip64 end record is missing or corrupt")
    listed = len(archive.infolist())
    if here != total or total != listed:
        raise CheckpointError(
            f"{path}: the zip end record promises {total} members ({here} on this disk) "
            f"but the central directory lists {listed}; the archive's directory is corrupt"
        )


def _read_archive(
    path: str, archive: zipfile.ZipFile, file_size: int, with_arrays: bool = True
) -> tuple[dict[str, np.ndarray], dict]:
    infos = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(_NPY_SUFFIX):
            raise CheckpointError(
                f"{path}: not a numgpt checkpoint: archive member {name!r} is not a "
                ".npy array (a foreign file?)"
            )
        name = name[: -len(_NPY_SUFFIX)]
        if name in infos:
            raise CheckpointError(f"{path}: archive holds the array {name!r} twice")
        _check_member_entry(path, info, name, file_size)
        infos[name] = info

    if FORMAT_KEY not in infos:
        raise CheckpointError(
            f"{path}: not a numgpt checkpoint: it has no {FORMAT_KEY!r} entry "
            "(a foreign .npz file?)"
        )
    _check_format(path, _read_member(path, archive, infos.pop(FORMAT_KEY), FORMAT_KEY))

    if META_KEY not in infos:
        raise CheckpointError(f"{path}: checkpoint has no {META_KEY!r} entry")
    meta = _decode_meta(path, _read_member(path, archive, infos.pop(META_KEY), META_KEY))

    if not with_arrays:
        return {}, meta
    arrays = {name: _read_member(path, archive, info, name) for name, info in infos.items()}
    return arrays, meta


# General-purpose flag bits of a zip entry that save_checkpoint never sets:
# encryption (bit 0), "compressed patched data" (bit 5), strong encryption (bit 6).
_UNSUPPORTED_FLAGS = 0x1 | 0x20 | 0x40


def _check_member_entry(path: str, info: zipfile.ZipInfo, name: str, file_size: int) -> None:
    """Refuse a directory entry that save_checkpoint cannot have written.

    Every member is stored uncompressed, so its size is known from the
    directory and can be checked against the file before anything is read.
    """
    where = f"{path}: array {name!r}"
    if info.flag_bits & _UNSUPPORTED_FLAGS:
        raise CheckpointError(
            f"{where} is encrypted or uses an unsupported zip feature (flag bits "
            f"0x{info.flag_bits:04x}); numgpt checkpoints never do"
        )
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"{where} is compressed (zip method {info.compress_type}); numgpt "
            "checkpoints store every array uncompressed"
        )
    if info.file_size != info.compress_size:
        raise CheckpointError(
            f"{where}: the zip directory gives it {info.file_size} bytes but "
            f"{info.compress_size} stored bytes; for an uncompressed member they are equal"
        )
    if info.header_offset + info.compress_size > file_size:
        raise CheckpointError(
            f"{where}: the zip directory places {info.compress_size} bytes at offset "
            f"{info.header_offset}, beyond the end of the {file_size}-byte file "
            "(truncated or corrupt file?)"
        )


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    try:
        # First only the .npy header, to check that the data it describes
        # fits the member before NumPy allocates the array: a forged shape
        # must not make a small file allocate terabytes.
        with archive.open(info) as member:
            _check_npy_header(member, info.file_size)
        with archive.open(info) as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
            # Reading to the end makes zipfile verify the member's CRC-32,
            # which catches bit rot in the array data.
            if member.read():
                raise ValueError("unexpected bytes after the array data")
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(
                f"{path}: array {name!r} is an object array that could only be "
                "loaded by unpickling it; refusing (numgpt checkpoints never "
                "contain pickles)"
            ) from None
        raise CheckpointError(f"{path}: array {name!r} is corrupt: {exc}") from None
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: array {name!r} is corrupt: {exc}") from None
    return array


_NPY_MAGIC = b"\x93NUMPY"
# .npy version -> (struct format of the header length, header encoding).
_NPY_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
# NumPy's own limit (read_array's max_header_size) for reading without pickle.
_NPY_MAX_HEADER_CHARS = 10_000
_NPY_KEYS = {"descr", "fortran_order", "shape"}
_MAX_ELEMENTS = np.iinfo(np.intp).max


def _check_npy_header(member, member_size: int) -> None:
    """Parse a .npy header as NumPy will, and check it against ``member_size``.

    Raises ValueError unless the header is one that np.lib.format.read_array
    parses directly (without its lenient fallback for Python 2 files), with
    no object dtype, describing exactly the data bytes that follow it.
    """
    preamble = member.read(len(_NPY_MAGIC) + 2)
    if len(preamble) < len(_NPY_MAGIC) + 2 or not preamble.startswith(_NPY_MAGIC):
        raise ValueError("not a .npy array (its first bytes are not the .npy magic string)")
    version = (preamble[-2], preamble[-1])
    if version not in _NPY_VERSIONS:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    length_format, encoding = _NPY_VERSIONS[version]
    length_bytes = member.read(struct.calcsize(length_format))
    if len(length_bytes) != struct.calcsize(length_format):
        raise ValueError("the .npy header is cut short")
    (header_length,) = struct.unpack(length_format, length_bytes)
    data_start = len(preamble) + len(length_bytes) + header_length
    if data_start > member_size:
        raise ValueError(
            f"its .npy header claims {header_length} bytes, more than the "
            f"{member_size}-byte member holds"
        )
    header = member.read(header_length).decode(encoding)  # UnicodeDecodeError is a ValueError
    if len(header) > _NPY_MAX_HEADER_CHARS:
        raise ValueError(f"its .npy header is {len(header)} characters long, too long to be safe")
    try:
        fields = ast.literal_eval(header)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"its .npy header is not a Python literal: {header!r:.200}") from None
    if not isinstance(fields, dict) or set(fields) != _NPY_KEYS:
        raise ValueError(
            f"its .npy header is not a dict with keys {sorted(_NPY_KEYS)}: {header!r:.200}"
        )
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"its .npy header has an invalid shape {shape!r:.200}")
    if type(fortran_order) is not bool:
        raise ValueError(f"its .npy header has an invalid fortran_order {fortran_order!r:.200}")
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    # descr_to_dtype interprets a nested literal; any of these means a bad one.
    except (TypeError, ValueError, IndexError, KeyError, OverflowError, RecursionError):
        raise ValueError(
            f"its .npy header has an invalid dtype description {fields['descr']!r:.200}"
        ) from None
    if dtype.hasobject:
        # The same words as NumPy's error, which _read_member turns into its own.
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    count = math.prod(shape)
    if count > _MAX_ELEMENTS or any(n > _MAX_ELEMENTS for n in shape):
        raise ValueError(f"its .npy header claims shape {shape}, more elements than any array holds")
    data_size = member_size - data_start
    if count * dtype.itemsize != data_size:
        raise ValueError(
            f"its .npy header claims shape {shape} of {dtype} ({count * dtype.itemsize} "
            f"bytes) but the member holds {data_size} bytes of array data"
        )


def _check_format(path: str, marker: np.ndarray) -> None:
    if marker.dtype.kind != "U" or marker.ndim != 0:
        raise CheckpointError(
            f"{path}: {FORMAT_KEY!r} should be a 0-d string array, "
            f"got dtype {marker.dtype} and shape {marker.shape}"
        )
    found = str(marker[()])
    if found == FORMAT:
        return
    if found.startswith(_FORMAT_PREFIX):
        raise CheckpointError(
            f"{path}: unsupported checkpoint format version {found!r}; this "
            f"numgpt reads {FORMAT!r} (written by a newer numgpt?)"
        )
    raise CheckpointError(
        f"{path}: not a numgpt checkpoint: unrecognised format marker {found!r}"
    )


def _decode_meta(path: str, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"{path}: {META_KEY!r} should be a 1-D uint8 array of UTF-8 JSON, "
            f"got dtype {raw.dtype} and shape {raw.shape}"
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    # ValueError also covers an integer of more digits than Python converts.
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: meta is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: meta must be a JSON object, got a JSON {type(meta).__name__}"
        )
    return meta



# ---------------------------------------------------------------------------
# Training runs: a model, its optimizer, tokenizer and loop state in one file
# ---------------------------------------------------------------------------

CHECKPOINT_NAME = "ckpt.npz"
# The best-validation checkpoint, kept only while ckpt.npz holds a later, worse state (see numgpt.train).
BEST_CHECKPOINT_NAME = "best.npz"
RUN_KIND = "numgpt-run"


OPTIMIZERS = ("adamw", "muon")


def save_run(path, model, optimizer, tokenizer, train_config, iter_num, best_val_loss, rng, task=None, *,
             muon=None, train_seconds=0.0, val_loss=None) -> None:
    """Everything needed to sample from or resume a run, as one atomic ``.npz``.

    ``train_config`` is the run's settings as a dict (or an object with
    ``to_dict()``); ``task`` is ``{"name": ...}`` for a synthetic task.
    ``optimizer`` is the AdamW (its moments: ``optim/m``, ``optim/v``); ``muon``
    the Muon of the hidden matrices, if the run has one (its momentum buffers,
    concatenated in its parameters' order: ``optim/muon_m``). ``train_seconds``
    is the time spent in training steps so far (what ``max_time`` counts);
    ``val_loss`` the validation loss of this very state, if it was evaluated.
    """
    arrays = {f"params/{name}": p for name, p in model.params.items()}
    if optimizer is not None:
        arrays["optim/m"] = optimizer.m
        arrays["optim/v"] = optimizer.v
    if muon is not None:
        arrays["optim/muon_m"] = (np.concatenate([m.ravel() for m in muon.buffers]) if muon.buffers
                                  else np.zeros(0, dtype=model.dtype))
    if train_config is not None and not isinstance(train_config, dict):
        train_config = train_config.to_dict()
    meta = {
        "kind": RUN_KIND,
        "model_config": model.config.to_dict(),
        "dtype": str(model.dtype),
        "train_config": train_config,
        "tokenizer": tokenizer.to_state() if tokenizer is not None else None,
        "task": task,
        "iter_num": int(iter_num),
        "best_val_loss": _finite_or_none(best_val_loss),
        "val_loss": _finite_or_none(val_loss),
        "optimizer_t": int(optimizer.t) if optimizer is not None else 0,
        "optimizer": "muon" if muon is not None else "adamw",
        "muon_t": int(muon.t) if muon is not None else 0,
        "train_seconds": float(train_seconds),
        "rng_state": rng.bit_generator.state if rng is not None else None,
    }
    save_checkpoint(path, arrays, meta)


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


def load_run(path, dtype=None):
    """``(model, tokenizer, meta, arrays)`` from a checkpoint written by :func:`save_run`.

    ``tokenizer`` is None for a synthetic-task run (``meta["task"]`` names the task).
    Everything is checked before the model is built: the model configuration,
    the dtype, and every parameter's name, shape and (real floating) dtype
    against the layout the configuration implies, so a damaged or forged file
    gives a :class:`CheckpointError` naming it, never a silent cast or a huge
    allocation.
    """
    from .model import GPT, GPTConfig, param_layout
    from .tokenizers import tokenizer_from_state

    path = os.fspath(path)
    arrays, meta = load_checkpoint(path)
    if meta.get("kind") != RUN_KIND:
        raise CheckpointError(f"{path}: a numgpt checkpoint, but not of a training run (kind {meta.get('kind')!r})")
    if not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{path}: model_config must be a JSON object, got {meta.get('model_config')!r}")
    stored_dtype = meta.get("dtype", "float32")
    if stored_dtype not in ("float32", "float64"):
        raise CheckpointError(f"{path}: dtype must be 'float32' or 'float64', got {stored_dtype!r}")
    try:
        config = GPTConfig.from_dict(meta["model_config"])
        layout = param_layout(config)
    except (ValueError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{path}: model_config is not usable: {e}") from None
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    expected = dict(layout)
    missing = [name for name in expected if name not in params]
    unexpected = [name for name in params if name not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the parameters do not match model_config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, shape in layout:
        array = params[name]
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(f"{path}: parameter {name} must have shape {tuple(shape)} (from model_config), "
                                  f"got {array.shape}")
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: parameter {name} has dtype {array.dtype}; parameters are real floats")
    num_params = sum(math.prod(shape) for _, shape in layout)
    for key in ("optim/m", "optim/v"):
        if key in arrays and (arrays[key].shape != (num_params,) or arrays[key].dtype.kind != "f"):
            raise CheckpointError(f"{path}: {key} must be a float vector of {num_params} values, got dtype "
                                  f"{arrays[key].dtype} and shape {arrays[key].shape}")
    _check_optimizer_state(path, meta, arrays, layout)
    try:
        tokenizer = tokenizer_from_state(meta["tokenizer"]) if meta.get("tokenizer") else None
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{path}: the tokenizer state is not usable: {e}") from None
    model = GPT(config, dtype=dtype or stored_dtype, init=False)
    model.load_state_dict(params)
    return model, tokenizer, meta, arrays


def _check_optimizer_state(path, meta, arrays, layout):
    """The optimizer a run recorded, and Muon's state, checked (a checkpoint older than Muon has neither)."""
    from .model import PRESETS
    from .muon import hidden_matrices

    optimizer = meta.get("optimizer", "adamw")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise CheckpointError(f"{path}: optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    train_config = meta.get("train_config")
    if isinstance(train_config, dict) and "preset" in train_config and (
            not isinstance(train_config["preset"], str) or train_config["preset"] not in PRESETS):
        raise CheckpointError(f"{path}: train_config preset must be one of {tuple(PRESETS)}, got "
                              f"{train_config['preset']!r} (written by a newer numgpt?)")
    if "optim/muon_m" not in arrays:
        return
    if optimizer != "muon":
        raise CheckpointError(f"{path}: holds Muon state (optim/muon_m) but its optimizer is {optimizer!r}")
    muon_size = sum(stop - start for _, start, stop in hidden_matrices(layout))
    array = arrays["optim/muon_m"]
    if array.shape != (muon_size,) or array.dtype.kind != "f":
        raise CheckpointError(f"{path}: optim/muon_m must be a float vector of {muon_size} values (the hidden "
                              f"matrices), got dtype {array.dtype} and shape {array.shape}")
    t = meta.get("muon_t")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise CheckpointError(f"{path}: muon_t must be a non-negative integer, got {t!r}")


def load_for_inference(out_dir=None, *, init_from=None, dtype=None, best=False):
    """``(model, tokenizer, task)`` to sample from, the one loader of ``sample``, ``attention`` and the API.

    ``init_from`` names a Hugging Face GPT-2 directory (its weights and its
    tokenizer); otherwise the training checkpoint ``out_dir/ckpt.npz`` is
    read, or with ``best`` the run's best-validation model: ``out_dir/best.npz``
    when training went on past it, else ``ckpt.npz``, which then holds it.
    ``tokenizer`` is None and ``task`` a :class:`numgpt.tasks.Task` for a
    synthetic-task run; for text runs ``task`` is None.
    """
    if init_from:
        from .gpt2 import load_gpt2, load_gpt2_tokenizer

        model = load_gpt2(init_from, dtype=dtype or np.float32)
        tokenizer = load_gpt2_tokenizer(init_from)
        if tokenizer is None:
            raise ValueError(f"{init_from} has no GPT-2 tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"init_from {init_from} has vocab_size {model.config.vocab_size} but its "
                             f"tokenizer has {tokenizer.vocab_size} tokens")
        return model, tokenizer, None
    out_dir = "out" if out_dir is None else os.fspath(out_dir)
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if best and os.path.exists(os.path.join(out_dir, BEST_CHECKPOINT_NAME)):
        path = os.path.join(out_dir, BEST_CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no checkpoint in {out_dir}; train first (numgpt train --out_dir "
                                f"{out_dir}) or give --init_from a GPT-2 directory", path)
    model, tokenizer, meta, _ = load_run(path, dtype=dtype)
    val, best_val = meta.get("val_loss"), meta.get("best_val_loss")
    # Only a removed best.npz gets here (a checkpoint from before val_loss was recorded cannot tell).
    if best and path.endswith(CHECKPOINT_NAME) and "val_loss" in meta and val != best_val:
        state = "not evaluated" if val is None else f"val {val:.4f}"
        raise FileNotFoundError(errno.ENOENT, f"{os.path.join(out_dir, BEST_CHECKPOINT_NAME)} is missing: {path} "
                                f"holds iteration {meta['iter_num']} ({state}), not the run's best (val "
                                f"{best_val if best_val is None else format(best_val, '.4f')}); leave out --best "
                                f"to use it",
                                os.path.join(out_dir, BEST_CHECKPOINT_NAME))
    task = None
    if tokenizer is None:
        from .tasks import make_task

        spec = meta.get("task")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CheckpointError(f"{path}: has neither a tokenizer nor a synthetic task to read prompts with")
        try:
            task = make_task(spec["name"])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: {e}") from None
    return model, tokenizer, task
