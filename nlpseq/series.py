"""Time series: readers, sliding windows, benchmark forecasts and the M4 competition's metrics.

Series are stored once, end to end in one float32 tensor with offsets (:class:`SeriesSet`);
training windows are cut per batch by index (:class:`Windows`), so memory grows with the
series, not with the number of windows. Baselines and metrics follow the M4 competition's
definitions (Makridakis et al., 2020) and work on float64 numpy copies of single series.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from nlpseq.corpora import read_lines
from nlpseq.errors import NlpseqError

LAYOUTS = ("auto", "m4", "long", "column")
Normalisation = Literal["mean", "last", "zscore", "none"]
NORMALISATIONS: tuple[str, ...] = get_args(Normalisation)
#: cells read as a missing value (pandas writes NaN as an empty cell, R writes NA)
MISSING = frozenset({"", "na", "nan", "null", "none"})
FLOAT32_MAX = float(np.finfo(np.float32).max)


# --- storage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSet:
    """Series ``i`` is ``values[offsets[i]:offsets[i + 1]]``; ``values`` is float32."""

    ids: tuple[str, ...]
    values: Tensor  # (total,) float32
    offsets: Tensor  # (n + 1,) int64

    @classmethod
    def from_arrays(cls, ids: Sequence[str], arrays: Sequence[Sequence[float]]) -> SeriesSet:
        """Pack series given as arrays or lists of numbers."""
        if len(ids) != len(arrays):
            raise ValueError(f"{len(ids)} ids for {len(arrays)} series")
        parts = [torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1)) for a in arrays]
        lengths = torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64)
        values = torch.cat(parts) if parts else torch.zeros(0)
        return cls(tuple(ids), values, lengths.cumsum(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tensor:
        """Series ``i`` as a view into :attr:`values`."""
        return self.values[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> Tensor:
        """``(n,)`` int64."""
        return self.offsets[1:] - self.offsets[:-1]

    def numpy(self, i: int) -> np.ndarray:
        """Series ``i`` as float64 (what the baselines and metrics compute in)."""
        return self[i].double().numpy()

    def select(self, indices: Sequence[int]) -> SeriesSet:
        return SeriesSet.from_arrays([self.ids[i] for i in indices], [self[i] for i in indices])

    def split_last(self, horizon: int) -> tuple[SeriesSet, Tensor]:
        """``(history, actuals)``: every series without its last ``horizon`` values, and those
        values ``(n, horizon)`` -- the M4 validation split."""
        short = [self.ids[i] for i in range(len(self)) if self.lengths[i] <= horizon]
        if short:
            raise ValueError(f"series {short[0]!r} has no history before its last {horizon} values")
        ends = self.offsets[1:]
        actuals = self.values[(ends - horizon).unsqueeze(1) + torch.arange(horizon)]
        history = SeriesSet.from_arrays(self.ids, [s[:-horizon] for s in self])
        return history, actuals


@dataclass
class SeriesReport:
    """What reading a file found beside the series it returns."""

    source: str
    series: int = 0  # series kept
    values: int = 0  # values in the kept series, filled gaps included
    missing: int = 0  # missing values inside a series, filled by linear interpolation
    trimmed: int = 0  # missing values at either end of a series, dropped
    min_length: int = 1
    short: list[str] = field(default_factory=list)  # ids skipped: fewer than min_length values

    def __str__(self) -> str:
        text = f"{self.source}: {self.series} series, {self.values} values"
        if self.missing:
            text += f", {self.missing} missing values filled by linear interpolation"
        if self.trimmed:
            text += f", {self.trimmed} missing values at series ends dropped"
        if self.short:
            names = ", ".join(self.short[:5]) + (" ..." if len(self.short) > 5 else "")
            text += (f", {len(self.short)} series shorter than {self.min_length} values "
                     f"skipped ({names})")
        return text


# --- readers ---------------------------------------------------------------------------------
def _number(cell: str, path: Path, line: int, column: int | str) -> float:
    """A cell as a float; NaN for a missing value; anything else non-numeric is an error."""
    text = cell.strip()
    if text.lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise NlpseqError(f"column {column}: {text[:40]!r} is not a number", path, line) from None
    if not abs(value) <= FLOAT32_MAX:  # stored as float32
        raise NlpseqError(f"column {column}: {text[:40]!r} is not a finite float32 number",
                          path, line)
    return value


def _fill(values: list[float], report: SeriesReport) -> np.ndarray:
    """Drop missing values at both ends, interpolate the ones inside (counted in ``report``)."""
    array = np.asarray(values, dtype=np.float64)
    present = np.flatnonzero(~np.isnan(array))
    if len(present) == 0:
        report.trimmed += len(array)
        return array[:0]
    report.trimmed += len(array) - (present[-1] - present[0] + 1)
    array = array[present[0] : present[-1] + 1]
    gaps = np.isnan(array)
    if gaps.any():
        report.missing += int(gaps.sum())
        known = np.flatnonzero(~gaps)
        array[gaps] = np.interp(np.flatnonzero(gaps), known, array[known])
    return array


def _finish(rows: list[tuple[str, list[float]]], report: SeriesReport, path: Path) -> SeriesSet:
    ids, arrays = [], []
    for name, values in rows:
        array = _fill(values, report)
        if len(array) < report.min_length:
            report.short.append(name)
            continue
        ids.append(name)
        arrays.append(array)
    if not ids:
        raise NlpseqError(f"no series has at least {report.min_length} values "
                          f"({len(rows)} series read)", path)
    report.series, report.values = len(ids), sum(len(a) for a in arrays)
    return SeriesSet.from_arrays(ids, arrays)


def _delimiter(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return "\t" if suffixes and suffixes[-1] == ".tsv" else ","


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` of a CSV/TSV file (``.gz`` read transparently), blank lines skipped."""
    delimiter, empty = _delimiter(path), True
    for number, line in read_lines(path):
        if line.strip():
            empty = False
            yield number, _cells(line, delimiter, path, number)
    if empty:
        raise NlpseqError("data file is empty", path)


def _cells(line: str, delimiter: str, path: str | Path, number: int) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as err:
        raise NlpseqError(f"not a CSV line ({err})", path, number) from None


def read_m4(path: str | Path, *, min_length: int = 1) -> tuple[SeriesSet, SeriesReport]:
    """M4 layout: a header row, then one series a row (id, then values right-padded with empty
    cells). An empty cell before the last value is a missing value."""
    path = Path(path)
    report = SeriesReport(str(path), min_length=min_length)
    rows = []
    for number, cells in _rows(path):
        if number == 1 and len(cells) > 1 and not _is_number(cells[1].strip() or "0"):
            continue  # a header row ("V1","V2",... in the competition's files)
        rows.append(m4_row(cells, path, number))
    if not rows:
        raise NlpseqError("data file has no series", path)
    return _finish(rows, report, path), report


def m4_row(cells: list[str], path: str | Path, line: int) -> tuple[str, list[float]]:
    """``(id, values)`` of one M4-layout row; NaN marks a missing value, trailing empty cells
    are padding."""
    name = cells[0].strip() or f"line {line}"
    values = [_number(c, path, line, col) for col, c in enumerate(cells[1:], 2)]
    while values and math.isnan(values[-1]) and not cells[len(values)].strip():
        values.pop()
    return name, values


def parse_m4_line(text: str, path: str | Path, line: int) -> tuple[str, np.ndarray] | None:
    """One CSV line of the M4 layout -> ``(id, values)`` with missing values interpolated;
    None for a header line or a row without values."""
    cells = _cells(text, ",", path, line)
    if len(cells) < 2 or not _is_number(cells[1].strip() or "0"):
        return None
    name, values = m4_row(cells, path, line)
    values = _fill(values, SeriesReport(str(path)))
    return (name, values) if len(values) else None


def read_column(path: str | Path, *, min_length: int = 1) -> tuple[SeriesSet, SeriesReport]:
    """A single series, one value a line (an optional header line names it; otherwise the
    file's stem does). Blank lines are skipped; ``NA`` or ``NaN`` is a missing value."""
    path = Path(path)
    report = SeriesReport(str(path), min_length=min_length)
    name, values = Path(path.name.removesuffix(".gz")).stem, []
    for number, cells in _rows(path):
        cell = cells[0].strip() if len(cells) == 1 else ",".join(cells)
        if number == 1 and cell.lower() not in MISSING and not _is_number(cell):
            name = cell
            continue
        values.append(_number(cell, path, number, 1))
    if not values:
        raise NlpseqError("data file has no values", path)
    return _finish([(name, values)], report, path), report


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _time_keys(stamps: list[str], lines: list[int], path: Path) -> list[float] | list[datetime]:
    """Timestamps as numbers when every one is, otherwise as ISO dates/times."""
    if all(_is_number(s) for s in stamps):
        keys = [float(s) for s in stamps]
        for key, stamp, line in zip(keys, stamps, lines):
            if not math.isfinite(key):
                raise NlpseqError(f"timestamp {stamp[:40]!r} is not a finite number", path, line)
        return keys
    keys = []
    for stamp, line in zip(stamps, lines):
        try:
            keys.append(datetime.fromisoformat(stamp.strip()))
        except ValueError:
            raise NlpseqError(f"timestamp {stamp[:40]!r} is neither a number nor an ISO date",
                              path, line) from None
    if len({k.tzinfo is None for k in keys}) > 1:
        raise NlpseqError("timestamps mix times with and without a time zone", path, lines[0])
    return keys


def _in_time_order(name: str, rows: list[tuple[str, int, float]], path: Path) -> list[float]:
    """One series' values sorted by timestamp; a gap of k regular steps becomes k - 1 missing
    values when every step is a whole multiple of the smallest one (hourly, daily, numeric
    steps; calendar months are irregular and are taken as consecutive)."""
    lines = [line for _, line, _ in rows]
    keys = _time_keys([stamp for stamp, _, _ in rows], lines, path)
    order = sorted(range(len(rows)), key=keys.__getitem__)
    steps = [keys[b] - keys[a] for a, b in zip(order, order[1:])]
    for step, a, b in zip(steps, order, order[1:]):
        if not step:
            raise NlpseqError(f"series {name!r}: timestamp {rows[b][0]!r} repeats line "
                              f"{lines[a]}", path, lines[b])
    common = min(steps) if steps else None
    regular = common is not None and all(s % common == type(common)(0) for s in steps)
    gaps = [round(step / common) - 1 for step in steps] if regular else [0] * len(steps)
    if sum(gaps) > len(rows):
        raise NlpseqError(f"series {name!r}: its timestamps leave {sum(gaps):.3g} of the "
                          f"regular steps between them empty, more than it has values", path,
                          lines[order[0]])
    values = [rows[order[0]][2]]
    for gap, b in zip(gaps, order[1:]):
        values.extend([math.nan] * gap)
        values.append(rows[b][2])
    return values


def read_long(
    path: str | Path, *, id_column: str = "series_id", time_column: str = "timestamp",
    value_column: str = "value", min_length: int = 1,
) -> tuple[SeriesSet, SeriesReport]:
    """Long layout (CSV, or TSV by its suffix): a header naming the three columns, then one
    observation a row, in any order. An empty value cell is a missing value."""
    path = Path(path)
    report = SeriesReport(str(path), min_length=min_length)
    rows = _rows(path)
    header = next(rows)
    names = [c.strip() for c in header[1]]
    wanted = [id_column, time_column, value_column]
    lost = [w for w in wanted if w not in names]
    if lost:
        raise NlpseqError(f"no column {lost[0]!r} (columns: {', '.join(names)})", path, header[0])
    at = [names.index(w) for w in wanted]
    by_series: dict[str, list[tuple[str, int, float]]] = {}
    for number, cells in rows:
        if len(cells) <= max(at):
            raise NlpseqError(f"{len(cells)} columns, expected {len(names)}", path, number)
        name, stamp = cells[at[0]].strip(), cells[at[1]]
        by_series.setdefault(name, []).append(
            (stamp, number, _number(cells[at[2]], path, number, value_column)))
    if not by_series:
        raise NlpseqError("data file has no observations", path)
    series = [(name, _in_time_order(name, obs, path)) for name, obs in by_series.items()]
    return _finish(series, report, path), report


def read_series(
    path: str | Path, *, layout: str = "auto", id_column: str = "series_id",
    time_column: str = "timestamp", value_column: str = "value", min_length: int = 1,
) -> tuple[SeriesSet, SeriesReport]:
    """Read series in ``layout`` (``auto``: long when the header names the time and value
    columns, a single series when lines hold one cell, else M4) -> ``(series, report)``;
    series shorter than ``min_length`` are skipped and named in the report."""
    if layout not in LAYOUTS:
        raise NlpseqError(f"unknown series layout {layout!r}; expected one of {LAYOUTS}")
    path = Path(path)
    if layout == "auto":
        layout = _detect_layout(path, time_column, value_column)
    if layout == "long":
        return read_long(path, id_column=id_column, time_column=time_column,
                         value_column=value_column, min_length=min_length)
    reader = read_m4 if layout == "m4" else read_column
    return reader(path, min_length=min_length)


def _detect_layout(path: Path, time_column: str, value_column: str) -> str:
    first = next(_rows(path))
    names = {c.strip() for c in first[1]}
    if {time_column, value_column} <= names:
        return "long"
    return "column" if len(first[1]) == 1 else "m4"


# --- windows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut: ``input_length`` values in, the next ``horizon`` values out."""

    input_length: int
    horizon: int
    stride: int = 1  # distance between the ends of consecutive windows of a series
    season: int = 1  # seasonal period m (24 for hourly data); 1: none
    normalise: Normalisation = "mean"  # per-window scaling from the input values only

    def __post_init__(self) -> None:
        if self.input_length < 1 or self.horizon < 0 or self.stride < 1 or self.season < 1:
            raise ValueError(f"bad window sizes: {self}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalise!r}; "
                             f"expected one of {NORMALISATIONS}")


@dataclass
class WindowBatch:
    """Windows on the normalised scale ``(x - shift) / scale``; shift and scale come from
    each window's input values alone."""

    inputs: Tensor  # (B, L) normalised
    targets: Tensor  # (B, H) normalised; (B, 0) where the future is unknown
    shift: Tensor  # (B, 1)
    scale: Tensor  # (B, 1)
    series: Tensor  # (B,) int64 index of the series in its SeriesSet
    phase: Tensor  # (B,) int64 seasonal position (index in the series mod m) of inputs[:, 0]

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device: torch.device | str) -> WindowBatch:
        return WindowBatch(*(t.to(device) for t in (self.inputs, self.targets, self.shift,
                                                     self.scale, self.series, self.phase)))

    @property
    def num_tokens(self) -> int:
        """Windows in the batch (what the trainer's speed counts)."""
        return len(self.inputs)

    def denormalise(self, values: Tensor) -> Tensor:
        """``(B, H[, Q])`` normalised forecasts -> the series' own scale."""
        extra = (1,) * (values.dim() - 2)
        shift, scale = (t.view(-1, 1, *extra) for t in (self.shift, self.scale))
        return values * scale + shift


def normalisation(inputs: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` ``(B, 1)`` from input windows ``(B, L)``; a zero scale becomes 1."""
    zero = torch.zeros_like(inputs[:, :1])
    if kind == "mean":
        shift, scale = zero, inputs.abs().mean(dim=1, keepdim=True)
    elif kind == "last":
        shift, scale = zero, inputs[:, -1:].abs()
    elif kind == "zscore":
        shift, scale = inputs.mean(dim=1, keepdim=True), inputs.std(dim=1, keepdim=True)
        scale = torch.nan_to_num(scale)  # one input value: std is NaN
    elif kind == "none":
        shift, scale = zero, torch.ones_like(zero)
    else:
        raise ValueError(f"unknown normalisation {kind!r}")
    return shift, torch.where(scale > 0, scale, torch.ones_like(scale))


class Windows:
    """Every window of every series (a global model's training set), addressed by a flat
    index and cut per batch. The last window of a series ends at its last value; earlier ones
    end ``stride`` values apart. Series shorter than ``input_length + horizon`` give none.
    ``last_only``: one window per series, its last (the validation split on full series;
    with ``horizon`` 0, the inputs to forecast from)."""

    def __init__(self, series: SeriesSet, spec: WindowSpec, *, last_only: bool = False):
        self.series, self.spec = series, spec
        span = spec.input_length + spec.horizon
        room = series.lengths - span
        counts = torch.where(room >= 0, room // spec.stride + 1, torch.zeros_like(room))
        self.counts = counts.clamp(max=1) if last_only else counts  # (n,) windows per series
        self.first = torch.cat([torch.zeros(1, dtype=torch.int64), self.counts.cumsum(0)])

    def __len__(self) -> int:
        return int(self.first[-1])

    def locate(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Flat window indices ``(B,)`` -> ``(series, start)``: series index and the position
        of the window's first input value within its series."""
        series = torch.searchsorted(self.first, index, right=True) - 1
        back = index - self.first[series]  # 0: the series' last window
        span = self.spec.input_length + self.spec.horizon
        start = self.series.lengths[series] - span - back * self.spec.stride
        return series, start

    def batch(self, index: Tensor | Sequence[int]) -> WindowBatch:
        """The windows at flat indices ``index``, gathered from the stored series."""
        index = torch.as_tensor(index, dtype=torch.int64)
        series, start = self.locate(index)
        spec = self.spec
        span = torch.arange(spec.input_length + spec.horizon)
        cut = self.series.values[(self.series.offsets[series] + start).unsqueeze(1) + span]
        inputs, targets = cut[:, : spec.input_length], cut[:, spec.input_length :]
        shift, scale = normalisation(inputs, spec.normalise)
        return WindowBatch((inputs - shift) / scale, (targets - shift) / scale, shift, scale,
                           series, start % spec.season)

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[WindowBatch]:
        """All windows in batches, shuffled when ``generator`` is given."""
        order = (torch.randperm(len(self), generator=generator) if generator is not None
                 else torch.arange(len(self)))
        for begin in range(0, len(self), batch_size):
            yield self.batch(order[begin : begin + batch_size])


# --- benchmark forecasts (one series, float64) ------------------------------------------------
def naive(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last value, repeated."""
    return np.full(horizon, history[-1], dtype=np.float64)


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The value one season before each step (the last ``season`` values, repeated); plain
    naive when the history is shorter than a season."""
    if season <= 1 or len(history) < season:
        return naive(history, horizon)
    return np.resize(history[-season:], horizon).astype(np.float64)


def autocorrelation(x: np.ndarray, lag: int) -> float:
    """Sample autocorrelation at ``lag`` (R's ``acf``: deviations from the full-series mean,
    over the full-series sum of squares)."""
    deviation = x - x.mean()
    denominator = float(deviation @ deviation)
    if lag >= len(x) or denominator == 0.0:
        return 0.0
    return float(deviation[lag:] @ deviation[:-lag]) / denominator


def is_seasonal(history: np.ndarray, season: int) -> bool:
    """The M4 90% autocorrelation test at lag m: seasonal when ``n >= 3m`` and
    ``|r_m| > 1.645 / sqrt(n) * sqrt(1 + 2 sum_{k<m} r_k^2)``."""
    n = len(history)
    if season <= 1 or n < 3 * season:
        return False
    r = [autocorrelation(history, k) for k in range(1, season + 1)]
    limit = 1.645 / math.sqrt(n) * math.sqrt(1 + 2 * sum(v * v for v in r[:-1]))
    return abs(r[-1]) > limit


def seasonal_indices(history: np.ndarray, season: int) -> np.ndarray:
    """Classical multiplicative decomposition (R's ``decompose``): ``(season,)`` indices, mean 1,
    index ``j`` for the positions ``t`` with ``t mod season == j`` counted from the series start.
    The trend is the centred moving average (2 x m for even m); each index is the mean ratio of
    value to trend at its position."""
    n, m = len(history), season
    if m % 2:
        weights = np.full(m, 1.0 / m)
    else:
        weights = np.r_[0.5, np.ones(m - 1), 0.5] / m
    half = len(weights) // 2
    trend = np.full(n, np.nan)
    trend[half : n - half] = np.convolve(history, weights, mode="valid")
    ratio = history / trend
    figure = np.array([np.nanmean(ratio[j::m]) for j in range(m)])
    return figure / figure.mean()


def naive2(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Naive on the seasonally adjusted series, re-seasonalised, where :func:`is_seasonal`
    finds seasonality; plain naive otherwise."""
    if not is_seasonal(history, season):
        return naive(history, horizon)
    indices = seasonal_indices(history, season)
    n = len(history)
    level = history[-1] / indices[(n - 1) % season]
    return level * indices[(n + np.arange(horizon)) % season]


BASELINES = ("naive", "seasonal_naive", "naive2")


def baseline_forecasts(history: SeriesSet, horizon: int, season: int) -> dict[str, np.ndarray]:
    """Each of :data:`BASELINES` for every series -> ``{name: (n, horizon) float64}``."""
    out = {name: np.empty((len(history), horizon)) for name in BASELINES}
    for i in range(len(history)):
        x = history.numpy(i)
        out["naive"][i] = naive(x, horizon)
        out["seasonal_naive"][i] = seasonal_naive(x, horizon, season)
        out["naive2"][i] = naive2(x, horizon, season)
    return out


# --- metrics ---------------------------------------------------------------------------------
def mase_scale(history: np.ndarray, season: int) -> float:
    """In-sample mean absolute seasonal difference ``mean |x_t - x_{t-m}|`` (lag 1 when the
    history is not longer than a season); NaN when the history has one value."""
    lag = season if len(history) > season else 1
    if len(history) <= lag:
        return math.nan
    return float(np.abs(history[lag:] - history[:-lag]).mean())


def series_errors(history: SeriesSet, actuals: np.ndarray | Tensor, forecasts: np.ndarray | Tensor,
                  season: int) -> dict[str, np.ndarray]:
    """Per-series ``smape`` (percent), ``mase``, ``rmse``, ``mae``, each ``(n,)``; MASE is NaN
    (and left out of means) where the in-sample seasonal differences are all zero."""
    y = np.asarray(actuals, dtype=np.float64)
    f = np.asarray(forecasts, dtype=np.float64)
    if y.shape != f.shape or y.ndim != 2 or len(y) != len(history):
        raise ValueError(f"actuals {y.shape} and forecasts {f.shape} for {len(history)} series")
    error = np.abs(y - f)
    total = np.abs(y) + np.abs(f)
    ratio = np.divide(error, total, out=np.zeros_like(error), where=total > 0)  # 0/0 := 0
    scale = np.array([mase_scale(history.numpy(i), season) for i in range(len(history))])
    with np.errstate(divide="ignore", invalid="ignore"):
        mase = error.mean(axis=1) / scale
    return {
        "smape": 200.0 * ratio.mean(axis=1),
        "mase": np.where(np.isfinite(mase), mase, np.nan),
        "rmse": np.sqrt((error**2).mean(axis=1)),
        "mae": error.mean(axis=1),
    }


def summarise(errors: dict[str, np.ndarray]) -> dict[str, float]:
    """Subset-level figures from per-series ones: means over series (every series has the
    same horizon, so MAE is also the mean over all points; RMSE is over all points)."""
    mase = errors["mase"]
    return {
        "smape": float(errors["smape"].mean()),
        "mase": float(np.nanmean(mase)) if np.isfinite(mase).any() else math.nan,
        "rmse": float(np.sqrt((errors["rmse"] ** 2).mean())),
        "mae": float(errors["mae"].mean()),
        "n_series": len(errors["smape"]),
    }


def owa(figures: dict[str, float], naive2_figures: dict[str, float]) -> float:
    """Overall weighted average: ``(sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2``."""
    return 0.5 * (figures["smape"] / naive2_figures["smape"]
                  + figures["mase"] / naive2_figures["mase"])


def evaluate_forecasts(
    history: SeriesSet, actuals: np.ndarray | Tensor, forecasts: np.ndarray | Tensor | None,
    season: int, *, per_series: bool = False,
) -> dict:
    """The model's figures (when ``forecasts`` is given) and each baseline's, on the same
    series, with OWA against Naive2: ``{smape, mase, rmse, mae, owa, n_series, baselines:
    {naive: {...}, seasonal_naive: {...}, naive2: {...}}[, per_series: {id: {...}}]}``."""
    horizon = np.asarray(actuals).shape[1]
    errors = {name: series_errors(history, actuals, f, season)
              for name, f in baseline_forecasts(history, horizon, season).items()}
    reference = summarise(errors["naive2"])
    baselines = {}
    for name, e in errors.items():
        baselines[name] = summarise(e) | {"owa": owa(summarise(e), reference)}
    result: dict = {}
    if forecasts is not None:
        model = series_errors(history, actuals, forecasts, season)
        result = summarise(model) | {"owa": owa(summarise(model), reference)}
        errors = {"model": model} | errors
    result["baselines"] = baselines
    if per_series:
        result["per_series"] = {
            sid: {name: {k: float(v[i]) for k, v in e.items()} for name, e in errors.items()}
            for i, sid in enumerate(history.ids)
        }
    return result
