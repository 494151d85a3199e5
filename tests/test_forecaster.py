"""The forecaster model: its loss contract, its benchmark start, quantiles, and overfitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlpseq.errors import NlpseqError
from nlpseq.models.forecaster import Forecaster, ForecasterConfig
from nlpseq.series import SeriesSet, Windows, seasonal_naive

PERIODIC = [10 + 3 * math.sin(2 * math.pi * t / 6) + 1.5 * math.cos(2 * math.pi * t / 3)
            for t in range(66)]


def fit(model: Forecaster, windows: Windows, steps: int, lr: float) -> float:
    """Full-batch Adam on every window; returns the last mean loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    everything = windows.batch(torch.arange(len(windows)))
    for _ in range(steps):
        loss, count, carry = model(everything, None)
        assert carry is None
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    return float(loss.detach()) / count


def last_inputs(config: ForecasterConfig, series: SeriesSet):
    """Each series' last input window, for forecasting."""
    windows = Windows(series, config.window_spec(0), last_only=True)
    return windows.batch(torch.arange(len(windows)))


@pytest.mark.parametrize(("decoder", "patch"), [("direct", 1), ("recurrent", 1), ("direct", 6)])
def test_overfits_a_periodic_series_and_forecasts_its_continuation(decoder, patch):
    torch.manual_seed(0)
    config = ForecasterConfig(hidden_size=32, input_length=12, horizon=6, skip="none",
                              decoder=decoder, patch=patch)
    model = Forecaster(config, n_series=1)
    train = SeriesSet.from_arrays(["s"], [PERIODIC[:60]])
    assert fit(model, Windows(train, config.window_spec()), steps=400, lr=0.03) < 0.03
    forecast = model.forecast(last_inputs(config, train))  # (1, 6, 1)
    assert forecast.shape == (1, 6, 1)
    error = np.abs(forecast[0, :, 0].numpy() - np.array(PERIODIC[60:])).mean()
    naive_error = np.abs(PERIODIC[59] - np.array(PERIODIC[60:])).mean()
    assert naive_error > 2.5 and error < 0.3, (error, naive_error)


def test_starts_as_seasonal_naive_and_sums_its_loss():
    config = ForecasterConfig(hidden_size=8, input_length=8, horizon=5, season=3)
    model = Forecaster(config, n_series=2)
    rng = np.random.default_rng(1)
    data = SeriesSet.from_arrays(["a", "b"], [rng.uniform(1, 9, 20), rng.uniform(1, 9, 15)])
    windows = Windows(data, config.window_spec())
    batch = windows.batch(torch.arange(len(windows)))
    loss, count, _ = model(batch)
    # zero-initialised output: the prediction is the inputs' seasonal naive forecast
    anchor = batch.inputs[:, [5, 6, 7, 5, 6]]
    assert count == len(windows) * 5
    assert loss.item() == pytest.approx((batch.targets - anchor).abs().sum().item(), rel=1e-6)
    forecast = model.forecast(last_inputs(config, data))[:, :, 0]
    for i in range(2):
        expected = seasonal_naive(data.numpy(i), 5, 3)
        np.testing.assert_allclose(forecast[i].numpy(), expected, rtol=1e-6)


def test_smape_loss_is_summed_on_the_series_scale():
    config = ForecasterConfig(hidden_size=4, input_length=4, horizon=2, loss="smape",
                              normalise="zscore")
    model = Forecaster(config, n_series=1)
    data = SeriesSet.from_arrays(["a"], [[4.0, 6.0, 5.0, 8.0, 10.0, 2.0]])
    batch = Windows(data, config.window_spec()).batch([0])
    loss, count, _ = model(batch)
    # start = naive (season 1): 8, 8 against 10, 2
    assert count == 2
    assert loss.item() == pytest.approx(2 * 2 / 18 + 2 * 6 / 10, rel=1e-5)


def test_quantiles_pinball_loss_and_order():
    torch.manual_seed(0)
    config = ForecasterConfig(hidden_size=8, input_length=6, horizon=3,
                              quantiles="0.9, 0.1,0.5")
    model = Forecaster(config, n_series=1)
    assert config.levels == (0.1, 0.5, 0.9)
    data = SeriesSet.from_arrays(["a"], [np.random.default_rng(2).uniform(1, 9, 40)])
    windows = Windows(data, config.window_spec())
    batch = windows.batch(torch.arange(len(windows)))
    loss, count, _ = model(batch)
    # every level starts at the naive forecast; per point the three pinball losses add up to
    # 0.1 + 0.5 + 0.9 = 1.5 times |error| whatever its sign
    absolute = (batch.targets - batch.inputs[:, -1:]).abs().sum().item()
    assert count == len(windows) * 3
    assert loss.item() == pytest.approx(1.5 * absolute, rel=1e-6)
    fit(model, windows, steps=60, lr=0.05)
    forecast = model.forecast(last_inputs(config, data))  # (1, 3, 3)
    assert forecast.shape == (1, 3, 3)
    assert (forecast[..., 0] <= forecast[..., 1]).all()
    assert (forecast[..., 1] <= forecast[..., 2]).all()
    assert (forecast[..., 2] - forecast[..., 0]).min() > 0  # a real interval after training


def test_horizon_beyond_training_needs_a_recurrent_decoder():
    data = SeriesSet.from_arrays(["a"], [np.arange(1.0, 30.0)])
    direct = ForecasterConfig(hidden_size=4, input_length=6, horizon=3)
    with pytest.raises(ValueError, match="horizon 5 is longer than the model's 3"):
        Forecaster(direct, 1).forecast(last_inputs(direct, data), horizon=5)
    assert Forecaster(direct, 1).forecast(last_inputs(direct, data), horizon=2).shape == (1, 2, 1)
    recurrent = ForecasterConfig(hidden_size=4, input_length=6, horizon=3, decoder="recurrent")
    assert Forecaster(recurrent, 1).forecast(last_inputs(recurrent, data), 7).shape == (1, 7, 1)


@pytest.mark.parametrize("decoder", ["direct", "recurrent"])
@pytest.mark.parametrize(("cell", "patch"), [("lstm", 1), ("gru", 1), ("lstm", 4)])
def test_position_and_series_features_train(decoder, cell, patch):
    torch.manual_seed(0)
    config = ForecasterConfig(cell=cell, hidden_size=8, layers=2, dropout=0.1, input_length=8,
                              patch=patch,
                              horizon=4, season=4, position_dim=3, series_dim=2,
                              decoder=decoder, skip="none")  # zero-initialised with a skip
    model = Forecaster(config, n_series=2)
    data = SeriesSet.from_arrays(["a", "b"], [np.arange(1.0, 25.0), np.arange(30.0, 50.0)])
    windows = Windows(data, config.window_spec())
    loss, _, _ = model(windows.batch(torch.arange(len(windows))))
    loss.backward()
    for name in ("position.weight", "series_embedding.weight", "encoder.weight_ih_l0",
                 "head.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    batch = last_inputs(config, data)
    batch.series = torch.tensor([0, -1])  # the second series is unseen: the mean embedding
    table = model.series_embedding.weight
    assert torch.equal(model._series_embedding(batch.series)[1], table.mean(dim=0))
    assert model.forecast(batch).shape == (2, 4, 1)


@pytest.mark.parametrize(("options", "message"), [
    ({"quantiles": "0.1, 0.9"}, "model.quantiles '0.1, 0.9': levels in (0, 1), separated by "
                                "commas, including 0.5"),
    ({"quantiles": "0.5, 1.5"}, "including 0.5"),
    ({"quantiles": "0.5; 0.9"}, "including 0.5"),
    ({"position_dim": 4}, "model.position_dim needs a seasonal period (model.season > 1)"),
    ({"normalise": "log"}, "model.normalise 'log' is not one of mean, last, zscore, none"),
    ({"patch": 5}, "model.patch 5 does not divide model.input_length 48"),
])
def test_config_is_checked(options, message):
    with pytest.raises(NlpseqError) as err:
        ForecasterConfig(**options)
    assert message in str(err.value)
