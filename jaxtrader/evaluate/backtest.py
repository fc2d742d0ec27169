"""A vectorized, causal, fee-aware backtest of P(up) signals.

Timing (the whole contract, also in the README):
- Row i is a prediction point: the position is decided at the CLOSE of candle t_i from
  prob_up[i], by the caller's decision policy (`decisions.policy_positions`; the plain threshold
  rule is one such policy).
- It is filled at the OPEN of candle t_i + 1 and held until the open of candle t_{i+1} + 1, where
  the next decision takes effect. Row i therefore earns the open-to-open return
  open[t_{i+1} + 1] / open[t_i + 1] - 1. Candles that are not prediction points (gap-filled ones)
  sit inside such a period: the previous decision is simply held across them. The last row's
  period ends at the close of candle t_last + 1, where everything is liquidated.
- The close of candle t is never a fill price for a decision taken at that close.
- Costs: the exchange's rule, the paper broker's, fill for fill (`decisions.order_fill`): an order
  for a target exposure fills at the open moved against the trader by the slippage; a long buys
  equity / (price x (1 + fee)) units (fee included in the spend), and the fee is fee_bps / 1e4 of
  the notional. Positions change only when the signal changes; a long <-> short flip trades twice
  the size; an open position is closed at the end so the strategy and buy-and-hold pay the same
  exit. So a trade replay of the same positions gives the same equity to ~1e-12 (tested).
- Marking: while a position is held its equity is cash + units x P, with P the open-to-open
  compounded price, i.e. a fixed quantity bought (or sold short) at the entry, not a short
  rebalanced every candle. Equity is floored at 0 (a ruined short).

Positions are given (from `jaxtrader.decisions`); the fill rule, Sharpe and drawdown come from the
same module, with the caller's periods per year (`decisions.annualization`), so evaluation and
trading decide and score alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxtrader.config import TradeRules
from jaxtrader.decisions import max_drawdown, order_fill, sharpe


def period_returns(
    open_: np.ndarray, close: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per decision row: the return its position earns and how many candles its period spans.

    `rows` are candle indices t_i (ascending) into the full `open_`/`close` arrays. Row i earns
    open[t_{i+1} + 1] / open[t_i + 1] - 1 and the last row close[t_last + 1] / open[t_last + 1] - 1.
    """
    t = np.asarray(rows, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if np.any(np.diff(t) <= 0):
        raise ValueError("decision rows must be strictly increasing")
    if t[-1] + 1 >= len(open_):
        raise ValueError("the last decision needs the next candle to be filled")
    o = np.asarray(open_, dtype=np.float64)
    entry = o[t + 1]
    exit_ = np.empty_like(entry)
    exit_[:-1] = o[t[1:] + 1]
    exit_[-1] = float(close[t[-1] + 1])
    span = np.empty(t.size, dtype=np.int64)
    span[:-1] = np.diff(t)
    span[-1] = 1
    return exit_ / entry - 1.0, span


@dataclass(frozen=True)
class BacktestSeries:
    """Per-row backtest output; equity starts at 1.0 before the first row."""

    position: np.ndarray
    asset_return: np.ndarray
    turnover: np.ndarray  # units traded in this row (the last row includes the final close-out)
    fee: np.ndarray  # costs paid in this row, in units of the initial equity
    strategy_return: np.ndarray  # equity[i] / equity[i - 1] - 1
    equity: np.ndarray
    trade_returns: np.ndarray  # net return of each non-flat holding period (entry and exit costs)
    trade_pnl: np.ndarray  # the same in units of the initial equity


def rates(rules: TradeRules) -> tuple[float, float]:
    """(fee rate, slippage rate) as fractions of notional, from the rules' basis points."""
    return rules.fee_bps / 1e4, rules.slippage_bps / 1e4


def simulate(
    positions: np.ndarray,
    asset_returns: np.ndarray,
    fee_rate: float,
    slippage_rate: float = 0.0,
) -> BacktestSeries:
    """Runs the backtest for given positions (+1/0/-1, or fractions of equity) and per-row returns.

    Accounting is the paper broker's, fill for fill (`decisions.order_fill`): prices are the
    compounded open-to-open path (1.0 at the first fill), an order for a new target fills at the
    row's entry open moved against the trader by `slippage_rate`, buys `target x equity /
    (price x (1 + fee_rate))` units for a long, and pays `fee_rate` x notional in cash. The loop
    runs once per position change (a few thousand at most); rows inside a holding period are
    marked vectorized as cash + units x price.
    """
    pos = np.asarray(positions, dtype=np.float64)
    r = np.asarray(asset_returns, dtype=np.float64)
    if pos.shape != r.shape or pos.ndim != 1 or pos.size == 0:
        raise ValueError(
            f"positions {pos.shape} and returns {r.shape} must be equal, non-empty 1-D"
        )
    n = pos.size
    mark = np.cumprod(1.0 + r)  # price at the end of row i (relative to the first entry open)
    prev = np.concatenate([[0.0], pos[:-1]])
    turnover = np.abs(pos - prev)
    starts = np.flatnonzero((pos != prev) | (np.arange(n) == 0))
    ends = np.concatenate([starts[1:], [n]])
    # Scalars for the loop as Python floats; per-segment price extremes to detect ruin cheaply.
    entry_price = np.concatenate([[1.0], mark[:-1]])[starts].tolist()
    targets = pos[starts].tolist()
    low = np.minimum.reduceat(mark, starts).tolist()
    high = np.maximum.reduceat(mark, starts).tolist()

    fee = np.zeros(n)
    cash_seg = np.empty(starts.size)
    units_seg = np.empty(starts.size)
    ruins: list[tuple[int, int]] = []
    trade_ret: list[float] = []
    trade_pnl: list[float] = []
    cash, units = 1.0, 0.0
    book = _TradeBook()

    def trade(i: int, target: float, price: float) -> None:
        nonlocal cash, units
        done = order_fill(cash, units, target, price, fee_rate, slippage_rate)
        if done is None:
            return
        delta, px, f = done
        closed = book.fill(units, delta, px, f, cash + units * price)
        if closed is not None:
            trade_pnl.append(closed[0])
            trade_ret.append(closed[1])
        cash -= delta * px + f
        units += delta
        fee[i] += f + abs(delta) * abs(px - price)  # slippage is a cost too

    for j, k in enumerate(starts.tolist()):
        trade(k, targets[j], entry_price[j])
        cash_seg[j], units_seg[j] = cash, units
        worst = cash + units * (low[j] if units > 0 else high[j])
        if units != 0 and worst <= 0.0:
            # Ruin is absorbing: a wiped-out position holds nothing until the next change.
            e = int(ends[j])
            first = k + int(np.flatnonzero(cash + units * mark[k:e] <= 0.0)[0])
            ruins.append((first, e))
            trade_pnl.append(-book.base)
            trade_ret.append(-1.0)
            cash, units = 0.0, 0.0
            book.ruin()
    seg = np.repeat(np.arange(starts.size), ends - starts)
    equity = cash_seg[seg] + units_seg[seg] * mark
    for first, e in ruins:
        equity[first:e] = 0.0
    final_out = abs(pos[-1])
    trade(n - 1, 0.0, float(mark[-1]))
    equity[-1] = cash
    turnover = turnover.copy()
    turnover[-1] += final_out

    prev_equity = np.concatenate([[1.0], equity[:-1]])
    strategy_return = np.divide(equity, prev_equity, out=np.ones(n), where=prev_equity > 0) - 1.0
    return BacktestSeries(
        position=pos,
        asset_return=r,
        turnover=turnover,
        fee=fee,
        strategy_return=strategy_return,
        equity=equity,
        trade_returns=np.asarray(trade_ret, dtype=np.float64),
        trade_pnl=np.asarray(trade_pnl, dtype=np.float64),
    )


class _TradeBook:
    """Round trips in the portfolio's terms (`trading.portfolio.apply_fill`): a trade's PnL is
    its gross price gain minus the fees of its own entry and exit legs (a flip's fee is shared
    between the closed and the opened trade by size); its return is that PnL over the equity
    just before it opened."""

    def __init__(self) -> None:
        self.avg = 0.0
        self.fees = 0.0
        self.base = 1.0

    def ruin(self) -> None:
        self.avg, self.fees = 0.0, 0.0

    def fill(
        self, units: float, delta: float, price: float, fee: float, equity: float
    ) -> tuple[float, float] | None:
        new = units + delta
        if units == 0 or math.copysign(1.0, units) == math.copysign(1.0, delta):
            if units == 0:
                self.base, self.fees = equity, 0.0
            self.avg = (abs(units) * self.avg + abs(delta) * price) / abs(new)
            self.fees += fee
            return None
        if abs(delta) < abs(units) - 1e-12 * abs(units):  # a partial reduction keeps the trade
            self.fees += fee
            return None
        share = abs(units) / abs(delta)
        pnl = abs(units) * (price - self.avg) * math.copysign(1.0, units) - self.fees - fee * share
        out = (pnl, pnl / self.base if self.base > 0 else 0.0)
        self.base, self.avg, self.fees = equity, price, fee * (1.0 - share)
        return out


def drawdown_curve(equity: np.ndarray, start: float = 1.0) -> np.ndarray:
    """equity / running peak - 1 for each row (the running peak includes the starting equity)."""
    e = np.asarray(equity, dtype=np.float64)
    peak = np.maximum.accumulate(np.concatenate([[start], e]))[1:]
    return np.divide(e, peak, out=np.zeros_like(e), where=peak > 0) - 1.0


def performance(
    series: BacktestSeries, periods_per_year: float, span_periods: float | None = None
) -> dict[str, Any]:
    """Summary statistics of a backtest. `span_periods` (candles covered) defaults to the row count.

    Sharpe/Sortino use per-row returns (risk-free 0) times sqrt(periods_per_year); Calmar is
    CAGR / |max drawdown|; win rate and profit factor are per trade (non-flat holding period).
    Ratios that are undefined (no variance, no losing trade) are `None`. Months are twelfths of
    `span_periods / periods_per_year` years.
    """
    r = series.strategy_return
    n = r.size
    span = float(n if span_periods is None else span_periods)
    years = span / periods_per_year
    final = float(series.equity[-1])
    cagr = (final ** (1.0 / years) - 1.0) if final > 0 and years > 0 else -1.0
    downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))
    sortino = float(r.mean() / downside * math.sqrt(periods_per_year)) if downside > 0 else None
    mdd = max_drawdown(series.equity)
    wins = series.trade_pnl[series.trade_pnl > 0].sum()
    losses = -series.trade_pnl[series.trade_pnl < 0].sum()
    trades = int(series.trade_returns.size)
    return {
        "total_return": final - 1.0,
        "cagr": float(cagr),
        "sharpe": sharpe(r, periods_per_year),
        "sortino": sortino,
        "calmar": float(cagr / abs(mdd)) if mdd < 0 else None,
        "max_drawdown": mdd,
        "win_rate": float(np.mean(series.trade_returns > 0)) if trades else None,
        "profit_factor": float(wins / losses) if losses > 0 else None,
        "exposure": float(np.mean(series.position != 0)),
        "trades": trades,
        "turnover": float(series.turnover.sum()),
        # Activity: trades per month of 365.25 / 12 days, and candles held per trade.
        "trades_per_month": trades / (years * 12.0) if years > 0 else 0.0,
        "avg_holding_periods": float(np.mean(series.position != 0)) * span / trades
        if trades
        else None,
        "fees_paid": float(series.fee.sum()),
        "final_equity": final,
        "periods": n,
        "years": years,
    }
