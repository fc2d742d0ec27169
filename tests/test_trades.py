"""The trades export: read off the backtest's own rows, so its totals are the backtest's."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.trades import extract_trades, totals

HOUR_NS = 3_600_000_000_000


def _market(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * (1 + rng.normal(0, 0.001, n))
    return np.arange(n, dtype=np.int64) * HOUR_NS, open_, close


@pytest.mark.parametrize(
    "position",
    [
        [0, 1, 1, 0, 0, 1, 0, 1, 1, 1],  # long-only, ends in a position (liquidated at the end)
        [1, 1, -1, -1, 0, -1, 1, 0, 0, 0],  # flips both ways, a short alone, ends flat
        [-1, 1, -1, 1, -1, 1, -1, 1, -1, 1],  # a flip every row
    ],
)
def test_trade_totals_equal_the_backtest(position: list[int]) -> None:
    ts, open_, close = _market(40)
    rows = np.array([3, 5, 8, 9, 12, 15, 20, 22, 30, 35])  # gaps: periods span several candles
    pos = np.asarray(position, dtype=np.float64)
    r, span = bt.period_returns(open_, close, rows)
    series = bt.simulate(pos, r, 0.0017)
    perf = bt.performance(series, 8760.0)
    trades = extract_trades(position=pos, fee=series.fee, equity=series.equity, candle_rows=rows,
                            timestamps_ns=ts, open_=open_, close=close)  # fmt: skip
    tot = totals(trades)
    assert tot["trades"] == perf["trades"] == series.trade_pnl.size
    assert tot["pnl_net"] == pytest.approx(perf["final_equity"] - 1.0, abs=1e-12)
    assert tot["fees"] == pytest.approx(perf["fees_paid"], abs=1e-12)
    assert tot["pnl_gross"] == pytest.approx(tot["pnl_net"] + tot["fees"], abs=1e-12)
    assert sum(t.holding_candles for t in trades) == int(span[pos != 0].sum())
    if not np.any(pos < 0):  # without flips each trade is the backtest's own trade_pnl
        np.testing.assert_allclose([t.pnl_net for t in trades], series.trade_pnl, atol=1e-12)


def test_trade_rows_name_fills_and_prices() -> None:
    ts, open_, close = _market(40)
    rows = np.array([3, 5, 8, 9, 12])
    pos = np.array([0.0, 1.0, 1.0, 0.0, -1.0])
    r, _ = bt.period_returns(open_, close, rows)
    series = bt.simulate(pos, r, 0.001)
    long, short = extract_trades(position=pos, fee=series.fee, equity=series.equity,
                                 candle_rows=rows, timestamps_ns=ts, open_=open_, close=close)  # fmt: skip
    # Decided at the close of candle 5, filled at the open of 6; the decision at 9 exits at 10.
    assert (long.side, long.entry_time_ns, long.entry_price) == ("long", 6 * HOUR_NS, open_[6])
    assert (long.exit_time_ns, long.exit_price, long.holding_candles) == (
        10 * HOUR_NS,
        open_[10],
        4,
    )
    # The exchange's fee rule (issue 11): buy E / (P (1 + f)) units, the fee on each notional.
    gross, f = open_[10] / open_[6] - 1, 0.001
    assert long.pnl_net == pytest.approx((1 + gross) * (1 - f) / (1 + f) - 1, rel=1e-12)
    assert long.fees == pytest.approx(f / (1 + f) + (1 + gross) * f / (1 + f), rel=1e-12)
    # The last decision (candle 12) is liquidated at the close of candle 13.
    assert (short.side, short.size, short.exit_price) == ("short", -1.0, close[13])
    assert short.exit_time_ns == 14 * HOUR_NS and short.holding_candles == 1
    assert long.quantity == pytest.approx(1 / (open_[6] * (1 + f)), rel=1e-12)
    # Entry and final exit in one row: the row's fee is both legs of this one trade.
    assert short.fees == pytest.approx(series.fee[4], rel=1e-12)
