"""The loss and attention pictures (numgpt.plot).

Reading the metrics log and labelling tokens need no matplotlib and always
run; the rendering tests need matplotlib (the ``plot`` extra) and are skipped
without it; the missing-matplotlib message is tested by hiding the module.
"""

import json
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt.model import GPT, GPTConfig
from numgpt.plot import MissingDependency, plot_attention, plot_loss, read_loss_log, token_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(path, records, tail=""):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.write(tail)


def training_log(n=60):
    records = []
    for it in range(n):
        records.append({"iter": it, "loss": 4.0 * np.exp(-it / 20) + 1.0, "lr": 1e-3,
                        "ms_per_iter": 12.5, "tokens_per_s": 5000.0})
        if it % 10 == 0:
            records.append({"iter": it, "train_loss": 4.0 * np.exp(-it / 20) + 1.0,
                            "val_loss": 4.0 * np.exp(-it / 20) + 1.1})
    return records


def assert_png(path, min_bytes=5000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    # no temporary file of the atomic write is left behind
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# The metrics log (no matplotlib needed)
# ---------------------------------------------------------------------------


def test_read_loss_log_separates_steps_and_evaluations(tmp_path):
    records = training_log(30) + [{"kind": "config", "n_layer": 2}, {"iter": 5, "note": "x"}, [1, 2]]
    write_log(tmp_path / "metrics.jsonl", records)
    steps, evals_train, evals_val = read_loss_log(tmp_path / "metrics.jsonl")
    assert list(steps) == list(range(30))
    assert list(evals_train) == list(evals_val) == [0, 10, 20]
    assert steps[3] == pytest.approx(4.0 * np.exp(-3 / 20) + 1.0)
    assert evals_val[10] == pytest.approx(4.0 * np.exp(-0.5) + 1.1)


def test_truncated_last_line_is_skipped_silently(tmp_path):
    write_log(tmp_path / "m.jsonl", training_log(5), tail='{"iter": 5, "lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steps, _, _ = read_loss_log(tmp_path / "m.jsonl")
    assert list(steps) == [0, 1, 2, 3, 4]


def test_corrupt_middle_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "m.jsonl"
    write_log(path, [{"iter": 0, "loss": 3.0}])
    with open(path, "a") as f:
        f.write('{"iter": 1, "lo\n{"iter": 2, "loss": 2.0}\n')
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\).*line 2"):
        steps, _, _ = read_loss_log(path)
    assert steps == {0: 3.0, 2: 2.0}


def test_resumed_run_later_lines_win(tmp_path):
    # ran to iter 4, resumed from the checkpoint at iter 2
    records = [{"iter": i, "loss": 10.0 + i} for i in range(5)] + \
              [{"iter": i, "loss": 20.0 + i} for i in range(2, 6)]
    write_log(tmp_path / "m.jsonl", records)
    steps, _, _ = read_loss_log(tmp_path / "m.jsonl")
    assert steps == {0: 10.0, 1: 11.0, 2: 22.0, 3: 23.0, 4: 24.0, 5: 25.0}


def test_missing_or_empty_log_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_loss_log(tmp_path / "absent.jsonl")
    write_log(tmp_path / "m.jsonl", [{"iter": 1, "lr": 0.1}, {"kind": "other"}])
    with pytest.raises(ValueError, match="no loss lines"):
        read_loss_log(tmp_path / "m.jsonl")


@pytest.mark.parametrize("token, label", [
    ("hello", "hello"), (" the", "\u2423the"), ("\n", "\\n"), ("a\tb\r", "a\\tb\\r"),
    ("\x00", "\\x00"), ("\u200b", "\\u200b"), ("$5", "\\$5"), ("\\", "\\\\"), ("é中", "é中"), ("", "''"),
])
def test_token_label_examples(token, label):
    assert token_label(token) == label


@given(st.text(max_size=12))
def test_token_label_is_printable_and_never_math(token):
    label = token_label(token)
    assert label.isprintable()
    # every $ is escaped, so matplotlib never enters math mode
    assert label.count("$") == label.count("\\$")


# ---------------------------------------------------------------------------
# Rendering (needs matplotlib)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("log_scale", [False, True])
def test_plot_loss_writes_a_png(tmp_path, log_scale):
    pytest.importorskip("matplotlib")
    write_log(tmp_path / "metrics.jsonl", training_log(), tail='{"iter": 60')
    out = plot_loss(tmp_path / "metrics.jsonl", tmp_path / "pics" / "loss.png", log_scale=log_scale)
    assert out == tmp_path / "pics" / "loss.png"
    assert_png(out)


def test_plot_loss_with_only_evaluations(tmp_path):
    pytest.importorskip("matplotlib")
    write_log(tmp_path / "m.jsonl", [{"iter": 0, "val_loss": 3.0}, {"iter": 10, "val_loss": 2.5}])
    assert_png(plot_loss(tmp_path / "m.jsonl", tmp_path / "loss.png", title="costs $5 and $6"))


def test_plot_loss_errors(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        plot_loss(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    write_log(tmp_path / "metrics.jsonl", training_log(3))
    with pytest.raises(ValueError, match="must end in .png"):
        plot_loss(tmp_path / "metrics.jsonl", tmp_path / "loss.jpg")
    assert not (tmp_path / "loss.png").exists()


def test_plot_attention_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=3, n_embd=12), seed=0)
    tokens = ["The", " cat", "\n", "$x$", "\t", " sat", "é", "\x00", ".", " $", "a", "b"]
    ids = np.arange(len(tokens)) % 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # e.g. a glyph missing from the font
        out = plot_attention(model, tokens, ids, tmp_path / "att.png")
    assert out == tmp_path / "att.png"
    assert_png(out, min_bytes=10000)


def test_plot_attention_long_sequence_and_selection(tmp_path):
    pytest.importorskip("matplotlib")
    model = GPT(GPTConfig(vocab_size=30, block_size=64, n_layer=3, n_head=2, n_embd=8), seed=0)
    ids = np.random.default_rng(0).integers(0, 30, 50)            # > 40 tokens: no labels
    out = plot_attention(model, [str(i) for i in ids], ids, tmp_path / "att.png",
                         layers=[2], heads=[1, 0])
    assert_png(out)


def test_plot_attention_refuses_bad_input(tmp_path):
    pytest.importorskip("matplotlib")
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    with pytest.raises(ValueError, match="one string per id"):
        plot_attention(model, ["a"], np.array([1, 2]), tmp_path / "a.png")
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        plot_attention(model, ["a", "b"], np.array([[1, 2]]), tmp_path / "a.png")
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        plot_attention(model, ["a"], np.array([0.5]), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"layers must be .* in \[0, 1\)"):
        plot_attention(model, ["a"], [1], tmp_path / "a.png", layers=[1])
    with pytest.raises(ValueError, match="block_size"):
        plot_attention(model, ["a"] * 9, list(range(9)), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------------------
# Without matplotlib (runs whether or not it is installed)
# ---------------------------------------------------------------------------


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # makes `import matplotlib` fail
    write_log(tmp_path / "metrics.jsonl", training_log(3))
    with pytest.raises(MissingDependency, match=r'pip install "numgpt\[plot\]"') as info:
        plot_loss(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert isinstance(info.value, ImportError)
    assert "pip install matplotlib" in str(info.value)
    model = GPT(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(MissingDependency, match="matplotlib"):
        plot_attention(model, ["a", "b"], [1, 2], tmp_path / "att.png")
    assert not (tmp_path / "loss.png").exists() and not (tmp_path / "att.png").exists()
