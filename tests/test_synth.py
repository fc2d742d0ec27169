"""The synthetic default market (jaxtrader.synth via data.synth_candles): realistic, no signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxtrader.data import synth_candles
from jaxtrader.errors import DataError


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return synth_candles().frame  # the default market: 20k hourly candles, seed 0


def log_returns(frame: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(frame["close"].to_numpy()))


def excess_kurtosis(x: np.ndarray) -> float:
    z = (x - x.mean()) / x.std()
    return float(np.mean(z**4) - 3.0)


def autocorr(x: np.ndarray, lag: int = 1) -> float:
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


def test_same_seed_same_data_different_seed_different_data() -> None:
    a, b, c = (synth_candles(rows=1_000, seed=s).frame for s in (7, 7, 8))
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"].to_numpy(), c["close"].to_numpy())


def test_shape_index_and_ohlc_consistency(market: pd.DataFrame) -> None:
    assert len(market) == 20_000
    assert market.index[0] == pd.Timestamp("2023-01-01T00:00:00Z")
    assert market.index.to_series().diff().dropna().eq(pd.Timedelta(1, unit="h")).all()
    o, h, lo, c, v = (market[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all()
    assert (lo > 0).all() and (v > 0).all() and not market["filled"].any()
    np.testing.assert_array_equal(o[1:], c[:-1])  # a continuous market: open = previous close
    assert ((h - lo) > 0).all()


def test_volatility_clusters_but_returns_are_not_predictable(market: pd.DataFrame) -> None:
    r = log_returns(market)
    assert autocorr(np.abs(r)) > 0.15  # volatility clustering
    assert abs(autocorr(r)) < 0.03  # no linear predictability of the return itself
    same_sign = float(np.mean(np.sign(r[1:]) == np.sign(r[:-1])))
    assert abs(same_sign - 0.5) < 0.015  # last candle's direction does not predict the next one
    assert abs(float(np.mean(r > 0)) - 0.5) < 0.015  # a constant "up" guess is about 50%
    assert abs(r.mean()) < 0.02 * r.std()  # drift tiny relative to volatility


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_autocorrelation_robust_over_seeds(seed: int) -> None:
    # Heteroskedasticity-robust t statistic of the lag-1 autocovariance (GARCH inflates the plain
    # standard error); 4 sigma keeps the false-alarm rate negligible.
    x = log_returns(synth_candles(seed=seed).frame)
    x = x - x.mean()
    prod = x[1:] * x[:-1]
    assert abs(prod.sum() / np.sqrt((prod**2).sum())) < 4.0


def test_fat_tails_seasonality_and_volume(market: pd.DataFrame) -> None:
    r = log_returns(market)
    assert excess_kurtosis(r) > 1.0  # excess kurtosis: Student-t shocks plus GARCH
    hours = market.index.hour[1:]
    assert np.abs(r[hours == 15]).mean() > 1.3 * np.abs(r[hours == 3]).mean()
    vol = market["volume"].to_numpy()
    by_hour = pd.Series(vol).groupby(market.index.hour).mean()
    assert by_hour[15] > 1.3 * by_hour[3]
    assert np.corrcoef(vol[1:], np.abs(r))[0, 1] > 0.3


def test_other_intervals_and_bad_rows() -> None:
    five = synth_candles(rows=2_000, seed=1, interval="5m")
    assert five.interval == pd.Timedelta(5, unit="min")
    assert five.frame.index[1] - five.frame.index[0] == pd.Timedelta(5, unit="min")
    daily = synth_candles(rows=500, seed=1, interval="1d", symbol="TEST/EUR")
    assert daily.symbol == "TEST/EUR"
    rd = log_returns(daily.frame)
    r5 = log_returns(five.frame)
    assert rd.std() > 5 * r5.std()  # volatility scales with the interval
    with pytest.raises(DataError, match="synthetic rows must be at least 1"):
        synth_candles(rows=0)
