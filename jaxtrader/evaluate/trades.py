"""The backtest's trades, one row per non-flat holding period (`evaluate --trades FILE.csv` and
the markers of the report's price chart).

Read off the backtest's own per-row output (position, fee, equity of `EvalRows`, produced by
`backtest.simulate`) and candle rows (`backtest.period_returns` gives each period's span), so the
fee rule lives only in `backtest.simulate`: this module never recomputes a cost. Amounts are in
units of the starting equity (1.0), like the backtest. Per trade:

- entry at the open of the candle after its first decision, exit at the open after the decision
  that ends it (or the close of the last candle, where everything is liquidated);
- fees: the part of the fee charged at the entry row for the entry leg, plus the part charged at
  the exit row for the exit leg (a flip's fee is split between the two legs by units traded);
- pnl_net: account value after the exit fee minus the value before the entry fee, so the trades'
  pnl_net sum to the backtest's final equity - 1 and their fees to its fees_paid, exactly;
- pnl_gross = pnl_net + fees (the price move on the position; before costs).

A trade entered on the very last decision row pays its entry and its final exit in that row's one
fee; the split between the two legs (which only `quantity` uses) is then by units, an estimate.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxtrader.evaluate import backtest as bt

TRADE_COLUMNS = (
    "entry_time",
    "exit_time",
    "side",
    "entry_price",
    "exit_price",
    "size",
    "quantity",
    "holding_candles",
    "fees",
    "pnl_gross",
    "pnl_net",
    "return_net",
)


@dataclass(frozen=True)
class Trade:
    entry_time_ns: int
    exit_time_ns: int
    side: str  # long | short
    entry_price: float
    exit_price: float
    size: float  # position as a fraction of equity (+1 long, -1 short)
    quantity: float  # asset units held, per 1.0 of starting equity
    holding_candles: int
    fees: float
    pnl_gross: float
    pnl_net: float
    return_net: float  # pnl_net / account value before the entry fee


def _legs(position: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Units closed (exit leg) and opened (entry leg) at each row, and the final close-out."""
    prev = np.concatenate([[0.0], position[:-1]])
    changed = position != prev
    exit_units = np.where(changed & (prev != 0), np.abs(prev), 0.0)
    entry_units = np.where(changed & (position != 0), np.abs(position), 0.0)
    return exit_units, entry_units, float(abs(position[-1]))


def extract_trades(
    *,
    position: np.ndarray,
    fee: np.ndarray,
    equity: np.ndarray,
    candle_rows: np.ndarray,
    timestamps_ns: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
) -> list[Trade]:
    """The trades of a backtest. `position`, `fee` and `equity` are per decision row (as in
    `EvalRows`); `candle_rows` index the full candle arrays `timestamps_ns`, `open_`, `close`.
    Positions are long/flat/short of one size each (as `decisions.positions_from_probs` makes)."""
    pos = np.asarray(position, dtype=np.float64)
    fee = np.asarray(fee, dtype=np.float64)
    eq = np.asarray(equity, dtype=np.float64)
    t = np.asarray(candle_rows, dtype=np.int64)
    n = pos.size
    if n == 0:
        return []
    _, span = bt.period_returns(open_, close, t)
    exit_units, entry_units, final_units = _legs(pos)
    # Each row's fee split between the legs traded there, by units (the final close-out is a leg
    # of the last row).
    final_leg = np.zeros(n)
    final_leg[-1] = final_units
    units = exit_units + entry_units + final_leg
    share = np.divide(fee, units, out=np.zeros(n), where=units > 0)
    exit_fee, entry_fee, final_fee = (
        share * exit_units,
        share * entry_units,
        share[-1] * final_units,
    )
    before = np.concatenate([[1.0], eq[:-1]])  # account value at the start of each row

    prev = np.concatenate([[0.0], pos[:-1]])
    starts = np.flatnonzero((pos != prev) & (pos != 0))
    trades = []
    for s in starts:
        e = s
        while e + 1 < n and pos[e + 1] == pos[s]:
            e += 1
        start_value = before[s] - exit_fee[s]  # after closing the previous trade (a flip)
        if e + 1 < n:
            out_fee = exit_fee[e + 1]
            end_value = eq[e] - out_fee
            exit_idx = t[e + 1] + 1
            exit_price, exit_ns = float(open_[exit_idx]), int(timestamps_ns[exit_idx])
        else:
            out_fee = final_fee
            end_value = eq[e]  # the last row's equity is after the final close-out
            exit_idx = t[e] + 1
            exit_price = float(close[exit_idx])
            # Liquidated at the close of the last candle: its close time.
            step = int(timestamps_ns[exit_idx]) - int(timestamps_ns[exit_idx - 1])
            exit_ns = int(timestamps_ns[exit_idx]) + step
        entry_idx = t[s] + 1
        fees = float(entry_fee[s] + out_fee)
        pnl_net = float(end_value - start_value)
        entry_price = float(open_[entry_idx])
        trades.append(
            Trade(
                entry_time_ns=int(timestamps_ns[entry_idx]),
                exit_time_ns=exit_ns,
                side="long" if pos[s] > 0 else "short",
                entry_price=entry_price,
                exit_price=exit_price,
                size=float(pos[s]),
                quantity=float((start_value - entry_fee[s]) * abs(pos[s]) / entry_price),
                holding_candles=int(span[s : e + 1].sum()),
                fees=fees,
                pnl_gross=pnl_net + fees,
                pnl_net=pnl_net,
                return_net=pnl_net / start_value if start_value > 0 else float("nan"),
            )
        )
    return trades


def _iso(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def write_table_csv(
    path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> Path:
    """A CSV with a header; floats (numpy's too) at full precision (repr) so totals recompute
    exactly. A name ending in .gz is written gzip-compressed, as pandas and zcat read it."""
    import gzip

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with (
        gzip.open(p, "wt", newline="", encoding="utf-8")
        if p.name.lower().endswith(".gz")
        else p.open("w", newline="", encoding="utf-8")
    ) as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(
                [repr(float(v)) if isinstance(v, float | np.floating) else str(v) for v in row]
            )
    return p


def write_trades_csv(trades: list[Trade], path: str | Path) -> Path:
    """One line per trade (`TRADE_COLUMNS`)."""
    rows = (
        (_iso(t.entry_time_ns), _iso(t.exit_time_ns), *(getattr(t, c) for c in TRADE_COLUMNS[2:]))
        for t in trades
    )
    return write_table_csv(path, TRADE_COLUMNS, rows)


def totals(trades: list[Trade]) -> dict[str, float | int]:
    """The export's totals (what the report's `trades_export` records)."""
    return {
        "trades": len(trades),
        "fees": float(sum(t.fees for t in trades)),
        "pnl_gross": float(sum(t.pnl_gross for t in trades)),
        "pnl_net": float(sum(t.pnl_net for t in trades)),
    }
