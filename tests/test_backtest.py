"""Backtest on hand-made series whose right answers are known exactly."""

from __future__ import annotations

import math

import chex
import numpy as np
import pytest

from jaxtrader.decisions import positions_from_probs
from jaxtrader.evaluate import backtest as bt

C = 0.001  # 10 bps


def _reference(
    positions: np.ndarray, asset_returns: np.ndarray, fee: float
) -> tuple[np.ndarray, np.ndarray]:
    """A plain loop in the exchange's terms (equity and fees per row): going long from flat buys
    E / (P (1 + fee)) units (from a short, the cover's fee is paid from the same equity), a
    short sets units = -E / P, and every fill pays fee x |units traded| x P in cash."""
    cash, units, price, prev = 1.0, 0.0, 1.0, 0.0
    eq, fees = [], []
    for pos, r in zip(positions, asset_returns, strict=True):
        paid = 0.0
        if pos != prev:
            e = cash + units * price
            # Buying into a long (from flat or out of a short) pays every fee from the equity:
            # new * price = E - fee, fee = (new - units) * price * fee_rate.
            new = (e + fee * price * units) / (price * (1 + fee)) if pos == 1 else pos * e / price
            paid = abs(new - units) * price * fee
            cash -= (new - units) * price + paid
            units = new
        price *= 1.0 + r
        eq.append(cash + units * price)
        fees.append(paid)
        prev = pos
    paid = abs(units) * price * fee
    eq[-1] = cash + units * price - paid
    fees[-1] += paid
    return np.array(eq), np.array(fees)


def test_perfect_oracle_has_the_known_total_return() -> None:
    # open prices; the oracle is long exactly when the next open-to-open move is up.
    open_ = np.array([100.0, 100.0, 110.0, 99.0, 108.9, 119.79, 119.79])
    close = np.array([100.0, 110.0, 99.0, 108.9, 119.79, 119.79, 119.79])
    rows = np.arange(5)
    r, span = bt.period_returns(open_, close, rows)
    chex.assert_trees_all_close(r, np.array([0.1, -0.1, 0.1, 0.1, 0.0]), rtol=1e-12)
    chex.assert_trees_all_equal(span, np.ones(5, dtype=np.int64))
    oracle = (r > 0).astype(np.float64)
    no_fee = bt.simulate(oracle, r, 0.0)
    assert no_fee.equity[-1] == pytest.approx(1.1**3, rel=1e-12)
    # With fees: entry at row 0, exit at row 1, entry at row 2, exit at row 4 -> 4 fees.
    with_fee = bt.simulate(oracle, r, C)
    # Each round trip: buy 1 / (1 + C) of the equity's worth, sell it back paying C: (1-C)/(1+C).
    expected = 1.1**3 * ((1 - C) / (1 + C)) ** 2
    assert with_fee.equity[-1] == pytest.approx(expected, rel=1e-12)
    chex.assert_trees_all_close(with_fee.equity, _reference(oracle, r, C)[0], rtol=1e-12)
    assert with_fee.trade_returns.size == 2


def test_always_flat_has_zero_return_and_zero_fees() -> None:
    r = np.random.default_rng(0).normal(0, 0.02, 200)
    s = bt.simulate(np.zeros(200), r, C)
    chex.assert_trees_all_equal(s.equity, np.ones(200))
    chex.assert_trees_all_equal(s.fee, np.zeros(200))
    perf = bt.performance(s, 8760)
    assert perf["total_return"] == 0.0
    assert perf["fees_paid"] == 0.0
    assert perf["trades"] == 0
    assert perf["sharpe"] == 0.0
    assert perf["max_drawdown"] == 0.0
    assert perf["exposure"] == 0.0
    assert perf["win_rate"] is None


def test_fees_are_charged_exactly_twice_per_round_trip() -> None:
    r = np.zeros(6)
    pos = np.array([0, 1, 1, 1, 0, 0], dtype=np.float64)
    s = bt.simulate(pos, r, C)
    # Buy u = 1 / (1 + C) units at 1 paying C u; sell them at 1 paying C u again.
    u = 1 / (1 + C)
    assert s.equity[-1] == pytest.approx((1 - C) / (1 + C), rel=1e-15)
    chex.assert_trees_all_close(s.fee, np.array([0, C * u, 0, 0, C * u, 0]), rtol=1e-15)
    assert s.turnover.sum() == 2.0
    perf = bt.performance(s, 8760)
    assert perf["trades"] == 1
    assert perf["fees_paid"] == pytest.approx(2 * C * u, rel=1e-15)
    # The old rule (fee x equity, invest the rest) gave (1 - C)^2: 1 / (1 - C^2) per entry apart.
    assert s.equity[-1] / (1 - C) ** 2 == pytest.approx(1 / ((1 + C) * (1 - C)), rel=1e-15)
    # Holding to the end: the final close-out pays the exit, so still exactly two fees.
    held = bt.simulate(np.array([0, 1, 1, 1, 1, 1.0]), r, C)
    assert held.equity[-1] == pytest.approx((1 - C) / (1 + C), rel=1e-15)
    assert held.turnover.sum() == 2.0


def test_positions_change_only_when_the_signal_changes() -> None:
    pos = positions_from_probs(np.array([0.6, 0.7, 0.9, 0.55, 0.4, 0.3]), 0.5)
    s = bt.simulate(pos, np.zeros(6), C)
    chex.assert_trees_all_equal(s.turnover, np.array([1.0, 0, 0, 0, 1, 0]))


def test_fill_is_at_next_open_never_at_the_decision_close() -> None:
    # Candle 0 closes at 100, candle 1 opens at 120 (an overnight-style gap up), candle 2 opens at
    # 126. A decision at the close of 0 is filled at 120: +5%. Filling at close[0] = 100 would
    # claim +26%.
    open_ = np.array([100.0, 120.0, 126.0, 126.0])
    close = np.array([100.0, 125.0, 126.0, 126.0])
    rows = np.array([0, 1])
    r, _ = bt.period_returns(open_, close, rows)
    pos = positions_from_probs(np.array([0.9, 0.1]), 0.5)
    s = bt.simulate(pos, r, 0.0)
    assert s.equity[0] == pytest.approx(126.0 / 120.0, rel=1e-15)
    assert s.equity[-1] == pytest.approx(1.05, rel=1e-15)
    wrong = close[1] / close[0]  # close-to-close with the decision candle's own close
    assert not math.isclose(s.equity[-1], wrong, rel_tol=1e-3)


def test_last_row_is_marked_at_the_close_of_its_fill_candle() -> None:
    open_ = np.array([10.0, 10.0, 12.0])
    close = np.array([10.0, 11.0, 12.0])
    r, _ = bt.period_returns(open_, close, np.array([0]))
    chex.assert_trees_all_close(r, np.array([0.1]), rtol=1e-15)
    with pytest.raises(ValueError, match="next candle"):
        bt.period_returns(open_, close, np.array([2]))


def test_long_short_flip_pays_two_units() -> None:
    r = np.array([0.0, 0.0, 0.0])
    pos = positions_from_probs(np.array([0.8, 0.2, 0.2]), 0.6, long_short=True)
    chex.assert_trees_all_equal(pos, np.array([1.0, -1.0, -1.0]))
    s = bt.simulate(pos, r, C)
    chex.assert_trees_all_equal(s.turnover, np.array([1.0, 2.0, 1.0]))
    # Long u = 1/(1+C) (equity 1/(1+C) after the fee); the flip sells 2u in one order (fee 2Cu)
    # to hold -u; covering buys u back (fee Cu): 1 - 3C u in the end at a constant price.
    u = 1 / (1 + C)
    assert s.fee[1] == pytest.approx(2 * C * u, rel=1e-15)
    assert s.equity[-1] == pytest.approx((1 - 3 * C) * u, rel=1e-15)
    # Between the thresholds the long-short strategy is flat.
    mid = positions_from_probs(np.array([0.45, 0.5, 0.55]), 0.6, long_short=True)
    chex.assert_trees_all_equal(mid, np.zeros(3))


def test_short_is_a_fixed_quantity_and_is_floored_at_ruin() -> None:
    r = np.array([0.1, 0.1])  # price 100 -> 110 -> 121
    s = bt.simulate(np.array([-1.0, -1.0]), r, 0.0)
    # A fixed short from 100: 1 - 0.10, then 1 - 0.21 (not 0.9 * 0.9 = 0.81 of a daily rebalance).
    chex.assert_trees_all_close(s.equity, np.array([0.9, 0.79]), rtol=1e-12)
    ruined = bt.simulate(np.array([-1.0, -1.0, -1.0]), np.array([1.5, 0.0, -0.5]), 0.0)
    chex.assert_trees_all_equal(ruined.equity, np.zeros(3))
    assert ruined.strategy_return[0] == -1.0


def test_matches_a_plain_loop_on_random_signals() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.01, 500)
    pos = rng.choice([-1.0, 0.0, 1.0], size=500, p=[0.2, 0.5, 0.3])
    s = bt.simulate(pos, r, 0.0015)
    ref_equity, ref_fee = _reference(pos, r, 0.0015)
    chex.assert_trees_all_close(s.equity, ref_equity, rtol=1e-10)
    chex.assert_trees_all_close(s.fee, ref_fee, rtol=1e-10, atol=1e-15)
    chex.assert_trees_all_close(np.cumprod(1 + s.strategy_return), s.equity, rtol=1e-10)


def test_gap_rows_hold_the_previous_decision_across_unevaluated_candles() -> None:
    # Candles 2 and 3 are gap-filled (not prediction points): row t=1's position is held from
    # open[2] until open[5], where the decision of t=4 takes effect.
    open_ = np.array([100.0, 100.0, 101.0, 101.0, 101.0, 110.0, 121.0])
    close = np.array([100.0, 101.0, 101.0, 101.0, 110.0, 121.0, 121.0])
    rows = np.array([0, 1, 4])
    r, span = bt.period_returns(open_, close, rows)
    chex.assert_trees_all_close(r, np.array([0.01, 110 / 101 - 1, 0.1]), rtol=1e-12)
    chex.assert_trees_all_equal(span, np.array([1, 3, 1]))


def test_buy_and_hold_pays_one_entry_and_one_exit() -> None:
    r = np.array([0.05, -0.02, 0.03])
    s = bt.simulate(np.ones(3), r, C)
    assert s.equity[-1] == pytest.approx((1 - C) / (1 + C) * 1.05 * 0.98 * 1.03, rel=1e-14)
    assert bt.performance(s, 8760)["trades"] == 1


def test_changing_a_later_signal_never_moves_earlier_equity() -> None:
    rng = np.random.default_rng(2)
    r = rng.normal(0, 0.01, 100)
    p = rng.random(100)
    base = bt.simulate(positions_from_probs(p), r, C)
    q = p.copy()
    q[60:] = 1.0 - q[60:]
    changed = bt.simulate(positions_from_probs(q), r, C)
    chex.assert_trees_all_equal(base.equity[:60], changed.equity[:60])
    assert not np.array_equal(base.equity[60:], changed.equity[60:])


def test_performance_statistics_by_hand() -> None:
    r = np.array([0.1, -0.05, 0.0, 0.02])
    s = bt.simulate(np.array([1.0, 1.0, 0.0, 1.0]), r, 0.0)
    perf = bt.performance(s, periods_per_year=4.0, span_periods=4.0)
    sr = s.strategy_return
    chex.assert_trees_all_close(sr, np.array([0.1, -0.05, 0.0, 0.02]), atol=1e-15)
    assert perf["sharpe"] == pytest.approx(sr.mean() / sr.std(ddof=1) * 2.0, rel=1e-12)
    downside = math.sqrt(0.05**2 / 4)
    assert perf["sortino"] == pytest.approx(sr.mean() / downside * 2.0, rel=1e-12)
    final = 1.1 * 0.95 * 1.02
    assert perf["total_return"] == pytest.approx(final - 1, rel=1e-12)
    assert perf["cagr"] == pytest.approx(final - 1, rel=1e-12)  # exactly one year
    assert perf["max_drawdown"] == pytest.approx(-0.05, rel=1e-12)
    assert perf["calmar"] == pytest.approx((final - 1) / 0.05, rel=1e-12)
    assert perf["trades"] == 2
    assert perf["win_rate"] == 1.0  # 1.1 * 0.95 = +4.5%, then +2%
    assert perf["profit_factor"] is None  # no losing trade: undefined, not infinity
    assert perf["exposure"] == 0.75


def test_changing_future_prices_never_moves_earlier_rows() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.01, 80))
    open_ = np.concatenate([[100.0], close[:-1]])
    rows = np.arange(10, 70)
    p = rng.random(rows.size)
    r, _ = bt.period_returns(open_, close, rows)
    s = bt.simulate(positions_from_probs(p), r, C)
    # Rewrite every price from candle 40 on: rows whose period ends at or before open[39]
    # (decisions at t <= 37, filled at open[t + 1], closed at open[t + 2]) must not move.
    open2, close2 = open_.copy(), close.copy()
    open2[40:] *= 1.5
    close2[40:] *= 0.7
    r2, _ = bt.period_returns(open2, close2, rows)
    s2 = bt.simulate(positions_from_probs(p), r2, C)
    keep = rows <= 37
    chex.assert_trees_all_equal(r[keep], r2[keep])
    chex.assert_trees_all_equal(s.equity[keep], s2.equity[keep])
    assert not np.array_equal(s.equity[~keep], s2.equity[~keep])
