"""Typed records of one strategy, as the manager hands them to the SQLite store.

`StrategyState` is what a restart resumes from (stored as one JSON document, the layout existing
state files already hold); `SignalRecord`, `FillRecord`, `PositionSnapshot` and `EquitySnapshot`
are one row each of the `signals`, `fills`, `positions` and `equity` tables (columns of the same
names).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxtrader.decisions import PolicyState
from jaxtrader.trading.broker import Order
from jaxtrader.trading.portfolio import Portfolio
from jaxtrader.trading.risk import RiskState


@dataclass(frozen=True)
class StrategyState:
    """Portfolio, risk state, the order waiting for the next open, the last target and counters."""

    portfolio: Portfolio
    risk: RiskState = field(default_factory=RiskState)
    pending: Order | None = None
    target: float = 0.0  # the exposure held or ordered
    next_order_id: int = 1
    last_close: float = math.nan  # NaN before the first candle
    counts: Mapping[str, int] = field(default_factory=dict)
    # The decision policy's own state (position, candles held); None in state files written
    # before policies, which the manager then derives from `target`.
    policy_state: PolicyState | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "portfolio": self.portfolio.to_dict(),
            "risk": self.risk.to_dict(),
            "pending": None if self.pending is None else self.pending.to_dict(),
            "target": self.target,
            "next_order_id": self.next_order_id,
            "last_close": None if math.isnan(self.last_close) else self.last_close,
            "counts": dict(self.counts),
        }
        if self.policy_state is not None:
            d["policy_state"] = {
                "position": self.policy_state.position,
                "held": self.policy_state.held,
            }
        return d

    @classmethod
    def from_dict(cls, s: Mapping[str, Any]) -> StrategyState:
        return cls(
            portfolio=Portfolio.from_dict(s["portfolio"]),
            risk=RiskState.from_dict(s["risk"]),
            pending=None if s["pending"] is None else Order.from_dict(s["pending"]),
            target=float(s["target"]),
            next_order_id=int(s["next_order_id"]),
            last_close=float(s["last_close"]) if s["last_close"] is not None else math.nan,
            counts=dict(s["counts"]),
            policy_state=(
                PolicyState(int(ps["position"]), int(ps["held"]))
                if (ps := s.get("policy_state"))
                else None
            ),
        )


@dataclass(frozen=True)
class SignalRecord:
    """What the strategy decided at a close: P(up), the signal before risk, and risk's verdict."""

    prob_up: float | None
    desired: float | None  # the signal before risk (None = neutral)
    fallback: str | None  # why the signal is neutral, when the model gave none
    action: str  # allow | clamp | hold | block | exit
    reason: str
    target: float
    latency_ms: float


@dataclass(frozen=True)
class FillRecord:
    """One execution at a candle's open; `trade_pnl` is set when it closed a trade."""

    order_id: int
    units: float
    price: float
    fee: float
    realized: float
    trade_pnl: float | None


@dataclass(frozen=True)
class PositionSnapshot:
    """Holdings after a candle."""

    units: float
    avg_entry: float
    cash: float
    realized_pnl: float
    fees: float

    @classmethod
    def of(cls, pf: Portfolio) -> PositionSnapshot:
        return cls(pf.units, pf.avg_entry, pf.cash, pf.realized_pnl, pf.fees)


@dataclass(frozen=True)
class EquitySnapshot:
    """Equity marked at a candle's close."""

    close: float
    equity: float
    unrealized: float
