"""Index-gathered windows: values against a direct per-window computation, and causality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jaxtrader.errors import ConfigError, DataError
from jaxtrader.windows import check_seq_len, gather_windows, raw_series


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    volume = rng.lognormal(3, 1, n)
    index = pd.date_range("2022-01-01", periods=n, freq="1h", tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def _direct(frame: pd.DataFrame, t: int, w: int) -> np.ndarray:
    """The definition, one window at a time in float64."""
    win = frame.iloc[t - w + 1 : t + 1]
    prices = np.log(win[["open", "high", "low", "close"]].to_numpy() / frame["close"].iloc[t])
    v = np.log1p(win["volume"].to_numpy())
    z = (v - v.mean()) / v.std() if v.std() > 1e-6 else np.zeros_like(v)
    return np.column_stack([prices, z])


def test_gather_matches_definition() -> None:
    frame = _frame(400)
    raw = raw_series(frame)
    assert raw.dtype == np.float32 and raw.flags["C_CONTIGUOUS"] and raw.shape == (400, 5)
    rows = np.array([49, 123, 399, 200])
    seq = gather_windows(raw, rows, 50)
    assert seq.shape == (4, 50, 5) and seq.dtype == np.float32
    for b, t in enumerate(rows):
        np.testing.assert_allclose(seq[b], _direct(frame, int(t), 50), atol=2e-5)
        assert seq[b, -1, 3] == 0.0  # log(close_t / close_t)
    np.testing.assert_allclose(seq[..., 4].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(seq[..., 4].std(axis=1), 1.0, atol=1e-4)


def test_constant_volume_window_gives_zeros() -> None:
    frame = _frame(120)
    frame.loc[frame.index[20:80], "volume"] = 0.0  # a long outage of zero-volume filled candles
    seq = gather_windows(raw_series(frame), np.array([79]), 50)
    np.testing.assert_array_equal(seq[0, :, 4], 0.0)


def test_windows_do_not_see_the_future() -> None:
    frame = _frame(300)
    t = 180
    changed = frame.copy()
    changed.iloc[t + 1 :] = _frame(300, seed=9).iloc[t + 1 :].to_numpy() * 3.0
    rows = np.arange(49, t + 1)
    np.testing.assert_array_equal(
        gather_windows(raw_series(frame), rows, 50), gather_windows(raw_series(changed), rows, 50)
    )


def test_validation() -> None:
    raw = raw_series(_frame(100))
    with pytest.raises(IndexError):
        gather_windows(raw, np.array([48]), 50)
    with pytest.raises(IndexError):
        gather_windows(raw, np.array([100]), 50)
    for bad in (49, 201):
        with pytest.raises(ConfigError, match="seq_len"):
            check_seq_len(bad)
    check_seq_len(50)
    check_seq_len(200)
    frame = _frame(60)
    frame.iloc[7, 3] = -1.0
    with pytest.raises(DataError, match="non-positive price"):
        raw_series(frame)
