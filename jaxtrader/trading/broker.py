"""The paper broker: market orders decided at the close of candle t fill at the OPEN of candle t+1.

Paper trading only; real order placement is out of scope. An order carries a target exposure (a
signed fraction of equity) rather than a quantity: the quantity is resolved at the fill price, like
a "buy with X% of equity" order, so a long never leaves negative cash after fees. The fill price is
the next candle's open moved against the trader by the slippage; the fee is charged on the notional.
No fill ever uses a price the strategy could not have seen when the candle opened.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from jaxtrader.config import TradeRules
from jaxtrader.decisions import order_fill, target_units
from jaxtrader.trading.portfolio import FillResult, Portfolio, apply_fill


@dataclass(frozen=True)
class Order:
    """A pending market order: decided at `decided_ts` (a candle close), fills at the next open."""

    order_id: int
    decided_ts: pd.Timestamp
    target: float  # signed exposure as a fraction of equity
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decided_ts"] = self.decided_ts.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Order:
        return cls(
            order_id=int(d["order_id"]),
            decided_ts=pd.Timestamp(d["decided_ts"]),
            target=float(d["target"]),
            reason=str(d["reason"]),
        )


@dataclass(frozen=True)
class Fill:
    """One execution: signed units at a price with a fee, plus the portfolio it produced."""

    order_id: int
    ts: pd.Timestamp
    units: float
    price: float
    fee: float
    result: FillResult


@dataclass(frozen=True)
class PaperBroker:
    """Fills with the rules' fee and slippage, both in basis points of notional."""

    rules: TradeRules = field(default_factory=TradeRules)

    def target_units(self, pf: Portfolio, target: float, price: float) -> float:
        """Units to hold after a fill at `price` so the position is `target` x equity
        (`decisions.target_units`: a growing long pays its fee from the same equity)."""
        return target_units(pf.cash, pf.units, target, price, self.rules.fee_bps / 1e4)

    def fill(self, pf: Portfolio, order: Order, ts: pd.Timestamp, open_price: float) -> Fill | None:
        """Executes `order` at the open of candle `ts`; None when nothing needs trading.
        The arithmetic is `decisions.order_fill`, the rule evaluate's backtest uses too."""
        done = order_fill(
            pf.cash,
            pf.units,
            order.target,
            open_price,
            self.rules.fee_bps / 1e4,
            self.rules.slippage_bps / 1e4,
        )
        if done is None:
            return None
        delta, price, fee = done
        return Fill(order.order_id, ts, delta, price, fee, apply_fill(pf, delta, price, fee))
