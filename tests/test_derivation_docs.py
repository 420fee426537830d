"""The derivation pages in docs/derivations/ stay true to the code.

Two kinds of claims on the pages can go stale without anyone noticing:

* **code quotes**: the "From math to code" table of every page quotes the lines that
  compute each symbol. Every backticked span in those tables' rows counts as a quote and
  must still appear in the layer file(s) the page names on its "Code:" line, after
  comments and docstrings are removed and whitespace is normalised (so re-wrapping a line
  does not break a quote, but changing a single token does). A quote that is a bare name
  (`probs`) must appear as a whole word.
* **formulas**: the pages carry short fenced ``python`` blocks that import numgpt and
  assert a formula as the page writes it. Every block is executed (a block that starts
  with ``>>>`` is run as a doctest), with the page's own line numbers in the traceback.
"""

import ast
import contextlib
import doctest
import io
import re
import tokenize
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES_DIR = ROOT / "docs" / "derivations"
LAYER_PAGES = sorted(p.name for p in PAGES_DIR.glob("*.md") if p.name != "README.md")
ALL_PAGES = sorted(p.name for p in PAGES_DIR.glob("*.md"))

IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
BACKTICKED = re.compile(r"`([^`]+)`")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def read_page(name):
    return (PAGES_DIR / name).read_text(encoding="utf-8")


def normalise(code):
    """One space for every run of whitespace, none just inside brackets."""
    code = re.sub(r"\s+", " ", code).strip()
    code = re.sub(r"([(\[{]) ", r"\1", code)
    return re.sub(r" ([)\]}])", r"\1", code)


def code_without_comments_and_docstrings(path):
    """The source of ``path`` with every comment and docstring removed."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    drop = set()                                       # 1-based line numbers of docstrings
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                drop.update(range(first.lineno, first.end_lineno + 1))
    kept = "".join(line for i, line in enumerate(lines, 1) if i not in drop)
    # One space between tokens and a line break between statements: a quote, re-spelled the
    # same way by token_spaced, matches whatever the layout, but never across statements.
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(kept).readline):
        if tok.type == tokenize.NEWLINE:
            out.append("\n")
        elif tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            out.append(tok.string)
    return " ".join(out)


def token_spaced(code):
    """``code`` re-spelled as its Python tokens separated by single spaces."""
    try:
        toks = [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER,
                                  tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return normalise(code)
    return " ".join(toks)


def layer_files(page_text):
    """The numgpt/layers/*.py files named on the page's "Code:" paragraph (before the first heading)."""
    head = page_text.split("\n## ", 1)[0]
    code_para = head[head.index("Code:"):] if "Code:" in head else ""
    names = re.findall(r"numgpt/layers/\w+\.py", code_para)
    return [ROOT / n for n in dict.fromkeys(names)]


def math_to_code_section(page_text):
    """The text of the page's "From math to code" section, up to the next ## heading."""
    m = re.search(r"^## \d+\. From math to code\n(.*?)(?=^## )", page_text, re.M | re.S)
    return m.group(1) if m else None


def code_quotes(page_text):
    """Every backticked span in the body rows of the "From math to code" tables."""
    section = math_to_code_section(page_text)
    quotes = []
    header_next = True
    for line in section.splitlines():
        if not line.startswith("|"):
            header_next = True                         # a table ended; the next row is a header
            continue
        if header_next or re.fullmatch(r"\|[\s|:-]*\|", line):
            header_next = False
            continue
        quotes.extend(BACKTICKED.findall(line))
    return quotes


def quote_found(quote, sources):
    """``quote`` occurs in one of ``sources`` (token-spaced code); bare names as whole words."""
    if IDENTIFIER.fullmatch(quote):
        pattern = re.compile(rf"(?<![\w.]){re.escape(quote)}(?!\w)")
        return any(pattern.search(src) for src in sources)
    spaced = token_spaced(quote)
    return any(spaced in src for src in sources)


def python_blocks(name):
    """(first line number, code) of every fenced python block of page ``name``."""
    text = read_page(name)
    return [(text[:m.start(1)].count("\n") + 1, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


BLOCKS = [(name, i, line, code) for name in ALL_PAGES
          for i, (line, code) in enumerate(python_blocks(name), 1)]


# --- the code quotes -------------------------------------------------------------------

@pytest.mark.parametrize("page", LAYER_PAGES)
def test_page_names_its_layer_files_and_has_a_math_to_code_table(page):
    text = read_page(page)
    files = layer_files(text)
    assert files, f"{page}: no numgpt/layers/*.py file on its 'Code:' line"
    for f in files:
        assert f.is_file(), f"{page}: names {f.relative_to(ROOT)}, which does not exist"
    assert math_to_code_section(text) is not None, f"{page}: no '## N. From math to code' section"
    assert len(code_quotes(text)) >= 8, f"{page}: fewer than 8 code quotes found in its table; parser broken?"


@pytest.mark.parametrize("page", LAYER_PAGES)
def test_every_code_quote_appears_in_the_layer_file(page):
    text = read_page(page)
    files = layer_files(text)
    sources = [code_without_comments_and_docstrings(f) for f in files]
    missing = [q for q in code_quotes(text) if not quote_found(q, sources)]
    names = ", ".join(str(f.relative_to(ROOT)) for f in files)
    assert not missing, (
        f"{page}: {len(missing)} code quote(s) of its 'From math to code' table no longer "
        f"appear in {names} (comments and docstrings ignored):\n"
        + "\n".join(f"    `{q}`" for q in missing))


def test_quote_matching_is_token_exact():
    """The matcher ignores layout but not tokens, and finds bare names only as whole words."""
    src = [code_without_comments_and_docstrings(ROOT / "numgpt/layers/softmax.py")]
    assert quote_found("probs /= row_sum(probs)", src)
    assert quote_found("probs  /=  row_sum( probs )", src)          # layout does not matter
    assert not quote_found("probs /= row_sum(prob)", src)            # a token does
    assert not quote_found("probs *= row_sum(probs)", src)
    assert quote_found("dprobs", src)
    assert not quote_found("dprob", src)                             # whole words only
    assert not quote_found("every entry", src)                       # comments do not count
    assert not quote_found("vector-Jacobian", src)                   # nor docstrings


# --- the page structure the README promises ----------------------------------------------

PARTS = ("Forward", "Backward", "Shapes in the backward", "From math to code", "How it is checked")


@pytest.mark.parametrize("page", LAYER_PAGES)
def test_page_has_the_parts_the_readme_promises(page):
    text = read_page(page)
    headings = re.findall(r"^## \d+\. (.+)$", text, re.M)
    core = [h for h in headings if h in PARTS]
    assert core == list(PARTS), f"{page}: numbered sections {headings}, expected the five parts {PARTS} in order"
    extra = [h for h in headings if h not in PARTS]
    assert len(extra) <= 1, f"{page}: more than one extra section: {extra}"
    assert "Symbols on this page:" in text.split("\n## ", 1)[0], f"{page}: no 'Symbols on this page' table"
    assert python_blocks(page), f"{page}: no runnable python example"


# --- the runnable examples -------------------------------------------------------------

@pytest.mark.parametrize("page, index, line, code", BLOCKS,
                         ids=[f"{b[0]}-block{b[1]}" for b in BLOCKS])
def test_python_example_runs(page, index, line, code):
    where = f"docs/derivations/{page}"
    if code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(code, {}, f"{page} block {index}", where, line - 1)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        report = io.StringIO()
        result = runner.run(test, out=report.write)
        assert result.failed == 0, f"{where}, python block {index} (line {line}):\n{report.getvalue()}"
        return
    # Blank lines in front keep the page's line numbers in a traceback.
    compiled = compile("\n" * (line - 1) + code, where, "exec")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compiled, {"__name__": f"derivation_example_{index}"})
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == where]
        at = f"line {frames[-1].lineno}: {frames[-1].line}" if frames else "?"
        raise AssertionError(f"{where}, python block {index} (from line {line}) fails at {at}\n"
                             f"    {type(exc).__name__}: {exc}") from exc


# --- claims of the pages' README about the pages and the checker ----------------------------

def test_readme_names_every_page_with_an_extra_part():
    readme = read_page("README.md")
    sentence = re.search(r"(\w+) pages add a sixth part.*?\n\n", readme, re.S)
    assert sentence, "docs/derivations/README.md no longer says which pages add a sixth part"
    with_extra = [page for page in LAYER_PAGES
                  if any(h not in PARTS for h in re.findall(r"^## \d+\. (.+)$", read_page(page), re.M))]
    count = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}[sentence.group(1).lower()]
    assert count == len(with_extra), f"the README says {sentence.group(1)} pages; these have one: {with_extra}"
    for page in with_extra:
        assert f"]({page})" in sentence.group(0), f"the README's list of pages with a sixth part misses {page}"


def test_readme_gradcheck_sample_matches_the_checker():
    from numgpt.gradcheck import check_all_layers, format_table

    readme = read_page("README.md")
    sample = re.search(r"^\$ numgpt gradcheck\n(.*?)^```", readme, re.M | re.S).group(1)
    rows = check_all_layers()
    assert f"all {len(rows)} checks passed" in sample
    # Every row the sample shows is a row of the real table, but for its error's digits (BLAS may vary them).
    real = {re.sub(r"\d\.\d\de-\d\d", "E", line) for line in format_table(rows, 1e-7).splitlines()}
    shown = [line for line in sample.splitlines() if re.search(r"(pass|FAIL)$", line)]
    assert len(shown) >= 2
    for line in shown:
        assert re.sub(r"\d\.\d\de-\d\d", "E", line) in real, f"not a row numgpt gradcheck prints now: {line!r}"
