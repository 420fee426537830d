"""Reading and writing the safetensors format with nothing but NumPy.

safetensors is the file format Hugging Face uses to publish model weights,
among them the GPT-2 checkpoints numgpt can import.  It was designed to be
loaded safely (no pickle, so opening a file can never run code) and cheaply
(the tensor bytes can be memory-mapped straight into arrays).

The layout of a file
--------------------
::

    +----------+--------------------------+---------------------------------+
    | 8 bytes  | N bytes                  | the data buffer                 |
    | N, u64   | JSON header, UTF-8       | raw little-endian C-order bytes |
    | little-  | (padded with spaces)     | of every tensor, back to back   |
    | endian   |                          |                                 |
    +----------+--------------------------+---------------------------------+

The header is one JSON object.  Every key but one names a tensor::

    {"__metadata__": {"format": "pt"},
     "wte.weight": {"dtype": "F32", "shape": [50257, 768],
                    "data_offsets": [0, 154389504]},
     ...}

``data_offsets`` are ``[begin, end)`` byte positions counted from the start
of the data buffer (not from the start of the file), and ``end - begin``
must equal ``prod(shape) * itemsize``.  A shape of ``[]`` is a 0-d tensor
holding a single value; a shape containing 0 is an empty tensor with
``begin == end``.  The optional ``__metadata__`` entry is a flat map from
strings to strings.

The reference implementation (the Rust crate behind the ``safetensors``
Python package) is strict about the buffer: sorted by offset, the tensors
must tile the data buffer exactly, starting at byte 0 and ending at the last
byte of the file, with no overlaps and no holes.  A file that breaks this is
refused, because overlapping or unexplained bytes are the signature of a
corrupt or deliberately crafted file.  :func:`read_safetensors` refuses
exactly those files too, and everything else that cannot be read
unambiguously, with a :class:`SafetensorsError` naming the file and the
problem.

What reading guarantees.  For any file at all, :func:`read_safetensors`
either returns exactly the tensors and metadata its header describes, or
raises :class:`SafetensorsError` (FileNotFoundError if there is no file).
No size written in the file is trusted before it is checked against the
file's real size: the header length before the header is read, and every
tensor's offsets and byte count before an array is made, so a forged size
can neither allocate memory nor read past the end.  The format has no
checksum, so damage that leaves a valid file (a flipped bit in tensor data,
a changed digit in a shape that still adds up) reads as what the file now
says.  ``tests/test_fuzz_safetensors.py`` checks this with damaged and
forged files drawn by Hypothesis.

bfloat16
--------
BF16 is the top half of an IEEE float32: the same sign bit and 8 exponent
bits, but only 7 of the 23 fraction bits.  NumPy has no bfloat16 type, so
the reader widens BF16 tensors to float32, which is exact: put the 16 bits
back on top and fill the lost fraction bits with zeros.  The opposite
direction must round; :func:`float32_to_bf16_bits` rounds to nearest, ties
to even, like the hardware does.

Writing
-------
:func:`write_safetensors` lays tensors out by decreasing item size and then
by name, as the reference writer does.  Since the header is padded to a
multiple of 8 bytes, this puts every tensor at an offset that is a multiple
of its own item size, so memory-mapped arrays are naturally aligned.  The
output is fully determined by the input, and the file is written atomically:
either the complete new file appears at ``path`` or the old one stays.
"""

from __future__ import annotations

import json
import math
import mmap as _mmap
import os
import struct
from collections.abc import Mapping
from typing import BinaryIO, NoReturn

import numpy as np

from ._atomic import atomic_writer

__all__ = [
    "MAX_HEADER_BYTES",
    "SafetensorsError",
    "read_safetensors",
    "write_safetensors",
    "float32_to_bf16_bits",
    "bf16_bits_to_float32",
]

# The reference implementation refuses headers above 100 MB; a real header
# for even the largest published models is a few hundred kilobytes, so a
# bigger length field means a corrupt or hostile file, and we should not
# allocate memory for it.
MAX_HEADER_BYTES = 100_000_000

_METADATA_KEY = "__metadata__"

# safetensors dtype name -> NumPy dtype (always little-endian, as the format
# stores).  BF16 is handled separately because NumPy has no such type.
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_BF16 = "BF16"
_BF16_ITEMSIZE = 2

# Valid in the format but with no NumPy counterpart; named separately so the
# error can say "not supported" instead of "unknown".
_UNSUPPORTED_DTYPES = frozenset(
    {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"}
)

# NumPy (kind, itemsize) -> safetensors dtype name, for the writer.
_WRITE_DTYPES: dict[tuple[str, int], str] = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}


class SafetensorsError(ValueError):
    """A file is not a valid safetensors file (the message says why)."""


# ---------------------------------------------------------------------------
# bfloat16 <-> float32
# ---------------------------------------------------------------------------


def float32_to_bf16_bits(a) -> np.ndarray:
    """Round float values to bfloat16 and return their 16-bit patterns.

    ``a`` is converted to float32 first (so float64 input is rounded twice,
    which can differ from a direct float64 -> bfloat16 rounding in rare
    ties).  Rounding is to nearest, ties to even; values beyond the largest
    finite bfloat16 round to infinity, and every NaN becomes a quiet NaN
    with the same sign.  Returns a uint16 array of the same shape.
    """
    x = np.asarray(a)
    if x.dtype.kind not in "fiub":
        raise TypeError(
            f"float32_to_bf16_bits: expected a real numeric array, got dtype {x.dtype}"
        )
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit, then truncating, rounds to
    # nearest with ties going to the value whose last kept bit is 0 (even).
    # The largest non-NaN pattern, 0xFF800000 (-inf), plus 0x8000 still fits
    # in 32 bits, so the addition cannot wrap.
    lowest_kept_bit = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lowest_kept_bit) >> np.uint32(16)
    # NaN must not be rounded: a NaN whose payload sits in the discarded bits
    # would truncate to infinity.  Keep sign and exponent, force the quiet bit.
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x0040)
    out = np.where(np.isnan(bits.view(np.float32)), quiet_nan, rounded)
    return out.astype(np.uint16).reshape(x.shape)


def bf16_bits_to_float32(bits) -> np.ndarray:
    """Widen bfloat16 bit patterns (a uint16 array) to float32, exactly."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        if b.dtype.kind not in "iu":
            raise TypeError(
                f"bf16_bits_to_float32: expected uint16 bit patterns, got dtype {b.dtype}"
            )
        if b.size and (b.min() < 0 or b.max() > 0xFFFF):
            raise ValueError(
                "bf16_bits_to_float32: bit patterns must lie in [0, 65535], "
                f"got values in [{b.min()}, {b.max()}]"
            )
    # The 16 stored bits are the high half of the float32; the low half is 0.
    wide = np.ascontiguousarray(b, dtype=np.uint32) << np.uint32(16)
    return wide.view(np.float32).reshape(b.shape)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_safetensors(
    path, *, mmap: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into ``(tensors, metadata)``.

    ``tensors`` maps each name to a NumPy array of the stored shape.  F64,
    F32, F16, the integer types and BOOL keep their type; BF16 is widened
    exactly to float32.  ``metadata`` is the ``__metadata__`` map, or ``{}``.

    With ``mmap=True`` (the default) the arrays are read-only views into a
    memory map of the file, so nothing is read from disk until it is used.
    On POSIX systems the map stays valid even if the file is later replaced
    by a new one (as :func:`write_safetensors` does).  BF16 and BOOL tensors are
    converted and therefore always live in ordinary memory.  With
    ``mmap=False`` the data is read into ordinary, writable memory.

    Raises :class:`SafetensorsError` if the file is malformed in any way.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header_len = _read_header_length(path, f, file_size)
        header_bytes = f.read(header_len)
        if len(header_bytes) != header_len:
            _fail(path, "the file shrank while it was being read")
        data_len = file_size - 8 - header_len
        entries, metadata = _parse_header(path, header_bytes, data_len)

        if mmap:
            # Map the whole file; slices into it start after the header.
            buffer = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
            base = 8 + header_len
        else:
            buffer = bytearray(data_len)
            if f.readinto(buffer) != data_len:
                _fail(path, "the file shrank while it was being read")
            base = 0

    tensors = {}
    for name, (dtype_name, shape, begin, end) in entries.items():
        try:
            tensors[name] = _tensor_from_buffer(buffer, base + begin, dtype_name, shape)
        except ValueError as exc:
            # The bytes are there (checked above), but NumPy cannot make an
            # array of this shape: more than 64 dimensions, or an empty
            # tensor with a dimension beyond any array's size.
            _fail(path, f"tensor {name!r}: shape {shape} cannot be a NumPy array ({exc})")
    return tensors, metadata


def _fail(path: str, problem: str) -> NoReturn:
    raise SafetensorsError(f"{path}: not a valid safetensors file: {problem}")


def _read_header_length(path: str, f: BinaryIO, file_size: int) -> int:
    if file_size < 8:
        _fail(
            path,
            f"file is shorter than 8 bytes ({file_size} bytes), "
            "so it cannot even hold the header length",
        )
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_HEADER_BYTES:
        _fail(
            path,
            f"header length {header_len} bytes is too large "
            f"(the limit is {MAX_HEADER_BYTES} bytes)",
        )
    if 8 + header_len > file_size:
        _fail(
            path,
            f"header length {header_len} bytes runs beyond the end of the file "
            f"({file_size} bytes)",
        )
    return header_len


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json.loads silently keeps the last of two equal keys; a tensor named
    # twice is ambiguous, so refuse it instead.
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(Exception):
    pass


def _parse_header(
    path: str, header_bytes: bytes, data_len: int
) -> tuple[dict[str, tuple[str, list[int], int, int]], dict[str, str]]:
    """Decode and validate the header; return per-tensor info and metadata."""
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(path, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as dup:
        _fail(path, f"header names {dup.args[0]!r} more than once (duplicate key)")
    # ValueError beyond JSONDecodeError: an integer of more digits than
    # Python converts (4300 by default).
    except (ValueError, RecursionError) as exc:
        _fail(path, f"header is not valid JSON ({exc})")
    if not isinstance(header, dict):
        _fail(path, f"header is not a JSON object but a JSON {type(header).__name__}")

    metadata = _parse_metadata(path, header.pop(_METADATA_KEY, None))
    entries = {
        name: _parse_entry(path, name, info, data_len) for name, info in header.items()
    }
    _check_tiling(path, entries, data_len)
    return entries, metadata


def _parse_metadata(path: str, raw) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(
            path,
            f"{_METADATA_KEY} must be a JSON object of strings, "
            f"got a JSON {type(raw).__name__}",
        )
    for key, value in raw.items():
        if not isinstance(value, str):
            _fail(
                path,
                f"{_METADATA_KEY} value for {key!r} must be a string, "
                f"got {type(value).__name__} {value!r}",
            )
    return raw


def _is_count(value) -> bool:
    """A non-negative JSON integer (JSON true/false are not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(
    path: str, name: str, info, data_len: int
) -> tuple[str, list[int], int, int]:
    where = f"tensor {name!r}"
    if not isinstance(info, dict):
        _fail(path, f"{where}: entry must be a JSON object, got {info!r}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            _fail(path, f"{where}: entry has no {field!r} field")

    dtype_name = info["dtype"]
    if not isinstance(dtype_name, str):
        _fail(path, f"{where}: dtype must be a string such as \"F32\", got {dtype_name!r}")
    if dtype_name in _UNSUPPORTED_DTYPES:
        _fail(path, f"{where}: dtype {dtype_name} is not supported by numgpt")
    if dtype_name not in _NUMPY_DTYPES and dtype_name != _BF16:
        known = ", ".join(sorted([*_NUMPY_DTYPES, _BF16]))
        _fail(path, f"{where}: unknown dtype {dtype_name!r} (expected one of {known})")

    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        _fail(path, f"{where}: shape must be a list of non-negative integers, got {shape!r}")

    offsets = info["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
    ):
        _fail(
            path,
            f"{where}: data_offsets must be [begin, end] with non-negative "
            f"integers, got {offsets!r}",
        )
    begin, end = offsets
    if begin > end:
        _fail(path, f"{where}: data_offsets [{begin}, {end}] have begin > end")

    itemsize = _BF16_ITEMSIZE if dtype_name == _BF16 else _NUMPY_DTYPES[dtype_name].itemsize
    expected = math.prod(shape) * itemsize
    if end - begin != expected:
        _fail(
            path,
            f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but "
            f"shape {shape} of {dtype_name} needs {expected} bytes (length mismatch)",
        )
    if end > data_len:
        _fail(
            path,
            f"{where}: data_offsets [{begin}, {end}] lie outside the data buffer, "
            f"which is {data_len} bytes long",
        )
    return dtype_name, shape, begin, end


def _check_tiling(path: str, entries: dict, data_len: int) -> None:
    """The tensors, sorted by offset, must tile [0, data_len) exactly."""
    position = 0
    previous = None
    # Sorting by (begin, end) puts an empty tensor before a non-empty one
    # starting at the same byte, so empty tensors never count as overlaps.
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin < position:
            _fail(
                path,
                f"tensor {name!r} (bytes {begin}..{end}) overlaps tensor "
                f"{previous!r}, which ends at byte {position}",
            )
        if begin > position:
            _fail(
                path,
                f"hole in the data buffer: bytes {position}..{begin} before tensor "
                f"{name!r} belong to no tensor",
            )
        position = end
        previous = name
    if position != data_len:
        _fail(
            path,
            f"the data buffer is not fully covered: its last {data_len - position} "
            f"bytes (from byte {position} of {data_len}) belong to no tensor",
        )


def _tensor_from_buffer(buffer, offset: int, dtype_name: str, shape: list[int]) -> np.ndarray:
    count = math.prod(shape)
    if dtype_name == _BF16:
        bits = np.frombuffer(buffer, dtype="<u2", count=count, offset=offset)
        return bf16_bits_to_float32(bits).reshape(shape)
    dtype = _NUMPY_DTYPES[dtype_name]
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    if dtype_name == "BOOL":
        # Only 0 and 1 are valid bool bytes; normalise anything else to
        # True rather than hand NumPy a bool array holding a stray byte.
        raw = np.frombuffer(buffer, dtype=np.uint8, count=count, offset=offset)
        return (raw != 0).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def write_safetensors(
    path,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    bf16: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Write ``tensors`` (and optional string ``metadata``) as a safetensors file.

    Arrays may be float16/32/64, signed or unsigned 8- to 64-bit integers,
    or bool; anything else is refused with a TypeError naming the tensor.
    The float tensors whose names are in ``bf16`` are rounded to bfloat16
    (see :func:`float32_to_bf16_bits`) and stored as BF16.

    The file is written atomically: it is assembled in a temporary file next
    to ``path``, flushed to disk and then renamed over ``path``.  If
    anything fails, ``path`` is left as it was and the temporary file is
    removed.
    """
    path = os.fspath(path)
    plan = _plan_tensors(tensors, bf16)
    header_bytes = _encode_header(plan, _check_metadata(metadata))
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for _name, _dtype_name, data in plan:
            # A contiguous 1-D uint8 view writes the bytes without copying.
            f.write(data.reshape(-1).view(np.uint8))


def _plan_tensors(
    tensors: Mapping[str, np.ndarray], bf16
) -> list[tuple[str, str, np.ndarray]]:
    """Validate the input and return ``(name, dtype_name, le_array)`` in file order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"write_safetensors: tensors must be a dict of name -> numpy array, "
            f"got {type(tensors).__name__}"
        )
    bf16 = set(bf16)
    missing = bf16 - set(tensors)
    if missing:
        raise ValueError(
            f"write_safetensors: bf16 names tensors that are not being written: "
            f"{sorted(missing)}"
        )

    plan = []
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise TypeError(
                f"write_safetensors: tensor names must be strings, got {name!r}"
            )
        if name == _METADATA_KEY:
            raise ValueError(
                f"write_safetensors: {_METADATA_KEY!r} is reserved for metadata "
                "and cannot name a tensor"
            )
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"write_safetensors: tensor {name!r} must be a numpy array, "
                f"got {type(array).__name__}"
            )
        if name in bf16:
            if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
                raise TypeError(
                    f"write_safetensors: tensor {name!r} is listed in bf16 but has "
                    f"dtype {array.dtype}; only float16/32/64 can be stored as BF16"
                )
            plan.append((name, _BF16, float32_to_bf16_bits(array).astype("<u2")))
            continue
        dtype_name = _WRITE_DTYPES.get((array.dtype.kind, array.dtype.itemsize))
        if dtype_name is None:
            raise TypeError(
                f"write_safetensors: tensor {name!r} has dtype {array.dtype}, which "
                "safetensors cannot store; expected float16/32/64, int8-64, "
                "uint8-64 or bool"
            )
        # Little-endian and C order, as the format stores; astype only copies
        # when the array is not laid out that way already.  (Not
        # np.ascontiguousarray: it would turn a 0-d array into shape (1,).)
        data = array.astype(_NUMPY_DTYPES[dtype_name], order="C", copy=False)
        plan.append((name, dtype_name, data))

    # Largest items first keeps every tensor aligned to its item size.
    plan.sort(key=lambda entry: (-entry[2].dtype.itemsize, entry[0]))
    return plan


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"write_safetensors: metadata must be a dict of str -> str, "
            f"got {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                "write_safetensors: metadata must map strings to strings, got "
                f"{key!r}: {value!r} ({type(key).__name__} -> {type(value).__name__})"
            )
    return dict(metadata)


def _encode_header(plan, metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header[_METADATA_KEY] = metadata
    offset = 0
    for name, dtype_name, data in plan:
        header[name] = {
            "dtype": dtype_name,
            "shape": list(data.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        offset += data.nbytes
    encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # Spaces are JSON whitespace, so padding keeps the header valid while
    # making the data buffer start on an 8-byte boundary.
    return encoded + b" " * (-len(encoded) % 8)
