"""Fuzzing the safetensors reader with damaged and hostile files.

The property, for every input: :func:`numgpt.safetensors.read_safetensors`
either raises SafetensorsError naming the file, or returns exactly what the
file's header describes, as read by the small independent decoder below.
Never another exception, never a hang, never an allocation because of a
size written in the file.  (The format has no checksum, so a damaged tensor
byte, or a header edit that leaves a valid file, loads as what it now says.)

Damage is drawn by Hypothesis in each region of a small valid file (the
8-byte header length, the JSON header, the data buffer) and hostile headers
are built from strategies for each field: offsets that overlap, run out of
range, are negative or not integers; dtypes and shapes of every kind.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numgpt.safetensors import MAX_HEADER_BYTES, SafetensorsError, read_safetensors, write_safetensors

from measure import measure

TENSORS = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "ids": np.array([1, 50256], dtype=np.int64),
    "h": np.array([0.5, -2.0], dtype=np.float16),
    "mask": np.array([True, False, True]),
    "scalar": np.array(7, dtype=np.uint8),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "b": np.array([1.0, 3.0], dtype=np.float32),
}
METADATA = {"format": "pt"}

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# An independent decoder of valid files, to compare successful reads against.
REFERENCE_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
}


def reference_decode(content: bytes):
    (length,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8 : 8 + length])
    metadata = header.pop("__metadata__", None) or {}  # null means none, as in the reference reader
    data = content[8 + length :]
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] == "BOOL":
            array = np.frombuffer(raw, dtype=np.uint8) != 0
        else:
            array = np.frombuffer(raw, dtype=REFERENCE_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors, metadata


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("original") / "model.safetensors"
    write_safetensors(path, TENSORS, METADATA, bf16={"b"})
    return path.read_bytes()


def read_refused_or_faithful(path, mmap: bool = True) -> bool:
    """True if the file was read (checked against reference_decode), False if refused."""
    try:
        tensors, metadata = read_safetensors(path, mmap=mmap)
    except SafetensorsError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        return False
    expected, expected_metadata = reference_decode(path.read_bytes())
    assert metadata == expected_metadata
    assert set(tensors) == set(expected)
    for name, array in expected.items():
        assert tensors[name].dtype == array.dtype, name
        assert tensors[name].shape == array.shape, name
        assert tensors[name].tobytes() == array.tobytes(), name
    return True


def test_the_reference_decoder_reads_the_original(tmp_path, original):
    path = tmp_path / "model.safetensors"
    path.write_bytes(original)
    assert read_refused_or_faithful(path)
    tensors, _ = reference_decode(original)
    for name, array in TENSORS.items():
        if name != "b":  # stored as BF16
            assert tensors[name].tobytes() == array.tobytes()


def file_regions(content: bytes) -> dict[str, tuple[int, int]]:
    (length,) = struct.unpack("<Q", content[:8])
    return {"header length": (0, 8), "header": (8, 8 + length), "data": (8 + length, len(content))}


@st.composite
def positions(draw, content: bytes) -> int:
    region = draw(st.sampled_from(sorted(file_regions(content))))
    start, end = file_regions(content)[region]
    return draw(st.integers(start, end - 1))


# ---------------------------------------------------------------------------
# Damaged files


@FUZZ
@given(data=st.data(), mmap=st.booleans())
def test_flipped_bytes_in_each_region(tmp_path, original, data, mmap):
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(positions(original))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(damaged))
    read_refused_or_faithful(path, mmap)


@FUZZ
@given(data=st.data())
def test_bytes_overwritten_inserted_or_deleted(tmp_path, original, data):
    position = data.draw(positions(original))
    inserted = data.draw(st.binary(max_size=8) | st.sampled_from([b" ", b"0", b"9" * 30, b"-", b",", b"]", b"\\"]))
    deleted = data.draw(st.integers(0, 8))
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(original[:position] + inserted + original[position + deleted :])
    read_refused_or_faithful(path)


def test_truncation_in_every_region(tmp_path, original):
    """Every fifth length, and each side of every region boundary: every cut is refused."""
    lengths = set(range(0, len(original), 5))
    for start, end in file_regions(original).values():
        lengths.update({start, start + 1, end - 1})
    path = tmp_path / "truncated.safetensors"
    for length in sorted(lengths - {len(original)}):
        path.write_bytes(original[:length])
        with pytest.raises(SafetensorsError, match="shorter than 8|beyond the end|outside the data buffer"):
            read_safetensors(path)


@FUZZ
@given(data=st.data())
def test_truncation_anywhere(tmp_path, original, data):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(original[: data.draw(st.integers(0, len(original) - 1))])
    with pytest.raises(SafetensorsError, match="shorter than 8|beyond the end|outside the data buffer"):
        read_safetensors(path)


# ---------------------------------------------------------------------------
# The header length




@FUZZ
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**64 - 1, 2**63, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**32])),
       mmap=st.booleans())
def test_forged_header_length(tmp_path, original, length, mmap):
    path = tmp_path / "forged.safetensors"
    path.write_bytes(struct.pack("<Q", length) + original[8:])
    error, seconds, peak = measure(lambda: read_refused_or_faithful(path, mmap))
    assert error is None, repr(error)
    assert seconds < 1.0 and peak < 1 << 20


# ---------------------------------------------------------------------------
# Hostile headers: every field drawn from a strategy for that field

counts = st.one_of(st.integers(0, 40), st.integers(-(2**70), 2**70), st.sampled_from([2**63, 2**64, 10**30, -1]))
json_odd = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4), st.just([]), st.just({}))
dtype_names = st.one_of(
    st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]),
    st.sampled_from(["F8_E4M3", "C64", "f32", "F32 ", "", "F128", "STR"]),
    json_odd,
    st.just(["F32"]),
)
shape_values = st.one_of(
    st.lists(st.integers(0, 4), max_size=3),
    st.lists(counts, max_size=4),
    st.just([1] * 70),
    st.just([0] * 70),
    st.just([0, 10**30]),
    st.just([0, 2**62, 2**62]),
    st.lists(json_odd, max_size=2),
    json_odd,
)
offset_values = st.one_of(
    st.tuples(st.integers(0, 48), st.integers(0, 48)).map(list),
    st.lists(counts, max_size=3),
    st.lists(json_odd, min_size=2, max_size=2),
    st.just([0.0, 8.0]),
    json_odd,
)


@st.composite
def hostile_entries(draw):
    entry = {"dtype": draw(dtype_names), "shape": draw(shape_values), "data_offsets": draw(offset_values)}
    if draw(st.booleans()):
        del entry[draw(st.sampled_from(sorted(entry)))]
    if draw(st.integers(0, 5)) == 0:
        entry["extra"] = draw(json_odd)
    return draw(st.one_of(st.just(entry), json_odd)) if draw(st.integers(0, 9)) == 0 else entry


@st.composite
def hostile_headers(draw):
    names = draw(st.lists(st.text(max_size=3), max_size=4, unique=True))
    header = {name: draw(hostile_entries()) for name in names}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=3), st.text(max_size=3) | json_odd, max_size=2), json_odd))
    return header


@FUZZ
@given(header=hostile_headers(), data=st.binary(max_size=48), mmap=st.booleans())
def test_hostile_headers(tmp_path, header, data, mmap):
    raw = json.dumps(header).encode()
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    error, seconds, peak = measure(lambda: read_refused_or_faithful(path, mmap))
    assert error is None, repr(error)
    assert seconds < 1.0 and peak < 1 << 20


@st.composite
def tiling_headers(draw):
    """Well-formed entries whose offsets are drawn around a valid tiling:
    overlapping, leaving holes, out of range, or exactly right."""
    sizes = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    header, position = {}, 0
    for index, size in enumerate(sizes):
        begin = max(0, position + draw(st.sampled_from([0, 0, 0, -1, 1, -4, 4])))
        header[f"t{index}"] = {"dtype": "U32", "shape": [size], "data_offsets": [begin, begin + 4 * size]}
        position = begin + 4 * size
    return header, position + draw(st.sampled_from([0, 0, 1, -1, 4]))


@FUZZ
@given(layout=tiling_headers(), mmap=st.booleans())
def test_offsets_near_a_valid_tiling(tmp_path, layout, mmap):
    header, data_size = layout
    raw = json.dumps(header).encode()
    path = tmp_path / "tiling.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x07" * max(data_size, 0))
    read_refused_or_faithful(path, mmap)


@pytest.mark.parametrize(
    "raw, pattern",
    [
        # Found by fuzzing: each of these escaped as a bare ValueError or TypeError.
        (b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}', "not valid JSON"),
        (b'{"a": {"dtype": "F32", "shape": [0, 1000000000000000000000000000000], "data_offsets": [0, 0]}}', "cannot be a NumPy array"),
        (b'{"a": {"dtype": "BF16", "shape": [0, 1000000000000000000000000000000], "data_offsets": [0, 0]}}', "cannot be a NumPy array"),
        (b'{"a": {"dtype": "BOOL", "shape": [0, 4611686018427387904, 4611686018427387904], "data_offsets": [0, 0]}}', "cannot be a NumPy array"),
        (b'{"a": {"dtype": "U8", "shape": [' + b"0, " * 69 + b'0], "data_offsets": [0, 0]}}', "cannot be a NumPy array"),
        (b'{"a": {"dtype": ["F32"], "shape": [], "data_offsets": [0, 4]}}', "dtype must be a string"),
        (b'{"a": {"dtype": {"F32": 1}, "shape": [], "data_offsets": [0, 4]}}', "dtype must be a string"),
    ],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_headers_found_by_fuzzing(tmp_path, raw, pattern, mmap):
    path = tmp_path / "found.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(SafetensorsError, match=pattern) as excinfo:
        read_safetensors(path, mmap=mmap)
    assert str(path) in str(excinfo.value)


def test_a_huge_claimed_tensor_in_a_tiny_file_allocates_nothing(tmp_path):
    raw = json.dumps({"a": {"dtype": "F64", "shape": [10**12], "data_offsets": [0, 8 * 10**12]}}).encode()
    path = tmp_path / "forged.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    for mmap in (True, False):
        error, seconds, peak = measure(lambda: read_safetensors(path, mmap=mmap))
        assert isinstance(error, SafetensorsError) and "outside the data buffer" in str(error)
        assert seconds < 1.0 and peak < 1 << 20
