"""The forecast task: train, save, reload, forecast the same; evaluate and predict through the
CLI; bad input as one-line errors; the shipped demo pipeline."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from helpers import ROOT, assert_one_line_error, invoke, write_pipeline

import nlpseq
from nlpseq.errors import NlpseqError
from nlpseq.series import read_series
from nlpseq.tasks.forecast import forecast_figure, forecast_png

HORIZON, SEASON = 4, 4  # as in the tiny forecast pipeline of helpers.PIPELINES


def periodic(n: int, level: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    profile = np.array([1.0, 1.4, 0.8, 0.6])
    return list(np.round(level * profile[np.arange(n) % SEASON] + rng.normal(0, 1, n), 2))


SERIES = {"s1": periodic(40, 50, 1), "s2": periodic(36, 80, 2), "s3": periodic(44, 20, 3)}


def write_m4(path, series: dict[str, list[float]]):
    width = max(len(v) for v in series.values())
    lines = [",".join(f"V{i}" for i in range(1, width + 2))]
    for sid, values in series.items():
        lines.append(",".join([sid, *map(str, values)] + [""] * (width - len(values))))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run and its data files: train, history (train without the last horizon)
    and actuals (that horizon)."""
    folder = tmp_path_factory.mktemp("forecast")
    files = {
        "train": write_m4(folder / "train.csv", SERIES),
        "history": write_m4(folder / "history.csv", {k: v[:-HORIZON] for k, v in SERIES.items()}),
        "actuals": write_m4(folder / "actuals.csv", {k: v[-HORIZON:] for k, v in SERIES.items()}),
    }
    result = nlpseq.train(write_pipeline(folder, "forecast", {"train": files["train"]}),
                          folder / "run")
    return result, files


def test_training_windows_stop_before_the_validation_values(run):
    result, _ = run
    windows = result.task.windows
    lengths = [len(v) - HORIZON for v in SERIES.values()]
    assert windows.series.lengths.tolist() == lengths
    assert len(windows) == sum(n - 8 - HORIZON + 1 for n in lengths)
    assert {"owa", "smape", "mase", "rmse", "mae", "loss"} <= set(result.metrics["dev"])


def test_reload_forecasts_the_same_and_scores_the_dev_split_again(run):
    result, files = run
    loaded = nlpseq.load(result.run_dir)
    series = {k: v[:-HORIZON] for k, v in SERIES.items()}
    np.testing.assert_array_equal(loaded.forecast(series), result.task.forecast(series))
    assert loaded.forecast(series).shape == (3, HORIZON)
    # the dev split is the last horizon of each training series: the same figures from files
    scores = loaded.evaluate_files([str(files["history"]), str(files["actuals"])])
    assert scores["owa"] == pytest.approx(result.metrics["dev"]["owa"], rel=1e-6)
    assert scores["smape"] == pytest.approx(result.metrics["dev"]["smape"], rel=1e-6)
    with pytest.raises(TypeError, match="pass \\[series\\]"):
        loaded.forecast(SERIES["s1"])


def test_cli_evaluate_json_has_the_model_and_every_baseline(run):
    result, files = run
    out = invoke("evaluate", result.run_dir, files["history"], files["actuals"], "--json",
                 check=True)
    scores = json.loads(out.stdout)
    figures = {"smape", "mase", "owa", "rmse", "mae", "n_series"}
    assert figures <= set(scores) and scores["n_series"] == 3
    assert set(scores["baselines"]) == {"naive", "seasonal_naive", "naive2"}
    for name, baseline in scores["baselines"].items():
        assert figures <= set(baseline), name
    assert scores["baselines"]["naive2"]["owa"] == 1.0
    # seasonal naive by hand on s1: the last season of the history, repeated
    history, actual = np.array(SERIES["s1"][:-HORIZON]), np.array(SERIES["s1"][-HORIZON:])
    forecast = history[-SEASON:]
    smape = np.mean(200 * np.abs(actual - forecast) / (np.abs(actual) + np.abs(forecast)))
    per_series = scores["per_series"]["s1"]["seasonal_naive"]["smape"]
    assert per_series == pytest.approx(smape, rel=1e-5)


def test_cli_predict_one_series_a_line(run):
    result, _ = run
    lines = ["V1,V2", "s1," + ",".join(map(str, SERIES["s1"])),
             "new," + ",".join(map(str, SERIES["s2"][:12]))]
    out = invoke("predict", result.run_dir, "--json", input="\n".join(lines) + "\n",
                 check=True)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["series_id"] for r in records] == ["s1", "new"]
    assert all(len(r["forecast"]) == HORIZON for r in records)
    expected = result.task.forecast({"s1": SERIES["s1"]})[0]
    np.testing.assert_allclose(records[0]["forecast"], expected, rtol=1e-6)
    plain = invoke("predict", result.run_dir, input=lines[1] + "\n", check=True).stdout
    assert plain.startswith("s1,") and len(plain.strip().split(",")) == 1 + HORIZON


def test_cli_forecast_writes_csv_and_a_picture(run, tmp_path):
    result, files = run
    out = invoke("forecast", result.run_dir, "--input", files["train"], "--horizon", 3,
                 check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "series_id,step,forecast" and len(lines) == 1 + 3 * 3
    assert lines[1].startswith("s1,1,") and lines[3].startswith("s1,3,")
    expected = result.task.forecast({"s1": SERIES["s1"]}, horizon=3)[0]
    np.testing.assert_allclose([float(line.split(",")[2]) for line in lines[1:4]], expected,
                               rtol=1e-5)
    bad = invoke("forecast", result.run_dir, "--input", files["train"], "--quantiles")
    assert_one_line_error(bad, "this model forecasts points only: train it with model.quantiles")
    if importlib.util.find_spec("matplotlib") is not None:
        invoke("forecast", result.run_dir, "--input", files["train"], "--plot",
               tmp_path / "f.png", "--plot-series", "s3", check=True)
        assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_forecast_picture(run, tmp_path):
    pytest.importorskip("matplotlib")
    result, files = run
    series, forecasts = result.task.forecast_file(files["train"])
    figure = forecast_figure(series, forecasts, result.task.config.model.levels, ["s2", "s3"])
    assert [axes.get_title(loc="left") for axes in figure.axes] == ["s2", "s3"]
    line = figure.axes[0].get_lines()[1]  # the forecast follows three horizons of history
    assert list(line.get_xdata()) == list(range(12, 16))
    np.testing.assert_allclose(line.get_ydata(), forecasts[1, :, 0])
    path = forecast_png(series, forecasts, (0.5,), tmp_path / "f.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(NlpseqError, match="no series 'zz' to draw"):
        forecast_figure(series, forecasts, (0.5,), ["zz"])


def test_bad_input_at_forecast_time(run, tmp_path):
    result, files = run
    task = result.task
    with pytest.raises(NlpseqError, match="horizon 6 is longer than the model's 4; only a "
                                          "model trained with model.decoder: recurrent"):
        task.forecast([SERIES["s1"]], horizon=6)
    with pytest.raises(NlpseqError, match="has 5 values; the model reads the last 8"):
        task.forecast({"short": [1, 2, 3, 4, 5], "s1": SERIES["s1"]})
    bad = invoke("predict", result.run_dir, input="s1,1,2,x,4\n")
    assert_one_line_error(bad, "<input>:1: column 4: 'x' is not a number")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    out = invoke("evaluate", result.run_dir, empty, files["actuals"])
    assert_one_line_error(out, "empty.csv: data file is empty")
    out = invoke("evaluate", result.run_dir, files["history"])
    assert_one_line_error(out, "forecast evaluation takes two files: HISTORY ACTUALS")


def test_short_training_series_are_skipped_and_counted(tmp_path):
    train = write_m4(tmp_path / "train.csv", {**SERIES, "tiny": [1.0] * 10})
    pipeline = write_pipeline(tmp_path, "forecast", {"train": train}, {"train.epochs": 1})
    out = invoke("train", pipeline, "--out", tmp_path / "run", "--quiet", check=True)
    assert "1 series shorter than 16 values skipped (tiny)" in out.stderr
    only_short = write_m4(tmp_path / "short.csv", {"a": [1.0] * 10, "b": [2.0] * 15})
    pipeline = write_pipeline(tmp_path, "forecast", {"train": only_short})
    out = invoke("train", pipeline, "--out", tmp_path / "run2")
    assert_one_line_error(out, "short.csv: no series has at least 16 values (2 series read)")


def test_long_layout_quantiles_and_a_recurrent_decoder(tmp_path):
    rows = ["meter;hour;kw"] + [f"{sid};{t};{v}" for sid, values in SERIES.items()
                                for t, v in enumerate(values)]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows).replace(";", "\t") + "\n", encoding="utf-8")
    pipeline = write_pipeline(tmp_path, "forecast", {
        "train": train, "format": "long", "id_column": "meter", "time_column": "hour",
        "value_column": "kw"}, {"model.quantiles": "0.1, 0.5, 0.9", "model.decoder": "recurrent",
                                "model.series_dim": 2})
    result = nlpseq.train(pipeline, tmp_path / "run")
    assert 0 <= result.metrics["dev"]["coverage_0.1_0.9"] <= 1
    task = nlpseq.load(result.run_dir)
    bands = task.forecast({"s1": SERIES["s1"]}, horizon=7, quantiles=True)  # past the horizon
    assert bands.shape == (1, 7, 3)
    assert (np.diff(bands, axis=-1) >= 0).all()
    lines = list(task.csv_lines(*task.forecast_file(train, quantiles=True), quantiles=True))
    assert lines[0] == "series_id,step,forecast,q10,q90" and len(lines) == 1 + 3 * HORIZON
    record = task.predict([("s1", SERIES["s1"])], quantiles=True)[0]
    assert set(record["quantiles"]) == {"0.1", "0.5", "0.9"}
    assert record["quantiles"]["0.5"] == record["forecast"]


def test_demo_pipeline_shortened(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the pipeline names its corpus relative to the repository
    run_dir = tmp_path / "demo"
    out = invoke("train", "pipelines/forecast.yaml", "--out", run_dir, "--quiet",
                 "--set", "train.epochs=2", check=True)
    assert math.isfinite(json.loads(out.stdout)["owa"])
    scores = json.loads(invoke("evaluate", run_dir, "corpora/forecast/train.csv",
                               "corpora/forecast/test.csv", "--json", check=True).stdout)
    assert scores["n_series"] == 6
    # the bundled continuation is the next 24 hours of every training series
    train, _ = read_series(ROOT / "corpora/forecast/train.csv")
    test, _ = read_series(ROOT / "corpora/forecast/test.csv")
    assert train.ids == test.ids and set(test.lengths.tolist()) == {24}
