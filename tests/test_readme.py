"""README.md says what is true: its Python examples run, its install and test lines are CI's.

Every ```python block of README.md runs here, each in a fresh namespace, in a temporary working
directory; the ``test_*`` functions a block defines are then called, as pytest would call them in
the reader's own test file. A block that must not run here (it trains for minutes, or needs the
network) is preceded by the line

    <!-- test_readme: no-run (the reason) -->

and is left out of the parametrisation (it is not a skipped test: the suite skips nothing).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NO_RUN = re.compile(r"^<!-- test_readme: no-run \((?P<reason>[^)]+)\) -->$")


def _blocks(language):
    """``[(heading, first line number, code, no-run reason or None)]`` of README's fenced blocks."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.startswith("```"):
            info = line[3:].strip()
            end = lines.index("```", i + 1)
            if info == language:
                previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
                marker = NO_RUN.match(previous)
                blocks.append((heading, i + 1, "\n".join(lines[i + 1:end]), marker and marker["reason"]))
            i = end
        i += 1
    return blocks


RUNNABLE = [(heading, line, code) for heading, line, code, reason in _blocks("python") if reason is None]
PROPERTY_SECTION = "Property-testing your own layer"     # runs in its own test below


def _run_block(heading, line, code):
    namespace = {"__name__": f"readme_line_{line}"}
    exec(compile(code, f"README.md, line {line} ({heading})", "exec"), namespace)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()
    return namespace


def _block_under(heading):
    found = [(h, line, code) for h, line, code in RUNNABLE if h == heading]
    assert len(found) == 1, f"README.md has {len(found)} runnable python blocks under {heading!r}"
    return found[0]


OTHERS = [block for block in RUNNABLE if block[0] != PROPERTY_SECTION]


@pytest.mark.parametrize("heading, line, code", OTHERS, ids=[f"line{line}" for _, line, _ in OTHERS])
def test_readme_python_block_runs(heading, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                   # whatever a block writes lands in a temporary directory
    _run_block(heading, line, code)


def test_the_examples_that_must_run_are_not_marked_no_run():
    headings = {heading for heading, _, _ in RUNNABLE}
    assert {"The layer library", PROPERTY_SECTION} <= headings
    for heading, line, _, reason in _blocks("python"):
        assert reason is None or reason.strip(), f"the no-run block at README.md line {line} gives no reason"


def test_property_testing_section_catches_its_negative_control(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _run_block(*_block_under(PROPERTY_SECTION))
    # _run_block ran the section's two tests; its negative control, once more, without pytest.raises:
    with pytest.raises(AssertionError, match=r"dx: max relative error"):
        namespace["gradients_match"](namespace["rmsnorm_backward_wrong"], shrink=False)()


def test_layer_library_example_prints_what_its_comment_says(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_block(*_block_under("The layer library"))
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == ["x", "weight", "bias"]
    assert all(float(error) <= 1e-10 and passed == "True" for _, error, passed in rows)


# -- the two lines at the top, the Install section, CI -------------------------------------------------

TRAIN_LINE = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && numgpt train"
TEST_LINE = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest'


def test_readme_opens_with_the_train_line_and_the_test_line():
    text = README.read_text(encoding="utf-8")
    opening = text[:text.index("\n## ")]          # the title and what precedes the first section
    heading, line, code, _ = _blocks("bash")[0]
    assert heading == "numgpt" and code.splitlines() == [TRAIN_LINE, TEST_LINE]
    assert f"```bash\n{code}\n```" in opening


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line.split("#")[0].strip() for line in ci.splitlines()]
    steps = [step for step in steps if step]
    # The README's test line, one command per line, in order; pytest runs with skips forbidden.
    expected = TEST_LINE.split(" && ")
    expected[-1] = "NUMGPT_FORBID_SKIPS=1 " + expected[-1]
    positions = [steps.index(step) for step in expected]
    assert positions == sorted(positions), steps
    assert "numgpt gradcheck" in steps and "set -euo pipefail" in steps
    installs = [step for step in steps if step.startswith(("pip ", "python -m pip", "python3 -m pip"))]
    assert installs == ['pip install -e ".[test]"'], "CI installs something the README does not"


def _test_extra():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^test = \[(.*?)\]$", pyproject, re.MULTILINE | re.DOTALL)
    assert match, "pyproject.toml has no test extra"
    return {re.split(r"[<>=!~\[; ]", req.strip().strip('"'))[0].lower()
            for req in match[1].split(",") if req.strip()}


def test_the_test_extra_provides_everything_the_suite_would_skip_without():
    # In a plain clone with the test extra installed nothing may be skipped: every optional import
    # a test skips on must come with the extra, and the only condition a test may skip on is the
    # platform's lack of fork (Linux, where CI runs, has it).
    extra = _test_extra()
    assert {"pytest", "hypothesis"} <= extra
    for path in sorted((ROOT / "tests").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for module in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", source):
            assert module.split(".")[0].lower() in extra, f"{path.name} skips without {module}"
        for condition in re.findall(r"skipif\((.*?),\s*reason", source):
            assert condition.strip() == "not fork_available()", f"{path.name} skips if {condition}"
        assert not re.search(r"pytest\.skip\(|mark\.skip\(|\bxfail\b", source), f"{path.name} skips a test"
