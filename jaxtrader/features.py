"""The 86 causal engineered features: their registry and `compute_features`.

Owns the feature set a model sees next to the raw candle window. Every feature is strictly causal
(the value at row t uses candles <= t only) and scale-free (ratios, log returns, z-scores, bounded
oscillators scaled to about [-1, 1]), so a model trained at BTC 20,000 reads the same numbers at
BTC 90,000 and volume units never matter.

Standard indicators come from TA-Lib; numpy does the rest (log returns, rolling moments, volume
normalisation, candle shape, calendar). Rolling sums use cumulative-sum differences, which are
exact zero over flat (gap-filled) stretches; skewness, kurtosis and the log-volume z-scores sum
inside each window, so they do not depend on the history before it at all.

Warm-up: each spec's `warmup` is the first row whose value no longer depends on where the series
started, to 1e-7 in feature units. Finite windows need their lookback. EMA-type indicators
(EMA, MACD, Wilder's RSI/ATR/DI/ADX/CMO, Chaikin) have infinite memory: their warm-up adds the
candles needed for the seed transient to decay below 1e-7 (`_settle`). `WARMUP` is the largest
warm-up; rows before it are NaN. `MIN_HISTORY = WARMUP + 1` candles give a last-row value within
1e-7 of the full-history value (measured 2.6e-8 at worst on BTC and ETH 1h), which is what a
rolling trading buffer needs.

Guards (all documented in the definitions): a zero high-low range gives body/wicks 0 and
positions 0.5; a zero-volume window gives volume ratios, OBV slope and Chaikin 0, VWAP falls back
to the mean typical price, MFI becomes 0.5; a flat-returns window gives z-scores, skew, kurtosis
and autocorrelation 0; stochastic %K/%D and the ultimate oscillator are 0.5 and Williams %R -0.5
where their whole lookback is flat (TA-Lib would say 0). Inside a partly flat lookback TA-Lib's
convention stands (a zero-range candle counts as 0).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxtrader.errors import FeatureError

if TYPE_CHECKING:
    import pandas as pd

FEATURES_VERSION = 2  # bump whenever code changes any feature value

_TRANSIENT_TOL = 1e-7  # seed transients of EMA-type indicators must decay below this
_FLAT_VAR = 1e-14  # return variance at or below this (std 1e-7 a candle) counts as flat
_VOL_FLOOR = 1e-3  # log-volume uses log(v / mean200(v) + 1e-3): zero volume stays finite

Array = np.ndarray


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its column name, family, one-line definition and warm-up in candles.

    `note` spells out a convention the definition leaves open (a tie rule, an estimator) without
    changing any value. It is shown with the definition but kept out of `feature_hash`, so
    stating an existing convention does not orphan the checkpoints trained on those same values.
    """

    name: str
    family: str
    definition: str
    warmup: int
    note: str = ""

    @property
    def text(self) -> str:
        """The definition with its note, as `features list` and the README show it."""
        return f"{self.definition}; {self.note}" if self.note else self.definition


# Conventions where libraries disagree (an outside recomputation against the `ta` library found
# these the only differences; checked against TA-Lib and the code in tests/test_features.py).
_AROON_TIES = (
    "on a tie the most recent extreme counts (TA-Lib's rule; the `ta` library takes the oldest)"
)
_POPULATION = "population (biased) moments m_k = mean((r - mean r)^k), no small-sample correction"
_OBV_RULE = (
    "OBV adds volume on a higher close, subtracts it on a lower one, nothing on an equal one"
)


def _settle(alpha: float, passes: int = 1) -> int:
    """Candles until a seed error decays below `_TRANSIENT_TOL` through chained smoothers.

    One exponential smoother with factor `alpha` shrinks a seed error by (1 - alpha) a candle;
    `passes` chained smoothers of the same factor leave (1 - alpha)^k * sum_j (k alpha)^j / j!.
    """
    k = 0
    while True:
        k += 1
        decay = (1.0 - alpha) ** k * sum(
            (k * alpha) ** j / math.factorial(j) for j in range(passes)
        )
        if decay < _TRANSIENT_TOL:
            return k


def _ema_warm(n: int) -> int:
    return (n - 1) + _settle(2.0 / (n + 1))  # TA-Lib seeds an EMA with the SMA of n values


def _wilder_warm(n: int) -> int:
    return n + _settle(1.0 / n)  # RSI, CMO, ATR, +DI/-DI: lookback n, factor 1/n


_RET_HORIZONS = (1, 2, 3, 5, 10, 20, 60)
_ROC_HORIZONS = (12, 48, 120)
_SMA_WINDOWS = (5, 10, 20, 50, 100, 200)
_EMA_WINDOWS = (12, 26, 50)
_SLOPE_WINDOWS = (10, 20, 50)
_RSI_WINDOWS = (6, 14, 24)
_STD_WINDOWS = (5, 10, 20, 60, 120)
_MACD_WARM = 33 + _settle(2.0 / 27, passes=2)  # lookback 26-1+9-1; EMA26 seed then signal EMA9
_ADX_WARM = 27 + _settle(1.0 / 14, passes=2)  # Wilder-smoothed DX smoothed again
_ADOSC_WARM = 9 + _settle(2.0 / 11, passes=2)  # EMA3 - EMA10 of A/D over EMA10 of volume


def _registry() -> tuple[FeatureSpec, ...]:
    """The 86 specs in column order (one place for names, definitions and warm-ups)."""
    specs: list[FeatureSpec] = []

    def _add(name: str, family: str, definition: str, warmup: int, note: str = "") -> None:
        specs.append(FeatureSpec(name, family, definition, warmup, note))

    for k in _RET_HORIZONS:
        _add(f"ret_{k}", "returns", f"log(close_t / close_t-{k})", k)
    for k in _ROC_HORIZONS:
        _add(f"roc_{k}", "returns", f"TA-Lib ROC({k}) / 100 = close_t / close_t-{k} - 1", k)

    for n in _SMA_WINDOWS:
        _add(f"sma_ratio_{n}", "trend", f"close / SMA(close, {n}) - 1", n - 1)
    _add("sma_cross_10_50", "trend", "SMA(close, 10) / SMA(close, 50) - 1", 49)
    for n in _EMA_WINDOWS:
        _add(f"ema_ratio_{n}", "trend", f"close / EMA(close, {n}) - 1", _ema_warm(n))
    _add("macd_line", "trend", "MACD(12, 26) line / close", _MACD_WARM)
    _add("macd_signal", "trend", "MACD signal EMA(9) / close", _MACD_WARM)
    _add("macd_hist", "trend", "MACD histogram (line - signal) / close", _MACD_WARM)
    _add("adx_14", "trend", "ADX(14) / 100", _ADX_WARM)
    _add("plus_di_14", "trend", "+DI(14) / 100", _wilder_warm(14))
    _add("minus_di_14", "trend", "-DI(14) / 100", _wilder_warm(14))
    aroon = "(25 - candles since the {} of the last 26) / 25; " + _AROON_TIES
    _add("aroon_up_25", "trend", "Aroon up(25) / 100", 25, aroon.format("highest high"))
    _add("aroon_down_25", "trend", "Aroon down(25) / 100", 25, aroon.format("lowest low"))
    _add("aroon_osc_14", "trend", "Aroon oscillator(14) / 100", 14,
         "Aroon up(14) - Aroon down(14); " + _AROON_TIES)  # fmt: skip
    for n in _SLOPE_WINDOWS:
        _add(f"linreg_slope_{n}", "trend", f"LINEARREG_SLOPE(log close, {n}) per candle", n - 1)

    for n in _RSI_WINDOWS:
        _add(f"rsi_{n}", "oscillator", f"RSI({n}) / 100", _wilder_warm(n))
    _add("stoch_k", "oscillator", "slow stochastic %K(14, 3) / 100 (flat 16-range: 0.5)", 17)
    _add("stoch_d", "oscillator", "slow stochastic %D(14, 3, 3) / 100 (flat 18-range: 0.5)", 17)
    _add("willr_14", "oscillator", "Williams %R(14) / 100 in [-1, 0] (flat range: -0.5)", 13)
    _add("willr_48", "oscillator", "Williams %R(48) / 100 in [-1, 0] (flat range: -0.5)", 47)
    _add("cci_20", "oscillator", "CCI(20) / 100", 19)
    _add("mfi_14", "oscillator", "MFI(14) / 100 (zero volume over 14 candles: 0.5)", 14)
    _add("ultosc", "oscillator", "ultimate oscillator(7, 14, 28) / 100 (flat 29-range: 0.5)", 28)
    _add("cmo_14", "oscillator", "Chande momentum oscillator(14) / 100", _wilder_warm(14))

    _add("atr_pct_7", "volatility", "NATR(7) / 100 = ATR(7) / close", _wilder_warm(7))
    _add("atr_pct_14", "volatility", "NATR(14) / 100 = ATR(14) / close", _wilder_warm(14))
    _add("bb_pctb_20", "volatility", "Bollinger(20, 2) %B (zero band width: 0.5)", 19)
    _add("bb_width_20", "volatility", "Bollinger(20, 2) (upper - lower) / middle", 19)
    for n in _STD_WINDOWS:
        _add(f"std_ret_{n}", "volatility", f"std of 1-candle log returns over {n}", n)
    for n in (20, 60):
        _add(f"parkinson_{n}", "volatility", f"Parkinson vol: sqrt(mean(ln(h/l)^2) / 4ln2) over {n}",
             n - 1)  # fmt: skip
        _add(f"garman_klass_{n}", "volatility",
             f"Garman-Klass vol: sqrt(mean(.5 ln(h/l)^2 - (2ln2-1) ln(c/o)^2)) over {n}, floor 0",
             n - 1)  # fmt: skip
    _add("vol_of_vol_60", "volatility", "std / mean of std_ret_20 over 60 (mean 0: 0)", 20 + 59)
    _add("std_ratio_5_60", "volatility", "std_ret_5 / std_ret_60 (flat: 1)", 60)

    for n in (20, 60):
        _add(f"volume_z_{n}", "volume",
             f"z-score over {n} of u = ln(volume / mean200(volume) + 1e-3) (u std 0: 0)",
             199 + n - 1)  # fmt: skip
    _add("volume_ratio_20", "volume", "volume / mean20(volume) (zero-volume window: 0)", 19)
    _add(
        "volume_ratio_5_50", "volume", "mean5(volume) / mean50(volume) (zero-volume window: 0)", 49
    )
    _add("obv_slope_20", "volume", "LINEARREG_SLOPE(OBV, 20) / mean20(volume) (zero volume: 0)", 19,
         _OBV_RULE)  # fmt: skip
    for n in (20, 60):
        _add(f"vwap_dist_{n}", "volume",
             f"close / VWAP{n} - 1, VWAP of typical price (zero volume: mean typical price)",
             n - 1)  # fmt: skip
    _add("adosc_3_10", "volume", "Chaikin A/D oscillator(3, 10) / EMA10(volume) (zero volume: 0)",
         _ADOSC_WARM)  # fmt: skip

    _add("body_range", "candle", "TA-Lib BOP = (close - open) / (high - low) (zero range: 0)", 0)
    _add("upper_wick", "candle", "(high - max(open, close)) / (high - low) (zero range: 0)", 0)
    _add("lower_wick", "candle", "(min(open, close) - low) / (high - low) (zero range: 0)", 0)
    _add("close_loc", "candle", "(close - low) / (high - low) (zero range: 0.5)", 0)
    _add("range_log", "candle", "ln(high / low)", 0)
    _add("gap_1", "candle", "ln(open_t / close_t-1)", 1)

    for n in (20, 60):
        _add(f"skew_{n}", "rolling", f"skewness of log returns over {n} (flat: 0)", n,
             f"m3 / m2^1.5 of the {n} returns, {_POPULATION}")  # fmt: skip
        _add(f"kurt_{n}", "rolling", f"excess kurtosis of log returns over {n} (flat: 0)", n,
             f"m4 / m2^2 - 3 of the {n} returns, {_POPULATION}")  # fmt: skip
    for n in (20, 60):
        _add(f"autocorr_{n}", "rolling", f"lag-1 autocorrelation of log returns over {n} (flat: 0)",
             n + 1)  # fmt: skip
    for n in (20, 60, 200):
        _add(f"minmax_pos_{n}", "rolling",
             f"(close - min{n}(close)) / (max{n} - min{n}) (flat: 0.5)", n - 1)  # fmt: skip
    _add("drawdown_200", "rolling", "ln(close / max200(close))", 199)

    _add(
        "hour_sin", "calendar", "sin(2 pi (hour + minute/60) / 24) of the candle open time (UTC)", 0
    )
    _add(
        "hour_cos", "calendar", "cos(2 pi (hour + minute/60) / 24) of the candle open time (UTC)", 0
    )
    _add("dow_sin", "calendar", "sin(2 pi weekday / 7), Monday = 0, UTC", 0)
    _add("dow_cos", "calendar", "cos(2 pi weekday / 7), Monday = 0, UTC", 0)
    return tuple(specs)


FEATURES: tuple[FeatureSpec, ...] = _registry()
FEATURE_NAMES: tuple[str, ...] = tuple(s.name for s in FEATURES)
NUM_FEATURES = len(FEATURES)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(s.family for s in FEATURES))
WARMUP = max(s.warmup for s in FEATURES)
MIN_HISTORY = WARMUP + 1

assert NUM_FEATURES == 86, NUM_FEATURES
assert len(set(FEATURE_NAMES)) == NUM_FEATURES


def min_history() -> int:
    """Candles of history for which the last row matches the full-history value to ~2e-7."""
    return MIN_HISTORY


def feature_hash() -> str:
    """sha256 over the version, names, definitions and warm-ups (pins a model to its features)."""
    h = hashlib.sha256(f"jaxtrader-features-v{FEATURES_VERSION}\n".encode())
    for s in FEATURES:
        h.update(f"{s.name}\t{s.family}\t{s.definition}\t{s.warmup}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- numpy helpers


def _div(num: Array, den: Array, fallback: float) -> Array:
    """num / den, with `fallback` where den == 0 (a NaN den stays NaN)."""
    return np.where(den != 0, num / den, fallback)


def _lagdiff(x: Array, k: int) -> Array:
    out = np.empty_like(x)
    out[:k] = np.nan
    np.subtract(x[k:], x[:-k], out=out[k:])
    return out


def _head0(x: Array, k: int) -> Array:
    """Copy of x with its first k (warm-up NaN) rows set to 0 so cumulative sums stay finite."""
    out = x.copy()
    out[:k] = 0.0
    return out


def _sums(x: Array) -> Callable[[int], Array]:
    """Trailing n-row sums of x for any n from one cumulative sum.

    Differences of a cumulative sum are exactly 0 over all-zero windows (adding 0.0 changes no
    float), which keeps the zero-volume and flat-price guards exact.
    """
    cs = np.cumsum(x)

    def window(n: int) -> Array:
        out = np.empty_like(cs)
        out[: n - 1] = np.nan
        if len(cs) >= n:
            out[n - 1] = cs[n - 1]
            np.subtract(cs[n:], cs[:-n], out=out[n:])
        return out

    return window


def _means(x: Array) -> Callable[[int], Array]:
    sums = _sums(x)
    return lambda n: sums(n) / n


def _std(mean: Array, mean_sq: Array) -> Array:
    """Population std from windowed means of x and x^2; rounding residue below 0 clipped."""
    var = mean_sq - mean * mean
    return np.sqrt(np.where(var > 0, var, 0.0 * var))  # 0 * NaN keeps NaN


def _lag1(x: Array) -> Array:
    out = np.empty_like(x)
    out[0] = np.nan
    out[1:] = x[:-1]
    return out


def _local_means(x_KxN: Array, n: int, tail: int | None = None) -> Array:
    """Trailing n-row means of each row of x, summed inside each window.

    Unlike cumulative-sum differences, the result does not depend on the history before the
    window (a crash's r^4 in the running total would otherwise swamp the rounding of calm windows
    far later: 2e-6 relative error on kurtosis in the BTC data). So `tail` can ask for the last
    `tail` columns only (the rest NaN): the same reduction over the same n values, bit for bit.
    """
    out = np.full(x_KxN.shape, np.nan)
    first = n - 1 if tail is None else max(n - 1, x_KxN.shape[1] - tail)
    if x_KxN.shape[1] > first:
        view = np.lib.stride_tricks.sliding_window_view(x_KxN[:, first - n + 1 :], n, axis=1)
        out[:, first:] = view.sum(axis=2) / n
    return out


def _moments(r: Array, n: int, tail: int | None = None) -> tuple[Array, Array]:
    """Skewness and excess kurtosis of log returns over the trailing n values (flat: 0).

    Population (biased) estimators: central moments divide by n, with no small-sample correction
    (scipy's `bias=True`; pandas' `.skew()` / `.kurt()` apply the correction and differ).

    Log returns are centred near 0, so expanding central moments in raw ones loses no precision
    at return scales; `_FLAT_VAR` absorbs the rounding residue of flat windows. With `tail`, only
    the last `tail` values (the rest NaN), computed from just the returns their windows cover.
    """
    if tail is not None and len(r) > tail + n - 1:
        skew_tail, kurt_tail = _moments(r[len(r) - (tail + n - 1) :], n)
        head = np.full(len(r) - len(skew_tail), np.nan)
        return np.concatenate([head, skew_tail]), np.concatenate([head, kurt_tail])
    r2 = r * r
    m1, e2, e3, e4 = _local_means(np.stack([r, r2, r2 * r, r2 * r2]), n, tail)
    mu2 = m1 * m1
    m2 = e2 - mu2
    m3 = e3 - 3.0 * m1 * e2 + 2.0 * mu2 * m1
    m4 = e4 - 4.0 * m1 * e3 + 6.0 * mu2 * e2 - 3.0 * mu2 * mu2
    flat = m2 <= _FLAT_VAR
    safe = np.where(flat, 1.0, m2)
    skew = np.where(flat, 0.0, m3 / (safe * np.sqrt(safe)))
    kurt = np.where(flat, 0.0, m4 / (safe * safe) - 3.0)
    return skew, kurt


def _autocorr(my: Array, ey2: Array, mxy: Array) -> Array:
    """Lag-1 correlation of the pairs (r_t-1, r_t) from windowed means (flat: 0).

    The x = r_t-1 window is the r window one row earlier, so its moments are lagged copies.
    """
    mx, ex2 = _lag1(my), _lag1(ey2)
    vx = ex2 - mx * mx
    vy = ey2 - my * my
    cov = mxy - mx * my
    flat = (vx <= _FLAT_VAR) | (vy <= _FLAT_VAR)
    corr = cov / np.sqrt(np.where(flat, 1.0, vx * vy))
    return np.where(flat, 0.0, np.clip(corr, -1.0, 1.0))


def _calendar(ts_ns: Array) -> dict[str, Array]:
    sec = ts_ns // 1_000_000_000
    day_frac = (sec % 86_400) / 86_400.0
    weekday = (sec // 86_400 + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour_angle = 2.0 * np.pi * day_frac
    dow_angle = 2.0 * np.pi * weekday / 7.0
    return {
        "hour_sin": np.sin(hour_angle),
        "hour_cos": np.cos(hour_angle),
        "dow_sin": np.sin(dow_angle),
        "dow_cos": np.cos(dow_angle),
    }


# ----------------------------------------------------------------------------- the features


@cache
def _talib() -> Any:
    """TA-Lib's functions without the pandas/polars dispatch wrapper `talib` puts around each.

    The wrapper scans every argument for Series types; on a trading buffer of ~500 rows that
    check cost more than the indicators themselves (2.2 ms vs 1.3 ms for all 86 features). We
    only pass float64 numpy arrays, so the wrapped function (functools.wraps' `__wrapped__`) is
    called directly when present.
    """
    import talib

    names = [n for n in dir(talib) if n.isupper() and callable(getattr(talib, n))]
    return SimpleNamespace(
        MA_Type=talib.MA_Type,
        **{n: getattr(getattr(talib, n), "__wrapped__", getattr(talib, n)) for n in names},
    )


class _Rows:
    """Writes each named feature straight into its row of the [86, rows] output.

    Saves holding all 86 columns twice (a dict, then the matrix): 50 MB on the BTC 1h file.
    """

    def __init__(self, out_FxN: Array) -> None:
        self.out_FxN = out_FxN
        self.written: set[str] = set()

    def __setitem__(self, name: str, value: Array) -> None:
        self.out_FxN[_ROW[name]] = value
        self.written.add(name)

    def update(self, columns: dict[str, Array]) -> None:
        for name, value in columns.items():
            self[name] = value


_ROW = {name: j for j, name in enumerate(FEATURE_NAMES)}


def _unmasked(
    o: Array, h: Array, low: Array, c: Array, v: Array, ts_ns: Array, tail: int | None = None
) -> Array:
    """All 86 features as a float64 [86, rows] array in FEATURE_NAMES order, warm-up unmasked.

    With `tail`, the in-window statistics (skewness, kurtosis, volume z-scores: 40% of the time on
    a trading buffer) are computed for the last `tail` rows only and are NaN before them.
    """
    talib = _talib()
    f = _Rows(np.empty((NUM_FEATURES, len(c))))
    lc = np.log(c)
    r = _head0(_lagdiff(lc, 1), 1)  # 1-candle log return; row 0 is warm-up

    # returns
    for k in _RET_HORIZONS:
        f[f"ret_{k}"] = _lagdiff(lc, k)
    for k in _ROC_HORIZONS:
        f[f"roc_{k}"] = talib.ROC(c, k) / 100.0

    # trend
    sma = {n: talib.SMA(c, n) for n in _SMA_WINDOWS}
    for n in _SMA_WINDOWS:
        f[f"sma_ratio_{n}"] = c / sma[n] - 1.0
    f["sma_cross_10_50"] = sma[10] / sma[50] - 1.0
    for n in _EMA_WINDOWS:
        f[f"ema_ratio_{n}"] = c / talib.EMA(c, n) - 1.0
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    f["macd_line"], f["macd_signal"], f["macd_hist"] = macd / c, signal / c, hist / c
    f["adx_14"] = talib.ADX(h, low, c, 14) / 100.0
    f["plus_di_14"] = talib.PLUS_DI(h, low, c, 14) / 100.0
    f["minus_di_14"] = talib.MINUS_DI(h, low, c, 14) / 100.0
    down, up = talib.AROON(h, low, 25)
    f["aroon_up_25"], f["aroon_down_25"] = up / 100.0, down / 100.0
    f["aroon_osc_14"] = talib.AROONOSC(h, low, 14) / 100.0
    for n in _SLOPE_WINDOWS:
        f[f"linreg_slope_{n}"] = talib.LINEARREG_SLOPE(lc, n)

    # oscillators
    for n in _RSI_WINDOWS:
        f[f"rsi_{n}"] = talib.RSI(c, n) / 100.0

    # TA-Lib scores a zero high-low range as 0 (%K "at the low", %R "at the high", ultimate
    # oscillator "oversold"); where the whole lookback is flat (gap-filled) we use the midpoint.
    def flat(n: int) -> Array:
        return (talib.MAX(h, n) - talib.MIN(low, n)) == 0

    slowk, slowd = talib.STOCH(h, low, c, 14, 3, talib.MA_Type.SMA, 3, talib.MA_Type.SMA)
    f["stoch_k"] = np.where(flat(16), 0.5, slowk / 100.0)
    f["stoch_d"] = np.where(flat(18), 0.5, slowd / 100.0)
    for n in (14, 48):
        f[f"willr_{n}"] = np.where(flat(n), -0.5, talib.WILLR(h, low, c, n) / 100.0)
    f["cci_20"] = talib.CCI(h, low, c, 20) / 100.0
    sum_v = _sums(v)
    dead = sum_v(14) == 0  # TA-Lib's MFI is 0 ("oversold") on zero flow; neutral is 0.5
    f["mfi_14"] = np.where(dead, 0.5, talib.MFI(h, low, c, v, 14) / 100.0)
    f["ultosc"] = np.where(flat(29), 0.5, talib.ULTOSC(h, low, c, 7, 14, 28) / 100.0)
    f["cmo_14"] = talib.CMO(c, 14) / 100.0

    # volatility
    f["atr_pct_7"] = talib.NATR(h, low, c, 7) / 100.0
    f["atr_pct_14"] = talib.NATR(h, low, c, 14) / 100.0
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, talib.MA_Type.SMA)
    width = upper - lower
    f["bb_pctb_20"] = _div(c - lower, width, 0.5)
    f["bb_width_20"] = width / middle
    r2 = r * r
    mean_r, mean_r2 = _means(r), _means(r2)
    rm = {n: (mean_r(n), mean_r2(n)) for n in sorted({*_STD_WINDOWS, 20, 60})}
    std = {n: _std(*rm[n]) for n in _STD_WINDOWS}
    for n in _STD_WINDOWS:
        f[f"std_ret_{n}"] = std[n]
    hl2 = np.log(h / low) ** 2
    gk = 0.5 * hl2 - (2.0 * math.log(2.0) - 1.0) * np.log(c / o) ** 2
    mean_hl2, mean_gk = _means(hl2), _means(gk)
    for n in (20, 60):
        f[f"parkinson_{n}"] = np.sqrt(mean_hl2(n) / (4.0 * math.log(2.0)))
        gk_mean = mean_gk(n)
        f[f"garman_klass_{n}"] = np.sqrt(np.where(gk_mean > 0, gk_mean, 0.0 * gk_mean))
    std20 = _head0(std[20], 20)
    mean_std20 = _means(std20)(60)
    f["vol_of_vol_60"] = _div(_std(mean_std20, _means(std20 * std20)(60)), mean_std20, 0.0)
    f["std_ratio_5_60"] = _div(std[5], std[60], 1.0)

    # volume
    mean200 = sum_v(200) / 200.0
    u = _head0(np.log(_div(v, mean200, 0.0) + _VOL_FLOOR), 199)
    u_2xN = np.stack([u, u * u])
    for n in (20, 60):
        # In-window sums: u is ~-7 over dead stretches, and running sums of it would leave a
        # rounding residue where the window std is exactly 0.
        mu, mu2 = _local_means(u_2xN, n, tail)
        f[f"volume_z_{n}"] = _div(u - mu, _std(mu, mu2), 0.0)
    mean5, mean20, mean50 = sum_v(5) / 5.0, sum_v(20) / 20.0, sum_v(50) / 50.0
    f["volume_ratio_20"] = _div(v, mean20, 0.0)
    f["volume_ratio_5_50"] = _div(mean5, mean50, 0.0)
    f["obv_slope_20"] = _div(talib.LINEARREG_SLOPE(talib.OBV(c, v), 20), mean20, 0.0)
    typical = (h + low + c) / 3.0
    sum_tv, mean_typical = _sums(typical * v), _means(typical)
    for n in (20, 60):
        vol_n = sum_v(n)
        vwap = np.where(vol_n == 0, mean_typical(n), sum_tv(n) / vol_n)
        f[f"vwap_dist_{n}"] = c / vwap - 1.0
    f["adosc_3_10"] = _div(talib.ADOSC(h, low, c, v, 3, 10), talib.EMA(v, 10), 0.0)

    # candle shape
    rng = h - low
    f["body_range"] = talib.BOP(o, h, low, c)
    f["upper_wick"] = _div(h - np.maximum(o, c), rng, 0.0)
    f["lower_wick"] = _div(np.minimum(o, c) - low, rng, 0.0)
    f["close_loc"] = _div(c - low, rng, 0.5)
    f["range_log"] = np.log(h / low)
    gap = np.full_like(c, np.nan)
    gap[1:] = np.log(o[1:] / c[:-1])
    f["gap_1"] = gap

    # rolling statistics
    mean_lag = _means(r * _head0(_lag1(r), 1))  # r_t * r_t-1
    for n in (20, 60):
        f[f"skew_{n}"], f[f"kurt_{n}"] = _moments(r, n, tail)
        f[f"autocorr_{n}"] = _autocorr(*rm[n], mean_lag(n))
    for n in (20, 60, 200):
        lo = talib.MIN(c, n)
        f[f"minmax_pos_{n}"] = _div(c - lo, talib.MAX(c, n) - lo, 0.5)
    f["drawdown_200"] = np.log(c / talib.MAX(c, 200))

    f.update(_calendar(ts_ns))
    if len(f.written) != NUM_FEATURES:  # a registry entry without code (or a misspelt one)
        raise AssertionError(f"features not computed: {set(FEATURE_NAMES) - f.written}")
    return f.out_FxN


_COLUMNS = ("open", "high", "low", "close", "volume")


def candle_columns(frame: pd.DataFrame) -> tuple[list[Array], Array]:
    """([open, high, low, close, volume] contiguous float64, int64 UTC ns open times) of a frame."""
    return _inputs(frame)


def _inputs(frame: pd.DataFrame) -> tuple[list[Array], Array]:
    import pandas as pd

    missing = [col for col in _COLUMNS if col not in frame.columns]
    if missing:
        raise FeatureError(
            f"candle frame lacks column(s) {', '.join(missing)}; pass Candles.frame from "
            "jaxtrader.data (open, high, low, close, volume with a UTC timestamp index)"
        )
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise FeatureError(
            f"candle frame index is {type(frame.index).__name__}, not a DatetimeIndex of candle "
            "open times; pass Candles.frame from jaxtrader.data"
        )
    cols = [np.ascontiguousarray(frame[col].to_numpy(dtype=np.float64)) for col in _COLUMNS]
    from jaxtrader.data import timestamps_ns

    return cols, timestamps_ns(frame.index)


def feature_matrix(frame: pd.DataFrame) -> Array:
    """The 86 features as a float64 [rows, 86] array (NaN before WARMUP), checked finite after.

    The numpy core of `compute_features`; `feature_matrix_of` is the same on plain arrays.
    """
    (o, h, low, c, v), ts_ns = _inputs(frame)
    return feature_matrix_of(o, h, low, c, v, ts_ns)


def feature_matrix_of(o: Array, h: Array, low: Array, c: Array, v: Array, ts_ns: Array) -> Array:
    """`feature_matrix` on contiguous float64 OHLCV columns and int64 UTC ns open times.

    No pandas. On the last `min_history()` candles of a series the last row matches the
    full-history value to 2.6e-8 at worst (every 7th candle of BTC and ETH 1h; tests bound 1e-7).
    """
    if len(c) == 0:
        return np.empty((0, NUM_FEATURES))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = _unmasked(o, h, low, c, v, ts_ns).T  # F-ordered [rows, 86]: pandas takes it as is
    out[:WARMUP] = np.nan
    if len(c) > WARMUP and not np.isfinite(out[WARMUP:]).all():
        _raise_not_finite(out, ts_ns, (o, h, low, c, v))
    return out


def last_feature_row(o: Array, h: Array, low: Array, c: Array, v: Array, ts_ns: Array) -> Array:
    """float64[86]: `feature_matrix_of(...)[-1]` bit for bit, with less work (the trading path).

    Only the last row's in-window statistics are computed (see `_unmasked`). All NaN when the
    candles do not cover `WARMUP`; FeatureError as in `feature_matrix` when it is not finite.
    """
    if len(c) <= WARMUP:
        return np.full(NUM_FEATURES, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        row = _unmasked(o, h, low, c, v, ts_ns, tail=1)[:, -1]
    if not np.isfinite(row).all():
        feature_matrix_of(o, h, low, c, v, ts_ns)  # raises, naming the feature and the input
    return row


def _iso(ts_ns: Array, i: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ts_ns[i]), unit="ns", tz="UTC").isoformat()


# An input this many times its column's median (or this small a fraction of it) explains a
# non-finite feature in valid candles: rolling sums are differences of one cumulative sum, whose
# rounding is relative to its largest terms, so a value ~1e16 times its neighbours leaves the
# later windows' sums at rounding noise (a zero VWAP, then close / 0 = inf).
_OUT_OF_SCALE = 1e6


def _raise_not_finite(out: Array, ts_ns: Array, inputs: tuple[Array, ...]) -> None:
    """FeatureError for the first non-finite value after warm-up, naming the input behind it.

    Three causes, each with its own remedy: an invalid candle (NaN/inf, a non-positive price,
    negative volume, a price or volume past `jaxtrader.data`'s bounds: what the loader refuses,
    worded by the same check); a valid candle out of scale with the rest of the series; else a
    fault in this module, which must not send the user to re-check data the loader accepted.
    """
    bad = ~np.isfinite(out[WARMUP:])
    first_rows = np.where(bad.any(axis=0), bad.argmax(axis=0), len(bad))
    j = int(first_rows.argmin())
    i = WARMUP + int(first_rows[j])
    value = out[i, j]
    what = "NaN" if np.isnan(value) else "infinite"
    head = tuple(x[: i + 1] for x in inputs)
    at = f"feature {FEATURE_NAMES[j]} is {what} at {_iso(ts_ns, i)} (row {i})"
    from jaxtrader.data import first_candle_problem

    found = first_candle_problem(*head)
    if found is not None:
        k, problem = found
        raise FeatureError(
            f"{at}: the input candle at {_iso(ts_ns, k)} (row {k}) is invalid: {problem}; fix "
            "or remove that candle (jaxtrader.data.load_candles refuses such candles)"
        )
    far = _farthest_from_median(head)
    if far is not None:
        col, k, ratio = far
        x = float(inputs[_COLUMNS.index(col)][k])
        raise FeatureError(
            f"{at}: input {col} {x:g} at {_iso(ts_ns, k)} (row {k}) is {ratio:.0e} times the "
            f"median {col} up to there, too far out of scale for float64 rolling sums; the candle "
            "passes validation but is almost surely wrong: check it, fix or remove it"
        )
    raise FeatureError(
        f"{at} from valid candles of ordinary scale; this is a jaxtrader bug, please report it "
        "with the candle file"
    )


def _farthest_from_median(head: tuple[Array, ...]) -> tuple[str, int, float] | None:
    """(column, row, value / median) of the input farthest in ratio from its column's median,
    when that is beyond `_OUT_OF_SCALE` either way; volume compares its positive values only."""
    best: tuple[str, int, float] | None = None
    score = math.log(_OUT_OF_SCALE)
    for col, x in zip(_COLUMNS, head, strict=True):
        pos = np.flatnonzero(x > 0)
        if pos.size == 0:
            continue
        logs = np.log(x[pos])
        dev = np.abs(logs - np.median(logs))
        m = int(dev.argmax())
        if dev[m] >= score:
            score = float(dev[m])
            best = (col, int(pos[m]), math.exp(float(logs[m] - np.median(logs))))
    return best


def compute_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The 86 causal features for every candle of `frame` (index kept, NaN before WARMUP).

    Raises FeatureError naming the feature and timestamp when a value after warm-up is NaN or
    infinite, and the input behind it: an invalid candle (what `jaxtrader.data` refuses: NaN,
    a non-positive price, a price or volume past its bounds), or a valid one out of scale with
    the series.
    """
    import pandas as pd

    return pd.DataFrame(
        feature_matrix(frame), index=frame.index, columns=_column_index(), copy=False
    )


@cache
def _column_index() -> pd.Index:
    import pandas as pd

    return pd.Index(FEATURE_NAMES)
