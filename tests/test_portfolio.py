"""Portfolio accounting against hand calculations."""

from __future__ import annotations

import pytest

from jaxtrader.trading.portfolio import Portfolio, apply_fill


def test_round_trip_long_matches_hand_calculation() -> None:
    pf = Portfolio(cash=10_000.0)
    # Buy 2 units at 100 with a 0.2 fee, then 1 more at 130 with a 0.13 fee.
    r1 = apply_fill(pf, 2.0, 100.0, 0.2)
    r2 = apply_fill(r1.portfolio, 1.0, 130.0, 0.13)
    p = r2.portfolio
    assert p.cash == pytest.approx(10_000 - 200 - 0.2 - 130 - 0.13)
    assert p.avg_entry == pytest.approx((2 * 100 + 130) / 3)
    assert p.unrealized(120.0) == pytest.approx(3 * 120 - 330)
    assert p.equity(120.0) == pytest.approx(10_000 + 30 - 0.33)
    # Sell 1 at 140: realized (140 - 110) = 30; entry kept; trade not closed yet.
    r3 = apply_fill(p, -1.0, 140.0, 0.14)
    assert r3.realized == pytest.approx(30.0)
    assert r3.closed_trade_pnl is None
    assert r3.portfolio.avg_entry == pytest.approx(110.0)
    # Sell the remaining 2 at 90: realized 2 * (90 - 110) = -40; trade net = 30 - 40 - all fees.
    r4 = apply_fill(r3.portfolio, -2.0, 90.0, 0.18)
    q = r4.portfolio
    assert r4.realized == pytest.approx(-40.0)
    assert r4.closed_trade_pnl == pytest.approx(-40.0 - (0.2 + 0.13 + 0.14 + 0.18))
    assert (q.units, q.avg_entry, q.position_fees) == (0.0, 0.0, 0.0)
    assert q.realized_pnl == pytest.approx(-10.0)
    assert q.fees == pytest.approx(0.65)
    # Equity identity: capital + realized - fees when flat.
    assert q.equity(1.0) == pytest.approx(10_000 - 10 - 0.65)


def test_short_and_flip() -> None:
    pf = Portfolio(cash=1000.0)
    short = apply_fill(pf, -2.0, 50.0, 0.0).portfolio
    assert short.cash == pytest.approx(1100.0)
    assert short.unrealized(40.0) == pytest.approx(20.0)
    assert short.equity(40.0) == pytest.approx(1020.0)
    # Buy 3 at 40: closes the short (+20) and opens 1 long at 40.
    flip = apply_fill(short, 3.0, 40.0, 0.3)
    assert flip.realized == pytest.approx(20.0)
    assert flip.closed_trade_pnl == pytest.approx(20.0 - 0.2)  # two thirds of the fee
    assert flip.portfolio.units == pytest.approx(1.0)
    assert flip.portfolio.avg_entry == pytest.approx(40.0)
    assert flip.portfolio.position_fees == pytest.approx(0.1)


def test_invalid_fill_raises_and_serialises() -> None:
    with pytest.raises(ValueError, match="invalid fill"):
        apply_fill(Portfolio(cash=1.0), 1.0, float("nan"), 0.0)
    p = apply_fill(Portfolio(cash=500.0), 1.5, 10.0, 0.01).portfolio
    assert Portfolio.from_dict(p.to_dict()) == p
    assert p.exposure(10.0) == pytest.approx(15.0 / p.equity(10.0))


def test_opening_entry_is_the_fill_price_exactly() -> None:
    """The entry of a position opened from flat was |d| * price / |d|, one ulp off the fill price
    (107711.56000000001 for this real fill), noise that `portfolio --trades` printed."""
    price, units = 107711.56, 0.09274779782235065
    assert abs(units) * price / abs(units) != price  # the arithmetic the old code did
    for sign in (1.0, -1.0):
        opened = apply_fill(Portfolio(cash=10_000.0), sign * units, price, 9.99).portfolio
        assert opened.avg_entry == price
    # Adding still averages by size.
    added = apply_fill(apply_fill(Portfolio(cash=1e6), 1.0, 100.0, 0.0).portfolio, 3.0, 120.0, 0.0)
    assert added.portfolio.avg_entry == pytest.approx(115.0)
