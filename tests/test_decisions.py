"""The decision rule and the performance figures shared by evaluate and trading, on known answers."""

from __future__ import annotations

import math
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxtrader import decisions as d
from jaxtrader.errors import ConfigError
from jaxtrader.evaluate.backtest import drawdown_curve


def test_max_drawdown_on_a_known_curve() -> None:
    equity = np.array([1.0, 1.2, 0.9, 1.1, 0.6, 0.8])
    assert d.max_drawdown(equity) == pytest.approx(0.6 / 1.2 - 1, rel=1e-15)
    chex.assert_trees_all_close(
        drawdown_curve(equity),
        np.array([0, 0, 0.9 / 1.2 - 1, 1.1 / 1.2 - 1, -0.5, 0.8 / 1.2 - 1]),
    )
    # Losing from the start counts from the initial equity of 1.
    assert d.max_drawdown(np.array([0.9, 0.95])) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("seconds", "weekends", "expected"),
    [
        (3600, True, 8760.0),
        (300, True, 105120.0),
        (60, True, 525600.0),
        (86400, True, 365.0),
        (86400, False, 252.0),
        (4 * 3600, True, 2190.0),
    ],
)
def test_annualization_factor_per_interval(seconds: int, weekends: bool, expected: float) -> None:
    assert d.periods_per_year(seconds, weekends) == pytest.approx(expected)
    assert math.sqrt(d.periods_per_year(3600)) == pytest.approx(math.sqrt(8760))


def test_weekend_detection() -> None:
    import pandas as pd

    weekdays = pd.bdate_range("2024-01-01", periods=20, tz="UTC").as_unit("ns")
    every_day = pd.date_range("2024-01-01", periods=20, freq="D", tz="UTC").as_unit("ns")
    assert not d.has_weekend_candles(weekdays.asi8)
    assert d.has_weekend_candles(every_day.asi8)


def test_annualization_needs_a_whole_weekend_day_to_call_a_market_weekday_only() -> None:
    import pandas as pd

    def ppy(start: str, hours: int) -> tuple[float, str]:
        idx = pd.date_range(start, periods=hours, freq="1h", tz="UTC").as_unit("ns")
        return d.annualization(3600, idx.asi8)

    # 2024-01-01 is a Monday. Monday to Friday alone cannot tell: the calendar year, said so.
    assert ppy("2024-01-01", 5 * 24) == (
        8760.0, "calendar year (365 days; no whole weekend day in the candles to tell)")  # fmt: skip
    # Through Saturday 23:00 without a Saturday candle is impossible here; a weekday-only market
    # over two weeks (a whole weekend inside, no candle on it) is 252 trading days.
    weekdays = pd.bdate_range("2024-01-01", periods=10, tz="UTC").as_unit("ns")
    hourly = weekdays.repeat(24) + pd.to_timedelta(np.tile(np.arange(24), 10), unit="h")
    assert d.annualization(3600, hourly.asi8) == (6048.0, "252 trading days (no weekend candles)")
    # Friday 00:00 to Saturday 23:00 holds a whole Saturday, with candles on it: 24/7.
    assert ppy("2024-01-05", 48)[0] == 8760.0
    # Friday to Saturday 22:00: Saturday is not whole yet, and has candles: still 24/7.
    assert ppy("2024-01-05", 47)[0] == 8760.0


def test_bad_thresholds_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--threshold"):
        d.positions_from_probs(np.array([0.5]), 1.2)
    with pytest.raises(ConfigError, match="--long-short"):
        d.positions_from_probs(np.array([0.5]), 0.4, long_short=True)
    with pytest.raises(ConfigError, match="--fee-bps"):
        d.check_settings(fee_bps=-1.0)
    with pytest.raises(ConfigError, match="--slippage-bps"):
        d.check_settings(slippage_bps=float("nan"))


def test_sharpe_definition() -> None:
    r = np.array([0.01, -0.005, 0.02, 0.0])
    assert d.sharpe(r, 8760) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(8760))
    assert d.sharpe(np.zeros(10), 8760) == 0.0


def test_policy_flags_override_a_policy_files_values_before_they_are_checked(
    tmp_path: Path,
) -> None:
    """`evaluate --policy FILE.toml --exit 0.3`, with exit 0.52 above enter 0.4 in the file, was
    refused by the file's own check ("set --exit at or below --enter", which the user had done),
    and that error did not name the file. Flags override the file's values (README), so they are
    applied first; a file that is wrong on its own is named in the error."""
    bad = tmp_path / "p.toml"
    bad.write_text("[policy]\nenter = 0.4\nexit = 0.52\nmin_hold = 3\n")
    request = d.PolicyRequest(spec=str(bad), exit=0.3)
    policy = request.resolve(threshold=0.5, long_short=False, horizon=5)
    assert isinstance(policy, d.Policy)
    assert (policy.enter, policy.exit, policy.min_hold) == (0.4, 0.3, 3)
    with pytest.raises(ConfigError, match=rf"^{bad}: policy exit 0\.52 must be in"):
        d.PolicyRequest(spec=str(bad), min_hold=2).resolve(
            threshold=0.5, long_short=False, horizon=5
        )
    # An --enter alone still lowers the file's exit to it, as before.
    good = tmp_path / "q.toml"
    good.write_text("[policy]\nenter = 0.56\nexit = 0.52\n")
    lowered = d.PolicyRequest(spec=str(good), enter=0.51).resolve(
        threshold=0.5, long_short=False, horizon=5
    )
    assert isinstance(lowered, d.Policy) and (lowered.enter, lowered.exit) == (0.51, 0.51)
