"""Pictures: attention heat maps, training curves, entity scores and confusion matrices.

Each picture is checked twice: the PNG's pixel size against the size computed by hand from the
token or label counts, and the figure's artists (texts, bar heights, line data) against the
values that went in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import assert_one_line_error, invoke

from nlpseq import checkpoint as ckpt
from nlpseq.errors import NlpseqError
from nlpseq.metrics import ClassificationCounts
from nlpseq.plot import (
    DPI,
    attention_figure,
    attention_png,
    check_plot_target,
    confusion_figure,
    confusion_png,
    curves_figure,
    curves_png,
    entity_scores_figure,
    entity_scores_png,
    evaluation_figure,
    read_histories,
    read_history,
)
from nlpseq.tagschemes import SpanF1

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402
from matplotlib.text import Text  # noqa: E402


def texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG read back from disk."""
    height, width = imread(path).shape[:2]
    return width, height


def assert_inside(figure) -> None:
    """Everything drawn lies on the page: no label is cut off."""
    figure.canvas.draw()  # the layout is settled when drawing
    drawn = figure.get_tightbbox(figure.canvas.get_renderer())  # inches
    width, height = figure.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0, drawn
    assert drawn.x1 <= width and drawn.y1 <= height, drawn


def assert_pixels(path: Path, width_in: float, height_in: float) -> None:
    width, height = png_size(path)
    assert abs(width - width_in * DPI) <= 1 and abs(height - height_in * DPI) <= 1


# --- attention ------------------------------------------------------------------------------

SOURCE = ["▁Das", "▁Mädchen", "▁läuft", "</s>"]
TARGET = ["▁The", "▁girl", "▁runs", "ß", "</s>"]


def test_attention_map_shows_the_real_tokens_and_a_colour_bar(tmp_path: Path):
    weights = [[0.5, 0.25, 0.25, 0.0]] * len(TARGET)
    figure = attention_figure(weights, SOURCE, TARGET)
    labels = texts(figure)
    for token in SOURCE + TARGET:  # umlauts, ß and the subword mark kept, no upper-casing
        assert token in labels
    heat, bar = figure.axes
    assert [t.get_text() for t in heat.get_xticklabels()] == SOURCE
    assert [t.get_text() for t in heat.get_yticklabels()] == TARGET
    assert bar.get_ylabel() == "attention weight"
    assert heat.images[0].get_array().tolist() == weights
    assert heat.images[0].get_clim() == (0.0, 1.0)  # a fixed scale: maps compare
    path = attention_png(weights, SOURCE, TARGET, tmp_path / "a.png")
    # 2.2 + 0.3 per source token + 0.075 per character of "▁Mädchen"; 1.2 + 0.3 per output
    # token + 0.065 per character of the longest source token
    assert_pixels(path, 2.2 + 0.3 * 4 + 0.075 * 5, 1.2 + 0.3 * 5 + 0.065 * 8)


def test_forty_token_map_keeps_labels_apart_and_inside(tmp_path: Path):
    tokens = [f"▁wörtchen{i:02d}" for i in range(40)]
    weights = [[float(i == j) for j in range(40)] for i in range(40)]
    figure = attention_figure(weights, tokens, tokens)
    assert_inside(figure)
    box = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
    label_height = 9 * DPI / 72  # 9-point labels, in pixels
    assert box.width / 40 >= label_height and box.height / 40 >= label_height
    path = attention_png(weights, tokens, tokens, tmp_path / "long.png")
    assert_pixels(path, 2.2 + 0.3 * 40 + 0.075 * 11, 1.2 + 0.3 * 40 + 0.065 * 11)


def test_attention_shape_must_match_the_tokens():
    with pytest.raises(ValueError, match="one row per target"):
        attention_figure([[1.0, 0.0]], ["a", "b", "c"], ["x"])
    with pytest.raises(ValueError, match="at least one"):
        attention_figure([], ["a"], [])


def test_missing_matplotlib_is_a_one_line_hint(monkeypatch, tmp_path: Path):
    hide_matplotlib(monkeypatch)
    with pytest.raises(NlpseqError, match=r"pip install 'nlpseq\[plot\]'") as err:
        attention_png([[1.0]], ["a"], ["b"], tmp_path / "a.png")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a.png").exists()


def test_unwritable_picture_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(NlpseqError, match="cannot write the picture") as err:
        attention_png([[1.0]], ["a"], ["b"], tmp_path / "missing" / "a.png")
    assert str(err.value).startswith(str(tmp_path / "missing" / "a.png"))


# --- training curves ------------------------------------------------------------------------


def write_run(directory: Path, best_step: int = 20, scale: float = 1.0) -> Path:
    """A run directory with three evaluations; the second (step 20) is the kept checkpoint."""
    directory.mkdir(parents=True)
    records = [
        {"epoch": e, "step": 10 * e, "elapsed_s": 90.0 * e * scale, "train_loss": 1.0 / e,
         "train_tokens_per_s": 100.0, "lr": 0.1 / e, "accuracy": [50.0, 80.0, 75.0][e - 1],
         "loss": 0.5}
        for e in (1, 2, 3)
    ]
    selection = {"selection_metric": "accuracy", "best_epoch": 2, "step": best_step, "dev": {}}
    ckpt.RunDir(directory).commit({ckpt.HISTORY: ckpt.jsonl_writer(records),
                                   ckpt.METRICS: ckpt.json_writer(selection)})
    return directory


def xy(line) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata())]


def test_curves_against_steps_and_minutes_with_the_kept_checkpoint(tmp_path: Path):
    runs = [read_history(write_run(tmp_path / "lstm")),
            read_history(write_run(tmp_path / "gru", scale=2.0))]
    assert runs[0].name == "lstm" and runs[0].selection_metric == "accuracy"
    figure = curves_figure(runs)
    grid = [figure.axes[0:2], figure.axes[2:4], figure.axes[4:6]]
    loss_by_step, loss_by_minute = (axes.get_lines() for axes in grid[0])
    assert xy(loss_by_step[0]) == [(10, 1.0), (20, 0.5), (30, pytest.approx(1 / 3))]
    assert xy(loss_by_minute[1]) == [(3.0, 1.0), (6.0, 0.5), (9.0, pytest.approx(1 / 3))]
    assert [y for _, y in xy(grid[2][0].get_lines()[0])] == pytest.approx([0.1, 0.05, 0.1 / 3])
    stars = [line for line in figure.findobj() if getattr(line, "get_gid", None)
             and line.get_gid() == "best"]
    # step 20 in both runs: the second evaluation, after 2 x 90 s and 2 x 180 s
    assert sorted(xy(s)[0] for s in stars) == [(3.0, 80.0), (6.0, 80.0), (20, 80.0), (20, 80.0)]
    assert grid[1][0].get_ylabel() == "dev accuracy"
    assert (grid[2][0].get_xlabel(), grid[2][1].get_xlabel()) == ("step", "minutes")
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["lstm", "gru", "kept checkpoint"]
    assert_inside(figure)
    path = curves_png([tmp_path / "lstm", tmp_path / "gru"], tmp_path / "c.png")
    assert_pixels(path, 11.0, 9.0)


def test_runs_with_one_name_are_told_apart_by_path(tmp_path: Path):
    first, second = write_run(tmp_path / "a" / "run"), write_run(tmp_path / "b" / "run")
    lstm = write_run(tmp_path / "lstm")
    assert [run.name for run in read_histories([first, lstm])] == ["run", "lstm"]
    runs = read_histories([first, second])
    assert [run.name for run in runs] == [str(first), str(second)]
    legend = [t.get_text() for t in curves_figure(runs).legends[0].get_texts()]
    assert legend == [str(first), str(second), "kept checkpoint"]


def test_history_errors_name_the_file_and_line(tmp_path: Path):
    with pytest.raises(NlpseqError, match="not a run directory") as err:
        read_history(tmp_path / "nothing")
    assert str(err.value).startswith(str(tmp_path / "nothing"))
    run = write_run(tmp_path / "run")
    history = ckpt.RunDir(run).file(ckpt.HISTORY)
    history.write_text(history.read_text() + "{broken\n")
    with pytest.raises(NlpseqError, match=r"history\.jsonl:4: not a JSON record"):
        read_history(run)
    history.write_text('{"epoch": 1}\n')
    with pytest.raises(NlpseqError, match=r"history\.jsonl:1: .*integer step"):
        read_history(run)
    history.write_text("")
    with pytest.raises(NlpseqError, match="history is empty"):
        read_history(run)


def test_cli_plot_default_outputs(tmp_path: Path, monkeypatch):
    one = write_run(tmp_path / "one")
    result = invoke("plot", one)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(one / "curves.png")
    assert_pixels(one / "curves.png", 11.0, 9.0)
    two = write_run(tmp_path / "two")
    monkeypatch.chdir(tmp_path)
    result = invoke("plot", one, two)
    assert result.exit_code == 0 and (tmp_path / "curves.png").is_file(), result.output
    missing = invoke("plot", tmp_path / "none")
    assert_one_line_error(missing, "none", "not a run directory")


def test_cli_plot_of_a_trained_run(trained_run, tmp_path: Path):
    out = tmp_path / "trained.png"
    result = invoke("plot", trained_run.run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert_pixels(out, 11.0, 9.0)
    run = read_history(trained_run.run_dir)
    assert run.selection_metric == "loss" and len(run.records) == 8
    assert run.best_step in [record["step"] for record in run.records]


# --- evaluation pictures --------------------------------------------------------------------

SCORES = {
    "LOC": {"precision": 80.0, "recall": 66.5, "f1": 72.6, "support": 5},
    "PER": {"precision": 100.0, "recall": 50.0, "f1": 66.7, "support": 2},
}


def test_entity_score_bars(tmp_path: Path):
    figure = entity_scores_figure(SCORES)
    axes = figure.axes[0]
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == [80.0, 100.0, 66.5, 50.0, 72.6, 66.7]  # precision, recall, F1 per type
    assert [t.get_text() for t in axes.get_xticklabels()] == ["LOC\n5 gold", "PER\n2 gold"]
    assert {"precision", "recall", "F1", "66.5"} <= set(texts(figure))
    assert_pixels(entity_scores_png(SCORES, tmp_path / "e.png"), 5.0, 4.5)
    many = {f"TYPE{i}": SCORES["LOC"] for i in range(6)}
    assert_pixels(entity_scores_png(many, tmp_path / "m.png"), 1.5 + 1.1 * 6, 4.5)
    with pytest.raises(NlpseqError, match="no entities"):
        entity_scores_figure({})


def test_ner_evaluation_picture_adds_all_types():
    metric = SpanF1()
    metric.add(["B-LOC", "O", "B-PER", "I-PER"], ["B-LOC", "O", "B-LOC", "I-LOC"], "iob2")
    figure = evaluation_figure("ner", metric.result())
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == [
        "LOC\n1 gold", "PER\n1 gold", "all types\n2 gold"]
    # precision LOC 1/2, PER 0, all 1/2; recall 1, 0, 1/2; F1 2/3, 0, 1/2 (percent)
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == pytest.approx([50.0, 0.0, 50.0, 100.0, 0.0, 50.0, 200 / 3, 0.0, 50.0])


def test_confusion_matrix(tmp_path: Path):
    counts = ClassificationCounts(["négatif", "positif"])
    counts.add([0, 0, 0, 1, 1], [0, 0, 1, 1, 0])
    confusion = counts.result()["confusion"]
    assert confusion == {"labels": ["négatif", "positif"], "counts": [[2, 1], [1, 1]]}
    figure = evaluation_figure("sentiment", counts.result())
    axes = figure.axes[0]
    cells = [t.get_text() for t in axes.texts]
    assert cells == ["2", "1", "1", "1"]  # row by row: gold négatif, then gold positif
    assert [t.get_text() for t in axes.get_xticklabels()] == ["négatif", "positif"]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted", "gold")
    assert figure.axes[1].get_ylabel() == "examples"
    path = confusion_png(confusion["counts"], confusion["labels"], tmp_path / "c.png")
    side = 2.5 + 0.7 * 2 + 0.075 * 7
    assert_pixels(path, side + 1.0, side)
    with pytest.raises(ValueError, match="one row and one column per label"):
        confusion_figure([[1, 2]], ["a", "b"])


def test_long_labels_stay_on_the_page():
    labels = ["very negative", "negative", "neutral", "positive", "very positive"]
    figure = confusion_figure([[100 * (i == j) + j for j in range(5)] for i in range(5)], labels)
    assert_inside(figure)
    bar_ticks = figure.axes[1].get_yticks()
    assert all(float(t).is_integer() for t in bar_ticks)  # counts: no half examples
    assert_inside(entity_scores_figure({"MISCELLANEOUS": SCORES["LOC"], **SCORES}))


def test_tasks_without_a_picture(tmp_path: Path):
    with pytest.raises(NlpseqError, match="translate evaluation has no picture"):
        check_plot_target("translate", tmp_path / "x.png")
    with pytest.raises(NlpseqError, match="folder does not exist"):
        check_plot_target("ner", tmp_path / "missing" / "x.png")
    with pytest.raises(NlpseqError, match="chargen evaluation has no picture"):
        evaluation_figure("chargen", {"loss": 1.0})


def test_cli_evaluate_plot_of_a_sentiment_run(trained_run, tmp_path: Path):
    out = tmp_path / "confusion.png"
    result = invoke("evaluate", trained_run.run_dir, trained_run.corpus["dev"], "--json",
                    "--plot", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    counts = metrics["confusion"]["counts"]
    assert sorted(metrics["confusion"]["labels"]) == ["neg", "pos"]
    assert sum(map(sum, counts)) == metrics["n"] == 8
    assert 100 * (counts[0][0] + counts[1][1]) / 8 == pytest.approx(metrics["accuracy"])
    side = 2.5 + 0.7 * 2 + 0.075 * 3  # labels "neg" and "pos"
    assert_pixels(out, side + 1.0, side)
    text = invoke("evaluate", trained_run.run_dir, trained_run.corpus["dev"])
    assert "confusion" not in text.stdout  # tables stay out of the plain listing


def test_cli_evaluate_plot_refuses_before_scoring(monkeypatch, tmp_path: Path):
    import nlpseq

    scored: list[list[str]] = []

    def fake_load(run_dir, device, backend="torch"):
        return SimpleNamespace(name="chargen", evaluate_files=scored.append)

    monkeypatch.setattr(nlpseq, "load", fake_load)
    result = invoke("evaluate", "run", "dev.txt", "--plot", tmp_path / "x.png")
    assert_one_line_error(result, "x.png", "chargen evaluation has no picture")
    assert scored == []


def hide_matplotlib(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None makes ``import`` fail


def test_cli_without_matplotlib_says_how_to_get_it_before_working(monkeypatch, tmp_path: Path):
    import nlpseq

    work: list[str] = []
    task = SimpleNamespace(name="sentiment", evaluate_files=work.append,
                           predict_lines=lambda lines, beam: work.extend(lines) or [])
    task.require = lambda name: task
    monkeypatch.setattr(nlpseq, "load", lambda run_dir, device, backend="torch": task)
    run = write_run(tmp_path / "run")
    hide_matplotlib(monkeypatch)
    for args in (["evaluate", "run", "dev.tsv", "--plot", tmp_path / "c.png"],
                 ["translate", "run", "--attention-plot", tmp_path / "a.png"],
                 ["plot", run]):
        result = invoke(*args, input="The man is eating.\n")
        assert_one_line_error(result, "pip install 'nlpseq[plot]'")
    assert work == [] and not list(tmp_path.glob("*.png"))
