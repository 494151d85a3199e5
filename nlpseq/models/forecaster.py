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

from nlpseq.series import NORMALISATIONS, WindowBatch, WindowSpec


@dataclass(frozen=True)
class ForecasterConfig:
    """The forecaster and the windows it reads (the ``model`` section of forecast pipelines)."""

    cell: Literal["lstm", "gru"] = "lstm"  # recurrent cell of encoder and decoder
    hidden_size: int = 64  # units of each recurrent layer
    layers: int = 1  # stacked encoder layers
    dropout: float = 0.0  # between stacked layers and on the encoder's summary
    input_length: int = 48  # values the encoder reads before each forecast
    patch: int = 1  # values per encoder step (24 on hourly data: one day a step, 24x fewer
    # recurrent steps); divides input_length
    horizon: int = 24  # values forecast from each window (training and validation)
    stride: int = 1  # training windows: distance between the ends of consecutive windows
    season: int = 1  # seasonal period m (24 for hourly data); 1: none
    normalise: str = "mean"  # per-window scaling from the input values only: series.NORMALISATIONS
    decoder: Literal["direct", "recurrent"] = "direct"  # direct: one layer emits every step;
    # recurrent: an RNN steps through the future, so any horizon can be asked for
    position_dim: int = 0  # size of a learned embedding of the seasonal position; 0: none
    series_dim: int = 0  # size of a learned per-series embedding; 0: none
    skip: Literal["none", "seasonal_naive"] = "seasonal_naive"  # what the network corrects
    loss: Literal["mae", "smape"] = "mae"  # point-forecast loss (without quantiles)
    quantiles: tuple[float, ...] = ()  # e.g. (0.1, 0.5, 0.9): pinball loss; needs 0.5

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalise!r}; "
                             f"expected one of {NORMALISATIONS}")
        if self.quantiles and (0.5 not in self.quantiles
                               or not all(0 < q < 1 for q in self.quantiles)):
            raise ValueError(f"quantiles {self.quantiles} must lie in (0, 1) and include 0.5")
        if self.position_dim and self.season <= 1:
            raise ValueError("position_dim needs a seasonal period (season > 1)")
        if self.patch < 1 or self.input_length % self.patch:
            raise ValueError(f"patch {self.patch} does not divide input_length "
                             f"{self.input_length}")

    def window_spec(self, horizon: int | None = None) -> WindowSpec:
        """The windows this model reads; ``horizon`` overrides the trained one (0: inputs only)."""
        return WindowSpec(self.input_length, self.horizon if horizon is None else horizon,
                          self.stride, self.season, self.normalise)

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels of the outputs: ``(0.5,)`` for a point forecast."""
        return tuple(sorted(self.quantiles)) or (0.5,)


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
        if self.config.quantiles:
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
