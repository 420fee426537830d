r"""Two pictures: the loss curves of a training run, and a model's attention maps.

matplotlib is an optional extra (``pip install "numgpt[plot]"``); it is
imported only when a picture is drawn, and a missing matplotlib is reported
as :class:`MissingDependency` with the command that installs it.  Figures are
built as plain :class:`matplotlib.figure.Figure` objects on the Agg canvas,
never through ``pyplot``: no window opens, no global figure state is touched,
and a notebook's own backend is left alone.  Every PNG is rendered in memory
and written atomically.

The metrics log
---------------
Training appends one JSON object per line to ``out_dir/metrics.jsonl``::

    {"iter": 10, "loss": 3.91, "lr": 0.0006, "ms_per_iter": 41.2, "tokens_per_s": 12400}
    {"iter": 250, "train_loss": 2.48, "val_loss": 2.53}

:func:`plot_loss` takes the lines with ``iter`` and ``loss`` as training
steps and those with ``iter`` and ``train_loss``/``val_loss`` as
evaluations; other keys and other kinds of line are ignored.  A run that was
resumed from a checkpoint logs some iterations twice: the later line wins, so
the picture shows the history the final model actually has.  A line that is
not valid JSON (the last one, cut short by a run still writing or killed
mid-line) is skipped with a warning.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import warnings

import numpy as np

from ._atomic import atomic_writer

__all__ = ["MissingDependency", "plot_attention", "plot_loss", "read_loss_log", "token_label"]

# Axis labels are drawn only up to this many tokens; beyond it they overlap.
MAX_LABELED_TOKENS = 40


class MissingDependency(ImportError):
    """An optional dependency (here matplotlib) is not installed."""


def _matplotlib():
    """``(Figure, FigureCanvasAgg)``, or MissingDependency saying how to install matplotlib."""
    try:
        # The top-level import comes first on purpose: it is the one that
        # fails when matplotlib is absent (or hidden, as the tests do).
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency(
            'numgpt draws pictures with matplotlib, which is not installed; install it with '
            '`pip install "numgpt[plot]"` (or `pip install matplotlib`)') from exc
    return Figure, FigureCanvasAgg


def _save_png(fig, canvas_class, out_path) -> pathlib.Path:
    out_path = pathlib.Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"out_path must end in .png, got {str(out_path)!r}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas_class(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with atomic_writer(os.fspath(out_path)) as f:
        f.write(buffer.getvalue())
    return out_path


# ---------------------------------------------------------------------------
# Loss curves
# ---------------------------------------------------------------------------


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_loss_log(metrics_path) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """``(train_steps, eval_train, eval_val)``: iteration -> loss, each sorted by iteration."""
    metrics_path = os.fspath(metrics_path)
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(
            f"no metrics log at {metrics_path!r}; training writes one to OUT_DIR/metrics.jsonl")
    steps, evals_train, evals_val = {}, {}, {}
    bad_lines = []
    with open(metrics_path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    # A last piece with no newline after it is a line still being written
    # (or cut off by a kill): skipping it is the normal case, not worth a warning.
    last = len(lines)
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number != last:
                bad_lines.append(number)
            continue
        if not isinstance(record, dict) or not _number(record.get("iter")):
            continue
        it = int(record["iter"])
        # Assigning (rather than appending) lets a resumed run's later line win.
        if _number(record.get("loss")):
            steps[it] = float(record["loss"])
        if _number(record.get("train_loss")):
            evals_train[it] = float(record["train_loss"])
        if _number(record.get("val_loss")):
            evals_val[it] = float(record["val_loss"])
    if bad_lines:
        warnings.warn(f"{metrics_path}: skipped {len(bad_lines)} line(s) that are not valid JSON "
                      f"(line {', '.join(map(str, bad_lines[:5]))}"
                      f"{', ...' if len(bad_lines) > 5 else ''})", stacklevel=3)
    if not (steps or evals_train or evals_val):
        raise ValueError(f"{metrics_path} holds no loss lines (objects with 'iter' and 'loss', "
                         f"'train_loss' or 'val_loss'); has training logged anything yet?")
    return tuple(dict(sorted(d.items())) for d in (steps, evals_train, evals_val))


def plot_loss(metrics_path, out_path, *, log_scale=False, title=None) -> pathlib.Path:
    """Draw the loss curves of a training run from its metrics log; return the PNG's path.

    The training loss of every logged step is a thin line; the evaluations'
    train and validation losses are lines with markers.  ``log_scale`` puts
    the loss axis on a log scale.  ``title`` defaults to the run directory's
    name.
    """
    Figure, Canvas = _matplotlib()
    steps, evals_train, evals_val = read_loss_log(metrics_path)

    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    ax = fig.subplots()
    if steps:
        ax.plot(list(steps), list(steps.values()), lw=0.7, alpha=0.6, color="tab:blue",
                label="train loss (per step)")
    if evals_train:
        ax.plot(list(evals_train), list(evals_train.values()), "o-", ms=3.5, lw=1.4,
                color="tab:green", label="train loss (eval)")
    if evals_val:
        ax.plot(list(evals_val), list(evals_val.values()), "s-", ms=3.5, lw=1.4,
                color="tab:red", label="val loss (eval)")
    if log_scale:
        from matplotlib.ticker import FormatStrFormatter
        ax.set_yscale("log")
        # plain numbers ("2", "3", "4") rather than "2 x 10^0" on a log axis
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    if title is None:
        run = pathlib.Path(os.path.abspath(metrics_path)).parent.name
        title = f"training loss: {run}" if run else "training loss"
    ax.set_title(_escape_dollars(title))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save_png(fig, Canvas, out_path)


# ---------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def token_label(token: str) -> str:
    """``token`` as a readable axis label: control characters escaped (``"\\n"``),
    a space shown as ``"␣"``, and ``$`` guarded against matplotlib's mathtext."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, got {type(token).__name__}")
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch == " ":
            out.append("\u2423")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
        else:
            out.append(ch)
    return _escape_dollars("".join(out)) if out else "''"


def _escape_dollars(text: str) -> str:
    # Two unescaped $ would switch matplotlib into math mode.
    return text.replace("$", r"\$")


def _indices(selection, count: int, name: str) -> list[int]:
    if selection is None:
        return list(range(count))
    chosen = [int(i) for i in selection]
    bad = [i for i in chosen if not 0 <= i < count]
    if not chosen or bad:
        raise ValueError(f"{name} must be a non-empty list of indices in [0, {count}), got {list(selection)}")
    return chosen


def plot_attention(model, tokens, ids, out_path, *, layers=None, heads=None,
                   title=None) -> pathlib.Path:
    """Draw the attention probabilities of every layer and head for one sequence.

    ``ids`` are the token ids (a 1-D integer array or list) and ``tokens``
    their strings, one per id, used as axis labels: queries down the rows of
    each map, keys across the columns.  The figure is a grid of
    ``n_layer`` rows by ``n_head`` columns (or the chosen ``layers`` and
    ``heads``), titled "layer i head j", with one colorbar.  Labels are drawn
    when the sequence has at most 40 tokens.  Returns the PNG's path.
    """
    Figure, Canvas = _matplotlib()
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise ValueError(f"ids must be a non-empty 1-D sequence of integer token ids, "
                         f"got shape {ids.shape} of {ids.dtype}")
    tokens = list(tokens)
    if len(tokens) != len(ids):
        raise ValueError(f"tokens must hold one string per id: {len(ids)} ids, {len(tokens)} tokens")
    labels = [token_label(t) for t in tokens]
    n_layer, n_head = model.config.n_layer, model.config.n_head
    rows = _indices(layers, n_layer, "layers")
    cols = _indices(heads, n_head, "heads")

    maps = model.attention_maps(ids[None, :].astype(np.int64))[:, 0]   # (n_layer, H, T, T)
    T = len(ids)
    show_labels = T <= MAX_LABELED_TOKENS
    # Cells grow with the sequence when they carry labels, so labels stay legible.
    cell = max(2.2, 0.14 * T) if show_labels else 2.2
    fig = Figure(figsize=(cell * len(cols) + 1.2, cell * len(rows) + 0.8), dpi=100,
                 layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False))
    image = None
    for r, layer in enumerate(rows):
        for c, head in enumerate(cols):
            ax = axes[r, c]
            image = ax.imshow(maps[layer, head], vmin=0.0, vmax=1.0, cmap="viridis",
                              interpolation="nearest", aspect="equal")
            ax.set_title(f"layer {layer} head {head}", fontsize=9)
            if show_labels:
                size = 7 if T <= 16 else 5
                ax.set_xticks(range(T))
                ax.set_yticks(range(T))
                # Label the outer edges only: the grid shares the same tokens.
                ax.set_xticklabels(labels if r == len(rows) - 1 else [], rotation=90, fontsize=size)
                ax.set_yticklabels(labels if c == 0 else [], fontsize=size)
                ax.tick_params(length=0)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    if title is None:
        title = f"attention maps: {T} tokens (rows: query, columns: key)"
    fig.suptitle(_escape_dollars(title))
    return _save_png(fig, Canvas, out_path)
