"""How a P(up) becomes a position, and how the resulting returns are scored: the one module below
both `evaluate/` (the backtest) and `trading/` (the live strategy), so they decide and measure alike.

Owns: the settings check (`check_settings`), the signal rule (`positions_from_probs`: long above
the threshold, short below 1 - threshold with long/short), and the performance figures both report
(`max_drawdown`, `sharpe`, and the annualization: `periods_per_year`, `has_weekend_candles`,
`annualization`). Decision policies beyond a single threshold (hysteresis, minimum holding period)
belong here too, beside `positions_from_probs`. The settings themselves (fee, slippage, threshold,
long/short) are one frozen type, `jaxtrader.config.TradeRules`.

Annualization comes from the candle interval, never a constant: 8760 periods a year for 1h, 105120
for 5m, 365 for 1d crypto; 252 trading days only when the data has no weekend candles (equities).
"""

from __future__ import annotations

import math

import numpy as np

from jaxtrader.errors import ConfigError

YEAR_SECONDS = 365 * 24 * 3600
DAY_SECONDS = 24 * 3600
TRADING_DAYS = 252

# -- decisions ----------------------------------------------------------------------------------


def check_settings(
    *,
    threshold: float = 0.5,
    long_short: bool = False,
    fee_bps: float = 0.0,
    slippage_bps: float = 0.0,
) -> None:
    """ConfigError naming the flag for settings that make no sense (checked before any work)."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {threshold}")
    if long_short and threshold < 0.5:
        raise ConfigError(
            f"--threshold {threshold} < 0.5 with --long-short makes long and short overlap; "
            "use a threshold >= 0.5"
        )
    for flag, value in (("--fee-bps", fee_bps), ("--slippage-bps", slippage_bps)):
        if not 0.0 <= value < 10_000.0:
            raise ConfigError(f"{flag} must be between 0 and 10000 bps, got {value}")


def positions_from_probs(
    prob_up: np.ndarray, threshold: float = 0.5, long_short: bool = False
) -> np.ndarray:
    """+1 above `threshold`, -1 below 1 - threshold with long_short, else 0 (float64)."""
    check_settings(threshold=threshold, long_short=long_short)
    p = np.asarray(prob_up, dtype=np.float64)
    pos = (p > threshold).astype(np.float64)
    if long_short:
        pos -= (p < 1.0 - threshold).astype(np.float64)
    return pos


# -- performance --------------------------------------------------------------------------------


def max_drawdown(equity: np.ndarray, start: float = 1.0) -> float:
    """Largest peak-to-trough fall of an equity curve (including the starting equity), as <= 0."""
    e = np.concatenate([[start], np.asarray(equity, dtype=np.float64)])
    peak = np.maximum.accumulate(e)
    dd = np.divide(e, peak, out=np.zeros_like(e), where=peak > 0) - 1.0
    return float(dd.min())


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualized Sharpe ratio of per-period returns (risk-free 0); 0 when returns never vary."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return 0.0
    sd = r.std(ddof=1)
    if not np.isfinite(sd) or sd <= 1e-15:
        return 0.0
    return float(r.mean() / sd * math.sqrt(periods_per_year))


def periods_per_year(interval_seconds: float, weekends: bool = True) -> float:
    """Candles per year: calendar time for 24/7 markets; 252 trading days when weekends are absent.

    Without weekend candles an intraday interval counts 252 days of 24h / interval candles; markets
    with shorter sessions should pass their own factor.
    """
    if interval_seconds <= 0:
        raise ConfigError(f"candle interval must be positive, got {interval_seconds} s")
    if weekends:
        return YEAR_SECONDS / interval_seconds
    return TRADING_DAYS * DAY_SECONDS / interval_seconds


def has_weekend_candles(timestamps_ns: np.ndarray) -> bool:
    """True when any timestamp (int64 ns since the epoch, UTC) is on a Saturday or Sunday."""
    days = np.asarray(timestamps_ns, dtype=np.int64) // (DAY_SECONDS * 1_000_000_000)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return bool(np.any(weekday >= 5))


def annualization(interval_seconds: float, timestamps_ns: np.ndarray) -> tuple[float, str]:
    """Periods per year from the interval, and a human description of the basis."""
    weekends = has_weekend_candles(timestamps_ns)
    ppy = periods_per_year(interval_seconds, weekends)
    basis = (
        "calendar year (365 days; weekend candles present)"
        if weekends
        else "252 trading days (no weekend candles)"
    )
    return ppy, basis
