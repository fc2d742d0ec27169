"""Risk manager: every limit acts, with a reason, and only on its own state."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
import pytest

from jaxtrader.config import RiskConfig
from jaxtrader.errors import ConfigError
from jaxtrader.trading import risk
from jaxtrader.trading.risk import RiskState

DAY1 = pd.Timestamp("2024-03-01T05:00:00Z")


def _decide(cfg: RiskConfig, state: RiskState, **kw: float | None):  # type: ignore[no-untyped-def]
    args = {"desired": 1.0, "current": 0.0, "equity": 1000.0, "close": 100.0, "units": 0.0,
            "avg_entry": 0.0}  # fmt: skip
    args.update(kw)
    return risk.decide(cfg, state, **args)  # type: ignore[arg-type]


def test_max_position_clamps_both_sides() -> None:
    cfg = RiskConfig(max_position=0.4)
    d, _, _ = _decide(cfg, RiskState(), desired=1.0)
    assert (d.target, d.action, d.reason) == (0.4, "clamp", "max_position")
    d, _, _ = _decide(cfg, RiskState(), desired=-1.0)
    assert d.target == -0.4


def test_daily_drawdown_halts_until_next_utc_day() -> None:
    cfg = RiskConfig(daily_drawdown=0.05)
    state, _ = risk.start_candle(RiskState(), DAY1, 1000.0)
    assert (state.day, state.day_start_equity) == ("2024-03-01", 1000.0)
    d, state, _ = _decide(cfg, state, equity=951.0, current=1.0, units=10.0, avg_entry=95.1)
    assert d.action == "allow" and not state.halted  # 4.9% is inside the limit
    d, state, events = _decide(cfg, state, equity=950.0, current=1.0, units=10.0, avg_entry=95.1)
    assert (d.target, d.action, d.reason) == (0.0, "exit", "daily_drawdown")
    assert state.halted and events[0].kind == "daily_drawdown"
    # Same day: recovering equity does not lift the halt; entries are blocked.
    state, _ = risk.start_candle(state, DAY1 + pd.Timedelta(5, unit="h"), 990.0)
    d, state, _ = _decide(cfg, state, equity=990.0)
    assert (d.target, d.action) == (0.0, "block")
    # Next UTC day: the anchor is the equity before the day's first candle.
    state, events = risk.start_candle(state, pd.Timestamp("2024-03-02T00:00:00Z"), 990.0)
    assert not state.halted and state.day_start_equity == 990.0
    assert [e.kind for e in events] == ["halt_lifted"]
    d, _, _ = _decide(cfg, state, equity=990.0)
    assert d.target == 1.0


def test_breaker_on_model_failures_then_cooldown() -> None:
    cfg = RiskConfig(breaker_failures=3, cooldown=2)
    state = RiskState()
    for _ in range(2):
        state, ev = risk.on_model_result(cfg, state, failed=True, why="timeout")
        assert ev == []
    state, _ = risk.on_model_result(cfg, state, failed=False)
    assert state.model_failures == 0  # a success resets the count
    for _ in range(3):
        state, ev = risk.on_model_result(cfg, state, failed=True, why="timeout")
    assert ev[0].kind == "circuit_breaker" and "3 consecutive model failures" in ev[0].reason
    assert state.cooldown_left == 3  # the tripping candle plus 2
    d, state, _ = _decide(cfg, state, current=1.0, units=5.0, avg_entry=100.0)
    assert (d.target, d.action, d.reason) == (0.0, "exit", "circuit_breaker")
    for _ in range(2):
        d, state, _ = _decide(cfg, state)
        assert (d.target, d.action) == (0.0, "block")
    d, state, _ = _decide(cfg, state)
    assert (d.target, d.action) == (1.0, "allow")


def test_breaker_on_losing_trades() -> None:
    cfg = RiskConfig(breaker_losses=2, cooldown=5)
    state, ev = risk.on_trade_closed(cfg, RiskState(), -1.0)
    assert ev == [] and state.losing_trades == 1
    state, _ = risk.on_trade_closed(cfg, state, 0.5)
    assert state.losing_trades == 0
    state, _ = risk.on_trade_closed(cfg, state, -1.0)
    state, ev = risk.on_trade_closed(cfg, state, -2.0)
    assert ev[0].kind == "circuit_breaker" and state.cooldown_left == 6


@pytest.mark.parametrize(
    ("units", "close", "kind"),
    [(2.0, 94.0, "stop_loss"), (2.0, 111.0, "take_profit"), (-2.0, 106.0, "stop_loss"),
     (-2.0, 89.0, "take_profit")],
)  # fmt: skip
def test_stop_loss_and_take_profit(units: float, close: float, kind: str) -> None:
    cfg = RiskConfig(stop_loss=0.05, take_profit=0.10)
    d, _, events = _decide(cfg, RiskState(), current=1.0, units=units, avg_entry=100.0, close=close)
    assert (d.target, d.action, d.reason) == (0.0, "exit", kind)
    assert events[0].kind == kind
    d, _, _ = _decide(cfg, RiskState(), current=1.0, units=units, avg_entry=100.0, close=100.0)
    assert d.action == "allow"


def test_max_trades_per_day_blocks_entries_not_exits() -> None:
    cfg = RiskConfig(max_trades_per_day=1)
    state = risk.count_order(RiskState(day="2024-03-01"))
    d, _, events = _decide(cfg, state, desired=1.0, current=0.0)
    assert (d.target, d.action) == (0.0, "block") and events[0].kind == "max_trades_per_day"
    d, _, _ = _decide(cfg, state, desired=0.0, current=1.0)
    assert (d.target, d.action) == (0.0, "allow")


def test_neutral_holds_current_position() -> None:
    d, _, _ = _decide(RiskConfig(), RiskState(), desired=None, current=1.0, units=3.0,
                      avg_entry=100.0)  # fmt: skip
    assert (d.target, d.action, d.reason) == (1.0, "hold", "neutral")


def test_a_position_is_not_held_blind_past_max_neutral_hold() -> None:
    """After a long feed gap the model has no signal for its whole history (503 candles by
    default): holding through it was three weeks of unmanaged exposure (the audit's replay)."""
    cfg, state = RiskConfig(max_neutral_hold=3), RiskState()
    held = {"current": 1.0, "units": 3.0, "avg_entry": 100.0}
    for n in (1, 2):
        d, state, events = _decide(cfg, state, desired=None, **held)
        assert (d.target, d.action, state.neutral_held, events) == (1.0, "hold", n, [])
    d, state, events = _decide(cfg, state, desired=None, **held)
    assert (d.target, d.action, d.reason) == (0.0, "exit", "max_neutral_hold")
    assert [e.kind for e in events] == ["max_neutral_hold"] and state.neutral_held == 0
    assert events[0].reason.startswith("3 candles in a row without a model signal")
    # Flat, a neutral candle counts nothing; a signal resets the count.
    _, flat, _ = _decide(cfg, RiskState(neutral_held=2), desired=None, current=0.0)
    assert flat.neutral_held == 0
    _, state, _ = _decide(cfg, RiskState(neutral_held=2), desired=1.0, **held)
    assert state.neutral_held == 0
    # 0 turns it off: held on, counted.
    d, state, _ = _decide(RiskConfig(max_neutral_hold=0), RiskState(neutral_held=500),
                          desired=None, **held)  # fmt: skip
    assert (d.target, d.action, state.neutral_held) == (1.0, "hold", 501)
    # The default is a day of 1h candles.
    assert RiskConfig().max_neutral_hold == 24


def test_state_round_trips() -> None:
    s = dataclasses.replace(RiskState(), day="2024-01-01", halted=True, cooldown_left=3)
    assert RiskState.from_dict(s.to_dict()) == s
    held = dataclasses.replace(s, neutral_held=7)
    assert RiskState.from_dict(held.to_dict()) == held and "neutral_held" not in s.to_dict()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_position": -1.0}, "--max-position must be in (0, 1] (a fraction of equity; no "
         "leverage), got -1.0"),
        ({"max_position": 5.0}, "--max-position must be in (0, 1]"),
        ({"max_position": math.nan}, "--max-position must be in (0, 1]"),
        ({"daily_drawdown": 2.0}, "--daily-drawdown must be in (0, 1]"),
        ({"daily_drawdown": -0.1}, "--daily-drawdown must be in (0, 1]"),
        ({"breaker_failures": 0}, "--breaker-failures must be at least 1, got 0"),
        ({"breaker_losses": -3}, "--breaker-losses must be at least 1, got -3"),
        ({"cooldown": -1}, "--cooldown must be 0 or more candles, got -1"),
        ({"stop_loss": -0.1}, "--stop-loss must be in (0, 1) (a fraction of the entry price"),
        ({"stop_loss": 1.5}, "--stop-loss must be in (0, 1)"),  # a long's stop would never fire
        ({"take_profit": math.nan}, "--take-profit must be a positive fraction"),
        ({"max_trades_per_day": 0}, "--max-trades-per-day must be at least 1"),
        ({"max_neutral_hold": -1}, "--max-neutral-hold must be 0 (off) or more candles, got -1"),
        ({"model_timeout_ms": 0.0}, "--model-timeout-ms must be a positive number"),
        ({"model_timeout_ms": math.inf}, "--model-timeout-ms must be a positive number"),
    ],
)  # fmt: skip
def test_check_limits_refuses_nonsense(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        risk.check_limits(RiskConfig(**limits))
    assert str(e.value).startswith(message)


def test_check_limits_accepts_the_edges() -> None:
    risk.check_limits(RiskConfig())
    risk.check_limits(RiskConfig(max_position=1.0, daily_drawdown=1.0, cooldown=0,
                                 stop_loss=0.5, take_profit=2.0, max_trades_per_day=1))  # fmt: skip
