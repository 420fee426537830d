"""Tests for ``numgpt gradcheck``: every layer checked, a table printed, the exit code honest."""

import subprocess
import sys

import numpy as np
import pytest

import numgpt.layers
from numgpt.cli import main

LAYER_INPUTS = {
    "embedding": ["wte", "wpe"],
    "layernorm": ["x", "weight", "bias"],
    "linear": ["x", "w", "b"],
    "gelu": ["x"],
    "softmax": ["x"],
    "attention": ["qkv"],
    "dropout": ["x"],
    "softmax_cross_entropy": ["logits"],
    "rmsnorm": ["x", "weight"],
    "qk_norm": ["q"],
    "rope": ["x"],
    "swiglu": ["gate", "up"],
    "relu_squared": ["x"],
}
EXPECTED = {(layer, name) for layer, names in LAYER_INPUTS.items() for name in names}


def table_rows(output):
    """{(layer, input): (max rel error, result)} from the printed table."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] in LAYER_INPUTS and fields[-1] in ("pass", "FAIL"):
            rows[fields[0], fields[1]] = (float(fields[-2]), fields[-1])
    return rows


def test_gradcheck_passes_every_layer_and_prints_the_table(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == EXPECTED
    for (layer, name), (err, result) in rows.items():
        assert result == "pass", (layer, name)
        assert 0 <= err < 1e-7, (layer, name, err)
    assert "FAIL" not in out
    assert f"all {len(EXPECTED)} checks passed" in out
    assert "float64" in out and "full" in out


def test_gradcheck_adjoint_method_and_another_seed(capsys):
    assert main(["gradcheck", "--method", "adjoint", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "seed 3" in out and "adjoint" in out
    assert set(table_rows(out)) == EXPECTED and "FAIL" not in out


def test_gradcheck_fails_when_a_backward_is_wrong(monkeypatch, capsys):
    # layer_cases looks the functions up on numgpt.layers at call time.
    right = numgpt.layers.gelu_backward
    monkeypatch.setattr(numgpt.layers, "gelu_backward", lambda dout, cache: 1.01 * right(dout, cache))
    assert main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows["gelu", "x"][1] == "FAIL" and rows["gelu", "x"][0] > 1e-3
    assert all(result == "pass" for key, (_, result) in rows.items() if key != ("gelu", "x"))
    assert "1 check(s) FAILED: gelu.x" in out


def test_gradcheck_fails_when_the_tolerance_is_impossible(capsys):
    assert main(["gradcheck", "--rtol", "1e-30", "--method", "adjoint"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_gradcheck_rejects_an_unknown_method(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gradcheck", "--method", "fastest"])
    assert info.value.code == 2
    assert "fastest" in capsys.readouterr().err


def test_python_dash_m_numgpt_gradcheck():
    proc = subprocess.run([sys.executable, "-m", "numgpt", "gradcheck"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    assert set(rows) == EXPECTED and all(result == "pass" for _, result in rows.values())
    assert np.isfinite([err for err, _ in rows.values()]).all()
