"""The per-strategy risk manager: pure functions from (limits, state, facts) to (decision, state).

Limits come from `RiskConfig`. Every decision carries a reason and every limit that acts emits a
`RiskEvent`, so the state file explains each trade that did or did not happen.

Policies (documented in the README):
- max position: |target exposure| is clamped to `max_position` (fraction of equity).
- daily drawdown: when equity at a close falls below the UTC day's starting equity (the equity at
  the previous day's last close) by `daily_drawdown`, the position is closed and new entries are
  halted until the next UTC day.
- circuit breaker: `breaker_failures` consecutive model failures or `breaker_losses` consecutive
  losing trades close the position at that candle and block entries for the next `cooldown`
  candles.
- stop-loss / take-profit: checked at each close against the average entry; exits at the next open.
- max trades per day: every order counts, exits included; once the day's count is reached, only
  orders that reduce the position pass (a flip from long to short is refused).
- neutral signal (model failure, short or gapped history): hold the current position, never add;
  after `max_neutral_hold` neutral candles in a row with a position, close it (0: hold on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd

from jaxtrader.config import RANGES, RISK_FLAGS, RiskConfig
from jaxtrader.errors import ConfigError


def check_limits(cfg: RiskConfig) -> None:
    """ConfigError naming the flag for a limit that makes no sense, checked before a strategy
    touches its state file: a negative max position would trade the opposite side, a limit of 0
    or NaN would never (or always) act. NaN and inf are outside every range, so refused too."""
    for flag, name, rule, _ in RISK_FLAGS:
        value = getattr(cfg, name)
        if value is not None and value not in RANGES[f"risk.{name}"]:
            raise ConfigError(f"{flag} must be {rule}, got {value}")


@dataclass(frozen=True)
class RiskState:
    day: str = ""  # current UTC day, YYYY-MM-DD
    day_start_equity: float = 0.0
    halted: bool = False  # daily-drawdown halt for `day`
    trades_today: int = 0
    model_failures: int = 0  # consecutive
    losing_trades: int = 0  # consecutive
    cooldown_left: int = 0  # candles
    neutral_held: int = 0  # consecutive neutral candles with a position held

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["neutral_held"]:  # added later: at 0, state documents keep their old layout
            del d["neutral_held"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskState:
        return cls(**d)


@dataclass(frozen=True)
class RiskEvent:
    kind: str
    reason: str


# Kinds recorded in `risk_events` for the record that are no limit being hit: a new UTC day
# lifting a daily-drawdown halt follows every such halt, so counting it counted each halt twice.
NOT_EVENTS = frozenset({"halt_lifted"})


@dataclass(frozen=True)
class RiskDecision:
    """The target exposure after risk, what risk did to the desired one, and why."""

    target: float
    action: str  # allow | clamp | hold | block | exit
    reason: str


def start_candle(
    state: RiskState, ts: pd.Timestamp, equity_before: float
) -> tuple[RiskState, list[RiskEvent]]:
    """Rolls the UTC day: resets the day's drawdown anchor, halt and trade count."""
    day = ts.strftime("%Y-%m-%d")
    if day == state.day:
        return state, []
    events = []
    if state.halted:
        events.append(RiskEvent("halt_lifted", f"new UTC day {day}"))
    new = dataclasses.replace(
        state, day=day, day_start_equity=equity_before, halted=False, trades_today=0
    )
    return new, events


def on_model_result(
    cfg: RiskConfig, state: RiskState, failed: bool, why: str = ""
) -> tuple[RiskState, list[RiskEvent]]:
    """Counts consecutive model failures; trips the breaker at `breaker_failures`."""
    if not failed:
        return dataclasses.replace(state, model_failures=0), []
    n = state.model_failures + 1
    if n >= cfg.breaker_failures:
        return _trip(state, f"{n} consecutive model failures (last: {why})", cfg.cooldown)
    return dataclasses.replace(state, model_failures=n), []


def on_trade_closed(
    cfg: RiskConfig, state: RiskState, net_pnl: float
) -> tuple[RiskState, list[RiskEvent]]:
    """Counts consecutive losing trades (net of fees); trips the breaker at `breaker_losses`."""
    if net_pnl >= 0:
        return dataclasses.replace(state, losing_trades=0), []
    n = state.losing_trades + 1
    if n >= cfg.breaker_losses:
        return _trip(state, f"{n} consecutive losing trades", cfg.cooldown)
    return dataclasses.replace(state, losing_trades=n), []


def _trip(state: RiskState, reason: str, cooldown: int) -> tuple[RiskState, list[RiskEvent]]:
    # +1: the tripping candle itself (which closes the position) does not count as cooldown.
    new = dataclasses.replace(state, model_failures=0, losing_trades=0, cooldown_left=cooldown + 1)
    return new, [RiskEvent("circuit_breaker", f"{reason}; cooling down {cooldown} candles")]


def decide(
    cfg: RiskConfig,
    state: RiskState,
    *,
    desired: float | None,
    current: float,
    equity: float,
    close: float,
    units: float,
    avg_entry: float,
) -> tuple[RiskDecision, RiskState, list[RiskEvent]]:
    """Turns the strategy's desired exposure (None = neutral) into the target after all limits.

    `current` is the exposure the strategy holds or has ordered (its last target).
    """
    events: list[RiskEvent] = []
    if desired is not None and state.neutral_held:
        state = dataclasses.replace(state, neutral_held=0)
    # Circuit-breaker cooldown: flat and no entries until it runs out.
    if state.cooldown_left > 0:
        state = dataclasses.replace(state, cooldown_left=state.cooldown_left - 1)
        return _flat(current, "circuit_breaker", state, events)
    # Daily drawdown from the UTC day's starting equity.
    if not state.halted and state.day_start_equity > 0:
        dd = 1.0 - equity / state.day_start_equity
        if dd >= cfg.daily_drawdown:
            state = dataclasses.replace(state, halted=True)
            events.append(
                RiskEvent(
                    "daily_drawdown",
                    f"equity {equity:.2f} is {dd:.2%} below the day's start "
                    f"{state.day_start_equity:.2f} (limit {cfg.daily_drawdown:.2%}); halted "
                    f"until the next UTC day",
                )
            )
    if state.halted:
        return _flat(current, "daily_drawdown", state, events)
    # Stop-loss / take-profit against the position's average entry.
    if units != 0 and avg_entry > 0:
        ret = (close / avg_entry - 1.0) * (1.0 if units > 0 else -1.0)
        for kind, limit, hit in (
            ("stop_loss", cfg.stop_loss, cfg.stop_loss is not None and ret <= -cfg.stop_loss),
            (
                "take_profit",
                cfg.take_profit,
                cfg.take_profit is not None and ret >= cfg.take_profit,
            ),
        ):
            if hit:
                events.append(RiskEvent(kind, f"return {ret:.2%} vs entry hit {kind} {limit}"))
                return RiskDecision(0.0, "exit", kind), state, events
    if desired is None:
        held = state.neutral_held + 1 if current != 0 else 0
        if cfg.max_neutral_hold and held >= cfg.max_neutral_hold:
            events.append(
                RiskEvent(
                    "max_neutral_hold",
                    f"{held} candles in a row without a model signal with a position held "
                    f"(limit {cfg.max_neutral_hold})",
                )
            )
            return RiskDecision(0.0, "exit", "max_neutral_hold"), _held(state, 0), events
        return RiskDecision(current, "hold", "neutral"), _held(state, held), events
    target, action, reason = desired, "allow", "signal"
    if abs(desired) > cfg.max_position:
        target = cfg.max_position if desired > 0 else -cfg.max_position
        action, reason = "clamp", "max_position"
    if target != current and cfg.max_trades_per_day is not None:
        reduces = abs(target) < abs(current) and target * current >= 0
        if not reduces and state.trades_today >= cfg.max_trades_per_day:
            events.append(
                RiskEvent(
                    "max_trades_per_day",
                    f"{state.trades_today} orders today (limit {cfg.max_trades_per_day})",
                )
            )
            return RiskDecision(current, "block", "max_trades_per_day"), state, events
    return RiskDecision(target, action, reason), state, events


def _held(state: RiskState, n: int) -> RiskState:
    return state if state.neutral_held == n else dataclasses.replace(state, neutral_held=n)


def _flat(
    current: float, reason: str, state: RiskState, events: list[RiskEvent]
) -> tuple[RiskDecision, RiskState, list[RiskEvent]]:
    if current != 0:
        return RiskDecision(0.0, "exit", reason), state, events
    return RiskDecision(0.0, "block", reason), state, events


def count_order(state: RiskState) -> RiskState:
    return dataclasses.replace(state, trades_today=state.trades_today + 1)
