"""What `jaxtrader portfolio` shows of a paper-trading strategy beyond its summary: the trades
(`--trades FILE.csv`), the buy-and-hold benchmark over the strategy's own span, and how a strategy
summary names its PnL and risk figures (`name_pnl_and_risk`: net/gross PnL, clamps apart from risk
events), which `trade` prints too.

The trades and the benchmark are read from the state file and replayed through the trading code itself, so no fee or PnL
rule is restated here: trades replay the stored fills through `portfolio.apply_fill` (gross PnL =
realized price move, net = `closed_trade_pnl`, fees = the difference); buy-and-hold buys with the
whole capital through `PaperBroker.fill` (the same slippage and fee) at the first open the
strategy could have traded, and is marked at the same closes as the strategy's equity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from jaxtrader.config import TradeRules
from jaxtrader.data import timestamps_ns
from jaxtrader.decisions import annualization, max_drawdown, sharpe
from jaxtrader.evaluate.trades import write_table_csv
from jaxtrader.trading.broker import Order, PaperBroker
from jaxtrader.trading.portfolio import Portfolio, apply_fill
from jaxtrader.trading.risk import NOT_EVENTS

if TYPE_CHECKING:
    from jaxtrader.trading.store import Store

PAPER_TRADE_COLUMNS = (
    "strategy_id",
    "entry_time",
    "exit_time",
    "status",
    "side",
    "entry_price",
    "exit_price",
    "size",
    "holding_candles",
    "fees",
    "pnl_gross",
    "pnl_net",
)


@dataclass(frozen=True)
class PaperTrade:
    """One position from opening to flat (or flip). An open one is marked at the last close."""

    strategy_id: str
    entry_time: str
    exit_time: str
    status: str  # closed | open
    side: str
    entry_price: float  # the average entry (size-weighted over adds)
    exit_price: float  # the closing fill's price, or the last close for an open trade
    size: float  # largest absolute units held
    holding_candles: int
    fees: float  # entry and exit fills' fees (a flip's fee split by the units closed)
    pnl_gross: float
    pnl_net: float


def _rules(config: dict[str, Any]) -> TradeRules:
    names = TradeRules.__dataclass_fields__
    return TradeRules(**{k: v for k, v in config.items() if k in names})


def paper_trades(store: Store, sid: str) -> list[PaperTrade]:
    """The strategy's trades from its fills; their pnl_net sum to equity - capital."""
    info = store.strategy(sid)
    if info is None:
        return []
    interval = pd.Timedelta(float(info["config"]["interval_s"]), unit="s")
    pf = Portfolio(cash=float(info["config"]["capital"]))
    trades: list[PaperTrade] = []
    opened: dict[str, Any] | None = None

    def close_trade(ts: str, price: float, gross: float, net: float, status: str) -> None:
        assert opened is not None
        trades.append(
            PaperTrade(
                strategy_id=sid,
                entry_time=opened["ts"],
                exit_time=ts,
                status=status,
                side=opened["side"],
                entry_price=opened["avg_entry"],
                exit_price=price,
                size=opened["size"],
                holding_candles=int((pd.Timestamp(ts) - pd.Timestamp(opened["ts"])) / interval),
                fees=gross - net,
                pnl_gross=gross,
                pnl_net=net,
            )
        )

    for f in store.rows("fills", sid):
        result = apply_fill(pf, float(f["units"]), float(f["price"]), float(f["fee"]))
        after = result.portfolio
        if opened is not None:
            opened["realized"] += result.realized
            opened["size"] = max(opened["size"], abs(after.units))
            if result.closed_trade_pnl is not None:
                close_trade(
                    f["ts"],
                    float(f["price"]),
                    opened["realized"],
                    result.closed_trade_pnl,
                    "closed",
                )
                opened = None
            else:
                opened["avg_entry"] = after.avg_entry
        if opened is None and after.units != 0:
            opened = {
                "ts": f["ts"],
                "side": "long" if after.units > 0 else "short",
                "avg_entry": after.avg_entry,
                "size": abs(after.units),
                "realized": 0.0,
            }
        pf = after
    if opened is not None:
        equity = store.rows("equity", sid)
        last_ts, last_close = equity[-1]["ts"], float(equity[-1]["close"])
        gross = opened["realized"] + pf.unrealized(last_close)
        close_trade(last_ts, last_close, gross, gross - pf.position_fees, "open")
    return trades


def write_paper_trades_csv(trades: list[PaperTrade], path: str | Path) -> Path:
    """One line per trade (`PAPER_TRADE_COLUMNS`)."""
    rows = ([getattr(t, c) for c in PAPER_TRADE_COLUMNS] for t in trades)
    return write_table_csv(path, PAPER_TRADE_COLUMNS, rows)


def buy_and_hold(store: Store, sid: str) -> dict[str, Any] | None:
    """Buy-and-hold over the strategy's own candles: the whole capital bought through the paper
    broker at the open after the first candle (the strategy's first possible fill), marked at each
    close; return, Sharpe and max drawdown computed as for the strategy. None before 2 candles."""
    info = store.strategy(sid)
    equity_rows = store.rows("equity", sid)
    if info is None or len(equity_rows) < 2:
        return None
    cfg = info["config"]
    capital = float(cfg["capital"])
    opens = {r["ts"]: r["open"] for r in store.rows("candles", sid)}
    first_fill_ts = equity_rows[1]["ts"]
    broker = PaperBroker(_rules(cfg))
    order = Order(0, pd.Timestamp(equity_rows[0]["ts"]), 1.0, "buy_and_hold")
    fill = broker.fill(
        Portfolio(cash=capital), order, pd.Timestamp(first_fill_ts), float(opens[first_fill_ts])
    )
    pf = fill.result.portfolio if fill is not None else Portfolio(cash=capital)
    marks = [float(r["close"]) for r in equity_rows[1:]]
    equity = np.array([capital, *(pf.equity(c) for c in marks)], dtype=np.float64)
    returns = equity[1:] / equity[:-1] - 1.0
    # Through data.timestamps_ns, as `manager.summarize` does for the strategy's Sharpe: `.asi8`
    # of parsed ISO strings is in microseconds on pandas 3, which hid the weekend candles.
    ts_ns = timestamps_ns([r["ts"] for r in equity_rows])
    ppy, _ = annualization(float(cfg["interval_s"]), ts_ns)
    return {
        "equity": float(equity[-1]),
        "return": float(equity[-1] / capital - 1.0),
        "sharpe": sharpe(np.concatenate([[0.0], returns]), ppy),
        "max_drawdown": max_drawdown(equity, start=capital),
        "fees": float(pf.fees),
        "first": first_fill_ts,
        "last": equity_rows[-1]["ts"],
    }


# Risk-event kinds that are routine sizing, not a limit being hit: `--max-position` trimming a
# full-size signal is recorded on every such candle and would drown the real events.
ROUTINE_KINDS = frozenset({"clamp"})


def name_pnl_and_risk(summary: dict[str, Any]) -> dict[str, Any]:
    """A strategy summary (`manager.summarize`) with PnL and risk figures named for what they are:

    - `pnl_net` = equity - capital (after every fee), `fees`, `pnl_gross` = pnl_net + fees, and
      `pnl_gross_realized` (closed positions only, before fees; was `realized_pnl`, which read
      like a net figure beside a losing return);
    - `position_clamps`: routine `--max-position` trims; `risk_events` / `risk_event_kinds`: the
      real events only (halts, breaker trips, stops, blocked orders; not `risk.NOT_EVENTS`).
    """
    out = dict(summary)
    if "realized_pnl" in out:
        out["pnl_gross_realized"] = out.pop("realized_pnl")
    if "equity" in out and "capital" in out:
        out["pnl_net"] = float(out["equity"]) - float(out["capital"])
        out["pnl_gross"] = out["pnl_net"] + float(out.get("fees", 0.0))
    kinds = {k: n for k, n in (out.get("risk_event_kinds") or {}).items() if k not in NOT_EVENTS}
    out["position_clamps"] = sum(kinds.pop(k, 0) for k in ROUTINE_KINDS)
    out["risk_event_kinds"] = kinds
    out["risk_events"] = sum(kinds.values())
    return out
