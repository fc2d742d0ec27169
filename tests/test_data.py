"""Candle loading, validation, gaps and the synthetic market (jaxtrader.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import DataConfig
from jaxtrader.data import load_candles, load_market, synth_candles
from jaxtrader.errors import DataError

CANONICAL = (
    "timestamp,open,high,low,close,volume\n"
    "2024-01-01T00:00:00Z,100,110,95,105,10\n"
    "2024-01-01T01:00:00Z,105,112,101,108,12\n"
    "2024-01-01T02:00:00Z,108,109,100,102,8\n"
    "2024-01-01T03:00:00Z,102,104,99,103,9\n"
)


def test_canonical_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "btc_usdt_1h.csv"
    path.write_text(CANONICAL)
    candles = load_candles(path)
    frame = candles.frame
    assert list(frame.columns) == ["open", "high", "low", "close", "volume", "filled"]
    assert frame.index.name == "timestamp" and str(frame.index.tz) == "UTC"
    assert candles.interval == pd.Timedelta("1h")
    assert candles.symbol == "BTC/USDT"
    np.testing.assert_allclose(frame["close"], [105, 108, 102, 103])
    assert not frame["filled"].any()


def test_synth_is_deterministic_and_consistent() -> None:
    a, b = synth_candles(rows=500, seed=3), synth_candles(rows=500, seed=3)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    f = a.frame
    assert (f["high"] >= f[["open", "close"]].max(axis=1)).all()
    assert (f["low"] <= f[["open", "close"]].min(axis=1)).all()
    assert f.index[0] == pd.Timestamp("2023-01-01T00:00:00Z")


def test_load_market_default_is_synthetic() -> None:
    candles = load_market(DataConfig(synth_rows=300))
    assert len(candles) == 300 and candles.symbol == "SYNTH/USD"


def test_duplicate_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(CANONICAL + "2024-01-01T03:00:00Z,102,104,99,103,9\n")
    with pytest.raises(
        DataError, match=r"line 6: duplicate timestamp 2024-01-01T03:00:00Z.*--dedupe"
    ):
        load_candles(path)


def test_shared_btc_1h_figures(btc_1h: Path) -> None:
    candles = load_candles(btc_1h)
    assert (candles.gaps.count, candles.gaps.missing, candles.gaps.longest) == (28, 128, 33)
    assert int((~candles.frame["filled"]).sum()) == 72_569
