"""Global forecaster: LSTM/GRU encoder over a normalised window -> direct or recurrent head.

One model for every series (a global model): each window is scaled by its own input values
(nlpseq/series.py), so the network sees shapes, not levels. Optional learned seasonal-position
and per-series embeddings; point forecasts, or quantiles trained with the pinball loss. With
``skip = "seasonal_naive"`` the network predicts a correction to the seasonal naive forecast
of its own input window and starts out (zero-initialised output) as exactly that benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from nlpseq.config import key
from nlpseq.errors import NlpseqError
from nlpseq.series import NORMALISATIONS, Normalisation, WindowBatch, WindowSpec


@dataclass(frozen=True)
class ForecasterConfig:
    """The forecaster and the windows it reads (the ``model`` section of forecast pipelines)."""

    cell: Literal["lstm", "gru"] = key("lstm", help="recurrent cell of encoder and decoder")
    hidden_size: int = key(64, low=1, help="units of each recurrent layer")
    layers: int = key(1, low=1, help="stacked encoder layers")
    dropout: float = key(0.0, low=0, high=1, high_open=True,
                         help="dropout between stacked layers and on the encoder's summary")
    input_length: int = key(48, low=1, help="values the encoder reads before each forecast")
    patch: int = key(1, low=1, help="values per encoder step; divides input_length (24 on "
                     "hourly data: one day a step, 24x fewer recurrent steps)")
    horizon: int = key(24, low=1, help="values forecast from each window")
    stride: int = key(1, low=1, help="training: distance between the ends of consecutive "
                      "windows of a series")
    season: int = key(1, low=1, help="seasonal period m (24 for hourly data; 1 = none): "
                      "seasonal naive, Naive2, MASE and position features")
    normalise: Normalisation = key("mean", help="scale each window by its input values only: "
                                   "mean of |x|, last |x|, z-score, or none")
    decoder: Literal["direct", "recurrent"] = key(
        "direct", help="direct: one layer emits every step; recurrent: an RNN steps through "
        "the future, so longer horizons can be asked for")
    position_dim: int = key(0, low=0, help="size of a learned embedding of the seasonal "
                            "position (needs season > 1; 0 = none)")
    series_dim: int = key(0, low=0, help="size of a learned per-series embedding (0 = none)")
    skip: Literal["none", "seasonal_naive"] = key(
        "seasonal_naive", help="the network corrects the seasonal naive forecast of its "
        "window (and starts as exactly that), or forecasts from nothing")
    loss: Literal["mae", "smape"] = key("mae", help="point-forecast loss (without quantiles)")
    quantiles: str = key("", help="quantile levels trained with the pinball loss, e.g. "
                         "\"0.1, 0.5, 0.9\" (must include 0.5; \"\" = point forecasts)")

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise NlpseqError(f"model.normalise {self.normalise!r} is not one of "
                              f"{', '.join(NORMALISATIONS)}")
        self.levels  # noqa: B018 -- parses quantiles, refusing bad ones
        if self.position_dim and self.season <= 1:
            raise NlpseqError("model.position_dim needs a seasonal period (model.season > 1)")
        if self.input_length % self.patch:
            raise NlpseqError(f"model.patch {self.patch} does not divide model.input_length "
                              f"{self.input_length}")

    def window_spec(self, horizon: int | None = None) -> WindowSpec:
        """The windows this model reads; ``horizon`` overrides the trained one (0: inputs only)."""
        return WindowSpec(self.input_length, self.horizon if horizon is None else horizon,
                          self.stride, self.season, self.normalise)

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels of the outputs, ascending: ``(0.5,)`` for a point forecast."""
        if not self.quantiles.strip():
            return (0.5,)
        try:
            levels = sorted({float(q) for q in self.quantiles.replace(",", " ").split()})
        except ValueError:
            levels = []
        if 0.5 not in levels or not all(0 < q < 1 for q in levels):
            raise NlpseqError(f"model.quantiles {self.quantiles!r}: levels in (0, 1), "
                              "separated by commas, including 0.5")
        return tuple(levels)


class Forecaster(nn.Module):
    """``forward(batch, carry) -> (loss_sum, points, None)`` for the trainer; :meth:`forecast`
    for inference. Series indices outside ``0..n_series-1`` (series unseen in training) get
    the mean series embedding."""

    def __init__(self, config: ForecasterConfig, n_series: int):
        super().__init__()
        self.config = config
        c = config
        self.position = nn.Embedding(c.season, c.position_dim) if c.position_dim else None
        self.series_embedding = nn.Embedding(n_series, c.series_dim) if c.series_dim else None
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        self.encoder = rnn(c.patch + c.position_dim, c.hidden_size, c.layers, batch_first=True,
                           dropout=c.dropout if c.layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        summary = c.hidden_size + c.series_dim
        outputs = len(c.levels)
        if c.decoder == "direct":
            self.head = nn.Linear(summary, c.horizon * outputs)
        else:
            # each future step reads its seasonal naive value, position and series embedding
            self.decoder = rnn(1 + c.position_dim + c.series_dim, c.hidden_size, batch_first=True)
            self.head = nn.Linear(summary, outputs)
        if c.skip == "seasonal_naive":
            nn.init.zeros_(self.head.weight)  # start as the benchmark itself
            nn.init.zeros_(self.head.bias)

    def forward(self, batch: WindowBatch, carry: None = None) -> tuple[Tensor, int, None]:
        """The loss summed over every forecast point of the batch, and the number of points.

        Point forecasts: MAE on the normalised scale by default -- the loss whose minimiser is
        the median, scale-free across series like sMAPE and MASE (each window is divided by
        its input level), without sMAPE's gradient blow-up where actual and forecast are both
        near zero; ``loss = "smape"`` trains on the metric itself."""
        horizon = batch.targets.size(1)
        predicted = self.predict(batch, horizon)  # (B, H, Q)
        target = batch.targets.unsqueeze(-1)  # (B, H, 1)
        if len(self.config.levels) > 1:
            levels = predicted.new_tensor(self.config.levels)  # (Q,)
            error = target - predicted
            loss = torch.maximum(levels * error, (levels - 1) * error).sum()
        elif self.config.loss == "smape":
            # on the series' own scale: sMAPE is scale-free but not shift-free (zscore windows)
            actual, forecast = batch.denormalise(target), batch.denormalise(predicted)
            total = (actual.abs() + forecast.abs()).clamp_min(1e-8)
            loss = (2 * (actual - forecast).abs() / total).sum()
        else:
            loss = (target - predicted).abs().sum()
        return loss, target.numel(), None

    def predict(self, batch: WindowBatch, horizon: int) -> Tensor:
        """Normalised forecasts ``(B, horizon, Q)`` at the quantile levels of the config."""
        c = self.config
        if c.decoder == "direct" and horizon > c.horizon:
            raise ValueError(f"horizon {horizon} is longer than the model's {c.horizon} "
                             "(a recurrent decoder can forecast further)")
        inputs = batch.inputs.view(len(batch), -1, c.patch)  # (B, L / patch, patch)
        steps = torch.arange(c.input_length + horizon, device=inputs.device)
        phase = (batch.phase.unsqueeze(1) + steps) % c.season  # (B, L + H)
        if self.position is not None:
            first = phase[:, : c.input_length : c.patch]  # (B, L / patch): each step's start
            inputs = torch.cat([inputs, self.position(first)], dim=-1)
        encoded, state = self.encoder(inputs)  # (B, L / patch, D)
        summary = self.dropout(encoded[:, -1])  # (B, D)
        embedding = self._series_embedding(batch.series)  # (B, S) or None
        if embedding is not None:
            summary = torch.cat([summary, embedding], dim=-1)  # (B, D + S)
        anchor = self._seasonal_naive(batch.inputs, horizon)  # (B, H)
        if c.decoder == "direct":
            out = self.head(summary).view(len(batch), c.horizon, -1)[:, :horizon]  # (B, H, Q)
        else:
            out = self._decode(state, anchor, phase[:, c.input_length :], embedding)
        if c.skip == "seasonal_naive":
            out = out + anchor.unsqueeze(-1)
        return out

    def _decode(self, state: Tensor | tuple[Tensor, Tensor], anchor: Tensor, phase: Tensor,
                embedding: Tensor | None) -> Tensor:
        """Recurrent decoder from the encoder's top-layer state -> ``(B, H, Q)``."""
        steps = [anchor.unsqueeze(-1)]  # (B, H, 1)
        if self.position is not None:
            steps.append(self.position(phase))  # (B, H, P)
        if embedding is not None:
            steps.append(embedding.unsqueeze(1).expand(-1, anchor.size(1), -1))  # (B, H, S)
        top = tuple(s[-1:].contiguous() for s in state) if isinstance(state, tuple) \
            else state[-1:].contiguous()  # (1, B, D)
        decoded, _ = self.decoder(torch.cat(steps, dim=-1), top)  # (B, H, D)
        decoded = self.dropout(decoded)
        if embedding is not None:
            decoded = torch.cat([decoded, steps[-1]], dim=-1)  # (B, H, D + S)
        return self.head(decoded)

    def _series_embedding(self, series: Tensor) -> Tensor | None:
        if self.series_embedding is None:
            return None
        table = self.series_embedding.weight  # (N, S)
        known = (series >= 0) & (series < len(table))
        looked_up = self.series_embedding(series.clamp(0, len(table) - 1))
        return torch.where(known.unsqueeze(1), looked_up, table.mean(dim=0))

    def _seasonal_naive(self, inputs: Tensor, horizon: int) -> Tensor:
        """Each future step's value one season earlier, from the inputs ``(B, L)`` -> ``(B, H)``
        (the last value when the window is shorter than a season)."""
        season = self.config.season if self.config.season <= inputs.size(1) else 1
        index = inputs.size(1) - season + torch.arange(horizon, device=inputs.device) % season
        return inputs[:, index]

    @torch.no_grad()
    def forecast(self, batch: WindowBatch, horizon: int | None = None) -> Tensor:
        """Forecasts on the series' own scale ``(B, horizon, Q)`` at the quantile
        :attr:`ForecasterConfig.levels` (Q = 1: the point forecast), in evaluation mode."""
        horizon = self.config.horizon if horizon is None else horizon
        training = self.training
        self.eval()
        try:
            predicted = self.predict(batch, horizon)
        finally:
            self.train(training)
        if len(self.config.levels) > 1:
            predicted = predicted.sort(dim=-1).values  # quantiles must not cross
        return batch.denormalise(predicted)
