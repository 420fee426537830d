"""Tests for numgpt.safetensors: round trips, hand-built files, bfloat16, refusals, atomicity."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numgpt.safetensors import (
    MAX_HEADER_BYTES,
    SafetensorsError,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    read_safetensors,
    write_safetensors,
)

WRITABLE_DTYPES = [
    np.float64, np.float32, np.float16,
    np.int64, np.int32, np.int16, np.int8,
    np.uint64, np.uint32, np.uint16, np.uint8,
    np.bool_,
]


def build_file(header, data: bytes = b"", *, header_len: int | None = None) -> bytes:
    """Assemble a safetensors file by hand, independently of our writer.

    ``header`` is a JSON-able object or raw header bytes; ``header_len``
    overrides the length field to describe a lying file.
    """
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    length = len(raw) if header_len is None else header_len
    return struct.pack("<Q", length) + raw + data


def write_bytes(tmp_path, content: bytes, name: str = "file.safetensors"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def read_header(path) -> tuple[int, str]:
    """Return the header length field and the raw header text of a file."""
    content = path.read_bytes()
    (header_len,) = struct.unpack("<Q", content[:8])
    return header_len, content[8 : 8 + header_len].decode("utf-8")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------
# Round trips through our own writer and reader
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WRITABLE_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_is_bit_exact_for_every_dtype(tmp_path, dtype, mmap):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        matrix = rng.standard_normal((3, 5)).astype(dtype)
        matrix[0, :3] = [np.inf, -np.inf, np.nan]
        matrix[1, 0] = -0.0
    elif np.dtype(dtype).kind == "b":
        matrix = rng.random((3, 5)) < 0.5
    else:
        info = np.iinfo(dtype)
        matrix = rng.integers(info.min, info.max, size=(3, 5), dtype=dtype, endpoint=True)
        matrix[0, :2] = [info.min, info.max]
    tensors = {
        "matrix": matrix,
        "scalar": np.array(matrix.flat[4], dtype=dtype),  # 0-d
        "empty": np.zeros((0, 4), dtype=dtype),
        "empty_1d": np.zeros((0,), dtype=dtype),
    }
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors)
    loaded, metadata = read_safetensors(path, mmap=mmap)

    assert metadata == {}
    assert set(loaded) == set(tensors)
    for name, original in tensors.items():
        assert same_bits(loaded[name], original), name
    assert loaded["scalar"].shape == ()


def test_mmap_arrays_are_read_only_and_plain_reads_are_writable(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": np.arange(4, dtype=np.float32)})
    mapped, _ = read_safetensors(path, mmap=True)
    copied, _ = read_safetensors(path, mmap=False)
    assert not mapped["w"].flags.writeable
    assert copied["w"].flags.writeable
    copied["w"][0] = 7.0  # must not raise
    assert mapped["w"][0] == 0.0


def test_mapped_arrays_survive_the_file_being_replaced(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": np.full(8, 1.5, dtype=np.float32)})
    mapped, _ = read_safetensors(path)
    write_safetensors(path, {"w": np.full(8, -3.0, dtype=np.float32)})
    # The old mapping still sees the old file: the replace made a new inode.
    np.testing.assert_array_equal(mapped["w"], np.full(8, 1.5, dtype=np.float32))
    np.testing.assert_array_equal(read_safetensors(path)[0]["w"], np.full(8, -3.0))


def test_metadata_round_trips(tmp_path):
    path = tmp_path / "m.safetensors"
    metadata = {"format": "np", "note": "héllo ✓", "empty": ""}
    write_safetensors(path, {"x": np.ones(2, np.float32)}, metadata)
    assert read_safetensors(path)[1] == metadata


def test_no_tensors_at_all(tmp_path):
    path = tmp_path / "empty.safetensors"
    write_safetensors(path, {}, {"only": "metadata"})
    assert read_safetensors(path) == ({}, {"only": "metadata"})


def test_non_contiguous_and_big_endian_inputs_are_written_by_value(tmp_path):
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    tensors = {
        "transposed": base.T,
        "strided": base[:, ::2],
        "big_endian": base.astype(">f4"),
    }
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors)
    loaded, _ = read_safetensors(path)
    np.testing.assert_array_equal(loaded["transposed"], base.T)
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["big_endian"], base.astype(np.float32))
    assert loaded["big_endian"].dtype == np.dtype("<f4")


def test_written_layout_is_aligned_sorted_and_deterministic(tmp_path):
    tensors = {
        "b_i8": np.arange(3, dtype=np.int8),
        "a_f32": np.arange(3, dtype=np.float32),
        "z_f64": np.arange(1, dtype=np.float64),
        "c_f16": np.arange(5, dtype=np.float16),
        "a_f64": np.arange(2, dtype=np.float64),
    }
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    write_safetensors(first, tensors, {"k": "v"})
    write_safetensors(second, dict(reversed(list(tensors.items()))), {"k": "v"})
    assert first.read_bytes() == second.read_bytes()

    header_len, header_text = read_header(first)
    assert header_len % 8 == 0
    assert header_text.rstrip(" ").endswith("}")  # only spaces pad the JSON
    header = json.loads(header_text)
    assert list(header)[0] == "__metadata__"
    order = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    assert [name for _, name in order] == ["a_f64", "z_f64", "a_f32", "c_f16", "b_i8"]
    for name, info in header.items():
        if name != "__metadata__":
            itemsize = tensors[name].dtype.itemsize
            assert info["data_offsets"][0] % itemsize == 0, name


def test_bf16_writing_rounds_and_reads_back_as_float32(tmp_path):
    values = np.array([1.0, -2.0, 0.15625, 1.0 + 2.0**-9, np.inf], dtype=np.float32)
    path = tmp_path / "bf.safetensors"
    write_safetensors(path, {"w": values, "keep": values}, bf16={"w"})
    loaded, _ = read_safetensors(path)
    assert loaded["w"].dtype == np.float32
    # 1 + 2**-9 is below halfway between 1.0 and the next bfloat16 (1 + 2**-7).
    np.testing.assert_array_equal(loaded["w"], [1.0, -2.0, 0.15625, 1.0, np.inf])
    assert same_bits(loaded["keep"], values)
    header = json.loads(read_header(path)[1])
    begin, end = header["w"]["data_offsets"]
    assert header["w"]["dtype"] == "BF16" and end - begin == 2 * values.size
    assert header["keep"]["dtype"] == "F32"


def test_bf16_option_refuses_unknown_names_and_non_floats(tmp_path):
    path = tmp_path / "bf.safetensors"
    with pytest.raises(ValueError, match="missing_name"):
        write_safetensors(path, {"w": np.ones(2, np.float32)}, bf16={"missing_name"})
    with pytest.raises(TypeError, match="'ids'"):
        write_safetensors(path, {"ids": np.ones(2, np.int32)}, bf16={"ids"})
    assert not path.exists()


# ---------------------------------------------------------------------------
# Files assembled by hand, byte by byte
# ---------------------------------------------------------------------------


def test_reads_hand_built_f32_f16_bf16_file(tmp_path):
    f32 = struct.pack("<4f", 0.5, -1.25, 3.0, 1e-3)
    f16 = struct.pack("<3e", 1.0, -0.5, 65504.0)
    bf16 = struct.pack("<3H", 0x3F80, 0xC000, 0x3E20)  # 1.0, -2.0, 0.15625
    header = {
        "__metadata__": {"format": "pt"},
        # Deliberately listed out of offset order; the reader must not care.
        "bf": {"dtype": "BF16", "shape": [3], "data_offsets": [22, 28]},
        "f32": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "f16": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]},
    }
    path = write_bytes(tmp_path, build_file(header, f32 + f16 + bf16))
    for mmap in (True, False):
        tensors, metadata = read_safetensors(path, mmap=mmap)
        assert metadata == {"format": "pt"}
        assert tensors["f32"].dtype == np.float32 and tensors["f32"].shape == (2, 2)
        np.testing.assert_array_equal(
            tensors["f32"], np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=np.float32)
        )
        assert tensors["f16"].dtype == np.float16
        np.testing.assert_array_equal(tensors["f16"], np.array([1.0, -0.5, 65504.0], np.float16))
        assert tensors["bf"].dtype == np.float32
        np.testing.assert_array_equal(tensors["bf"], [1.0, -2.0, 0.15625])


def test_reads_hand_built_integer_bool_and_zero_d_tensors(tmp_path):
    data = struct.pack("<q", -(2**62)) + struct.pack("<2i", 7, -7) + bytes([1, 0, 1])
    header = {
        "scalar": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]},
        "pair": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]},
        "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [16, 16]},
        "flags": {"dtype": "BOOL", "shape": [3], "data_offsets": [16, 19]},
    }
    tensors, _ = read_safetensors(write_bytes(tmp_path, build_file(header, data)))
    assert tensors["scalar"].shape == () and tensors["scalar"] == -(2**62)
    np.testing.assert_array_equal(tensors["pair"], [7, -7])
    assert tensors["empty"].shape == (0, 3) and tensors["empty"].dtype == np.float32
    np.testing.assert_array_equal(tensors["flags"], [True, False, True])


def test_header_padding_and_leading_whitespace_are_accepted(tmp_path):
    raw = b'  {"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}     '
    tensors, _ = read_safetensors(write_bytes(tmp_path, build_file(raw, b"\x05\x06")))
    np.testing.assert_array_equal(tensors["x"], [5, 6])


# ---------------------------------------------------------------------------
# bfloat16 conversion
# ---------------------------------------------------------------------------

SMALLEST_BF16_SUBNORMAL = 2.0**-133
LARGEST_BF16 = (2.0 - 2.0**-7) * 2.0**127

BF16_TABLE = [
    (1.0, 0x3F80),
    (-2.0, 0xC000),
    (0.15625, 0x3E20),
    (0.0, 0x0000),
    (-0.0, 0x8000),
    (np.inf, 0x7F80),
    (-np.inf, 0xFF80),
    (SMALLEST_BF16_SUBNORMAL, 0x0001),
    (LARGEST_BF16, 0x7F7F),
]


@pytest.mark.parametrize(("value", "bits"), BF16_TABLE)
def test_bf16_value_table(value, bits):
    assert int(float32_to_bf16_bits(np.float32(value))) == bits
    widened = bf16_bits_to_float32(np.uint16(bits))
    assert widened.dtype == np.float32
    assert widened.tobytes() == np.float32(value).tobytes()


def test_bf16_nan_stays_nan_with_its_sign():
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF], dtype=np.uint32).view(
        np.float32
    )
    bits = float32_to_bf16_bits(nans)
    # 0x7F800001 has its payload only in the discarded bits: plain rounding
    # would turn it into infinity.
    assert list(bits) == [0x7FC0, 0xFFC0, 0x7FC0, 0x7FFF]
    assert np.isnan(bf16_bits_to_float32(bits)).all()


def test_bf16_rounds_to_nearest_even():
    patterns = np.array(
        [
            0x3F808000,  # exactly halfway, lower neighbour 0x3F80 is even -> down
            0x3F818000,  # exactly halfway, upper neighbour 0x3F82 is even -> up
            0x3F808001,  # just above halfway -> up
            0x3F807FFF,  # just below halfway -> down
            0x7F7FFFFF,  # largest float32: rounds past the largest bfloat16
            0x00008000,  # halfway to the smallest subnormal -> 0 (even)
        ],
        dtype=np.uint32,
    ).view(np.float32)
    assert list(float32_to_bf16_bits(patterns)) == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0x0000]


def test_bf16_every_pattern_survives_widening_and_rounding_back():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    widened = bf16_bits_to_float32(bits)
    back = float32_to_bf16_bits(widened)
    is_nan = np.isnan(widened)
    np.testing.assert_array_equal(back[~is_nan], bits[~is_nan])
    assert np.isnan(bf16_bits_to_float32(back[is_nan])).all()


def test_bf16_helpers_keep_shape_and_check_input():
    assert float32_to_bf16_bits(np.ones((2, 0, 3))).shape == (2, 0, 3)
    assert bf16_bits_to_float32(np.zeros((4, 1), np.uint16)).shape == (4, 1)
    assert bf16_bits_to_float32([0x3F80]).tolist() == [1.0]
    with pytest.raises(ValueError, match="65535"):
        bf16_bits_to_float32(np.array([70000]))
    with pytest.raises(TypeError, match="uint16"):
        bf16_bits_to_float32(np.array([1.0]))
    with pytest.raises(TypeError, match="dtype"):
        float32_to_bf16_bits(np.array(["a"]))


# ---------------------------------------------------------------------------
# Malformed files are refused
# ---------------------------------------------------------------------------

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
EIGHT_BYTES = b"\x00" * 8


def entry(**changes):
    return {**GOOD_ENTRY, **changes}


MALFORMED = {
    "empty file": (b"", "shorter than 8 bytes"),
    "five bytes": (b"\x01\x02\x03\x04\x05", "shorter than 8 bytes"),
    "header length beyond file": (
        build_file({"x": GOOD_ENTRY}, EIGHT_BYTES, header_len=10_000),
        "beyond the end of the file",
    ),
    "header absurdly large": (
        build_file(b"{}", header_len=MAX_HEADER_BYTES + 1),
        "too large",
    ),
    "header not utf-8": (build_file(b'{"\xff":1}'), "not valid UTF-8"),
    "header not json": (build_file(b'{"x": '), "not valid JSON"),
    "header is a list": (build_file([1, 2]), "not a JSON object"),
    "header is a string": (build_file("hello"), "not a JSON object"),
    "duplicate tensor name": (
        build_file(
            b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            b'"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
            b"\x00\x00",
        ),
        "duplicate",
    ),
    "entry not an object": (build_file({"x": [1, 2]}, EIGHT_BYTES), "must be a JSON object"),
    "entry without dtype": (
        build_file({"x": {"shape": [2], "data_offsets": [0, 8]}}, EIGHT_BYTES),
        "no 'dtype'",
    ),
    "unknown dtype": (build_file({"x": entry(dtype="F7")}, EIGHT_BYTES), "unknown dtype"),
    "lowercase dtype": (build_file({"x": entry(dtype="f32")}, EIGHT_BYTES), "unknown dtype"),
    "fp8 dtype": (
        build_file({"x": entry(dtype="F8_E4M3", data_offsets=[0, 2])}, b"\x00\x00"),
        "not supported",
    ),
    "shape not a list": (build_file({"x": entry(shape=2)}, EIGHT_BYTES), "shape must be a list"),
    "negative dim": (build_file({"x": entry(shape=[-2])}, EIGHT_BYTES), "shape must be a list"),
    "float dim": (build_file({"x": entry(shape=[2.0])}, EIGHT_BYTES), "shape must be a list"),
    "string dim": (build_file({"x": entry(shape=["2"])}, EIGHT_BYTES), "shape must be a list"),
    "bool dim": (build_file({"x": entry(shape=[True, 2])}, EIGHT_BYTES), "shape must be a list"),
    "offsets not a pair": (
        build_file({"x": entry(data_offsets=[0, 4, 8])}, EIGHT_BYTES),
        "data_offsets must be",
    ),
    "offsets negative": (
        build_file({"x": entry(data_offsets=[-8, 0])}, EIGHT_BYTES),
        "data_offsets must be",
    ),
    "offsets begin > end": (
        build_file({"x": entry(shape=[0], data_offsets=[8, 0])}, EIGHT_BYTES),
        "begin > end",
    ),
    "byte length mismatch": (
        build_file({"x": entry(shape=[3])}, EIGHT_BYTES),
        "length mismatch",
    ),
    "offsets outside buffer": (
        build_file({"x": entry(data_offsets=[8, 16])}, EIGHT_BYTES),
        "outside the data buffer",
    ),
    "overlapping tensors": (
        build_file({"a": entry(), "b": entry(shape=[1], data_offsets=[4, 8])}, EIGHT_BYTES),
        "overlaps",
    ),
    "identical offsets": (
        build_file({"a": entry(), "b": entry()}, EIGHT_BYTES),
        "overlaps",
    ),
    "hole between tensors": (
        build_file(
            {
                "a": entry(shape=[1], data_offsets=[0, 4]),
                "b": entry(shape=[1], data_offsets=[8, 12]),
            },
            EIGHT_BYTES + b"\x00" * 4,
        ),
        "hole",
    ),
    "hole at the start": (
        build_file({"x": entry(data_offsets=[8, 16])}, EIGHT_BYTES * 2),
        "hole",
    ),
    "trailing bytes": (
        build_file({"x": entry()}, EIGHT_BYTES + b"junk"),
        "not fully covered",
    ),
    "data but no tensors": (build_file({}, b"junk"), "not fully covered"),
    "metadata value not a string": (
        build_file({"__metadata__": {"step": 3}, "x": GOOD_ENTRY}, EIGHT_BYTES),
        "must be a string",
    ),
    "metadata not an object": (
        build_file({"__metadata__": ["a"], "x": GOOD_ENTRY}, EIGHT_BYTES),
        "__metadata__ must be a JSON object",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("mmap", [True, False])
def test_malformed_file_is_refused(tmp_path, case, mmap):
    content, problem = MALFORMED[case]
    path = write_bytes(tmp_path, content, "bad.safetensors")
    with pytest.raises(SafetensorsError, match=problem) as excinfo:
        read_safetensors(path, mmap=mmap)
    assert str(path) in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_malformed_cases_differ_from_a_valid_file_only_in_the_flaw(tmp_path):
    # Guard against the table above testing nothing: its baseline is valid.
    path = write_bytes(tmp_path, build_file({"x": GOOD_ENTRY}, EIGHT_BYTES))
    tensors, _ = read_safetensors(path)
    np.testing.assert_array_equal(tensors["x"], [0.0, 0.0])


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------
# The writer refuses bad input and never leaves a half-written file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1 + 2j]),
        np.array(["text"]),
        np.array([object()], dtype=object),
        np.array([1], dtype="datetime64[s]"),
    ],
    ids=["complex", "str", "object", "datetime"],
)
def test_writer_refuses_unsupported_dtypes_naming_the_tensor(tmp_path, bad):
    with pytest.raises(TypeError, match="'layer.bad'"):
        write_safetensors(tmp_path / "x.safetensors", {"ok": np.ones(1), "layer.bad": bad})


def test_writer_refuses_bad_names_values_and_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="numpy array"):
        write_safetensors(path, {"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="strings"):
        write_safetensors(path, {1: np.ones(1)})
    with pytest.raises(ValueError, match="reserved"):
        write_safetensors(path, {"__metadata__": np.ones(1)})
    with pytest.raises(TypeError, match="metadata"):
        write_safetensors(path, {"w": np.ones(1)}, {"step": 3})
    assert os.listdir(tmp_path) == []


def previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.arange(3, dtype=np.float32)}, {"v": "1"})
    return path, path.read_bytes()


def test_failed_validation_keeps_previous_file(tmp_path):
    path, before = previous_file(tmp_path)
    with pytest.raises(TypeError):
        write_safetensors(path, {"w": np.ones(3, np.float32), "bad": np.array([1j])})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failure_midway_keeps_previous_file_and_removes_temp(tmp_path, monkeypatch, failing):
    path, before = previous_file(tmp_path)

    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        write_safetensors(path, {"w": np.ones(1000, np.float32)})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]
    tensors, metadata = read_safetensors(path)
    np.testing.assert_array_equal(tensors["w"], [0, 1, 2])
    assert metadata == {"v": "1"}


def test_interrupt_while_writing_data_keeps_previous_file(tmp_path):
    path, before = previous_file(tmp_path)

    class ExplodingArray(np.ndarray):
        def view(self, *args, **kwargs):
            raise KeyboardInterrupt  # e.g. Ctrl-C halfway through the data

    exploding = np.ones(4, np.float32).view(ExplodingArray)
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(path, {"a": np.ones(2, np.float64), "b": exploding})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_output_path_is_kept_exactly(tmp_path):
    path = tmp_path / "weights.bin"
    write_safetensors(str(path), {"w": np.ones(1, np.float32)})
    assert os.listdir(tmp_path) == ["weights.bin"]


# ---------------------------------------------------------------------------
# Property: any dict of supported arrays survives a round trip bit-exactly
# ---------------------------------------------------------------------------

tensor_strategy = st.sampled_from(WRITABLE_DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        dtype=dtype,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
names_strategy = st.text(min_size=0, max_size=12).filter(lambda s: s != "__metadata__")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    tensors=st.dictionaries(names_strategy, tensor_strategy, max_size=5),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    mmap=st.booleans(),
)
def test_round_trip_property(tmp_path, tensors, metadata, mmap):
    path = tmp_path / "prop.safetensors"
    write_safetensors(path, tensors, metadata)
    loaded, loaded_metadata = read_safetensors(path, mmap=mmap)
    assert loaded_metadata == metadata
    assert set(loaded) == set(tensors)
    for name, original in tensors.items():
        expected = original.astype(original.dtype.newbyteorder("<"))
        assert same_bits(loaded[name], expected), name
