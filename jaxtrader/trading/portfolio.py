"""Portfolio accounting of one strategy: cash, position, average entry, realized/unrealized PnL, fees.

Pure functions over a frozen `Portfolio`. Units are signed (negative = short). Realized PnL is gross
of fees; fees are tracked separately, so equity = capital + realized + unrealized - fees at any time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Portfolio:
    """Holdings of one strategy. `position_fees` are the fees paid since the position was opened,
    so a closed trade's net PnL (for the losing-trade circuit breaker) includes both legs."""

    cash: float
    units: float = 0.0
    avg_entry: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0
    position_fees: float = 0.0

    def equity(self, price: float) -> float:
        return self.cash + self.units * price

    def unrealized(self, price: float) -> float:
        return (price - self.avg_entry) * self.units if self.units else 0.0

    def exposure(self, price: float) -> float:
        """Signed position value as a fraction of equity (0 when flat or equity is not positive)."""
        eq = self.equity(price)
        return self.units * price / eq if self.units and eq > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Portfolio:
        return cls(**{f.name: float(d[f.name]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class FillResult:
    """A portfolio after a fill and, when the fill closed (part of) a position, the trade's PnL."""

    portfolio: Portfolio
    realized: float  # gross PnL realized by this fill
    closed_trade_pnl: (
        float | None
    )  # net of both legs' fees when the position went to flat or flipped


def apply_fill(pf: Portfolio, delta_units: float, price: float, fee: float) -> FillResult:
    """Applies a signed trade of `delta_units` at `price` paying `fee` (cash)."""
    if not (math.isfinite(delta_units) and math.isfinite(price) and price > 0 and fee >= 0):
        raise ValueError(f"invalid fill: units={delta_units} price={price} fee={fee}")
    u0, u1 = pf.units, pf.units + delta_units
    cash = pf.cash - delta_units * price - fee
    realized = 0.0
    closed_trade_pnl: float | None = None
    position_fees = pf.position_fees + fee
    if u0 == 0:
        # Opening: the entry is the fill price itself; the average below, |d| * price / |d|, can
        # be off by one ulp (107711.56000000001), noise that showed in `portfolio --trades`.
        avg = price
    elif math.copysign(1.0, u0) == math.copysign(1.0, delta_units):
        # Adding: the entry is the size-weighted average price.
        avg = (abs(u0) * pf.avg_entry + abs(delta_units) * price) / abs(u1)
    else:
        closed = min(abs(delta_units), abs(u0))
        realized = closed * (price - pf.avg_entry) * math.copysign(1.0, u0)
        if abs(delta_units) < abs(u0) - 1e-12 * abs(u0):
            avg = pf.avg_entry  # partial reduction keeps the entry
        else:
            # Flat or flipped: the old trade is over; any remainder opens a new one at `price`.
            share = closed / abs(delta_units)
            closed_trade_pnl = realized - pf.position_fees - fee * share
            position_fees = fee * (1.0 - share)
            if abs(u1) <= 1e-12 * max(abs(u0), 1.0):
                u1, avg, position_fees = 0.0, 0.0, 0.0
            else:
                avg = price
    return FillResult(
        Portfolio(
            cash=cash,
            units=u1,
            avg_entry=avg,
            realized_pnl=pf.realized_pnl + realized,
            fees=pf.fees + fee,
            position_fees=position_fees,
        ),
        realized,
        closed_trade_pnl,
    )
