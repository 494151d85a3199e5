"""Time-series forecasting: series -> a global LSTM/GRU forecaster, scored as the M4 competition.

Training cuts windows (``model.input_length`` values in, ``model.horizon`` out) from every
training series, cut per batch from the stored series. Validation forecasts the last
``model.horizon`` values of each training series from the values before them (what M4
participants tuned on) or, with ``data.dev``, the values that file holds after each training
series. Figures: sMAPE, MASE (period ``model.season``), OWA against Naive2, RMSE and MAE, with
the naive, seasonal naive and Naive2 benchmarks scored by the same code on the same series.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from nlpseq.checkpoint import read_json, write_json
from nlpseq.errors import NlpseqError
from nlpseq.models.forecaster import Forecaster, ForecasterConfig
from nlpseq.runtime import log_stderr
from nlpseq.series import (
    SeriesReport,
    SeriesSet,
    WindowBatch,
    Windows,
    evaluate_forecasts,
    parse_m4_line,
    read_series,
)
from nlpseq.tasks.base import Log, Task, shard

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SERIES = "series.json"


class WindowBatches(Sequence[WindowBatch]):
    """An epoch's batches, each cut from the stored series when asked for, so memory stays
    with the series, not with the windows; ``lookup`` maps series to embedding rows."""

    def __init__(self, windows: Windows, chunks: list[Tensor], lookup: Tensor):
        self.windows, self.chunks, self.lookup = windows, chunks, lookup

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> WindowBatch:  # type: ignore[override]
        batch = self.windows.batch(self.chunks[i])
        batch.series = self.lookup[batch.series]
        return batch


class ForecastTask(Task):
    """Numeric series; forecasts the next ``model.horizon`` values of each."""

    name = "forecast"
    ModelConfig = ForecasterConfig
    formats = ("auto", "m4", "long", "column")
    metrics = {"owa": False, "smape": False, "mase": False, "rmse": False, "mae": False,
               "loss": False}
    default_metric = "owa"
    commands = frozenset({"predict", "forecast"})
    predict_options = ("horizon", "quantiles")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.ids: list[str] = []  # training series, in the order of the embedding rows
        self.windows: Windows | None = None
        self.dev: tuple[SeriesSet, Tensor] | None = None  # history, actuals (n, horizon)

    # --- data ----------------------------------------------------------------------------
    def read(self, path: str | Path, min_length: int = 1) -> tuple[SeriesSet, SeriesReport]:
        """Series from a file in ``data.format`` (its column names for the long layout)."""
        d = self.config.data
        return read_series(path, layout=d.format, id_column=d.id_column,
                           time_column=d.time_column, value_column=d.value_column,
                           min_length=min_length)

    def prepare(self, log: Log, artifacts: Path | None = None) -> None:
        m, data = self.config.model, self.config.data
        held = 0 if data.dev else m.horizon  # values per series kept back for validation
        series, report = self.read(data.train, m.input_length + m.horizon + held)
        log(f"train: {report}")
        if artifacts is not None:
            self.load_artifacts(artifacts)
        else:
            self.ids = list(series.ids)
        if data.dev:
            actuals, dev_report = self.read(data.dev)
            log(f"dev: {dev_report}")
            history = series
            self.dev = (history, self._match(history, actuals, m.horizon, data.dev))
            where = f"the first {m.horizon} values of each series in {data.dev}"
        else:
            history, actuals = series.split_last(m.horizon)
            self.dev = (history, actuals)
            where = f"the last {m.horizon} values of each training series"
        self.windows = Windows(history, m.window_spec())
        log(f"train: {len(self.windows):,} windows of {m.input_length} + {m.horizon} values "
            f"from {len(history)} series; dev: {where}")

    @staticmethod
    def _match(history: SeriesSet, actuals: SeriesSet, horizon: int, path: str) -> Tensor:
        """``(n, horizon)``: the first ``horizon`` actual values of each history series."""
        index = {sid: i for i, sid in enumerate(actuals.ids)}
        rows = []
        for sid in history.ids:
            if sid not in index:
                raise NlpseqError(f"no values for series {sid!r}", path)
            values = actuals[index[sid]]
            if len(values) < horizon:
                raise NlpseqError(f"series {sid!r} has {len(values)} values, fewer than the "
                                  f"horizon {horizon}", path)
            rows.append(values[:horizon])
        return torch.stack(rows)

    def save_artifacts(self, directory: Path) -> None:
        write_json(directory / SERIES, {"ids": self.ids})

    def load_artifacts(self, directory: Path) -> None:
        self.ids = read_json(directory / SERIES)["ids"]

    def _lookup(self, ids: Sequence[str]) -> Tensor:
        """Embedding rows of ``ids`` (-1 for series not seen in training)."""
        rows = {sid: i for i, sid in enumerate(self.ids)}
        return torch.tensor([rows.get(sid, -1) for sid in ids], dtype=torch.int64)

    # --- model ---------------------------------------------------------------------------
    def build_model(self, log: Log, pretrained: bool = True) -> nn.Module:
        return Forecaster(self.config.model, len(self.ids))

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> WindowBatches:
        """Shuffled windows of every series (at most ``data.limit`` a epoch when set)."""
        generator = torch.Generator().manual_seed(self.epoch_seed(epoch))
        order = torch.randperm(len(self.windows), generator=generator)
        if self.config.data.limit:
            order = order[: self.config.data.limit]
        chunks = list(order.split(self.config.train.batch_size))
        return WindowBatches(self.windows, shard(chunks, rank, world_size),
                             self._lookup(self.windows.series.ids))

    # --- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def _forecast(self, model: Forecaster, series: SeriesSet, horizon: int,
                  actuals: Tensor | None = None) -> tuple[np.ndarray, float]:
        """Forecasts ``(n, horizon, Q)`` from the end of each series, at the model's quantile
        levels, and given ``actuals`` ``(n, horizon)`` the model's mean loss on them."""
        m = self.config.model
        if m.decoder == "direct" and horizon > m.horizon:
            raise NlpseqError(f"horizon {horizon} is longer than the model's {m.horizon}; only "
                              "a model trained with model.decoder: recurrent forecasts further")
        lengths = series.lengths.tolist()
        short = [i for i, n in enumerate(lengths) if n < m.input_length]
        if short:
            raise NlpseqError(f"series {series.ids[short[0]]!r} has {lengths[short[0]]} values; "
                              f"the model reads the last {m.input_length} "
                              f"({len(short)} series too short)")
        model.eval()
        windows = Windows(series, m.window_spec(0), last_only=True)
        lookup = self._lookup(series.ids)
        out, loss, count = [], 0.0, 0
        for chunk in torch.arange(len(series)).split(self.config.eval.batch_size):
            batch = windows.batch(chunk)
            batch.series = lookup[batch.series]
            if actuals is not None:
                batch.targets = (actuals[chunk] - batch.shift) / batch.scale
            batch = batch.to(self.device)
            out.append(model.forecast(batch, horizon).float().cpu())
            if actuals is not None:
                loss_sum, n, _ = model(batch)
                loss, count = loss + float(loss_sum), count + n
        return torch.cat(out).numpy(), (loss / count if count else float("nan"))

    def _score(self, model: Forecaster, history: SeriesSet, actuals: Tensor,
               per_series: bool = False) -> dict[str, Any]:
        m = self.config.model
        forecasts, loss = self._forecast(model, history, actuals.shape[1], actuals)
        point = forecasts[..., m.levels.index(0.5)]
        result = evaluate_forecasts(history, actuals, point, m.season, per_series=per_series)
        result["loss"] = loss
        if len(m.levels) > 1:  # how often the outermost levels enclose the actual value
            y = actuals.numpy()
            inside = (forecasts[..., 0] <= y) & (y <= forecasts[..., -1])
            result[f"coverage_{m.levels[0]:g}_{m.levels[-1]:g}"] = float(inside.mean())
        return result

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return self._score(model, *self.dev)

    def evaluate_files(self, paths: list[str]) -> dict[str, Any]:
        """The model and the three benchmarks forecasting ACTUALS from HISTORY: sMAPE, MASE,
        OWA, RMSE, MAE, n_series, and per-series figures."""
        if len(paths) != 2:
            raise NlpseqError("forecast evaluation takes two files: HISTORY ACTUALS")
        history, report = self.read(paths[0], self.config.model.input_length)
        _note(report)
        actuals, report = self.read(paths[1])
        _note(report)
        index = {sid: i for i, sid in enumerate(actuals.ids)}
        counts = {len(actuals[index[sid]]) for sid in history.ids if sid in index}
        if len(counts) > 1:
            raise NlpseqError(f"series have different numbers of actual values "
                              f"({min(counts)} to {max(counts)}); evaluation needs one horizon",
                              paths[1])
        horizon = counts.pop() if counts else 1
        return self._score(self.model, history, self._match(history, actuals, horizon, paths[1]),
                           per_series=True)

    # --- forecasting ---------------------------------------------------------------------
    def forecast(self, series: Sequence[Sequence[float]] | dict[str, Sequence[float]],
                 horizon: int | None = None, quantiles: bool = False) -> np.ndarray:
        """Forecasts following each series: ``(n, horizon)`` point forecasts, or with
        ``quantiles`` ``(n, horizon, Q)`` at ``config.model.levels``. A dict's keys are series
        ids (training series keep their learned embedding); list items are unseen series."""
        if isinstance(series, dict):
            ids, arrays = list(series), list(series.values())
        else:
            if isinstance(series, np.ndarray) and series.ndim == 1 or (
                    len(series) and np.isscalar(series[0])):
                raise TypeError("forecast takes a list of series; for one series, pass [series]")
            arrays = list(series)
            ids = [f"\0{i}" for i in range(len(arrays))]  # never a training id
        out, _ = self._forecast(self.model, SeriesSet.from_arrays(ids, arrays),
                                horizon or self.config.model.horizon)
        return out if quantiles else out[..., self.config.model.levels.index(0.5)]

    def forecast_file(self, path: str | Path, horizon: int | None = None,
                      quantiles: bool = False) -> tuple[SeriesSet, np.ndarray]:
        """The series of a file and their forecasts ``(n, horizon, Q)`` (``quantiles``: refuse
        a model without quantile outputs before any work)."""
        if quantiles:
            self._require_quantiles()
        series, report = self.read(path, self.config.model.input_length)
        _note(report)
        out, _ = self._forecast(self.model, series, horizon or self.config.model.horizon)
        return series, out

    def csv_lines(self, series: SeriesSet, forecasts: np.ndarray,
                  quantiles: bool = False) -> Iterator[str]:
        """CSV ``series_id,step,forecast[,q10,q90]`` (steps from 1) for forecasts
        ``(n, horizon, Q)`` of ``series``, header first."""
        levels = self.config.model.levels
        point = levels.index(0.5)
        extra = [i for i, q in enumerate(levels) if i != point] if quantiles else []
        yield ",".join(["series_id", "step", "forecast",
                        *(f"q{levels[i] * 100:g}" for i in extra)])
        for sid, rows in zip(series.ids, forecasts):
            for step, row in enumerate(rows, 1):
                yield ",".join([_csv_cell(sid), str(step),
                                *(f"{row[i]:.6g}" for i in [point, *extra])])

    def _require_quantiles(self) -> None:
        if len(self.config.model.levels) == 1:
            raise NlpseqError("this model forecasts points only: train it with "
                              "model.quantiles (e.g. \"0.1, 0.5, 0.9\") for intervals")

    def read_input(self, lines: Iterator[str], **options: Any) -> Iterator[tuple[str, np.ndarray]]:
        """One series a line, in the M4 layout: ``id,v1,v2,...`` (a header line is skipped)."""
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = parse_m4_line(line, "<input>", number)
            if row is None and number > 1:
                raise NlpseqError(f"expected a series id and its values, got {line[:40]!r}",
                                  "<input>", number)
            if row is not None:
                yield row

    def predict(self, items: list[tuple[str, Sequence[float]]], horizon: int | None = None,
                quantiles: bool = False) -> list[dict[str, Any]]:
        """``(id, values)`` items -> ``{series_id, forecast[, quantiles: {level: values}]}``."""
        if quantiles:
            self._require_quantiles()
        ids = [sid for sid, _ in items]
        series = SeriesSet.from_arrays(ids, [values for _, values in items])
        out, _ = self._forecast(self.model, series, horizon or self.config.model.horizon)
        levels = self.config.model.levels
        results = []
        for sid, rows in zip(ids, out):
            result = {"series_id": sid, "forecast": rows[:, levels.index(0.5)].tolist()}
            if quantiles:
                result["quantiles"] = {f"{q:g}": rows[:, i].tolist() for i, q in enumerate(levels)}
            results.append(result)
        return results

    def format_output(self, result: dict[str, Any], as_json: bool) -> str:
        if as_json:
            return json.dumps(result)
        return ",".join([_csv_cell(result["series_id"]),
                         *(f"{v:.6g}" for v in result["forecast"])])


def forecast_figure(series: SeriesSet, forecasts: np.ndarray, levels: Sequence[float],
                    ids: Sequence[str] = (), history: int = 0) -> Figure:
    """One panel per chosen series (``ids``; default the first four): its last ``history``
    values (default three horizons) and the forecast after them, shaded between the outermost
    quantile levels when there are several. ``forecasts`` is ``(n, horizon, Q)``."""
    from nlpseq.plot import new_figure

    chosen = list(ids) or list(series.ids[:4])
    index = {sid: i for i, sid in enumerate(series.ids)}
    unknown = [sid for sid in chosen if sid not in index]
    if unknown:
        raise NlpseqError(f"no series {unknown[0]!r} to draw")
    horizon = forecasts.shape[1]
    history = history or 3 * horizon
    figure = new_figure(8.0, 2.2 * len(chosen))
    for axes, sid in zip(figure.subplots(len(chosen), 1, squeeze=False)[:, 0], chosen):
        past = series.numpy(index[sid])[-history:]
        ahead = np.arange(len(past), len(past) + horizon)
        bands = forecasts[index[sid]]  # (horizon, Q)
        axes.plot(np.arange(len(past)), past, color="black", linewidth=1, label="history")
        axes.plot(ahead, bands[:, list(levels).index(0.5)], color="tab:blue", label="forecast")
        if len(levels) > 1:
            axes.fill_between(ahead, bands[:, 0], bands[:, -1], color="tab:blue", alpha=0.2,
                              label=f"{levels[0]:g} to {levels[-1]:g} quantiles")
        axes.set_title(sid, fontsize=9, loc="left")
        axes.legend(fontsize=7, loc="upper left")
    return figure


def forecast_png(series: SeriesSet, forecasts: np.ndarray, levels: Sequence[float],
                 path: str | Path, ids: Sequence[str] = ()) -> Path:
    """:func:`forecast_figure` saved as PNG at ``path``."""
    from nlpseq.plot import save_png

    return save_png(forecast_figure(series, forecasts, levels, ids), path)


def _note(report: SeriesReport) -> None:
    """Say on stderr what reading skipped or filled in."""
    if report.short or report.missing or report.trimmed:
        log_stderr(str(report))


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
