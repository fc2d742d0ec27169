"""The 86 causal engineered features: their registry and `compute_features`.

Owns the feature set a model sees next to the raw candle window. Every feature is strictly causal
(the value at row t uses candles <= t only) and scale-free (ratios, log returns, z-scores, bounded
oscillators scaled to about [-1, 1]), so a model trained at BTC 20,000 reads the same numbers at
BTC 90,000 and volume units never matter.

Standard indicators come from TA-Lib; numpy does the rest (log returns, rolling moments, volume
normalisation, candle shape, calendar), and computes MFI, the OBV slope and the Chaikin
oscillator itself (TA-Lib's values, to float64 rounding), as TA-Lib keeps running totals over
the whole history for those. Every rolling sum is added up inside its own window, never as a
difference of running totals: a value stops mattering once it has left the window, however large
it was (one volume 1e12 times the median used to skew every later volume feature), and all-zero
(gap-filled, zero-volume) windows sum to exactly 0. TA-Lib's moving averages, Bollinger bands and
ultimate oscillator do keep running totals of prices, so prices moving 1e6-fold within or between
candles are refused, along with everything `jaxtrader.data.load_candles` refuses (`_check_candles`).

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
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxtrader.errors import FeatureError

if TYPE_CHECKING:
    import pandas as pd

FEATURES_VERSION = 2  # bump whenever code changes any feature value beyond float64 rounding

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
    """Candles of history for which the last row matches the full-history value to 1e-7 (measured
    2.6e-8 at worst on BTC and ETH 1h)."""
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
    """Copy of x with its first k (warm-up NaN) rows set to 0 so window sums over them stay finite."""
    out = x.copy()
    out[:k] = 0.0
    return out


def _window_sums(x: Array, ns: Iterable[int]) -> dict[int, Array]:
    """{n: trailing n-row sums of x along its last axis} (rows before n - 1 NaN), each added up
    from the n values of its own window only.

    No running total: a difference of one cumulative sum over the history keeps the rounding of
    everything before the window, so one volume 1e12 times the median left every later window's
    sum at its residue (volume ratios off by 1e-4, and by 100% at 1e20: flattened to 0). Here the
    sums over 2^k rows are built by doubling (s_2w[t] = s_w[t] + s_w[t - w]) and the sum over n
    rows adds the blocks of n's binary digits, the most recent first: a fixed tree of the window's
    own values. So a value stops mattering the row it leaves the window; a window sums to the same
    bits wherever it sits (a trading buffer's last row equals the full-history value bit for bit);
    the error is below the tree depth (log2 n) times float64 rounding of the window's |values|; and
    an all-zero window sums to exactly 0 (0.0 + 0.0 is 0.0), which keeps the zero-volume and
    flat-price guards exact. Two work arrays of x's shape, whatever the windows.
    """
    widths = sorted(set(ns))
    x = np.ascontiguousarray(x)
    size = x.shape[-1]
    # The rows of a stack are worked on as one flat array (numpy is 4x faster on contiguous 1D
    # slices than on 2D ones): a shift then carries the end of one row into the start of the
    # next, but only into columns before the window is full, which end up NaN.
    flat = x.reshape(-1)
    out: dict[int, Array] = {}
    done = dict.fromkeys(widths, 0)  # rows of each window already summed, from its newest row
    block, spare, width = flat, None, 1  # block[t]: sum of the `width` rows ending at t
    while True:
        for n in widths:
            if n & width:
                off = done[n]
                if off == 0:
                    out[n] = block.copy()
                elif off < size:
                    out[n][off:] += block[:-off]
                done[n] = off + width
        if 2 * width > widths[-1]:
            break
        nxt = np.zeros_like(flat) if spare is None else spare  # columns < width - 1: garbage
        np.add(block[width:], block[:-width], out=nxt[width:])
        spare = None if block is flat else block
        block, width = nxt, 2 * width
    for n in widths:
        out[n] = out[n].reshape(x.shape)
        out[n][..., : n - 1] = np.nan
    return out


def _window_means(x: Array, ns: Iterable[int]) -> dict[int, Array]:
    return {n: s / n for n, s in _window_sums(x, ns).items()}


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
    """Trailing n-row means of each row of x, summed inside each window by one reduction each.

    Like `_window_sums`, the result does not depend on the history before the window (a crash's
    r^4 in a running total would swamp the rounding of calm windows far later: 2e-6 relative
    error on kurtosis in the BTC data), and `tail` can ask for the last `tail` columns only (the
    rest NaN): the same reduction over the same n values, bit for bit.
    """
    x_KxN = np.ascontiguousarray(x_KxN)
    rows, size = x_KxN.shape
    out = np.full(x_KxN.shape, np.nan)
    first = n - 1 if tail is None else max(n - 1, size - tail)
    if size > first:
        # view[k, i] = x[k, first - n + 1 + i : first + 1 + i]: sliding_window_view's view,
        # without its Python overhead (half the cost of these means on a trading buffer)
        step = x_KxN.itemsize
        view = np.ndarray((rows, size - first, n), np.float64, buffer=x_KxN,
                          offset=(first - n + 1) * step, strides=(size * step, step, step))  # fmt: skip
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


# TA-Lib's MFI keeps add-and-subtract window totals, and its OBV and A/D lines are running totals
# over the whole history: one huge volume leaves its rounding residue in every later value. These
# three give TA-Lib's values (to float64 rounding: tests/test_features.py) from in-window sums.


def _mfi(tp: Array, v: Array, n: int) -> Array:
    """TA-Lib's MFI(n) / 100 from typical prices: rising money flow / all money flow, last n.

    A candle's flow is typical price x volume; it rises when the typical price did (by more than
    1e-14 of the two, TA-Lib's dead zone: a smaller move counts as none, and carries no flow).
    0 when the window has no flow. Rows before n: NaN. Prices must be positive.
    """
    step = tp[1:] - tp[:-1]
    flows = np.zeros((2, len(tp)))  # [rising flow, all flow]
    np.multiply(tp[1:], v[1:], out=flows[1, 1:])
    np.copyto(flows[1, 1:], 0.0, where=np.abs(step) <= 1e-14 * (tp[1:] + tp[:-1]))
    np.copyto(flows[0, 1:], flows[1, 1:], where=step >= 0)
    rising, total = _window_sums(flows, (n,))[n]
    out = _div(rising, total, 0.0)
    out[:n] = np.nan
    return out


def _obv_slope(c: Array, v: Array, n: int) -> Array:
    """TA-Lib's LINEARREG_SLOPE(OBV, n) from the window's own volumes. Rows before n - 1: NaN.

    The slope is sum_j w_j OBV[t - n + 1 + j] with weights (j - (n - 1) / 2) / sum of their
    squares; they add up to 0, so OBV may be taken from the window's first candle on: OBV[t - n
    + 1 + j] - OBV[t - n + 1] = s[t - n + 2] + ... + s[t - n + 1 + j] for OBV's steps s (+volume
    on a higher close, -volume on a lower one). Collecting the terms, the slope is
    sum_m m (n - m) s[t - n + 1 + m] over m = 1 .. n - 1, times 6 / (n (n^2 - 1)).
    """
    s = np.zeros_like(v)
    s[1:] = np.where(c[1:] > c[:-1], v[1:], np.where(c[1:] < c[:-1], -v[1:], 0.0))
    out = np.full_like(v, np.nan)
    half = (n - 1) // 2  # m and n - m share the weight m (n - m)
    weight = np.array([[m * (n - m)] for m in range(1, half + 1)], dtype=np.float64)
    for start in range(0, len(v) - n + 1, _CHUNK):  # temporaries of half x _CHUNK floats
        rows = min(_CHUNK, len(v) - n + 1 - start)
        # shifted[m] = s[start + m : start + m + rows] (sliding_window_view, without its cost)
        seg = s[start : start + n - 1 + rows]
        shifted = np.ndarray((n, rows), np.float64, buffer=seg, strides=(seg.itemsize,) * 2)
        pairs = shifted[1 : half + 1] + shifted[n - 1 : n - 1 - half : -1]
        acc = np.add.reduce(weight * pairs, axis=0)  # in order of m, for each row alike
        if n % 2 == 0:
            acc += (n * n // 4) * shifted[n // 2]
        out[start + n - 1 : start + n - 1 + rows] = acc * (6.0 / (n * (n * n - 1.0)))
    return out


_CHUNK = 4_096


def _adosc(h: Array, low: Array, c: Array, v: Array, fast: int, slow: int) -> Array:
    """TA-Lib's Chaikin A/D oscillator, EMA_fast(AD) - EMA_slow(AD), without the A/D line.

    With AD's steps x[t] = ((c - low) - (h - c)) / (h - low) * v (0 on a zero range) and TA-Lib's
    seed (both EMAs start at AD[0]), D = AD - EMA_k(AD) follows D[0] = 0, D[t] = (1 - k) (D[t-1]
    + x[t]): an EMA of the steps alone, which forgets a huge volume as the EMAs do. The
    oscillator is D_slow - D_fast. Rows before slow - 1 (TA-Lib's lookback): NaN.
    """
    rng = h - low
    x = np.where(rng > 0, (c - low - (h - c)) / rng * v, 0.0)
    x[0] = 0.0
    out = _ad_gap(x, slow) - _ad_gap(x, fast)
    out[: slow - 1] = np.nan
    return out


def _ad_gap(x: Array, n: int) -> Array:
    """D[t] = (1 - k) (D[t-1] + x[t]), D[0] = x[0] = 0, k = 2 / (n + 1), by TA-Lib's EMA(n).

    TA-Lib's EMA E[t] = E[t-1] + k (z[t] - E[t-1]) is that recursion for z = x (1 - k) / k; its
    seed, the mean of the first n inputs, is D[0] = 0 when n - 1 zeros go in front.
    """
    k = 2.0 / (n + 1.0)
    z = np.zeros(len(x) + n - 1)
    np.multiply(x, (1.0 - k) / k, out=z[n - 1 :])
    out: Array = _talib().EMA(z, n)[n - 1 :]
    return out


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
    sum_v = _window_sums(v, (5, 14, 20, 50, 60, 200))
    typical = (h + low + c) / 3.0
    dead = sum_v[14] == 0  # TA-Lib's MFI is 0 ("oversold") on zero flow; neutral is 0.5
    f["mfi_14"] = np.where(dead, 0.5, _mfi(typical, v, 14))
    f["ultosc"] = np.where(flat(29), 0.5, talib.ULTOSC(h, low, c, 7, 14, 28) / 100.0)
    f["cmo_14"] = talib.CMO(c, 14) / 100.0

    # volatility
    f["atr_pct_7"] = talib.NATR(h, low, c, 7) / 100.0
    f["atr_pct_14"] = talib.NATR(h, low, c, 14) / 100.0
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, talib.MA_Type.SMA)
    width = upper - lower
    f["bb_pctb_20"] = _div(c - lower, width, 0.5)
    f["bb_width_20"] = width / middle
    means_r_r2 = _window_means(np.stack([r, r * r]), {*_STD_WINDOWS, 20, 60})
    rm = {n: (m[0], m[1]) for n, m in means_r_r2.items()}  # {n: (mean r, mean r^2)}
    std = {n: _std(*rm[n]) for n in _STD_WINDOWS}
    for n in _STD_WINDOWS:
        f[f"std_ret_{n}"] = std[n]
    hl2 = np.log(h / low) ** 2
    gk = 0.5 * hl2 - (2.0 * math.log(2.0) - 1.0) * np.log(c / o) ** 2
    lag_r = r * _head0(_lag1(r), 1)  # r_t * r_t-1
    # Sums over 20 and 60 of: ln(h/l)^2, the Garman-Klass term, r_t r_t-1, typical price, its
    # product with volume (VWAP).
    sums_20_60 = _window_sums(np.stack([hl2, gk, lag_r, typical, typical * v]), (20, 60))
    for n in (20, 60):
        mean_hl2, gk_mean = sums_20_60[n][0] / n, sums_20_60[n][1] / n
        f[f"parkinson_{n}"] = np.sqrt(mean_hl2 / (4.0 * math.log(2.0)))
        f[f"garman_klass_{n}"] = np.sqrt(np.where(gk_mean > 0, gk_mean, 0.0 * gk_mean))
    std20 = _head0(std[20], 20)
    mean_std20, mean_std20_sq = _window_means(np.stack([std20, std20 * std20]), (60,))[60]
    f["vol_of_vol_60"] = _div(_std(mean_std20, mean_std20_sq), mean_std20, 0.0)
    f["std_ratio_5_60"] = _div(std[5], std[60], 1.0)

    # volume
    mean200 = sum_v[200] / 200.0
    u = _head0(np.log(_div(v, mean200, 0.0) + _VOL_FLOOR), 199)
    u_2xN = np.stack([u, u * u])
    for n in (20, 60):
        # In-window sums: u is ~-7 over dead stretches, and running sums of it would leave a
        # rounding residue where the window std is exactly 0.
        mu, mu2 = _local_means(u_2xN, n, tail)
        f[f"volume_z_{n}"] = _div(u - mu, _std(mu, mu2), 0.0)
    mean5, mean20, mean50 = sum_v[5] / 5.0, sum_v[20] / 20.0, sum_v[50] / 50.0
    f["volume_ratio_20"] = _div(v, mean20, 0.0)
    f["volume_ratio_5_50"] = _div(mean5, mean50, 0.0)
    f["obv_slope_20"] = _div(_obv_slope(c, v, 20), mean20, 0.0)
    for n in (20, 60):
        vol_n, sum_typical, sum_tv = sum_v[n], sums_20_60[n][3], sums_20_60[n][4]
        vwap = np.where(vol_n == 0, sum_typical / n, sum_tv / vol_n)
        f[f"vwap_dist_{n}"] = c / vwap - 1.0
    f["adosc_3_10"] = _div(_adosc(h, low, c, v, 3, 10), talib.EMA(v, 10), 0.0)

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
    for n in (20, 60):
        f[f"skew_{n}"], f[f"kurt_{n}"] = _moments(r, n, tail)
        f[f"autocorr_{n}"] = _autocorr(*rm[n], sums_20_60[n][2] / n)
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
    FeatureError before any work for candles `_check_candles` refuses.
    """
    if len(c) == 0:
        return np.empty((0, NUM_FEATURES))
    _check_candles(o, h, low, c, v, ts_ns)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = _unmasked(o, h, low, c, v, ts_ns).T  # F-ordered [rows, 86]: pandas takes it as is
    out[:WARMUP] = np.nan
    if len(c) > WARMUP and not np.isfinite(out[WARMUP:]).all():
        _raise_not_finite(out, ts_ns, (o, h, low, c))
    return out


def last_feature_row(o: Array, h: Array, low: Array, c: Array, v: Array, ts_ns: Array) -> Array:
    """float64[86]: `feature_matrix_of(...)[-1]` bit for bit, with less work (the trading path).

    Only the last row's in-window statistics are computed (see `_unmasked`). All NaN when the
    candles do not cover `WARMUP`; FeatureError as in `feature_matrix_of` for candles it
    refuses or a value that is not finite.
    """
    if len(c) <= WARMUP:
        return np.full(NUM_FEATURES, np.nan)
    _check_candles(o, h, low, c, v, ts_ns)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        row = _unmasked(o, h, low, c, v, ts_ns, tail=1)[:, -1]
    if not np.isfinite(row).all():
        feature_matrix_of(o, h, low, c, v, ts_ns)  # raises, naming the feature and the input
    return row


def _iso(ts_ns: Array, i: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(ts_ns[i]), unit="ns", tz="UTC").isoformat()


# Prices this many times apart within one candle, or from one candle to the next, are refused:
# no market moves that far in one candle (a redenomination is 1e3), and TA-Lib's moving averages,
# Bollinger bands and ultimate oscillator keep running window totals, which would carry such a
# spike's rounding for the rest of the series (1e-5 relative error on SMA ratios after a 1e12
# spike, garbage after 1e20). Volume is not limited: every volume feature sums inside its window
# or decays (EMA-type), so a volume spike stops mattering once it has left them.
_MAX_JUMP = 1e6


def _check_candles(o: Array, h: Array, low: Array, c: Array, v: Array, ts_ns: Array) -> None:
    """FeatureError for the first candle the features refuse, naming its time and row.

    First the loader's own check (`jaxtrader.data.first_candle_problem`: NaN/inf, non-positive
    prices, a price or volume past its bounds, high/low inconsistent with open/close, negative
    volume), so a frame or arrays that did not come through `load_candles` get the same answer;
    then rows out of time order (features are computed in row order, so an unsorted or repeated
    time would let a row read later candles); then a valid candle whose prices are `_MAX_JUMP`
    times apart within it or from the previous candle. Gaps in the grid are the loader's to fill.
    """
    from jaxtrader.data import first_candle_problem

    found = first_candle_problem(o, h, low, c, v)
    if found is not None:
        k, problem = found
        raise FeatureError(
            f"input candle at {_iso(ts_ns, k)} (row {k}) is invalid: {problem}; fix or remove "
            "that candle (jaxtrader.data.load_candles refuses such candles)"
        )
    if len(ts_ns) > 1 and not (ts_ns[1:] > ts_ns[:-1]).all():
        k = int(np.flatnonzero(ts_ns[1:] <= ts_ns[:-1])[0]) + 1
        order = "repeats" if ts_ns[k] == ts_ns[k - 1] else "comes before"
        raise FeatureError(
            f"input candle at {_iso(ts_ns, k)} (row {k}) {order} the time of row {k - 1} "
            f"({_iso(ts_ns, k - 1)}): features read the rows in order, so their times must "
            "strictly increase; sort the frame by time and drop repeated candles "
            "(jaxtrader.data.load_candles does)"
        )
    if len(c) > 1:  # highest high over lowest low of every two neighbours: one test for all
        if not (np.maximum(h[1:], h[:-1]) > _MAX_JUMP * np.minimum(low[1:], low[:-1])).any():
            return
    elif not h[0] > _MAX_JUMP * low[0]:
        return
    jump = h / low  # >= 1 in valid candles
    if len(c) > 1:
        np.maximum(jump[1:], h[1:] / low[:-1], out=jump[1:])
        np.maximum(jump[1:], h[:-1] / low[1:], out=jump[1:])
    k = int(np.flatnonzero(jump > _MAX_JUMP)[0])
    if h[k] / low[k] > _MAX_JUMP:
        what = f"its high {h[k]:g} is {h[k] / low[k]:.0e} times its low {low[k]:g}"
    elif h[k] / low[k - 1] > _MAX_JUMP:
        what = f"its high {h[k]:g} is {h[k] / low[k - 1]:.0e} times the previous low {low[k - 1]:g}"
    else:
        what = f"the previous high {h[k - 1]:g} is {h[k - 1] / low[k]:.0e} times its low {low[k]:g}"
    raise FeatureError(
        f"input candle at {_iso(ts_ns, k)} (row {k}): {what}, a move no market makes in one "
        f"candle (features refuse moves past {_MAX_JUMP:.0e}: float64 running totals in TA-Lib's "
        "indicators would keep its rounding); the candle passes validation but is almost surely "
        "wrong: check it, fix or remove it"
    )


# Prices this many times their column's median (or this small a fraction of it) explain a
# non-finite feature in checked candles: a series that drifts over a dozen orders of magnitude
# in moves below `_MAX_JUMP` can still leave TA-Lib's running totals at rounding noise.
_OUT_OF_SCALE = 1e6


def _raise_not_finite(out: Array, ts_ns: Array, prices: tuple[Array, ...]) -> None:
    """FeatureError for the first non-finite value after warm-up in checked candles.

    Two causes, each with its own remedy: prices out of scale with the rest of the series; else a
    fault in this module, which must not send the user to re-check data the loader accepted.
    """
    bad = ~np.isfinite(out[WARMUP:])
    first_rows = np.where(bad.any(axis=0), bad.argmax(axis=0), len(bad))
    j = int(first_rows.argmin())
    i = WARMUP + int(first_rows[j])
    value = out[i, j]
    what = "NaN" if np.isnan(value) else "infinite"
    at = f"feature {FEATURE_NAMES[j]} is {what} at {_iso(ts_ns, i)} (row {i})"
    far = _farthest_from_median(tuple(x[: i + 1] for x in prices))
    if far is not None:
        col, k, ratio = far
        x = float(prices[_COLUMNS.index(col)][k])
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
    """(column, row, value / median) of the price farthest in ratio from its column's median,
    when that is beyond `_OUT_OF_SCALE` either way."""
    best: tuple[str, int, float] | None = None
    score = math.log(_OUT_OF_SCALE)
    for col, x in zip(_COLUMNS, head, strict=False):
        logs = np.log(x)
        dev = np.abs(logs - np.median(logs))
        m = int(dev.argmax())
        if dev[m] >= score:
            score = float(dev[m])
            best = (col, m, math.exp(float(logs[m] - np.median(logs))))
    return best


def compute_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The 86 causal features for every candle of `frame` (index kept, NaN before WARMUP).

    Raises FeatureError naming the candle (time and row) for what `_check_candles` refuses: what
    `jaxtrader.data.load_candles` refuses (NaN, a non-positive price, a price or volume past its
    bounds, ...), and prices that jump `_MAX_JUMP`-fold; and naming the feature and time when a
    value after warm-up is NaN or infinite all the same.
    """
    import pandas as pd

    return pd.DataFrame(
        feature_matrix(frame), index=frame.index, columns=_column_index(), copy=False
    )


@cache
def _column_index() -> pd.Index:
    import pandas as pd

    return pd.Index(FEATURE_NAMES)
