"""Series readers, windows, benchmark forecasts and M4 metrics against hand-computed values."""

from __future__ import annotations

import gzip
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpseq.errors import NlpseqError
from nlpseq.series import (
    SeriesSet,
    Windows,
    WindowSpec,
    autocorrelation,
    evaluate_forecasts,
    is_seasonal,
    mase_scale,
    naive,
    naive2,
    read_column,
    read_long,
    read_m4,
    read_series,
    seasonal_indices,
    seasonal_naive,
    series_errors,
    summarise,
)

M4 = '"V1","V2","V3","V4","V5"\n"A1","1","2","3","4"\n"A2","5",,"7",\n"A3","9",,,\n'


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- readers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["m4.csv", "m4.csv.gz"])
def test_m4_padding_missing_and_short_series(tmp_path, name):
    series, report = read_m4(write(tmp_path / name, M4), min_length=2)
    assert series.ids == ("A1", "A2")
    assert series[0].tolist() == [1, 2, 3, 4]
    assert series[1].tolist() == [5, 6, 7]  # the empty cell between 5 and 7 is interpolated
    assert (report.series, report.values, report.missing, report.short) == (2, 7, 1, ["A3"])
    assert "1 missing values filled" in str(report) and "1 series shorter than 2" in str(report)


def test_m4_non_numeric_value_names_line_and_column(tmp_path):
    path = write(tmp_path / "bad.csv", '"V1","V2","V3"\n"A","1","2"\n"B","3","x7"\n')
    with pytest.raises(NlpseqError) as err:
        read_m4(path)
    assert str(err.value) == f"{path}:3: column 3: 'x7' is not a number"


@pytest.mark.parametrize("value", ["inf", "-1e999", "1e39"])
def test_values_beyond_float32_are_refused(tmp_path, value):
    path = write(tmp_path / "big.csv", f"load\n1\n{value}\n")
    with pytest.raises(NlpseqError, match=rf"big.csv:3: column 1: '{value}' is not a finite"):
        read_column(path)


@pytest.mark.parametrize("reader", [read_m4, read_long, read_column, read_series])
def test_empty_file_is_one_line_error(tmp_path, reader):
    path = write(tmp_path / "empty.csv", "\n")
    with pytest.raises(NlpseqError, match="data file is empty"):
        reader(path)


def test_no_usable_series_is_an_error(tmp_path):
    with pytest.raises(NlpseqError, match="no series has at least 10 values"):
        read_m4(write(tmp_path / "m4.csv", M4), min_length=10)


def test_long_layout_sorts_by_time_and_fills_gaps(tmp_path):
    text = ("id;t;y\n".replace(";", "\t") + "b\t3\t30\na\t2\t20\na\t1\t10\nb\t1\t10\n"
            "a\t3\t\nb\t4\t40\na\t4\t40\n")
    series, report = read_long(write(tmp_path / "long.tsv", text), id_column="id",
                               time_column="t", value_column="y")
    assert series.ids == ("b", "a")
    # b: timestamp 2 absent (one regular step missing); a: the empty value at t=3
    assert series[0].tolist() == [10, 20, 30, 40]
    assert series[1].tolist() == [10, 20, 30, 40]
    assert report.missing == 2


def test_long_layout_iso_dates_and_irregular_steps(tmp_path):
    text = ("series_id,timestamp,value\n"
            "s,2024-03-01,3\ns,2024-01-01,1\ns,2024-02-01,2\n"  # months: 31 and 29 days
            "h,2024-01-01T02:00,2\nh,2024-01-01T00:00,0\nh,2024-01-01T01:00,1\n")
    series, _ = read_long(write(tmp_path / "long.csv.gz", text))
    assert series[0].tolist() == [1, 2, 3] and series[1].tolist() == [0, 1, 2]


def test_long_layout_errors(tmp_path):
    with pytest.raises(NlpseqError, match=r":1: no column 'value' \(columns: series_id, t\)"):
        read_long(write(tmp_path / "a.csv", "series_id,t\na,1\n"), time_column="t")
    path = write(tmp_path / "b.csv", "series_id,timestamp,value\na,1,1\na,2,2\na,1,3\n")
    with pytest.raises(NlpseqError, match=r"b.csv:4: series 'a': timestamp '1' repeats line 2"):
        read_long(path)
    path = write(tmp_path / "g.csv", "series_id,timestamp,value\na,1,1\na,2,2\na,1e30,3\n")
    with pytest.raises(NlpseqError, match=r"g.csv:2: series 'a': its timestamps leave 1e\+30 "):
        read_long(path)
    path = write(tmp_path / "c.csv", "series_id,timestamp,value\na,1,1\na,2,two\n")
    with pytest.raises(NlpseqError, match=r"c.csv:3: column value: 'two' is not a number"):
        read_long(path)


def test_single_column_and_layout_detection(tmp_path):
    path = write(tmp_path / "load.txt", "load\n1\n2\nNA\n4\n\n")
    series, report = read_column(path)
    assert series.ids == ("load",) and series[0].tolist() == [1, 2, 3, 4]
    assert report.missing == 1
    assert read_series(path)[0][0].tolist() == [1, 2, 3, 4]
    assert read_series(write(tmp_path / "m4.csv", M4))[0].ids == ("A1", "A2", "A3")
    long = write(tmp_path / "l.csv", "series_id,timestamp,value\nx,1,5\n")
    assert read_series(long)[0].ids == ("x",)
    no_header = write(tmp_path / "raw.csv", "1\n2\n")
    assert read_series(no_header)[0].ids == ("raw",)


# --- storage and windows ---------------------------------------------------------------------
def test_series_set_views_and_split():
    data = SeriesSet.from_arrays(["a", "b"], [[1, 2, 3, 4, 5], [6, 7, 8]])
    assert data[1].data_ptr() == data.values[5:].data_ptr()  # a view, not a copy
    history, actuals = data.split_last(2)
    assert history[0].tolist() == [1, 2, 3] and history[1].tolist() == [6]
    assert actuals.tolist() == [[4, 5], [7, 8]]


def test_windows_positions_and_normalisation():
    data = SeriesSet.from_arrays(["a", "b", "c", "d"],
                                 [range(1, 9), range(10, 13), range(20, 25), [1, 2]])
    windows = Windows(data, WindowSpec(input_length=2, horizon=1, stride=2, season=3))
    # a (8 values, span 3): windows ending at 8, 6, 4; b (3 values): one; c (5): ending at 5,
    # 3; d (2 values) is too short for any
    assert len(windows) == 6 and windows.counts.tolist() == [3, 1, 2, 0]
    batch = windows.batch([0, 1, 2, 3, 4, 5])
    raw = batch.inputs * batch.scale + batch.shift
    assert raw.round().tolist() == [[6, 7], [4, 5], [2, 3], [10, 11], [22, 23], [20, 21]]
    assert (batch.targets * batch.scale).round().tolist() == [[8], [6], [4], [12], [24], [22]]
    assert batch.scale.squeeze(1).tolist() == [6.5, 4.5, 2.5, 10.5, 22.5, 20.5]
    assert batch.series.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.phase.tolist() == [5 % 3, 3 % 3, 1 % 3, 0, 2, 0]
    last = Windows(data, WindowSpec(input_length=2, horizon=0), last_only=True)
    batch = last.batch(torch.arange(len(last)))
    assert (batch.inputs * batch.scale).round().tolist() == [[7, 8], [11, 12], [23, 24], [1, 2]]
    assert batch.targets.shape == (4, 0)


@pytest.mark.parametrize("normalise", ["mean", "last", "zscore", "none"])
def test_no_look_ahead(normalise):
    """Changing any value after a window's inputs changes none of its inputs or scaling."""
    rng = np.random.default_rng(0)
    base = [rng.uniform(1, 10, 11), rng.uniform(1, 10, 7)]
    spec = WindowSpec(input_length=3, horizon=2, normalise=normalise)
    windows = Windows(SeriesSet.from_arrays(["a", "b"], base), spec)
    reference = windows.batch(torch.arange(len(windows)))
    for w in range(len(windows)):
        series, start = (int(t) for t in windows.locate(torch.tensor([w])))
        for later in range(start + spec.input_length, len(base[series])):
            changed = [b.copy() for b in base]
            changed[series][later] += 100.0
            batch = Windows(SeriesSet.from_arrays(["a", "b"], changed), spec).batch([w])
            for name in ("inputs", "shift", "scale"):
                assert torch.equal(getattr(batch, name)[0], getattr(reference, name)[w])


def test_windows_memory_is_per_series():
    data = SeriesSet.from_arrays(["a"], [np.arange(10_000, dtype=np.float32)])
    windows = Windows(data, WindowSpec(input_length=24, horizon=8))
    assert len(windows) == 10_000 - 32 + 1
    assert windows.series.values.data_ptr() == data.values.data_ptr()
    assert windows.first.numel() == 2 and windows.counts.numel() == 1


def test_shuffled_batches_cover_every_window_once():
    data = SeriesSet.from_arrays(["a", "b"], [range(10), range(7)])
    windows = Windows(data, WindowSpec(input_length=2, horizon=1))
    seen = [tuple((b.series * 100 + (b.inputs[:, 0] * b.scale[:, 0]).round().long()).tolist())
            for b in windows.batches(4, torch.Generator().manual_seed(0))]
    flat = [v for chunk in seen for v in chunk]
    assert sorted(flat) == sorted([i for i in range(8)] + [100 + i for i in range(5)])


# --- baselines -------------------------------------------------------------------------------
def test_naive_and_seasonal_naive():
    x = np.array([1.0, 2, 3, 4, 5])
    assert naive(x, 3).tolist() == [5, 5, 5]
    assert seasonal_naive(x, 5, 2).tolist() == [4, 5, 4, 5, 4]
    assert seasonal_naive(x, 2, 7).tolist() == [5, 5]  # shorter than a season


def test_autocorrelation_by_hand():
    # mean 2.5, deviations -1.5 -0.5 0.5 1.5, sum of squares 5; lag 1: 0.75 - 0.25 + 0.75
    assert autocorrelation(np.array([1.0, 2, 3, 4]), 1) == pytest.approx(1.25 / 5)


def test_seasonality_test_threshold():
    # alternating 1, 3: r_1 = -(n-1)/n, r_2 = (n-2)/n
    # n = 20: limit 1.645/sqrt(20) * sqrt(1 + 2 * 0.95^2) = 0.616 < 0.9 -> seasonal
    assert is_seasonal(np.tile([1.0, 3.0], 10), 2)
    # n = 6: limit 1.645/sqrt(6) * sqrt(1 + 2 * (5/6)^2) = 1.038 > 2/3 -> not seasonal
    assert not is_seasonal(np.tile([1.0, 3.0], 3), 2)
    assert not is_seasonal(np.tile([1.0, 3.0], 2), 2)  # n < 3m


def test_seasonal_indices_even_and_odd_period():
    # m = 2: trend (x[t-1] + 2 x[t] + x[t+1]) / 4 at t = 1..4 is 3, 3, 3.5, 5; ratios 4/3,
    # 2/3, 8/7, 4/5; position 0: mean(2/3, 4/5) = 11/15, position 1: mean(4/3, 8/7) = 26/21
    expected = np.array([11 / 15, 26 / 21])
    got = seasonal_indices(np.array([2.0, 4, 2, 4, 4, 8]), 2)
    np.testing.assert_allclose(got, expected / expected.mean(), rtol=1e-12)
    # m = 3: trend = mean of 3 around t = 1..4 -> 2, 2, 3, 3; ratios at t=1..4: 1.5, 0.5, 2/3, 2
    x = np.array([2.0, 3, 1, 2, 6, 1])
    expected = np.array([2 / 3, (1.5 + 2) / 2, 0.5])
    np.testing.assert_allclose(seasonal_indices(x, 3), expected / expected.mean(), rtol=1e-12)


def test_naive2():
    x = np.tile([1.0, 3.0], 10)  # seasonal (above): indices 0.5, 1.5; level 3 / 1.5 = 2
    np.testing.assert_allclose(naive2(x, 3, 2), [1, 3, 1], rtol=1e-12)
    y = np.tile([1.0, 3.0], 3)  # not seasonal: plain naive
    assert naive2(y, 2, 2).tolist() == [3, 3]
    z = np.tile([1.0, 3.0], 10) * np.repeat([1.0, 2.0], 10)  # the level doubles halfway
    indices = seasonal_indices(z, 2)
    np.testing.assert_allclose(naive2(z, 2, 2), z[-1] / indices[1] * indices, rtol=1e-12)


# --- metrics ---------------------------------------------------------------------------------
def test_metrics_by_hand():
    history = SeriesSet.from_arrays(["a", "b"], [[1, 2, 4, 7], [5, 5, 6, 5]])
    actuals = np.array([[100.0, 200.0], [0.0, 4.0]])
    forecasts = np.array([[110.0, 180.0], [0.0, 2.0]])
    e = series_errors(history, actuals, forecasts, 2)
    # a: 200 * mean(10/210, 20/380); b: 0/0 counts 0, then 200 * 2/6 / 2
    np.testing.assert_allclose(e["smape"], [float(Fraction(4000, 399)), 100 / 3])
    # scales: a |4-1|, |7-2| -> 4; b |6-5|, |5-5| -> 0.5
    np.testing.assert_allclose(e["mase"], [15 / 4, 1 / 0.5])
    np.testing.assert_allclose(e["rmse"], [math.sqrt(250), math.sqrt(2)])
    np.testing.assert_allclose(e["mae"], [15, 1])
    s = summarise(e)
    assert s["mase"] == pytest.approx((3.75 + 2) / 2)
    assert s["rmse"] == pytest.approx(math.sqrt((500 + 4) / 4))
    assert s["n_series"] == 2
    assert mase_scale(np.array([3.0, 1.0]), 24) == 2.0  # shorter than a season: lag 1


def test_evaluate_owa_against_naive2():
    history = SeriesSet.from_arrays(["a", "b"], [[1, 2, 4, 8], [2, 2, 3, 4]])
    actuals = np.array([[10.0, 12.0], [5.0, 5.0]])
    forecasts = np.array([[10.0, 11.0], [4.0, 6.0]])
    result = evaluate_forecasts(history, actuals, forecasts, 1, per_series=True)
    # naive2 = naive (m = 1): a 8, 8 -> sMAPE 200 * (2/18 + 4/20) / 2; b 4, 4 -> 200 * (1/9)
    n2_smape = (100 * (2 / 18 + 4 / 20) + 200 / 9) / 2
    # MASE scales (m = 1): a mean(1, 2, 4) = 7/3; b mean(0, 1, 1) = 2/3
    n2_mase = (3 / (7 / 3) + 1 / (2 / 3)) / 2
    model_smape = (100 * (0 + 1 / 23) + 100 * (1 / 9 + 1 / 11)) / 2
    model_mase = (0.5 / (7 / 3) + 1 / (2 / 3)) / 2
    naive2_figures = result["baselines"]["naive2"]
    assert naive2_figures["smape"] == pytest.approx(n2_smape)
    assert naive2_figures["mase"] == pytest.approx(n2_mase) and naive2_figures["owa"] == 1.0
    assert result["smape"] == pytest.approx(model_smape)
    assert result["owa"] == pytest.approx(0.5 * (model_smape / n2_smape + model_mase / n2_mase))
    assert result["per_series"]["b"]["model"]["mae"] == 1.0
    assert set(result["per_series"]["a"]) == {"model", "naive", "seasonal_naive", "naive2"}


# --- any bytes: a result or NlpseqError, never a traceback -----------------------------------
PIECES = [b",", b"\t", b'"', b"\n", b"\r\n", b"\r", b" ", b"\xef\xbb\xbf", b"\xff", b"\x00",
          b"V1", b"series_id,timestamp,value\n", b"a", b"b", b"1", b"2.5", b"-3", b"0", b"9",
          b"nan", b"NA", b"1e999", b"1e38", b"1e308", b"-1e308", b"e", b"2024-01-01",
          b"2024-01-01T01:00", b"+01:00"]
FILE_BYTES = st.one_of(st.binary(max_size=200),
                       st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join))


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=FILE_BYTES)
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz"])
def test_any_bytes_read_as_series_or_a_one_line_error(tmp_path, suffix, data):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    for layout in ("auto", "m4", "long", "column"):
        try:
            series, _ = read_series(path, layout=layout, min_length=2)
        except NlpseqError as err:
            assert "\n" not in str(err)
            continue
        assert len(series) and bool(torch.isfinite(series.values).all())
