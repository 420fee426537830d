"""Fuzzing the checkpoint reader with damaged and hostile files.

The property, for every input: :func:`numgpt.checkpoint.load_checkpoint`
either raises CheckpointError naming the file, or returns exactly the arrays
and meta that were saved.  Never another exception, never a hang, never a
large allocation because of a size written in the file.  (Every member of a
checkpoint carries a CRC-32, so a damaged file that loads must load the
original; a hostile file with correct CRCs must load what numpy itself reads
from its members.)

Damage is drawn by Hypothesis as positions in a small valid checkpoint:
anywhere, or inside one region (a local zip header, a .npy header, array
data, a central directory entry, the end record).  Hostile files are built
with zipfile, so their CRCs are right: forged .npy headers and forged zip
sizes.  The same is checked for :func:`numgpt.train.load_run`, which builds
a model from a run checkpoint.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numgpt.checkpoint import FORMAT_KEY, META_KEY, CheckpointError, load_checkpoint, save_checkpoint

from measure import measure

ARRAYS = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "ids": np.array([1, 50256], dtype=np.int64),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 2), dtype=np.float32),
}
META = {"iteration": 12, "rng": {"state": 2**100 + 7}, "tokenizer": {"kind": "byte"}}

# One Hypothesis example writes one small file and loads it: milliseconds.
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("original") / "ckpt.npz"
    save_checkpoint(path, ARRAYS, META)
    return path.read_bytes()


def assert_refused_or_identical(path, expected_arrays=ARRAYS, expected_meta=META) -> bool:
    """True if the file loaded (identically), False if it was refused cleanly."""
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        return False
    assert meta == expected_meta
    assert set(arrays) == set(expected_arrays)
    for name, array in expected_arrays.items():
        assert arrays[name].dtype == array.dtype, name
        assert arrays[name].shape == array.shape, name
        assert arrays[name].tobytes() == array.tobytes(), name
    return True


# ---------------------------------------------------------------------------
# The regions of a checkpoint file


def regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Name -> [start, end) byte range of every structural part of the archive."""
    found = {}
    archive = zipfile.ZipFile(io.BytesIO(data))
    for info in archive.infolist():
        start = info.header_offset
        name_length, extra_length = struct.unpack_from("<HH", data, start + 26)
        data_start = start + 30 + name_length + extra_length
        found[f"local header {info.filename}"] = (start, data_start)
        # .npy version 1.0: 6 magic bytes, 2 version bytes, a 2-byte header length.
        (npy_header_length,) = struct.unpack_from("<H", data, data_start + 8)
        array_start = data_start + 10 + npy_header_length
        found[f"npy header {info.filename}"] = (data_start, array_start)
        if info.file_size > array_start - data_start:
            found[f"array data {info.filename}"] = (array_start, data_start + info.file_size)
    end_record = data.rindex(b"PK\x05\x06")
    central_directory = min(data.index(b"PK\x01\x02"), end_record)
    found["central directory"] = (central_directory, end_record)
    found["end record"] = (end_record, len(data))
    return found


def test_regions_cover_the_whole_file(original):
    spans = sorted(regions(original).values())
    assert spans[0][0] == 0 and spans[-1][1] == len(original)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@st.composite
def position_in_a_region(draw, data: bytes) -> int:
    start, end = draw(st.sampled_from(sorted(regions(data).values())))
    return draw(st.integers(start, end - 1))


def flipped(data: bytes, flips) -> bytes:
    damaged = bytearray(data)
    for position, mask in flips:
        damaged[position] ^= mask
    return bytes(damaged)


# ---------------------------------------------------------------------------
# Damaged files


@FUZZ
@given(data=st.data())
def test_flipped_bytes_anywhere(tmp_path, original, data):
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(1, 255)), min_size=1, max_size=4)
    )
    path = tmp_path / "damaged.npz"
    path.write_bytes(flipped(original, flips))
    assert_refused_or_identical(path)


@FUZZ
@given(data=st.data())
def test_flipped_bytes_in_each_region(tmp_path, original, data):
    flips = data.draw(
        st.lists(st.tuples(position_in_a_region(original), st.integers(1, 255)), min_size=1, max_size=3)
    )
    path = tmp_path / "damaged.npz"
    path.write_bytes(flipped(original, flips))
    assert_refused_or_identical(path)


@FUZZ
@given(data=st.data())
def test_bytes_set_to_extreme_values_in_each_region(tmp_path, original, data):
    """0x00 and 0xFF runs: sizes, lengths and counts become 0 or huge."""
    position = data.draw(position_in_a_region(original))
    length = data.draw(st.integers(1, 8))
    fill = data.draw(st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x80"]))
    damaged = bytearray(original)
    damaged[position : position + length] = fill * len(damaged[position : position + length])
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(damaged))
    assert_refused_or_identical(path)


def region_landmarks(data: bytes) -> list[int]:
    """The first, second, middle and last byte of every region."""
    positions = set()
    for start, end in regions(data).values():
        positions.update({start, min(start + 1, end - 1), (start + end) // 2, end - 1})
    return sorted(positions)


def test_each_region_inverted_at_its_landmarks(tmp_path, original):
    """Deterministic: the first, second, middle and last byte of every region, all bits flipped."""
    path = tmp_path / "damaged.npz"
    loaded = []
    for position in region_landmarks(original):
        path.write_bytes(flipped(original, [(position, 0xFF)]))
        if assert_refused_or_identical(path):
            loaded.append(position)
    # Some bytes do not matter (timestamps, permission bits, the CRC copy in
    # the local headers): the file loads unchanged.  Most do.
    assert len(loaded) < len(region_landmarks(original)) // 2


def test_truncation_in_every_region(tmp_path, original):
    """The file cut at the landmarks of every region."""
    path = tmp_path / "truncated.npz"
    for length in region_landmarks(original):
        path.write_bytes(original[:length])
        with pytest.raises(CheckpointError, match="truncated|corrupt|not a zip"):
            load_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_truncation_anywhere(tmp_path, original, data):
    path = tmp_path / "truncated.npz"
    path.write_bytes(original[: data.draw(st.integers(0, len(original) - 1))])
    with pytest.raises(CheckpointError, match="truncated|corrupt|not a zip"):
        load_checkpoint(path)


@FUZZ
@given(data=st.data())
def test_bytes_inserted_or_deleted(tmp_path, original, data):
    position = data.draw(position_in_a_region(original))
    inserted = data.draw(st.binary(max_size=8))
    deleted = data.draw(st.integers(0, 8))
    path = tmp_path / "damaged.npz"
    path.write_bytes(original[:position] + inserted + original[position + deleted :])
    assert_refused_or_identical(path)


def test_skipped_directory_entries_are_noticed(tmp_path, original):
    """Found by fuzzing: a damaged length inside one central directory entry made
    zipfile skip the entries after it, and the checkpoint loaded without them."""
    damaged = bytearray(original)
    first_entry = damaged.index(b"PK\x01\x02")
    damaged[first_entry + 33] = 0xFF  # high byte of the first entry's comment length
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="promises 6 members .* lists 1"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------
# Hostile files: valid zip archives (right CRCs) with forged contents


def original_members(original: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(original))
    return {info.filename: archive.read(info) for info in archive.infolist()}


def write_archive(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)


def npy_member(header: str, payload: bytes, version=(1, 0)) -> bytes:
    """A .npy member with an arbitrary header text (padded as numpy pads it)."""
    length_format = "<H" if version == (1, 0) else "<I"
    encoding = "utf8" if version == (3, 0) else "latin1"
    encoded = header.encode(encoding, "surrogatepass" if encoding == "utf8" else "replace")
    prefix = 6 + 2 + struct.calcsize(length_format)
    encoded += b" " * (-(prefix + len(encoded) + 1) % 64) + b"\n"
    if version == (1, 0) and len(encoded) > 0xFFFF:
        encoded = encoded[:0xFFFF]
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(encoded)) + encoded + payload


def load_forged_array(tmp_path, original, member: bytes):
    """Load a checkpoint whose array 'w' is ``member``; check the outcome against
    numpy's own reading of that member.  Returns the array, or None if refused."""
    members = original_members(original)
    members["w.npy"] = member
    path = tmp_path / "forged.npz"
    write_archive(path, members)
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
        return None
    # It loaded, so the member is a sound .npy: numpy must read the same array.
    expected = np.lib.format.read_array(io.BytesIO(member), allow_pickle=False)
    assert arrays["w"].dtype == expected.dtype and arrays["w"].shape == expected.shape
    assert arrays["w"].tobytes() == expected.tobytes()
    assert meta == META and set(arrays) == set(ARRAYS)
    return arrays["w"]


dims = st.one_of(
    st.integers(0, 8),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**12, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -1]),
)
shapes = st.one_of(
    st.lists(dims, max_size=4).map(tuple),
    st.just((2, 3)),
    st.just((1,) * 70),  # more dimensions than numpy allows
    st.sampled_from([[2, 3], "2, 3", 6, None, (2.0, 3), (True, 3), ((2,), 3)]),
)
descrs = st.one_of(
    st.sampled_from(
        ["<f4", ">f4", "<f8", "|b1", "<i8", "|u1", "<c8", "<U3", "|S0", "|V0", "|V8", "<M8[s]",
         "|O", "O", "xyz", "", "<f4\x00", "f" * 1000, "(2,3)f4", "<V4294967296", "<U2147483648"]
    ),
    st.sampled_from(
        [
            [("a", "<f4"), ("b", "<f4")],
            [("a", "<f4", (2,))],
            [("a", "<f4", (10**12,))],
            [("a", "|O")],
            [("", "|V4")],
            [(("t", "a"), "<f4")],
            [("a",)],
            [("a", "<f4", "bad")],
            [],
            ("<f4", (2,)),
            ("<f4", 10**30),
            (),
            [("a", [("b", "<f4")])],
        ]
    ),
    st.text(max_size=10),
    st.integers(),
)
fortran_orders = st.sampled_from([False, True, 0, 1, None, "False"])


@st.composite
def forged_headers(draw) -> str:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.text(max_size=100))
    fields = {"descr": draw(descrs), "fortran_order": draw(fortran_orders), "shape": draw(shapes)}
    if choice == 1:
        del fields[draw(st.sampled_from(sorted(fields)))]
    if choice == 2:
        fields["extra"] = 1
    text = repr(fields)
    if choice == 3:  # cut short, or with something appended
        text = text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["", "(", "'", "[", "L", "\\"]))
    return text


@FUZZ
@given(header=forged_headers(), version=st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 0), (4, 0)]),
       payload=st.one_of(st.just(ARRAYS["w"].tobytes()), st.binary(max_size=64)))
def test_forged_npy_headers(tmp_path, original, header, version, payload):
    load_forged_array(tmp_path, original, npy_member(header, payload, version))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_a_sound_forged_header_loads_like_numpy_reads_it(tmp_path, original, version):
    """The other side of the property: the fuzzing does reach successful loads."""
    header = repr({"descr": "<f4", "fortran_order": True, "shape": (3, 2)})
    loaded = load_forged_array(tmp_path, original, npy_member(header, ARRAYS["w"].tobytes(), version))
    assert loaded is not None and loaded.shape == (3, 2) and loaded.flags.f_contiguous


@FUZZ
@given(data=st.binary(max_size=300))
def test_npy_member_of_random_bytes(tmp_path, original, data):
    load_forged_array(tmp_path, original, data)


@FUZZ
@given(data=st.data())
def test_npy_member_with_mutated_bytes(tmp_path, original, data):
    member = bytearray(original_members(original)["w.npy"])
    for _ in range(data.draw(st.integers(1, 4))):
        member[data.draw(st.integers(0, len(member) - 1))] = data.draw(st.integers(0, 255))
    load_forged_array(tmp_path, original, bytes(member))




@pytest.mark.parametrize(
    "shape, descr",
    [((10**12,), "<f8"), ((2**28,), "<f4"), ((2**20, 2**20), "|u1"), ((0, 2**70), "<f4"), ((2**62, 2**62), "|V0")],
)
def test_forged_npy_shape_in_a_tiny_file_allocates_nothing(tmp_path, original, shape, descr):
    """A header claiming terabytes (or a gigabyte, which numpy would allocate
    lazily and then fail to fill) in a file of a few hundred bytes: the size is
    checked against the member before numpy allocates anything."""
    members = original_members(original)
    members["w.npy"] = npy_member(repr({"descr": descr, "fortran_order": False, "shape": shape}), b"\0" * 8)
    path = tmp_path / "forged.npz"
    write_archive(path, members)
    error, seconds, peak = measure(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError), repr(error)
    assert "claims shape" in str(error) and "'w'" in str(error)
    assert seconds < 1.0
    assert peak < 1 << 20, f"{peak} bytes allocated"


# Fields of a zip entry that give a size or an offset: (name, offset in the
# central directory entry, offset in the local header, struct format).
SIZE_FIELDS = [
    ("compressed size", 20, 18, "<I"),
    ("uncompressed size", 24, 22, "<I"),
    ("local header offset", 42, None, "<I"),
    ("name length", 28, 26, "<H"),
    ("extra length", 30, 28, "<H"),
]


@FUZZ
@given(
    field=st.sampled_from(SIZE_FIELDS),
    where=st.sampled_from(["central", "local", "both"]),
    member=st.integers(0, 5),
    value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1, 0xFFFF])),
)
def test_forged_zip_sizes(tmp_path, original, field, where, member, value):
    _, central_at, local_at, fmt = field
    data = bytearray(original)
    entry = -1
    for _ in range(member + 1):
        entry = data.index(b"PK\x01\x02", entry + 1)
    value %= 1 << (8 * struct.calcsize(fmt))
    if where in ("central", "both"):
        struct.pack_into(fmt, data, entry + central_at, value)
    if where in ("local", "both") and local_at is not None:
        (header_offset,) = struct.unpack_from("<I", original, entry + 42)
        struct.pack_into(fmt, data, header_offset + local_at, value)
    path = tmp_path / "forged.npz"
    path.write_bytes(bytes(data))
    error, seconds, peak = measure(lambda: assert_refused_or_identical(path))
    assert error is None, repr(error)
    assert seconds < 2.0 and peak < 1 << 20


def test_forged_zip64_sizes_claiming_terabytes(tmp_path, original):
    """numgpt writes zip64 local headers; forge the 8-byte sizes there and in a
    zip64 extra field added to the central directory."""
    data = bytearray(original)
    local = data.index(b"PK\x03\x04", 1)  # the second member's local header
    name_length, extra_length = struct.unpack_from("<HH", data, local + 26)
    extra = local + 30 + name_length
    assert struct.unpack_from("<HH", data, extra) == (1, 16) and extra_length == 20
    struct.pack_into("<QQ", data, extra + 4, 10**13, 10**13)
    path = tmp_path / "forged.npz"
    path.write_bytes(bytes(data))
    error, seconds, peak = measure(lambda: assert_refused_or_identical(path))
    assert error is None and seconds < 1.0 and peak < 1 << 20


def test_forged_central_directory_size_claiming_a_terabyte(tmp_path):
    """The central directory is rebuilt with zip64 sizes of 10**12 bytes."""
    members = {f"{FORMAT_KEY}.npy": b"", f"{META_KEY}.npy": b"", "w.npy": b"x" * 100}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
        for info in archive.infolist():
            info.file_size = info.compress_size = 10**12  # written to the central directory as zip64
    path = tmp_path / "forged.npz"
    path.write_bytes(buffer.getvalue())
    error, seconds, peak = measure(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError) and "beyond the end" in str(error)
    assert seconds < 1.0 and peak < 1 << 20


@pytest.mark.parametrize(
    "compression, pattern",
    [(zipfile.ZIP_DEFLATED, "compressed"), (zipfile.ZIP_BZIP2, "compressed"), (zipfile.ZIP_LZMA, "compressed")],
)
def test_compressed_members_are_refused(tmp_path, original, compression, pattern):
    """numgpt stores arrays uncompressed; a compressed member (np.savez_compressed,
    or a zip bomb) is refused before it is inflated."""
    path = tmp_path / "compressed.npz"
    write_archive(path, original_members(original), compression)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


@pytest.mark.parametrize("flag, method", [(0x1, 0), (0x20, 0), (0x40, 0), (0, 99)])
def test_unsupported_zip_features_are_refused(tmp_path, original, flag, method):
    """Found by fuzzing: encryption flags escaped as RuntimeError, unknown
    compression methods and flags as NotImplementedError."""
    data = bytearray(original)
    entry = data.index(b"PK\x01\x02")
    struct.pack_into("<HH", data, entry + 8, flag, method)
    path = tmp_path / "forged.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="encrypted|compressed"):
        load_checkpoint(path)


def test_forged_zip_version_is_refused(tmp_path, original):
    """Found by fuzzing: a "version needed to extract" of 9.9 escaped as NotImplementedError."""
    data = bytearray(original)
    entry = data.index(b"PK\x01\x02")
    struct.pack_into("<BB", data, entry + 6, 99, 0)
    path = tmp_path / "forged.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a zip"):
        load_checkpoint(path)


def test_zip64_end_record_is_read(tmp_path, monkeypatch):
    """Archives of more than 65535 members (or 4 GB) end with zip64 records;
    the member count check reads those."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)  # makes zipfile write them already
    path = tmp_path / "zip64.npz"
    save_checkpoint(path, ARRAYS, META)
    data = path.read_bytes()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    assert assert_refused_or_identical(path)
    count_at = data.rindex(b"PK\x06\x06") + 32  # zip64 end record: entries in all
    path.write_bytes(data[:count_at] + struct.pack("<Q", 5) + data[count_at + 8 :])
    with pytest.raises(CheckpointError, match="promises 5 members"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "meta_bytes, pattern",
    [
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid UTF-8 JSON"),  # more digits than Python converts
        (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
        (b'{"a": 1, "a": 2}' + b"\xff", "not valid UTF-8 JSON"),
    ],
)
def test_hostile_meta_is_refused(tmp_path, original, meta_bytes, pattern):
    members = original_members(original)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.frombuffer(meta_bytes, dtype=np.uint8))
    members[f"{META_KEY}.npy"] = buffer.getvalue()
    path = tmp_path / "forged.npz"
    write_archive(path, members)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


@FUZZ
@given(
    marker=st.one_of(
        st.just(np.array("numgpt-checkpoint-v1")),
        st.just(np.array(["numgpt-checkpoint-v1"])),
        st.just(np.array(b"numgpt-checkpoint-v1")),
        st.just(np.array(1)),
        st.just(np.zeros((2, 2))),
        st.text(max_size=30).map(np.array),
    ),
    meta=st.one_of(
        st.just(np.frombuffer(b'{"iteration": 12}', dtype=np.uint8)),
        st.just(np.frombuffer(b'{"iteration": 12}', dtype=np.uint8).astype(np.int8)),
        st.just(np.frombuffer(b'{"iteration": 12}', dtype=np.uint8).reshape(1, -1)),
        st.just(np.array('{"iteration": 12}')),
        st.binary(max_size=40).map(lambda b: np.frombuffer(b, dtype=np.uint8)),
    ),
    drop=st.sampled_from([None, f"{FORMAT_KEY}.npy", f"{META_KEY}.npy"]),
)
def test_reserved_entries_of_wrong_dtype_or_shape(tmp_path, original, marker, meta, drop):
    members = original_members(original)
    for name, array in ((f"{FORMAT_KEY}.npy", marker), (f"{META_KEY}.npy", meta)):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array)
        members[name] = buffer.getvalue()
    if drop:
        del members[drop]
    path = tmp_path / "forged.npz"
    write_archive(path, members)
    try:
        arrays, loaded_meta = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
        return
    assert marker.dtype.kind == "U" and marker.shape == () and meta.dtype == np.uint8 and meta.ndim == 1
    assert set(arrays) == set(ARRAYS) and isinstance(loaded_meta, dict)


def test_extra_or_foreign_members(tmp_path, original):
    members = original_members(original)
    extra = io.BytesIO()
    np.lib.format.write_array(extra, np.arange(3))
    path = tmp_path / "forged.npz"
    write_archive(path, {**members, "more.npy": extra.getvalue()})
    arrays, _ = load_checkpoint(path)  # an extra array is just another array
    assert arrays["more"].tolist() == [0, 1, 2]
    for name in ("readme.txt", "w.npy/", "../w.npy.txt"):
        write_archive(path, {**members, name: b"hello"})
        with pytest.raises(CheckpointError, match="not a .npy array"):
            load_checkpoint(path)


def test_bytes_after_the_end_record_are_refused(tmp_path, original):
    path = tmp_path / "appended.npz"
    path.write_bytes(original + b"trailing")
    with pytest.raises(CheckpointError, match="not at the end of the file"):
        load_checkpoint(path)


@pytest.mark.parametrize("prefix", [b"", b"x" * 10, b"x" * 60])
def test_a_lone_zip64_locator_is_refused(tmp_path, prefix):
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    path = tmp_path / "forged.npz"
    path.write_bytes(prefix + b"PK\x06\x07" + bytes(16) + end_record)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# ---------------------------------------------------------------------------
# The run loader: numgpt.train.load_run builds a model from a checkpoint


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    from numgpt import GPT, GPTConfig
    from numgpt.tokenizers import CharTokenizer
    from numgpt.train import save_run

    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4), seed=3)
    path = tmp_path_factory.mktemp("run") / "run.npz"
    save_run(path, model, None, CharTokenizer("abcde"), None, 7, 1.5, np.random.default_rng(0))
    return path


def load_run_refused_or_identical(path, original_path) -> bool:
    from numgpt.checkpoint import load_run

    try:
        model, tokenizer, meta, arrays = load_run(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
        return False
    expected_model, expected_tokenizer, expected_meta, _ = load_run(original_path)
    assert meta == expected_meta and tokenizer == expected_tokenizer
    assert model.config == expected_model.config and model.dtype == expected_model.dtype
    assert model.flat_params.tobytes() == expected_model.flat_params.tobytes()
    return True


@FUZZ
@given(data=st.data())
def test_load_run_of_a_damaged_file(tmp_path, run_file, data):
    original = run_file.read_bytes()
    flips = data.draw(
        st.lists(st.tuples(position_in_a_region(original), st.integers(1, 255)), min_size=1, max_size=3)
    )
    path = tmp_path / "damaged.npz"
    path.write_bytes(flipped(original, flips))
    load_run_refused_or_identical(path, run_file)


def edited_run(tmp_path, run_file, edit_arrays=None, edit_meta=None):
    arrays, meta = load_checkpoint(run_file)
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    path = tmp_path / "edited.npz"
    save_checkpoint(path, arrays, meta)
    return path


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda a: a.__setitem__("params/wte", a["params/wte"].T.copy()), "wte must have shape"),
        (lambda a: a.pop("params/wte"), "missing \\['wte'\\]"),
        (lambda a: a.__setitem__("params/h.9.ln_1.weight", np.ones(4, np.float32)), "unexpected"),
        (lambda a: a.__setitem__("params/wpe", np.zeros((10**6, 0), np.float32)), "wpe must have shape"),
    ],
)
def test_load_run_with_wrong_shapes_missing_or_extra_params(tmp_path, run_file, edit, pattern):
    from numgpt.checkpoint import load_run

    with pytest.raises(CheckpointError, match=pattern):
        load_run(edited_run(tmp_path, run_file, edit_arrays=edit))


# Problems the fuzzing found in load_run, now fixed there: each test states the wanted behaviour.


@pytest.mark.filterwarnings("ignore:Casting complex values")
def test_load_run_refuses_params_of_a_non_float_dtype(tmp_path, run_file):
    """Such params must not be cast silently (complex would drop its imaginary part,
    strings of digits would parse as numbers)."""
    from numgpt.checkpoint import load_run

    for dtype in [np.complex64, "U12", np.bool_, "M8[s]", [("a", "<f4")]]:

        def edit(arrays, dtype=dtype):
            arrays["params/wte"] = np.ones(arrays["params/wte"].shape, np.float32).astype(dtype)

        with pytest.raises(CheckpointError):
            load_run(edited_run(tmp_path, run_file, edit_arrays=edit))


def test_load_run_refuses_bad_meta_with_a_checkpoint_error(tmp_path, run_file):
    """Each of these once raised TypeError, ValueError or OverflowError without the file's name."""
    from numgpt.checkpoint import load_run

    config = {"vocab_size": 5, "block_size": 4, "n_layer": 1, "n_head": 1, "n_embd": 4}
    for key, value in [
        ("model_config", None),
        ("model_config", 5),
        ("model_config", {"vocab_size": 5}),
        ("model_config", {**config, "vocab_size": "5"}),
        ("model_config", {**config, "vocab_size": 10**12, "n_embd": 10**12}),
        ("dtype", "int8"),
        ("dtype", 5),
        ("tokenizer", "abc"),
        ("tokenizer", {"kind": "wordpiece"}),
        ("tokenizer", {"kind": "char", "chars": "aa"}),
    ]:
        path = edited_run(
            tmp_path, run_file, edit_meta=lambda meta, key=key, value=value: meta.__setitem__(key, value)
        )
        with pytest.raises(CheckpointError, match=str(path)):
            load_run(path)


def test_load_run_checks_the_config_against_the_arrays_before_allocating(tmp_path, run_file):
    """A forged model_config claiming a large model in a tiny file: the shapes
    must be compared before the model's buffers (here 1 GiB of gradients) are
    allocated."""
    from numgpt.checkpoint import load_run

    def edit(meta):
        meta["model_config"] = dict(meta["model_config"], vocab_size=2**26)

    path = edited_run(tmp_path, run_file, edit_meta=edit)
    error, seconds, peak = measure(lambda: load_run(path))
    assert isinstance(error, CheckpointError), repr(error)
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated"
