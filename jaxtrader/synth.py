"""The synthetic default market's generating process (wrapped as `data.synth_candles`).

Purpose: let every command run offline with candles whose statistics look like a liquid crypto
market, while containing NO predictable signal. Log returns are a martingale difference sequence:

    r_t = mu[s_t] + sigma_t * z_t,     z_t ~ Student-t(5) scaled to unit variance
    sigma_t = base * sqrt(g_t) * vol[s_t] * season(t),   g_t = w + (a * z_{t-1}^2 + b) * g_{t-1}

with `s_t` a 3-state Markov regime (calm / normal / turbulent; geometric durations), GARCH(1,1)
factor `g_t` (volatility clustering), and an intraday/weekend seasonal factor. The regime drifts
`mu` are about 0.5% of one candle's volatility, far too small to trade. Each candle's high and low
come from a Brownian bridge from open to close sampled at 16 sub-steps with the candle's
volatility, so low <= min(open, close) <= max(open, close) <= high always holds. Volume follows
the same seasonality and the volatility level and rises with |z_t|; it never feeds back into
returns. A correct model therefore scores about 50% directional accuracy here; real decisions
need real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HOURS_PER_YEAR = 24 * 365
START_PRICE = 20_000.0
HOURLY_VOL = 0.0065  # about 60% annualised, a typical BTC level
T_DOF = 5.0  # Student-t tails; finite kurtosis together with the GARCH parameters below
GARCH_A, GARCH_B = 0.06, 0.92  # persistence 0.98; fourth moment finite (b^2 + 2ab + 9a^2 < 1)
SUB_STEPS = 16
# Regimes: calm, normal, turbulent.
REGIME_VOL = np.array([0.6, 1.0, 1.9])
REGIME_DRIFT_ANNUAL = np.array([0.15, 0.0, -0.30])
REGIME_MEAN_HOURS = np.array([700.0, 500.0, 150.0])
REGIME_VOLUME = np.array([0.7, 1.0, 1.8])
BASE_VOLUME_PER_HOUR = 1_000.0


def _regimes(rng: np.random.Generator, rows: int, hours: float) -> np.ndarray:
    """A Markov chain over 3 states with geometric durations; it jumps to one of the other two."""
    states = np.empty(rows, dtype=np.int64)
    state, filled = int(rng.integers(3)), 0
    while filled < rows:
        mean_candles = max(REGIME_MEAN_HOURS[state] / hours, 1.0)
        length = int(rng.geometric(1.0 / mean_candles))
        states[filled : filled + length] = state
        filled += length
        state = (state + 1 + int(rng.integers(2))) % 3
    return states


def _garch_factor(z: np.ndarray, persistence_per_hour: float, hours: float) -> np.ndarray:
    """GARCH(1,1) variance factor with unit long-run mean, driven by the standardised shocks."""
    # Coarser candles aggregate hours: keep the per-hour persistence, shrink the shock weight.
    persistence = persistence_per_hour ** max(hours, 1e-9)
    a = GARCH_A * persistence / (GARCH_A + GARCH_B)
    b = persistence - a
    w = 1.0 - persistence
    g = np.empty(z.size)
    prev, zz = 1.0, z * z
    for t in range(z.size):  # the recursion is inherently sequential; ~5 ms for 20k rows
        g[t] = prev
        prev = w + (a * zz[t] + b) * prev
    return g


def _season(ts_ns: np.ndarray, step_ns: int) -> np.ndarray:
    """Intraday (peak near 15:00 UTC) and weekend factors at each candle's midpoint, mean ~1."""
    mid = ts_ns + step_ns // 2
    hour = (mid % (86_400 * 10**9)) / 3_600e9
    weekday = (mid // (86_400 * 10**9) + 3) % 7  # 1970-01-01 was a Thursday (3)
    intraday = 1.0 + 0.3 * np.cos(2 * np.pi * (hour - 15.0) / 24.0)
    weekend = np.where(weekday >= 5, 0.75, 1.0)
    return intraday * weekend


def synth_ohlcv(
    rows: int, seed: int, interval: pd.Timedelta, start: pd.Timestamp
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(timestamps in ns, {open, high, low, close, volume}) for `rows` candles; pure in `seed`."""
    step_ns = int(interval.value)
    hours = step_ns / 3_600e9
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    regime_rng, shock_rng, bridge_rng, volume_rng, _ = streams

    ts_ns = int(start.value) + np.arange(rows, dtype=np.int64) * step_ns
    states = _regimes(regime_rng, rows, hours)
    z = shock_rng.standard_t(T_DOF, size=rows) / np.sqrt(T_DOF / (T_DOF - 2.0))
    garch = _garch_factor(z, GARCH_A + GARCH_B, hours)
    season = _season(ts_ns, step_ns)
    sigma = HOURLY_VOL * np.sqrt(hours) * np.sqrt(garch) * REGIME_VOL[states] * season
    drift = REGIME_DRIFT_ANNUAL[states] * hours / HOURS_PER_YEAR
    r = drift + sigma * z

    log_close = np.log(START_PRICE) + np.cumsum(r)
    log_open = np.concatenate([[np.log(START_PRICE)], log_close[:-1]])
    # Brownian bridge from 0 to r_t inside each candle: the path's extremes give high and low.
    steps_BxS = (
        bridge_rng.standard_normal((rows, SUB_STEPS)) * (sigma / np.sqrt(SUB_STEPS))[:, None]
    )
    walk_BxS = np.cumsum(steps_BxS, axis=1)
    frac_S = np.arange(1, SUB_STEPS + 1) / SUB_STEPS
    path_BxS = walk_BxS - frac_S[None, :] * walk_BxS[:, -1:] + frac_S[None, :] * r[:, None]
    up = np.maximum(path_BxS.max(axis=1), 0.0)  # includes the close (last point) and the open (0)
    down = np.minimum(path_BxS.min(axis=1), 0.0)

    open_ = np.exp(log_open)
    close = np.exp(log_close)
    high = np.maximum(open_ * np.exp(up), np.maximum(open_, close))  # guard float rounding
    low = np.minimum(open_ * np.exp(down), np.minimum(open_, close))
    level = np.sqrt(garch) * REGIME_VOLUME[states]
    noise = volume_rng.lognormal(mean=-0.125, sigma=0.5, size=rows)
    volume = BASE_VOLUME_PER_HOUR * hours * level * season * (0.6 + 0.4 * np.abs(z)) * noise
    return ts_ns, {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
