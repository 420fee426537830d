"""Tests for numgpt.checkpoint: round trips, refusals of foreign or damaged files, atomicity."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import numgpt.checkpoint as checkpoint_module
from numgpt.checkpoint import (
    FORMAT,
    FORMAT_KEY,
    META_KEY,
    CheckpointError,
    load_checkpoint,
    load_checkpoint_meta,
    save_checkpoint,
)


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "params/wte.weight": rng.standard_normal((7, 4)).astype(np.float32),
        "params/h.0.attn.c_attn.weight": rng.standard_normal((4, 12)).astype(np.float32),
        "adam/m/h.0.mlp.c_fc.bias": rng.standard_normal(16),  # float64
        "data/token_ids": rng.integers(0, 50257, size=33, dtype=np.int64),
        "small.int32": np.array([-1, 0, 2**31 - 1], dtype=np.int32),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "mask": np.array([True, False]),
    }


def sample_meta() -> dict:
    rng = np.random.default_rng(0)
    rng.random(3)  # advance it, so the state is not the trivial seed state
    return {
        "config": {"n_layer": 2, "n_head": 2, "n_embd": 4, "dropout": 0.0, "bias": True},
        "tokenizer": {"kind": "char", "vocab": ["\n", " ", "a", "é"], "merges": [["a", "b"]]},
        "iteration": 1234,
        "best_val_loss": float("inf"),
        "lr_schedule": None,
        "rng": rng.bit_generator.state,
    }


def assert_same_arrays(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        assert loaded[name].tobytes() == array.tobytes(), name


def saved_checkpoint(tmp_path, name: str = "ckpt.npz"):
    path = tmp_path / name
    save_checkpoint(path, sample_arrays(), sample_meta())
    return path


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


def test_round_trip_of_arrays_and_nested_meta(tmp_path):
    arrays, meta = sample_arrays(), sample_meta()
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, arrays, meta)
    loaded_arrays, loaded_meta = load_checkpoint(path)
    assert_same_arrays(loaded_arrays, arrays)
    assert loaded_meta == meta


def test_rng_state_restores_the_generator_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rng.standard_normal(10)
    state = rng.bit_generator.state
    # PCG64 keeps 128-bit integers, beyond what a 64-bit field could hold.
    assert state["state"]["state"] > 2**64
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {}, {"rng": state})

    _, meta = load_checkpoint(path)
    restored = np.random.default_rng()
    restored.bit_generator.state = meta["rng"]
    np.testing.assert_array_equal(restored.standard_normal(100), rng.standard_normal(100))


def test_tuples_in_meta_come_back_as_lists(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {}, {"betas": (0.9, 0.95), "big": 2**100, "neg": -(2**70)})
    assert load_checkpoint(path)[1] == {"betas": [0.9, 0.95], "big": 2**100, "neg": -(2**70)}


def test_arrays_load_into_memory_and_the_file_can_then_be_replaced(tmp_path):
    path = saved_checkpoint(tmp_path)
    arrays, _ = load_checkpoint(path)
    assert all(type(a) is np.ndarray and a.flags.writeable for a in arrays.values())
    save_checkpoint(path, {"other": np.ones(2)}, {"iteration": 1})
    assert_same_arrays(arrays, sample_arrays())  # unaffected by the overwrite


def test_names_with_dots_slashes_and_odd_characters_round_trip(tmp_path):
    arrays = {
        name: np.full(2, i, dtype=np.int16)
        for i, name in enumerate(
            [
                "params/h.0.attn.c_attn.weight",
                "a/b/c/d",
                "x.npy",  # stored as x.npy.npy; must not collide with "x"
                "x",
                "..",
                "/leading/slash",
                "ω/é ünïcode",
                "with space",
            ]
        )
    }
    path = tmp_path / "names.npz"
    save_checkpoint(path, arrays, {})
    loaded, _ = load_checkpoint(path)
    assert_same_arrays(loaded, arrays)


def test_file_is_a_plain_npz_that_numpy_reads_without_pickle(tmp_path):
    path = saved_checkpoint(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz[FORMAT_KEY]) == FORMAT
        meta = json.loads(npz[META_KEY].tobytes().decode("utf-8"))
        assert meta["iteration"] == 1234
        np.testing.assert_array_equal(
            npz["params/wte.weight"], sample_arrays()["params/wte.weight"]
        )
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


@pytest.mark.parametrize("name", ["ckpt", "ckpt.bin", "ckpt.npz", "dir.with.dots/ckpt"])
def test_path_is_kept_exactly_as_given(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    save_checkpoint(str(path), {"w": np.ones(2)}, {"n": 1})
    assert sorted(os.listdir(path.parent)) == [path.name]
    assert load_checkpoint(str(path))[1] == {"n": 1}


def test_saving_is_deterministic(tmp_path):
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    save_checkpoint(first, sample_arrays(), sample_meta())
    save_checkpoint(second, sample_arrays(), sample_meta())
    assert first.read_bytes() == second.read_bytes()


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    path = saved_checkpoint(tmp_path)
    new_arrays = {"params/wte.weight": np.zeros((2, 2), dtype=np.float32)}
    save_checkpoint(path, new_arrays, {"iteration": 99})
    arrays, meta = load_checkpoint(path)
    assert_same_arrays(arrays, new_arrays)
    assert meta == {"iteration": 99}
    assert os.listdir(tmp_path) == ["ckpt.npz"]


# ---------------------------------------------------------------------------
# Bad input to save_checkpoint
# ---------------------------------------------------------------------------


def test_object_arrays_are_refused_naming_the_key(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(TypeError, match="'opt/state'"):
        save_checkpoint(path, {"ok": np.ones(1), "opt/state": np.array([{}], dtype=object)}, {})
    with pytest.raises(TypeError, match="'rec'"):
        save_checkpoint(path, {"rec": np.zeros(1, dtype=[("a", "f4"), ("b", "O")])}, {})
    assert not path.exists()


@pytest.mark.parametrize(
    ("arrays", "error", "pattern"),
    [
        ({"w": [1.0, 2.0]}, TypeError, "numpy array"),
        ({3: np.ones(1)}, TypeError, "strings"),
        ({"": np.ones(1)}, ValueError, "non-empty"),
        ({"a\x00b": np.ones(1)}, ValueError, "unchanged"),
        ({FORMAT_KEY: np.ones(1)}, ValueError, "reserved"),
        ({META_KEY: np.ones(1)}, ValueError, "reserved"),
    ],
)
def test_bad_arrays_are_refused(tmp_path, arrays, error, pattern):
    with pytest.raises(error, match=pattern):
        save_checkpoint(tmp_path / "ckpt.npz", arrays, {})
    assert os.listdir(tmp_path) == []


def test_meta_that_json_cannot_store_faithfully_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(TypeError, match=r"meta\['opt'\]\['lr'\].*numpy"):
        save_checkpoint(path, {}, {"opt": {"lr": np.float32(0.1)}})
    with pytest.raises(TypeError, match="key 1 of type int"):
        save_checkpoint(path, {}, {"vocab": {1: "a"}})
    with pytest.raises(TypeError, match=r"meta\['x'\]\[0\]"):
        save_checkpoint(path, {}, {"x": [np.ones(2)]})
    with pytest.raises(TypeError, match="meta must be a dict"):
        save_checkpoint(path, {}, [1, 2])
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="circular"):
        save_checkpoint(path, {}, loop)
    assert os.listdir(tmp_path) == []


def test_shared_but_not_circular_meta_is_fine(tmp_path):
    shared = [1, 2]
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {}, {"a": shared, "b": shared})
    assert load_checkpoint(path)[1] == {"a": [1, 2], "b": [1, 2]}


# ---------------------------------------------------------------------------
# Damaged and foreign files are refused
# ---------------------------------------------------------------------------


def test_missing_file_gives_a_clear_file_not_found(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="no checkpoint") as excinfo:
        load_checkpoint(path)
    assert str(path) in str(excinfo.value)


def assert_refused(path, pattern: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=pattern) as excinfo:
        load_checkpoint(path)
    assert str(path) in str(excinfo.value)
    return excinfo.value


def test_truncated_file_is_refused(tmp_path):
    path = saved_checkpoint(tmp_path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    assert_refused(path, "not a zip/npz archive")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_refused(path, "not a zip/npz archive")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"")
    assert_refused(path, "not a zip/npz archive")


def test_single_npy_file_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    assert_refused(path, "not a zip/npz archive")


def test_plain_npz_without_marker_is_refused_as_foreign(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weight=np.ones(3))
    assert_refused(path, "not a numgpt checkpoint.*foreign")


def test_zip_with_non_array_members_is_refused_as_foreign(tmp_path):
    path = tmp_path / "foreign.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert_refused(path, "not a numgpt checkpoint.*foreign")


def write_npz(path, members: dict[str, np.ndarray]) -> None:
    """A .npz assembled with np.savez, bypassing save_checkpoint's checks."""
    with open(path, "wb") as f:
        np.savez(f, **members)


def test_unknown_format_version_is_refused(tmp_path):
    path = tmp_path / "future.npz"
    meta = np.frombuffer(b"{}", dtype=np.uint8)
    write_npz(path, {FORMAT_KEY: np.array("numgpt-checkpoint-v2"), META_KEY: meta})
    assert_refused(path, "unsupported checkpoint format version 'numgpt-checkpoint-v2'")
    write_npz(path, {FORMAT_KEY: np.array("someone-else-v1"), META_KEY: meta})
    assert_refused(path, "unrecognised format marker")
    write_npz(path, {FORMAT_KEY: np.array([1, 2]), META_KEY: meta})
    assert_refused(path, "0-d string array")


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b'{"a": ', "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_json_meta_is_refused(tmp_path, raw, pattern):
    path = tmp_path / "ckpt.npz"
    write_npz(path, {FORMAT_KEY: np.array(FORMAT), META_KEY: np.frombuffer(raw, dtype=np.uint8)})
    assert_refused(path, pattern)


def test_meta_alone_reads_no_array_and_refuses_damage_as_load_does(tmp_path, monkeypatch):
    path = saved_checkpoint(tmp_path)
    read = []
    real_read = checkpoint_module._read_member

    def spy(path, archive, info, name):
        read.append(name)
        return real_read(path, archive, info, name)

    monkeypatch.setattr(checkpoint_module, "_read_member", spy)
    assert load_checkpoint_meta(path) == load_checkpoint(path)[1] == sample_meta()
    assert read[:2] == [FORMAT_KEY, META_KEY] and len(read) == 2 + 2 + len(sample_arrays())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="not a zip/npz archive"):
        load_checkpoint_meta(path)
    np.savez(path, weight=np.ones(3))
    with pytest.raises(CheckpointError, match="not a numgpt checkpoint.*foreign"):
        load_checkpoint_meta(path)
    write_npz(path, {FORMAT_KEY: np.array(FORMAT), META_KEY: np.frombuffer(b"[1]", dtype=np.uint8)})
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        load_checkpoint_meta(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint_meta(tmp_path / "nope.npz")


def test_missing_or_mistyped_meta_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    write_npz(path, {FORMAT_KEY: np.array(FORMAT)})
    assert_refused(path, "no '__numgpt_meta__'")
    write_npz(path, {FORMAT_KEY: np.array(FORMAT), META_KEY: np.array("{}")})
    assert_refused(path, "uint8 array")


UNPICKLED: list[str] = []


def record_unpickling() -> str:
    UNPICKLED.append("the loader ran code from the file")
    return "payload"


class Payload:
    def __reduce__(self):
        return (record_unpickling, ())


def test_pickled_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload()
    meta = np.frombuffer(b"{}", dtype=np.uint8)
    write_npz(path, {FORMAT_KEY: np.array(FORMAT), META_KEY: meta, "evil": evil})

    # Sanity check of the trap itself: loading with pickle does run the payload.
    with np.load(path, allow_pickle=True) as npz:
        assert npz["evil"][0] == "payload"
    assert UNPICKLED == ["the loader ran code from the file"]
    UNPICKLED.clear()

    assert_refused(path, "'evil'.*unpickling")
    assert UNPICKLED == []


def test_flipped_bit_in_array_data_is_detected(tmp_path):
    path = tmp_path / "ckpt.npz"
    weights = np.arange(256, dtype=np.float32)
    save_checkpoint(path, {"w": weights}, {})
    content = bytearray(path.read_bytes())
    position = content.find(weights[100:104].tobytes())
    assert position > 0
    content[position] ^= 0x01
    path.write_bytes(bytes(content))
    assert_refused(path, "'w' is corrupt")


def test_corrupt_npy_header_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    meta = io.BytesIO()
    np.lib.format.write_array(meta, np.frombuffer(b"{}", dtype=np.uint8))
    fmt = io.BytesIO()
    np.lib.format.write_array(fmt, np.array(FORMAT))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(FORMAT_KEY + ".npy", fmt.getvalue())
        archive.writestr(META_KEY + ".npy", meta.getvalue())
        archive.writestr("w.npy", b"\x93NUMPY garbage")
    assert_refused(path, "'w' is corrupt")


# ---------------------------------------------------------------------------
# Atomicity: a failed save never damages the previous checkpoint
# ---------------------------------------------------------------------------


def assert_previous_checkpoint_intact(tmp_path, path) -> None:
    assert os.listdir(tmp_path) == [path.name]  # no temporary files left behind
    arrays, meta = load_checkpoint(path)
    assert_same_arrays(arrays, sample_arrays())
    assert meta == sample_meta()


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_os_failure_midway_keeps_previous_checkpoint(tmp_path, monkeypatch, failing):
    path = saved_checkpoint(tmp_path)

    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure (disk full?)")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"w": np.ones(10_000)}, {"iteration": 2})
    monkeypatch.undo()
    assert_previous_checkpoint_intact(tmp_path, path)


def test_a_directory_that_refuses_new_files_is_named_by_the_checkpoint_not_a_hidden_temporary(tmp_path,
                                                                                                 monkeypatch):
    import errno

    path = saved_checkpoint(tmp_path)
    real_open = os.open

    def read_only(file, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", file)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, sample_arrays(1), {"iteration": 2})
    monkeypatch.undo()
    assert (info.value.errno, info.value.filename) == (errno.EROFS, str(path))     # not .ckpt.npz.<hex>.tmp
    assert_previous_checkpoint_intact(tmp_path, path)


def test_interrupt_while_writing_arrays_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = saved_checkpoint(tmp_path)
    real_write_array = np.lib.format.write_array
    calls = []

    def write_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # after the marker, the meta and one array
            raise KeyboardInterrupt
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, sample_arrays(1), {"iteration": 2})
    monkeypatch.undo()
    assert len(calls) == 4
    assert_previous_checkpoint_intact(tmp_path, path)


def test_refused_input_keeps_previous_checkpoint(tmp_path):
    path = saved_checkpoint(tmp_path)
    with pytest.raises(TypeError):
        save_checkpoint(path, {"bad": np.array([None])}, {})
    with pytest.raises(TypeError):
        save_checkpoint(path, {}, {"bad": object()})
    assert_previous_checkpoint_intact(tmp_path, path)


# ---------------------------------------------------------------------------
# Property: arbitrary arrays and JSON meta survive a round trip
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
array_strategy = st.sampled_from(
    [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_, np.complex64]
).flatmap(
    lambda dtype: hnp.arrays(
        dtype=dtype, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0)
    )
)
names = st.text(min_size=1, max_size=20).filter(
    lambda s: "\x00" not in s and s not in (FORMAT_KEY, META_KEY)
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    arrays=st.dictionaries(names, array_strategy, max_size=4),
    meta=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_round_trip_property(tmp_path, arrays, meta):
    path = tmp_path / "prop.npz"
    save_checkpoint(path, arrays, meta)
    loaded_arrays, loaded_meta = load_checkpoint(path)
    assert_same_arrays(loaded_arrays, arrays)
    assert loaded_meta == meta
