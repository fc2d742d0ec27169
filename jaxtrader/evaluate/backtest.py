"""A vectorized, causal, fee-aware backtest of P(up) signals.

Timing (the whole contract, also in the README):
- Row i is a prediction point: the decision is made at the CLOSE of candle t_i from prob_up[i]
  (long when prob_up > threshold, flat otherwise; with long_short, short when prob_up <
  1 - threshold).
- It is filled at the OPEN of candle t_i + 1 and held until the open of candle t_{i+1} + 1, where
  the next decision takes effect. Row i therefore earns the open-to-open return
  open[t_{i+1} + 1] / open[t_i + 1] - 1. Candles that are not prediction points (gap-filled ones)
  sit inside such a period: the previous decision is simply held across them. The last row's
  period ends at the close of candle t_last + 1, where everything is liquidated.
- The close of candle t is never a fill price for a decision taken at that close.
- Costs: (fee_bps + slippage_bps) / 1e4 per unit of turnover, charged on the equity at the moment
  of the change. Positions change only when the signal changes; entering or leaving pays 1 unit,
  a long <-> short flip pays 2, and an open position is closed (1 unit) at the end so the strategy
  and buy-and-hold pay the same exit.
- Marking: while a position is held its equity is E_entry * (1 - cost) * (1 + pos * (P / P_entry -
  1)), with P the open-to-open compounded price, i.e. a fixed quantity bought (or sold short) at
  the entry, not a short rebalanced every candle. Equity is floored at 0 (a ruined short).

Positions come from `jaxtrader.decisions.positions_from_probs`, and the Sharpe, drawdown and
annualization from the same module, so evaluation and trading decide and score alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxtrader.decisions import max_drawdown, sharpe


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


def simulate(positions: np.ndarray, asset_returns: np.ndarray, cost_rate: float) -> BacktestSeries:
    """Runs the backtest for given positions (+1/0/-1, or fractions) and per-row asset returns."""
    pos = np.asarray(positions, dtype=np.float64)
    r = np.asarray(asset_returns, dtype=np.float64)
    if pos.shape != r.shape or pos.ndim != 1 or pos.size == 0:
        raise ValueError(
            f"positions {pos.shape} and returns {r.shape} must be equal, non-empty 1-D"
        )
    n = pos.size
    prev = np.concatenate([[0.0], pos[:-1]])
    turnover = np.abs(pos - prev)
    starts = np.flatnonzero((pos != prev) | (np.arange(n) == 0))
    seg = np.cumsum(np.isin(np.arange(n), starts)) - 1

    # Price path compounded within each holding period, relative to its entry open.
    growth_all = np.cumprod(1.0 + r)
    before = np.concatenate([[1.0], growth_all])[starts]
    growth = growth_all / before[seg]
    entry_cost = 1.0 - cost_rate * turnover[starts]
    raw = 1.0 + pos * (growth - 1.0)
    # Ruin is absorbing: once a holding period's value reaches 0 it cannot recover within it.
    hits = np.cumsum(raw <= 0.0)
    hits_before = np.concatenate([[0], hits])[starts]
    ruined = (hits - hits_before[seg]) > 0
    mult = entry_cost[seg] * np.where(ruined, 0.0, raw)
    ends = np.concatenate([starts[1:] - 1, [n - 1]])
    seg_mult = mult[ends]
    equity_before_seg = np.concatenate([[1.0], np.cumprod(seg_mult)[:-1]])
    equity = equity_before_seg[seg] * mult

    fee = np.zeros(n)
    fee[starts] = equity_before_seg * cost_rate * turnover[starts]
    final_out = abs(pos[-1])
    turnover = turnover.copy()
    turnover[-1] += final_out
    fee[-1] += equity[-1] * cost_rate * final_out
    equity[-1] *= 1.0 - cost_rate * final_out

    prev_equity = np.concatenate([[1.0], equity[:-1]])
    strategy_return = np.divide(equity, prev_equity, out=np.ones(n), where=prev_equity > 0) - 1.0

    # Trades: non-flat holding periods, charged their own entry and exit (not a flip's other leg).
    seg_pos = pos[starts]
    held = seg_pos != 0
    gross = np.where(ruined[ends], 0.0, raw[ends])
    unit_cost = 1.0 - cost_rate * np.abs(seg_pos)
    trade_returns = (unit_cost * gross * unit_cost - 1.0)[held]
    trade_pnl = (equity_before_seg * (unit_cost * gross * unit_cost - 1.0))[held]
    return BacktestSeries(
        position=pos,
        asset_return=r,
        turnover=turnover,
        fee=fee,
        strategy_return=strategy_return,
        equity=equity,
        trade_returns=trade_returns,
        trade_pnl=trade_pnl,
    )


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
    Ratios that are undefined (no variance, no losing trade) are `None`.
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
        "fees_paid": float(series.fee.sum()),
        "final_equity": final,
        "periods": n,
        "years": years,
    }
