"""Paper broker: next-open fills, fees and slippage by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from jaxtrader.config import TradeRules
from jaxtrader.trading.broker import Order, PaperBroker
from jaxtrader.trading.portfolio import Portfolio

TS = pd.Timestamp("2024-01-01T01:00:00Z")


def test_full_long_entry_spends_all_cash_including_fee() -> None:
    broker = PaperBroker(TradeRules(fee_bps=10.0, slippage_bps=5.0))
    pf = Portfolio(cash=10_000.0)
    fill = broker.fill(pf, Order(1, TS - pd.Timedelta(1, unit="h"), 1.0, "signal"), TS, 200.0)
    assert fill is not None
    price = 200.0 * 1.0005
    units = 10_000.0 / (price * 1.001)
    assert fill.price == pytest.approx(price)
    assert fill.units == pytest.approx(units)
    assert fill.fee == pytest.approx(units * price * 0.001)
    assert fill.result.portfolio.cash == pytest.approx(0.0, abs=1e-9)


def test_exit_closes_exactly_with_slippage_against_seller() -> None:
    broker = PaperBroker(TradeRules(fee_bps=10.0, slippage_bps=10.0))
    pf = Portfolio(cash=0.0, units=2.0, avg_entry=100.0, position_fees=0.2)
    fill = broker.fill(pf, Order(2, TS, 0.0, "signal"), TS, 110.0)
    assert fill is not None
    assert fill.units == -2.0
    assert fill.price == pytest.approx(110.0 * 0.999)
    out = fill.result.portfolio
    assert out.units == 0.0
    assert out.cash == pytest.approx(2 * 109.89 * (1 - 0.001))
    assert fill.result.closed_trade_pnl == pytest.approx(2 * 9.89 - 0.2 - 2 * 109.89 * 0.001)


def test_no_fill_when_already_at_target_and_half_position() -> None:
    broker = PaperBroker(TradeRules(fee_bps=0.0))
    assert broker.fill(Portfolio(cash=100.0), Order(3, TS, 0.0, "x"), TS, 5.0) is None
    half = broker.fill(Portfolio(cash=100.0), Order(4, TS, 0.5, "x"), TS, 5.0)
    assert half is not None and half.units == pytest.approx(10.0)
    short = broker.fill(Portfolio(cash=100.0), Order(5, TS, -1.0, "x"), TS, 5.0)
    assert short is not None and short.units == pytest.approx(-20.0)


def test_order_round_trips_through_dict() -> None:
    o = Order(7, TS, -0.5, "max_position")
    assert Order.from_dict(o.to_dict()) == o
