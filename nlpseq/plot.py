"""Pictures as PNG files: attention heat maps, training curves, NER entity scores, confusion
matrices. Drawn with matplotlib, the optional extra ``pip install 'nlpseq[plot]'``.

Each picture has a ``*_figure`` function that returns a matplotlib ``Figure`` (to inspect or
restyle it) and a ``*_png`` wrapper that saves it. matplotlib is imported only inside them and
draws on the Agg canvas, so the package starts without it and never needs a display. Figure sizes
are fixed in inches from the number of tokens or labels (no tight cropping), so a picture's pixel
size is ``DPI`` times its size in inches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpseq import checkpoint as ckpt
from nlpseq.errors import NlpseqError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
INSTALL_HINT = "drawing needs matplotlib: pip install 'nlpseq[plot]'"
TOKEN_CELL = 0.3  # inches per token in the attention heat map: room for a 9-point label
CHAR_WIDTH = 0.075  # inches per character of a 9-point label
SLANTED_CHAR_HEIGHT = 0.065  # the same, written at 60 degrees: CHAR_WIDTH * sin(60)
PICTURED_TASKS = ("ner", "sentiment")  # tasks whose evaluation ``evaluation_png`` can draw


def require_matplotlib() -> None:
    """Raise a one-line NlpseqError saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise NlpseqError(INSTALL_HINT) from None


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas (no display)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` as PNG (whatever the suffix); returns the path."""
    path = Path(path)
    try:
        figure.savefig(path, format="png", dpi=DPI)
    except OSError as err:
        raise NlpseqError(f"cannot write the picture: {err.strerror or err}", path) from None
    return path


# --- attention ------------------------------------------------------------------------------


def attention_figure(
    attention: Sequence[Sequence[float]],
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
) -> Figure:
    """Heat map of ``attention`` (len(target_tokens) x len(source_tokens), weights in [0, 1]):
    one row per output token, one column per source token, and a colour bar."""
    weights = [[float(value) for value in row] for row in attention]
    rows, cols = len(target_tokens), len(source_tokens)
    if rows == 0 or cols == 0:
        raise ValueError("an attention map needs at least one source and one output token")
    if len(weights) != rows or any(len(row) != cols for row in weights):
        raise ValueError("weights must have one row per target and one column per source token")
    longest_source = max(len(token) for token in source_tokens)
    longest_target = max(len(token) for token in target_tokens)
    width = 2.2 + TOKEN_CELL * cols + CHAR_WIDTH * longest_target
    height = 1.2 + TOKEN_CELL * rows + SLANTED_CHAR_HEIGHT * longest_source
    figure = new_figure(width, height)
    axes = figure.add_subplot()
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(cols), labels=list(source_tokens), rotation=60, ha="right",
                    rotation_mode="anchor", fontsize=9)
    axes.set_yticks(range(rows), labels=list(target_tokens), fontsize=9)
    axes.set_xlabel("source")
    axes.set_ylabel("output")
    figure.colorbar(image, ax=axes, label="attention weight", fraction=0.05, pad=0.02)
    return figure


def attention_png(
    attention: Sequence[Sequence[float]],
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: str | Path,
) -> Path:
    """Write :func:`attention_figure` to ``path`` as PNG."""
    return save_png(attention_figure(attention, source_tokens, target_tokens), path)


# --- training curves ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunHistory:
    """One run's evaluation records (oldest first) and the checkpoint it kept."""

    name: str
    records: list[dict[str, Any]]
    selection_metric: str | None  # the dev metric that picked the checkpoint
    best_step: int | None  # the training step of the kept checkpoint


def read_history(run_dir: str | Path) -> RunHistory:
    """The evaluation history and selection of a run directory's committed checkpoint."""
    run_dir = Path(run_dir)
    folder = ckpt.RunDir(run_dir).current() if run_dir.is_dir() else None
    if folder is None:
        raise NlpseqError(f"not a run directory with a training history (no {ckpt.POINTER})",
                          run_dir)
    path = folder / ckpt.HISTORY
    records = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise NlpseqError(f"not a JSON record: {err}", path, number) from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise NlpseqError("a history record needs an integer step", path, number)
        records.append(record)
    if not records:
        raise NlpseqError("the history is empty: no evaluation yet", path)
    selection = ckpt.read_json(folder / ckpt.METRICS) if (folder / ckpt.METRICS).is_file() else {}
    return RunHistory(run_dir.resolve().name, records, selection.get("selection_metric"),
                      selection.get("step"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _line(axes: Axes, xs: list[float], records: list[dict], key: str, **style: Any) -> None:
    """Plot ``key`` of each record against ``xs``, skipping records without it."""
    points = [(x, _number(r.get(key))) for x, r in zip(xs, records)]
    points = [(x, y) for x, y in points if y is not None]
    if points:
        axes.plot(*zip(*points), marker="o", markersize=3, **style)


def _draw_run(grid: Any, run: RunHistory, colour: str, label: str) -> None:
    """One run's curves on the 3 x 2 grid (rows: loss, dev metric, lr; columns: step, minutes)."""
    steps = [float(r["step"]) for r in run.records]
    minutes = [_number(r.get("elapsed_s")) for r in run.records]
    minutes = [m / 60 if m is not None else math.nan for m in minutes]
    for column, xs in enumerate((steps, minutes)):
        _line(grid[0][column], xs, run.records, "train_loss", color=colour,
              label=label if column == 0 else None)
        _line(grid[2][column], xs, run.records, "lr", color=colour)
        if run.selection_metric is None:
            continue
        _line(grid[1][column], xs, run.records, run.selection_metric, color=colour)
        for x, record in zip(xs, run.records):
            value = _number(record.get(run.selection_metric))
            if record["step"] == run.best_step and value is not None:
                grid[1][column].plot([x], [value], marker="*", markersize=14, color=colour,
                                     markeredgecolor="black", linestyle="none", gid="best")
                break


def curves_figure(runs: Sequence[RunHistory]) -> Figure:
    """Training loss, dev selection metric and learning rate against steps (left) and minutes
    (right) for each run; a star marks each run's kept checkpoint."""
    if not runs:
        raise ValueError("no runs to draw")
    figure = new_figure(11.0, 9.0)
    from matplotlib.lines import Line2D

    metrics = {run.selection_metric for run in runs if run.selection_metric}
    grid = figure.subplots(3, 2, sharex="col")
    for index, run in enumerate(runs):
        label = run.name if len(metrics) < 2 else f"{run.name} ({run.selection_metric})"
        _draw_run(grid, run, f"C{index % 10}", label)
    for row, name in enumerate(("training loss", _metric_label(metrics), "learning rate")):
        grid[row][0].set_ylabel(name)
    grid[2][0].set_xlabel("step")
    grid[2][1].set_xlabel("minutes")
    for axes in grid.flat:
        axes.grid(alpha=0.3)
    handles, labels = grid[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", markersize=12, color="white",
                          markeredgecolor="black", linestyle="none"))
    labels.append("kept checkpoint")
    figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5))
    return figure


def _metric_label(metrics: set[str]) -> str:
    return f"dev {next(iter(metrics))}" if len(metrics) == 1 else "dev selection metric"


def read_histories(run_dirs: Sequence[str | Path]) -> list[RunHistory]:
    """:func:`read_history` of each run, named by folder, or by the path given where two
    folders share a name (``a/run`` and ``b/run``)."""
    runs = [read_history(run_dir) for run_dir in run_dirs]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        runs = [replace(run, name=str(run_dir)) for run, run_dir in zip(runs, run_dirs)]
    return runs


def curves_png(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """Read each run directory's history and write :func:`curves_figure` to ``path``."""
    return save_png(curves_figure(read_histories(run_dirs)), path)


# --- evaluation -----------------------------------------------------------------------------


def entity_scores_figure(scores: Mapping[str, Mapping[str, float]]) -> Figure:
    """Precision, recall and F1 bars (percent) per entity type; ``scores`` maps a type to
    ``{"precision", "recall", "f1", "support"}``, as NER evaluation's ``per_type``."""
    if not scores:
        raise NlpseqError("no entities to draw: neither gold data nor predictions hold any")
    types = list(scores)
    figure = new_figure(max(5.0, 1.5 + 1.1 * len(types)), 4.5)
    axes = figure.add_subplot()
    bar = 0.27
    for offset, key in enumerate(("precision", "recall", "f1")):
        xs = [i + (offset - 1) * bar for i in range(len(types))]
        bars = axes.bar(xs, [float(scores[t][key]) for t in types], width=bar,
                        label="F1" if key == "f1" else key, color=f"C{offset}")
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    labels = [f"{t}\n{scores[t]['support']} gold" if "support" in scores[t] else t
              for t in types]
    axes.set_xticks(range(len(types)), labels=labels)
    axes.set_ylim(0, 110)
    axes.set_ylabel("percent")
    axes.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside upper center", ncols=3)
    return figure


def entity_scores_png(scores: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Write :func:`entity_scores_figure` to ``path`` as PNG."""
    return save_png(entity_scores_figure(scores), path)


def confusion_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Confusion matrix: ``matrix[gold][predicted]`` counts, each cell written out."""
    k = len(labels)
    if k == 0 or len(matrix) != k or any(len(row) != k for row in matrix):
        raise ValueError("a confusion matrix needs one row and one column per label")
    side = 2.5 + 0.7 * k + CHAR_WIDTH * max(len(label) for label in labels)
    figure = new_figure(side + 1.0, side)
    from matplotlib.ticker import MaxNLocator

    axes = figure.add_subplot()
    counts = [[int(value) for value in row] for row in matrix]
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, max(map(max, counts))),
                        aspect="auto")  # a fixed aspect pushes the labels off the page
    threshold = image.norm.vmax / 2
    for gold, row in enumerate(counts):
        for predicted, value in enumerate(row):
            axes.text(predicted, gold, str(value), ha="center", va="center",
                      color="white" if value > threshold else "black")
    axes.set_xticks(range(k), labels=list(labels), rotation=45, ha="right",
                    rotation_mode="anchor")
    axes.set_yticks(range(k), labels=list(labels))
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    bar = figure.colorbar(image, ax=axes, label="examples", fraction=0.05, pad=0.03)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str],
                  path: str | Path) -> Path:
    """Write :func:`confusion_figure` to ``path`` as PNG."""
    return save_png(confusion_figure(matrix, labels), path)


def check_plot_target(task_name: str, path: str | Path) -> None:
    """Fail early, before the work behind a picture: the task has none, matplotlib is missing
    or the picture's folder does not exist."""
    if task_name not in PICTURED_TASKS:
        raise NlpseqError(f"--plot: {task_name} evaluation has no picture (only "
                          f"{' and '.join(PICTURED_TASKS)} have one)", path)
    require_matplotlib()
    if not Path(path).expanduser().resolve().parent.is_dir():
        raise NlpseqError("--plot: the folder does not exist", path)


def evaluation_figure(task_name: str, metrics: Mapping[str, Any]) -> Figure:
    """The picture of an evaluation's ``metrics``: entity scores (with all types together) for
    NER, the confusion matrix for sentiment."""
    if task_name == "ner":
        overall = {key: metrics[key] for key in ("precision", "recall", "f1")}
        scores = {**metrics["per_type"], "all types": {**overall, "support": metrics["n_gold"]}}
        return entity_scores_figure(scores)
    if task_name == "sentiment":
        confusion = metrics["confusion"]
        return confusion_figure(confusion["counts"], confusion["labels"])
    raise NlpseqError(f"{task_name} evaluation has no picture (only "
                      f"{' and '.join(PICTURED_TASKS)} have one)")


def evaluation_png(task_name: str, metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`evaluation_figure` to ``path`` as PNG."""
    return save_png(evaluation_figure(task_name, metrics), path)
