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

Saving is atomic.  The archive is written to a temporary file in the same
directory, flushed and fsynced, and then renamed over ``path`` in one
step.  A crash at any moment therefore leaves either the old checkpoint or
the new one at ``path``, never a torn mixture: the one file a long training
run cannot afford to lose is never half-written.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from ._atomic import atomic_writer

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT", "CHECKPOINT_NAME",
           "save_run", "load_run", "load_for_inference"]

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
    :class:`CheckpointError` if the file is not an intact numgpt checkpoint.
    Nothing is ever unpickled.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, "no checkpoint file at this path", path) from None
    with f:
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a zip/npz archive, so not a numgpt checkpoint "
                f"(empty, truncated or corrupt file?): {exc}"
            ) from None
        with archive:
            return _read_archive(path, archive)


def _read_archive(path: str, archive: zipfile.ZipFile) -> tuple[dict[str, np.ndarray], dict]:
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

    arrays = {name: _read_member(path, archive, info, name) for name, info in infos.items()}
    return arrays, meta


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    try:
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
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: array {name!r} is corrupt: {exc}") from None
    return array


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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
RUN_KIND = "numgpt-run"


def save_run(path, model, optimizer, tokenizer, train_config, iter_num, best_val_loss, rng, task=None) -> None:
    """Everything needed to sample from or resume a run, as one atomic ``.npz``.

    ``train_config`` is the run's settings as a dict (or an object with
    ``to_dict()``); ``task`` is ``{"name": ...}`` for a synthetic task.
    """
    import math

    arrays = {f"params/{name}": p for name, p in model.params.items()}
    if optimizer is not None:
        arrays["optim/m"] = optimizer.m
        arrays["optim/v"] = optimizer.v
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
        "best_val_loss": None if best_val_loss is None or not math.isfinite(best_val_loss) else float(best_val_loss),
        "optimizer_t": int(optimizer.t) if optimizer is not None else 0,
        "rng_state": rng.bit_generator.state if rng is not None else None,
    }
    save_checkpoint(path, arrays, meta)


def load_run(path, dtype=None):
    """``(model, tokenizer, meta, arrays)`` from a checkpoint written by :func:`save_run`.

    ``tokenizer`` is None for a synthetic-task run (``meta["task"]`` names the task).
    """
    from .model import GPT, GPTConfig
    from .tokenizers import tokenizer_from_state

    path = os.fspath(path)
    arrays, meta = load_checkpoint(path)
    if meta.get("kind") != RUN_KIND or not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{path}: a numgpt checkpoint, but not of a training run (kind {meta.get('kind')!r})")
    try:
        config = GPTConfig.from_dict(meta["model_config"])
        model = GPT(config, dtype=dtype or meta.get("dtype", "float32"), init=False)
        params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
        model.load_state_dict(params)
        tokenizer = tokenizer_from_state(meta["tokenizer"]) if meta.get("tokenizer") else None
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, tokenizer, meta, arrays


def load_for_inference(out_dir=None, *, init_from=None, dtype=None):
    """``(model, tokenizer, task)`` to sample from, the one loader of ``sample``, ``attention`` and the API.

    ``init_from`` names a Hugging Face GPT-2 directory (its weights and its
    tokenizer); otherwise the training checkpoint ``out_dir/ckpt.npz`` is
    read. ``tokenizer`` is None and ``task`` a :class:`numgpt.tasks.Task` for
    a synthetic-task run; for text runs ``task`` is None.
    """
    if init_from:
        from .gpt2 import load_gpt2, load_gpt2_tokenizer

        model = load_gpt2(init_from, dtype=dtype or np.float32)
        tokenizer = load_gpt2_tokenizer(init_from)
        if tokenizer is None:
            raise ValueError(f"{init_from} has no GPT-2 tokenizer files (vocab.json + merges.txt)")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"init_from {init_from} has vocab_size {model.config.vocab_size} but its "
                             f"tokenizer has {tokenizer.vocab_size} tokens")
        return model, tokenizer, None
    out_dir = "out" if out_dir is None else os.fspath(out_dir)
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no checkpoint in {out_dir}; train first (numgpt train --out_dir "
                                f"{out_dir}) or give --init_from a GPT-2 directory", path)
    model, tokenizer, meta, _ = load_run(path, dtype=dtype)
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
