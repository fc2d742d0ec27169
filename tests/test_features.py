"""Tests for jaxtrader.features: registry, no look-ahead, scale invariance, guards, warm-ups."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import chex
import numpy as np
import pandas as pd
import pytest

from jaxtrader import features as F
from jaxtrader.errors import FeatureError

ROWS = 3_000


def random_candles(
    rows: int, seed: int, start: str = "2024-01-01", first_close: float = 100.0
) -> pd.DataFrame:
    """Random but valid OHLCV (low <= open, close <= high; volume >= 0) with volatility regimes."""
    rng = np.random.default_rng(seed)
    vol = 0.01 * np.exp(np.cumsum(rng.normal(0.0, 0.05, rows)).clip(-2, 2))
    close = first_close * np.exp(np.cumsum(vol * rng.standard_t(4, rows)))
    prev = np.concatenate([[first_close], close[:-1]])
    open_ = prev * np.exp(rng.normal(0.0, 1e-4, rows))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2)))
    volume = rng.lognormal(5.0, 1.0, rows)
    index = pd.date_range(start, periods=rows, freq="1h", tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume,
         "filled": np.zeros(rows, bool)},
        index=index,
    )  # fmt: skip


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return random_candles(ROWS, seed=0)


@pytest.fixture(scope="module")
def full(candles: pd.DataFrame) -> np.ndarray:
    return F.feature_matrix(candles)


def offenders(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> list[str]:
    """Names of features whose columns differ (NaN only matches NaN), with the worst row."""
    bad = []
    for j, name in enumerate(F.FEATURE_NAMES):
        x, y = a[:, j], b[:, j]
        same = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            bad.append(f"{name} (row {i}: {x[i]!r} vs {y[i]!r})")
    return bad


# ----------------------------------------------------------------------------- registry


def test_registry_has_86_unique_documented_features() -> None:
    assert F.NUM_FEATURES == 86
    assert len(F.FEATURES) == len(F.FEATURE_NAMES) == 86
    assert len(set(F.FEATURE_NAMES)) == 86
    assert set(F.FAMILIES) == {
        "returns", "trend", "oscillator", "volatility", "volume", "candle", "rolling", "calendar"
    }  # fmt: skip
    for spec in F.FEATURES:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.definition.strip() and "\n" not in spec.definition, spec.name
        assert isinstance(spec.warmup, int) and 0 <= spec.warmup <= F.WARMUP, spec.name
    assert max(s.warmup for s in F.FEATURES) == F.WARMUP
    assert F.min_history() == F.MIN_HISTORY == F.WARMUP + 1


def test_feature_hash_is_stable_and_tracks_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    h = F.feature_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert F.feature_hash() == h
    changed = list(F.FEATURES)
    changed[5] = dataclasses.replace(changed[5], definition=changed[5].definition + " ")
    monkeypatch.setattr(F, "FEATURES", tuple(changed))
    assert F.feature_hash() != h
    monkeypatch.undo()
    monkeypatch.setattr(F, "FEATURES_VERSION", F.FEATURES_VERSION + 1)
    assert F.feature_hash() != h
    monkeypatch.undo()
    warm = list(F.FEATURES)
    warm[0] = dataclasses.replace(warm[0], warmup=warm[0].warmup + 1)
    monkeypatch.setattr(F, "FEATURES", tuple(warm))
    assert F.feature_hash() != h


# ----------------------------------------------------------------------------- shape and NaNs


def test_compute_features_frame_shape_and_warmup(candles: pd.DataFrame, full: np.ndarray) -> None:
    out = F.compute_features(candles)
    assert list(out.columns) == list(F.FEATURE_NAMES)
    assert out.index.equals(candles.index)
    assert (out.dtypes == np.float64).all()
    chex.assert_shape(full, (ROWS, 86))
    np.testing.assert_array_equal(out.to_numpy(), full)
    assert np.isnan(full[: F.WARMUP]).all()
    chex.assert_tree_all_finite(full[F.WARMUP :])


def test_short_frames_are_all_nan_and_empty_frames_work(candles: pd.DataFrame) -> None:
    assert np.isnan(F.feature_matrix(candles.iloc[: F.WARMUP])).all()
    assert F.compute_features(candles.iloc[:0]).shape == (0, 86)


# ----------------------------------------------------------------------------- no look-ahead


@pytest.mark.parametrize("seed", [1, 2])
def test_no_look_ahead_prefix_and_replaced_future(
    candles: pd.DataFrame, full: np.ndarray, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    for t in sorted(rng.integers(F.WARMUP // 2, ROWS - 50, size=3)):
        prefix = F.feature_matrix(candles.iloc[: t + 1])
        assert not offenders(prefix, full[: t + 1], 0, 0), f"prefix ending at row {t}"

        future = random_candles(ROWS - t - 1, seed=100 + seed, start="2000-01-01",
                                first_close=float(candles["close"].iloc[t]) * 3.0)  # fmt: skip
        future.index = candles.index[t + 1 :]
        changed = F.feature_matrix(pd.concat([candles.iloc[: t + 1], future]))
        bad = offenders(changed[: t + 1], full[: t + 1], 0, 0)
        assert not bad, f"look-ahead at t={t} (future replaced) in: {bad}"
        assert offenders(changed[t + 1 :], full[t + 1 :], 1e-9, 1e-12), "future did not change"


def test_look_ahead_check_catches_a_centred_window(candles: pd.DataFrame) -> None:
    """The check above is not vacuous: a centred (non-causal) mean fails it."""
    t = 1_000

    def centred(frame: pd.DataFrame) -> np.ndarray:
        x = frame["close"].rolling(5, center=True, min_periods=1).mean().to_numpy()
        return np.repeat(x[:, None], 86, axis=1)

    future = random_candles(ROWS - t - 1, seed=7, first_close=50.0)
    future.index = candles.index[t + 1 :]
    changed = centred(pd.concat([candles.iloc[: t + 1], future]))
    assert offenders(changed[: t + 1], centred(candles)[: t + 1], 0, 0)


# ----------------------------------------------------------------------------- invariances, guards


@pytest.mark.parametrize("volume_factor", [0.001, 37.0])
def test_scale_invariance(candles: pd.DataFrame, full: np.ndarray, volume_factor: float) -> None:
    scaled = candles.copy()
    scaled[["open", "high", "low", "close"]] *= 4.5
    scaled["volume"] *= volume_factor
    bad = offenders(F.feature_matrix(scaled), full, rtol=1e-7, atol=1e-9)
    assert not bad, f"not scale-free: {bad}"


def flat_and_dead(candles: pd.DataFrame) -> pd.DataFrame:
    """Gap-filled stretches (flat OHLC at the previous close, volume 0), zero-volume candles."""
    out = candles.copy()
    close = out["close"].to_numpy().copy()
    cols = {c: out[c].to_numpy().copy() for c in ("open", "high", "low", "close", "volume")}
    for start, length in ((600, 40), (1_200, 260), (2_000, 3)):
        price = close[start - 1]
        for c in ("open", "high", "low", "close"):
            cols[c][start : start + length] = price
        cols["volume"][start : start + length] = 0.0
    cols["volume"][[800, 801, 1_700]] = 0.0  # zero-volume placeholders with real prices
    for c, x in cols.items():
        out[c] = x
    out.loc[out.index[600:640], "filled"] = True
    return out


def test_finite_on_flat_and_zero_volume_candles(candles: pd.DataFrame) -> None:
    frame = flat_and_dead(candles)
    out = F.compute_features(frame)
    chex.assert_tree_all_finite(out.iloc[F.WARMUP :].to_numpy())
    deep = out.iloc[1_200 + 230]  # 230 candles into a 260-candle dead stretch
    expected = {
        "ret_1": 0.0, "body_range": 0.0, "upper_wick": 0.0, "lower_wick": 0.0, "close_loc": 0.5,
        "range_log": 0.0, "mfi_14": 0.5, "willr_14": -0.5, "volume_ratio_20": 0.0,
        "volume_ratio_5_50": 0.0, "obv_slope_20": 0.0, "volume_z_20": 0.0, "std_ret_20": 0.0,
        "skew_20": 0.0, "kurt_20": 0.0, "autocorr_20": 0.0, "bb_pctb_20": 0.5, "bb_width_20": 0.0,
        "vwap_dist_20": 0.0, "minmax_pos_20": 0.5, "std_ratio_5_60": 1.0, "parkinson_20": 0.0,
        "stoch_k": 0.5, "stoch_d": 0.5, "ultosc": 0.5, "willr_48": -0.5, "cci_20": 0.0,
    }  # fmt: skip
    got = {k: float(deep[k]) for k in expected}
    assert got == pytest.approx(expected, abs=1e-12)


def spiked(frame: pd.DataFrame, row: int, factor: float) -> pd.DataFrame:
    """`frame` with the volume of `row` set to `factor` times the median volume: a valid candle
    (the loader's checks pass), wildly out of scale."""
    from jaxtrader.data import first_candle_problem

    out = frame.copy()
    out.iloc[row, out.columns.get_loc("volume")] = factor * float(frame["volume"].median())
    assert first_candle_problem(*(out[c].to_numpy() for c in F._COLUMNS)) is None
    return out


@pytest.mark.parametrize("factor", [1e12, 1e20])
def test_a_volume_spike_stops_mattering_once_it_leaves_every_window(
    candles: pd.DataFrame, full: np.ndarray, factor: float
) -> None:
    """A valid volume 1e12 times the median may move the features whose windows hold it, but
    from WARMUP rows on (past every window and every decayed seed) the features equal those of
    the same candles without it. Running totals over the whole history (a cumulative sum, or
    TA-Lib's add-and-subtract window totals and OBV/A-D lines) kept its rounding residue for the
    rest of the series: volume features off by up to 100% (mfi_14, obv_slope_20, vwap_dist_20)."""
    row = F.WARMUP + 100
    out = F.feature_matrix(spiked(candles, row, factor))
    after = row + F.WARMUP
    bad = offenders(out[after:], full[after:], rtol=1e-9, atol=1e-12)
    assert not bad, f"the spike at row {row} still matters {F.WARMUP}+ rows later: {bad}"
    moved = offenders(out[row : row + 20], full[row : row + 20], rtol=1e-9, atol=1e-12)
    assert any(m.startswith("volume_ratio_20") for m in moved)  # the spike does count in-window


@pytest.mark.parametrize(("col", "value", "reason"), [
    ("close", np.nan, "missing or non-finite value (NaN/inf) in close"),
    # A finite volume whose product with the price would overflow float64: refused in the
    # loader's own words (its bounds), not computed.
    ("volume", 1e307, "volume 1e+307 is above 1e+30, the largest price or volume accepted (no "
     "market trades at that scale: a corrupt or mis-scaled value)"),
])  # fmt: skip
def test_an_invalid_candle_is_named_in_the_loaders_words(
    candles: pd.DataFrame, col: str, value: float, reason: str
) -> None:
    bad = candles.copy()
    row = F.WARMUP + 50
    bad.iloc[row, bad.columns.get_loc(col)] = value
    with pytest.raises(FeatureError) as err:
        F.compute_features(bad)
    stamp = candles.index[row].isoformat()
    assert str(err.value) == (
        f"input candle at {stamp} (row {row}) is invalid: {reason}; fix or remove that candle "
        "(jaxtrader.data.load_candles refuses such candles)"
    )


# One candle of each kind the loader refuses, finite where it can be: each left every feature
# after the warm-up finite (so nothing was raised) when it sat in the warm-up rows.
_INVALID = {
    "high below low": {"high": 0.5, "low": 2.0, "open": 1.0, "close": 1.0},
    "high below max(open, close)": {"close": 1.5, "high": 1.2},
    "low above min(open, close)": {"low": 1.1, "open": 1.05},
    "negative volume": {"volume": -5.0},
    "non-positive price": {"low": 0.0},
    "price below the loader's bound": {"low": 1e-35},
    "NaN": {"volume": np.nan},
}


@pytest.mark.parametrize("kind", list(_INVALID))
@pytest.mark.parametrize("row", [5, F.WARMUP + 20])
def test_frames_that_skipped_the_loader_get_its_checks(
    candles: pd.DataFrame, kind: str, row: int
) -> None:
    """compute_features, feature_matrix_of and last_feature_row refuse what load_candles refuses,
    with its words (jaxtrader.data.first_candle_problem, the one check both call), wherever the
    candle is: also in the warm-up rows, whose own values are masked anyway, and also when every
    feature would come out finite."""
    from jaxtrader.data import first_candle_problem

    bad = candles.iloc[: F.WARMUP + 100].copy()
    scale = float(bad["close"].iloc[row])
    for col, x in _INVALID[kind].items():
        bad.iloc[row, bad.columns.get_loc(col)] = x * (scale if col != "volume" else 1.0)
    cols, ts_ns = F.candle_columns(bad)
    found = first_candle_problem(*cols)
    assert found is not None and found[0] == row
    stamp = re.escape(bad.index[row].isoformat())
    expected = rf"^input candle at {stamp} \(row {row}\) is invalid: {re.escape(found[1])}; fix"
    with pytest.raises(FeatureError, match=expected):
        F.compute_features(bad)
    with pytest.raises(FeatureError, match=expected):
        F.feature_matrix_of(*cols, ts_ns)
    with pytest.raises(FeatureError, match=expected):
        F.last_feature_row(*cols, ts_ns)


@pytest.mark.parametrize("fault", ["swapped", "repeated"])
def test_rows_out_of_time_order_are_refused(candles: pd.DataFrame, fault: str) -> None:
    """Features read the rows in order, so a frame that skipped the loader with two rows swapped
    would let the earlier of them read a later candle (look-ahead); a repeated time double-counts
    one. Both are named, with the row, instead of computed."""
    bad = candles.iloc[: F.WARMUP + 100].copy()
    row = F.WARMUP + 50
    index = bad.index.to_numpy().copy()
    if fault == "swapped":
        index[row - 1], index[row] = index[row], index[row - 1]
        order = "comes before"
    else:
        index[row] = index[row - 1]
        order = "repeats"
    bad.index = pd.DatetimeIndex(index, name=bad.index.name)
    cols, ts_ns = F.candle_columns(bad)
    expected = rf"^input candle at \S+ \(row {row}\) {order} the time of row {row - 1} "
    with pytest.raises(FeatureError, match=expected):
        F.compute_features(bad)
    with pytest.raises(FeatureError, match=expected):
        F.last_feature_row(*cols, ts_ns)


@pytest.mark.parametrize(("col", "factor", "what"), [
    ("high", 1e7, r"its high \S+ is 1e\+07 times its low"),
    ("price", 1e12, r"its high \S+ is 1e\+12 times the previous low"),
    ("price", 1e-12, r"the previous high \S+ is 1e\+12 times its low"),
])  # fmt: skip
def test_a_price_jump_no_market_makes_is_refused(
    candles: pd.DataFrame, col: str, factor: float, what: str
) -> None:
    """Valid candles (the loader's bounds are 1e-30..1e30), but a 1e6-fold move within or into a
    candle: TA-Lib's moving averages keep running window totals, which would carry a price
    spike's rounding for the rest of the series (after 1e12: SMA ratios off by 1e-5, after 1e20
    garbage), so the candle is named instead."""
    from jaxtrader.data import first_candle_problem

    bad = candles.copy()
    row = F.WARMUP + 50
    cols = ["high"] if col == "high" else ["open", "high", "low", "close"]
    for name in cols:
        bad.iloc[row, bad.columns.get_loc(name)] *= factor
    assert first_candle_problem(*(bad[c].to_numpy() for c in F._COLUMNS)) is None
    stamp = re.escape(candles.index[row].isoformat())
    with pytest.raises(FeatureError) as err:
        F.compute_features(bad)
    assert re.fullmatch(
        rf"input candle at {stamp} \(row {row}\): {what} \S+, a move no market makes in one "
        r"candle \(features refuse moves past 1e\+06: float64 running totals in TA-Lib's "
        r"indicators would keep its rounding\); the candle passes validation but is almost "
        r"surely wrong: check it, fix or remove it",
        str(err.value),
    ), str(err.value)
    ok = candles.copy()
    for name in ("open", "high", "low", "close"):
        ok.iloc[row, ok.columns.get_loc(name)] *= 1e5  # a 1e5-fold spike is still computed
    chex.assert_tree_all_finite(F.feature_matrix(ok)[F.WARMUP :])


def test_prices_drifting_out_of_scale_are_named_when_a_feature_breaks(
    candles: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked candles can still drift over many orders of magnitude in steps below the jump
    limit; should a feature then break, the message names the price farthest from its median."""
    unmasked = F._unmasked

    def broken(*args: np.ndarray, **kwargs: int | None) -> np.ndarray:
        out = unmasked(*args, **kwargs)
        out[F.FEATURE_NAMES.index("sma_ratio_5"), F.WARMUP + 70] = np.inf
        return out

    drift = candles.copy()
    row = F.WARMUP + 50  # from here on 1e12 times higher, in 1e3-fold steps
    ramp = 1e3 ** np.minimum(np.arange(1, len(drift) - row + 4), 4)
    for name in ("open", "high", "low", "close"):
        drift.iloc[row - 3 :, drift.columns.get_loc(name)] *= ramp
    monkeypatch.setattr(F, "_unmasked", broken)
    with pytest.raises(FeatureError) as err:
        F.compute_features(drift)
    later = candles.index[F.WARMUP + 70].isoformat()
    assert re.fullmatch(
        rf"feature sma_ratio_5 is infinite at {re.escape(later)} \(row {F.WARMUP + 70}\): input "
        r"(open|high|low|close) \S+ at \S+ \(row (\d+)\) is 1e\+12 times the median \1 up to "
        r"there, too far out of scale for float64 rolling sums; the candle passes validation but "
        r"is almost surely wrong: check it, fix or remove it",
        str(err.value),
    ), str(err.value)


def test_non_finite_feature_from_ordinary_candles_is_reported_as_a_bug(
    candles: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid candles of ordinary scale: the fault is ours, so no pointer at the data."""
    unmasked = F._unmasked

    def broken(*args: np.ndarray, **kwargs: int | None) -> np.ndarray:
        out = unmasked(*args, **kwargs)
        out[F.FEATURE_NAMES.index("cci_20"), F.WARMUP + 7] = np.nan
        return out

    monkeypatch.setattr(F, "_unmasked", broken)
    with pytest.raises(FeatureError) as err:
        F.compute_features(candles)
    stamp = candles.index[F.WARMUP + 7].isoformat()
    assert str(err.value) == (
        f"feature cci_20 is NaN at {stamp} (row {F.WARMUP + 7}) from valid candles of ordinary "
        "scale; this is a jaxtrader bug, please report it with the candle file"
    )


def test_bad_frames_raise_feature_error(candles: pd.DataFrame) -> None:
    with pytest.raises(FeatureError, match="lacks column"):
        F.compute_features(candles.drop(columns=["volume"]))
    with pytest.raises(FeatureError, match="not a DatetimeIndex"):
        F.compute_features(candles.reset_index(drop=True))
    zero = candles.copy()
    zero.iloc[F.WARMUP + 5, zero.columns.get_loc("low")] = 0.0
    with pytest.raises(FeatureError, match=r"is invalid: non-positive price \(low=0\); fix"):
        F.compute_features(zero)


# ----------------------------------------------------------------------------- warm-up honesty


def warmup_offenders(frame: pd.DataFrame, full: np.ndarray, starts: list[int]) -> list[str]:
    """Features whose value, on the series cut at `start`, differs from the full-series value at
    some row from `start + warmup` on (the per-feature warm-up is not long enough)."""
    bad = []
    for start in starts:
        end = min(len(frame), start + 3_000)
        with np.errstate(divide="ignore", invalid="ignore"):
            cut = F._unmasked(*_arrays(frame.iloc[start:end]))
        for j, spec in enumerate(F.FEATURES):
            a, b = cut[j, spec.warmup :], full[start + spec.warmup : end, j]
            keep = np.isfinite(b)
            close = np.isclose(a[keep], b[keep], rtol=1e-6, atol=1e-6)
            if not close.all():
                k = int(np.flatnonzero(~close)[0])
                bad.append(f"{spec.name} (warm-up {spec.warmup}, start {start}, off at +{k})")
    return bad


def _arrays(frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
    (o, h, low, c, v), ts = F._inputs(frame)
    return o, h, low, c, v, ts


def test_each_warmup_makes_values_independent_of_the_start(
    candles: pd.DataFrame, full: np.ndarray
) -> None:
    bad = warmup_offenders(candles, full, [137, 1_000])
    assert not bad, f"warm-up too short: {bad}"


def test_min_history_buffer_matches_full_history(candles: pd.DataFrame, full: np.ndarray) -> None:
    for end in (F.MIN_HISTORY + 10, 1_999, ROWS):
        buffer = F.feature_matrix(candles.iloc[end - F.min_history() : end])
        np.testing.assert_allclose(buffer[-1], full[end - 1], rtol=1e-6, atol=1e-6)


def test_feature_matrix_of_arrays_is_bit_identical_to_the_frame_path(
    candles: pd.DataFrame, full: np.ndarray
) -> None:
    cols, ts_ns = F.candle_columns(candles)
    assert not offenders(F.feature_matrix_of(*cols, ts_ns), full, 0, 0)
    ohlcv_5xT = np.stack(cols)  # the trading buffer's layout: one C-ordered row per column
    tail = F.feature_matrix_of(*ohlcv_5xT[:, -F.MIN_HISTORY :], ts_ns[-F.MIN_HISTORY :])
    assert not offenders(tail, F.feature_matrix(candles.iloc[-F.MIN_HISTORY :]), 0, 0)


def last_rows_differ(frame: pd.DataFrame, ends: np.ndarray, rows: int) -> list[str]:
    """`last_feature_row` against `feature_matrix_of(...)[-1]` on the `rows` candles ending at
    each end: the features and candle ends where they are not bit-identical."""
    cols, ts_ns = F.candle_columns(frame)
    bad = []
    for e in ends:
        part = [x[max(0, e - rows) : e] for x in (*cols, ts_ns)]
        a, b = F.last_feature_row(*part), F.feature_matrix_of(*part)[-1]
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        bad += [f"{F.FEATURE_NAMES[j]} at end {e}" for j in np.flatnonzero(~same)]
    return bad


def test_last_feature_row_is_the_last_row_bit_for_bit(candles: pd.DataFrame) -> None:
    frame = flat_and_dead(candles)
    # Every 29th candle, plus the last dead candle and the first live one of each dead stretch.
    dead_edges = [640, 641, 1_460, 1_461, 2_003, 2_004]
    ends = np.r_[np.arange(F.MIN_HISTORY, ROWS + 1, 29), dead_edges]
    assert not last_rows_differ(frame, ends, F.MIN_HISTORY)
    assert not last_rows_differ(frame, ends[::5], ROWS)  # on the whole history too
    cols, ts_ns = F.candle_columns(frame.iloc[: F.WARMUP])
    assert np.isnan(F.last_feature_row(*cols, ts_ns)).all()  # short of the warm-up
    bad = candles.copy()
    bad.iloc[-1, bad.columns.get_loc("close")] = np.nan
    cols, ts_ns = F.candle_columns(bad.iloc[-F.MIN_HISTORY :])
    stamp = bad.index[-1].isoformat()
    with pytest.raises(FeatureError, match=f"^input candle at {re.escape(stamp)} .* in close;"):
        F.last_feature_row(*cols, ts_ns)


def tail_rows_vs_full(frame: pd.DataFrame, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last rows of `feature_matrix_of` on the MIN_HISTORY candles ending at each `end` (the
    trading runner's input), and the full-history rows they stand for."""
    cols, ts_ns = F.candle_columns(frame)
    full = F.feature_matrix_of(*cols, ts_ns)
    h = F.min_history()
    tails = np.stack(
        [F.feature_matrix_of(*(x[e - h : e] for x in cols), ts_ns[e - h : e])[-1] for e in ends]
    )
    return tails, full[ends - 1]


# Measured over every 7th candle of BTC and ETH 1h (10,000+ buffers each): max |difference|
# 2.6e-8 (rsi_24, the slowest-decaying seed transient). The bound keeps a 4x margin.
TAIL_ATOL = 1e-7


def test_min_history_tail_matches_full_history_on_many_candles(candles: pd.DataFrame) -> None:
    ends = np.arange(F.MIN_HISTORY, ROWS + 1, 11)
    tails, ref = tail_rows_vs_full(candles, ends)
    np.testing.assert_allclose(tails, ref, rtol=0, atol=TAIL_ATOL)
    # What sums inside finite windows has no seed to forget: those match bit for bit.
    in_window = [j for j, name in enumerate(F.FEATURE_NAMES) if name.startswith(
        ("std_ret_", "parkinson_", "garman_klass_", "vol_of_vol_", "std_ratio_", "volume_z_",
         "volume_ratio_", "obv_slope_", "vwap_dist_", "mfi_", "skew_", "kurt_", "autocorr_"))]  # fmt: skip
    assert len(in_window) == 25
    np.testing.assert_array_equal(tails[:, in_window], ref[:, in_window])


# ----------------------------------------------------------------------------- in-window sums


def test_window_sums_add_up_each_window_on_its_own() -> None:
    import math

    rng = np.random.default_rng(4)
    x = rng.lognormal(0.0, 3.0, 1_000)  # values over 10 orders of magnitude
    x[300:520] = 0.0  # a dead stretch longer than every window
    widths = (1, 2, 5, 14, 20, 60, 200)
    sums = F._window_sums(x, widths)
    assert sorted(sums) == list(widths)
    for n in widths:
        s = sums[n]
        assert np.isnan(s[: n - 1]).all()
        exact = [math.fsum(x[t - n + 1 : t + 1]) for t in range(n - 1, len(x))]
        np.testing.assert_allclose(s[n - 1 :], exact, rtol=2e-15, atol=0)
        assert (s[300 + n - 1 : 520] == 0.0).all()  # exactly 0 over all-zero windows
        for start in (1, 37, 777):  # a window sums to the same bits wherever the series starts
            cut = F._window_sums(x[start:], (n,))[n]
            np.testing.assert_array_equal(cut[n - 1 :], s[start + n - 1 :])
        assert np.isnan(F._window_sums(x[: n - 1], (n,))[n]).all()  # shorter than the window
    stacked = F._window_sums(np.stack([x, x[::-1]]), widths)  # rows are summed as each alone
    for n in widths:
        np.testing.assert_array_equal(stacked[n][0], sums[n])
        np.testing.assert_array_equal(stacked[n][1], F._window_sums(x[::-1].copy(), (n,))[n])


def tick_candles(rows: int, seed: int) -> pd.DataFrame:
    """random_candles rounded to a 0.2 tick (0.04% to 0.2% of the price): equal closes and
    typical prices, and typical prices equal but for their last bits, as real candles have."""
    frame = random_candles(rows, seed)
    prices = frame[["open", "high", "low", "close"]].to_numpy()
    prices = np.round(prices * 5.0) / 5.0
    prices[:, 1] = prices.max(axis=1)
    prices[:, 2] = prices.min(axis=1)
    frame[["open", "high", "low", "close"]] = prices
    volume = frame["volume"].to_numpy().copy()
    volume[[100, 101, 700]] = 0.0
    volume[1_000:1_030] = 0.0  # a zero-volume stretch longer than the windows
    frame["volume"] = volume
    return frame


@pytest.mark.parametrize("tick", [False, True])
def test_in_window_volume_indicators_give_talib_values(tick: bool) -> None:
    """MFI, the OBV slope and the Chaikin oscillator are ours because TA-Lib's keep running
    totals (MFI's window sums, the OBV and A/D lines); the values are TA-Lib's, NaNs included,
    to rounding (TA-Lib's own: its OBV slope and oscillator subtract numbers ~|OBV| apart)."""
    frame = tick_candles(2_000, seed=9) if tick else random_candles(2_000, seed=9)
    (_, h, low, c, v), _ = F.candle_columns(frame)
    if tick:  # OBV's equal-close rule and MFI's dead zone (TA-Lib's 1e-14 relative) are exercised
        assert (np.diff(c) == 0).mean() > 0.02
        tp = (h + low + c) / 3.0
        step, size = np.abs(np.diff(tp)), np.abs(tp[1:]) + np.abs(tp[:-1])
        assert ((step > 0) & (step <= 1e-14 * size)).any()
    talib = F._talib()
    scale = float(np.median(v))
    with np.errstate(divide="ignore", invalid="ignore"):  # as in feature_matrix_of
        mfi, obv_slope, adosc = (
            F._mfi((h + low + c) / 3.0, v, 14),
            F._obv_slope(c, v, 20),
            F._adosc(h, low, c, v, 3, 10),
        )
    np.testing.assert_allclose(mfi, talib.MFI(h, low, c, v, 14) / 100.0, rtol=1e-12, atol=1e-14)
    ref = talib.LINEARREG_SLOPE(talib.OBV(c, v), 20)
    np.testing.assert_allclose(obv_slope, ref, rtol=1e-9, atol=1e-12 * scale)
    ref = talib.ADOSC(h, low, c, v, 3, 10)
    np.testing.assert_allclose(adosc, ref, rtol=1e-9, atol=1e-12 * scale)


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_btc_1h_is_finite_after_warmup(btc_1h: Path) -> None:
    from jaxtrader.data import load_candles

    candles = load_candles(btc_1h)
    out = F.compute_features(candles.frame)
    assert out.shape == (len(candles), 86)
    assert np.isnan(out.iloc[: F.WARMUP].to_numpy()).all()
    chex.assert_tree_all_finite(out.iloc[F.WARMUP :].to_numpy())
    tail = candles.frame.iloc[-F.min_history() :]
    np.testing.assert_allclose(
        F.feature_matrix(tail)[-1], out.iloc[-1].to_numpy(), rtol=1e-6, atol=1e-6
    )
    # Real extremes: the 33-candle outage of 2018-02-08 and the crash of 2020-03-12.
    starts = [int(candles.frame.index.get_loc(pd.Timestamp(t)))
              for t in ("2018-01-20T00:00Z", "2020-02-25T00:00Z")]  # fmt: skip
    bad = warmup_offenders(candles.frame, out.to_numpy(), starts)
    assert not bad, f"warm-up too short on BTC 1h: {bad}"


@pytest.mark.realdata
def test_real_btc_1h_scale_moves_only_tie_decided_values(btc_1h: Path) -> None:
    """Real prices have ties (tick-rounded highs and lows), and x * 4.5 is rounded: a tie can be
    made or broken, and an indicator choosing between two prices then chooses the other. Only
    such indicators may move, in a handful of rows; everything else is unchanged to 1e-7."""
    from jaxtrader.data import load_candles

    frame = load_candles(btc_1h).frame
    scaled = frame.copy()
    scaled[["open", "high", "low", "close"]] *= 4.5
    a = F.feature_matrix(frame)[F.WARMUP :]
    b = F.feature_matrix(scaled)[F.WARMUP :]
    moved = ~np.isclose(a, b, rtol=1e-7, atol=1e-9, equal_nan=True)
    names = {F.FEATURE_NAMES[j] for j in np.flatnonzero(moved.any(axis=0))}
    assert names <= {"adx_14", "plus_di_14", "minus_di_14", "aroon_up_25", "aroon_down_25",
                     "aroon_osc_14"}, names  # fmt: skip
    assert moved.sum() < 1e-4 * moved.size  # 325 of 6.2 million on 2026-12-04
    assert np.abs(a - b)[moved].max() < 0.01


@pytest.mark.realdata
def test_real_btc_1h_trading_tail_matches_full_history(btc_1h: Path) -> None:
    from jaxtrader.data import load_candles

    frame = load_candles(btc_1h).frame
    # Buffers ending at and after the 33-candle outage, the 2020-03-12 crash and a zero-volume candle.
    hard = [
        int(frame.index.get_loc(pd.Timestamp(t))) + 1 + k
        for t in ("2018-02-08T00:00Z", "2020-03-12T10:00Z", "2021-02-11T03:00Z")
        for k in (0, 1, 40, 60, 200)
    ]
    ends = np.unique(np.r_[np.arange(F.MIN_HISTORY, len(frame) + 1, 307), len(frame), hard])
    tails, ref = tail_rows_vs_full(frame, ends)
    chex.assert_tree_all_finite(tails)
    np.testing.assert_allclose(tails, ref, rtol=0, atol=TAIL_ATOL)
    assert not last_rows_differ(frame, ends[::4], F.MIN_HISTORY)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["eth_1h", "btc_5m"])
def test_real_eth_1h_and_btc_5m_are_finite_after_warmup(
    name: str, request: pytest.FixtureRequest
) -> None:
    from jaxtrader.data import load_candles

    candles = load_candles(request.getfixturevalue(name))
    out = F.feature_matrix(candles.frame)
    chex.assert_tree_all_finite(out[F.WARMUP :])


# ----------------------------------------------------------------------------- CLI


def test_cli_list_json_in_a_subprocess() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "jaxtrader", "features", "list", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == list(F.FEATURE_NAMES)
    assert [r["warmup"] for r in rows] == [s.warmup for s in F.FEATURES]
    assert {r["family"] for r in rows} == set(F.FAMILIES)


def test_cli_list_table() -> None:
    from click.testing import CliRunner

    from jaxtrader.cli import cli

    result = CliRunner().invoke(cli, ["features", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "family", "warmup", "definition"]
    assert [ln.split()[0] for ln in lines[1:87]] == list(F.FEATURE_NAMES)
    assert f"86 features, warm-up {F.WARMUP} candles, hash {F.feature_hash()[:16]}" in lines[-1]


def test_cli_compute_writes_parquet_and_csv_with_filled_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jaxtrader.cli import cli
    from jaxtrader.data import load_candles, write_candles

    frame = random_candles(F.WARMUP + 300, seed=3)
    gap = frame.index[F.WARMUP + 100 : F.WARMUP + 105]
    path = write_candles(frame.drop(index=gap), tmp_path / "candles.csv")
    expected = F.compute_features(load_candles(path).frame).iloc[F.WARMUP :]

    runner = CliRunner()
    for name in ("f.parquet", "f.csv.gz"):
        out = tmp_path / name
        result = runner.invoke(cli, ["features", "compute", "--data", str(path), "--out", str(out)])
        assert result.exit_code == 0, result.output
        if name.endswith(".parquet"):
            got = pd.read_parquet(out)
            np.testing.assert_array_equal(got[list(F.FEATURE_NAMES)].to_numpy(), expected)
            assert got.index.equals(expected.index)
        else:
            got = pd.read_csv(out, index_col="timestamp")
            np.testing.assert_allclose(got[list(F.FEATURE_NAMES)].to_numpy(), expected,
                                       rtol=2e-7, atol=1e-12)  # fmt: skip
            assert list(got.index[:1]) == [expected.index[0].strftime("%Y-%m-%dT%H:%M:%SZ")]
        assert list(got.columns) == [*F.FEATURE_NAMES, "filled"]
        assert len(got) == 300
        assert got["filled"].to_numpy().nonzero()[0].tolist() == list(range(100, 105))

    result = runner.invoke(cli, ["features", "compute", "--out", str(tmp_path / "synth.parquet")])
    assert result.exit_code == 0, result.output  # the embedded synthetic market
    synth = pd.read_parquet(tmp_path / "synth.parquet")
    assert synth.shape == (20_000 - F.WARMUP, 87) and not synth["filled"].any()

    bad = runner.invoke(cli, ["features", "compute", "--out", str(tmp_path / "f.txt")])
    assert bad.exit_code == 2 and "unsupported extension" in bad.output


# ----------------------------------------------------------------------------- conventions


def test_aroon_takes_the_most_recent_extreme_on_a_tie(candles: pd.DataFrame) -> None:
    """TA-Lib's rule, as the definitions say (the `ta` library's argmax would take the oldest)."""
    frame = candles.iloc[:800].copy()
    t = len(frame) - 1
    high, low = frame["high"].to_numpy().copy(), frame["low"].to_numpy().copy()
    top, bottom = high[t - 25 :].max() * 1.1, low[t - 25 :].min() * 0.9
    high[[t - 25, t - 10, t - 3]] = top  # three equal highs, the oldest 25 candles back
    low[[t - 12, t - 2]] = bottom
    frame["high"], frame["low"] = high, low
    f = F.compute_features(frame).iloc[t]
    assert f["aroon_up_25"] == pytest.approx((25 - 3) / 25)  # oldest would give 0.0
    assert f["aroon_down_25"] == pytest.approx((25 - 2) / 25)  # oldest would give 0.52
    assert f["aroon_osc_14"] == pytest.approx((14 - 3) / 14 - (14 - 2) / 14)  # oldest: 2/14
    for name in ("aroon_up_25", "aroon_down_25", "aroon_osc_14"):
        assert "the most recent extreme counts" in F.FEATURES[F.FEATURE_NAMES.index(name)].text


def test_skew_and_kurtosis_are_population_moments(candles: pd.DataFrame) -> None:
    from scipy import stats

    f = F.compute_features(candles.iloc[:800])
    r = np.diff(np.log(candles["close"].to_numpy()[:800]))
    for n in (20, 60):
        window = r[-n:]
        skew, kurt = f[f"skew_{n}"].iloc[-1], f[f"kurt_{n}"].iloc[-1]
        assert skew == pytest.approx(stats.skew(window, bias=True), rel=1e-9)
        assert kurt == pytest.approx(stats.kurtosis(window, bias=True), rel=1e-9)
        # ... and not the bias-corrected ones (what pandas' .skew() / .kurt() return).
        assert skew != pytest.approx(stats.skew(window, bias=False), rel=1e-3)
        assert kurt != pytest.approx(stats.kurtosis(window, bias=False), rel=1e-3)
        assert "population (biased) moments" in F.FEATURES[F.FEATURE_NAMES.index(f"skew_{n}")].text


def test_obv_adds_nothing_on_an_unchanged_close(candles: pd.DataFrame) -> None:
    frame = candles.iloc[:800].copy()
    k = 700
    close = frame["close"].to_numpy().copy()
    close[k] = close[k - 1]  # an unchanged close (keep the candle valid)
    frame["close"] = close
    frame["high"] = np.maximum(frame["high"], close)
    frame["low"] = np.minimum(frame["low"], close)

    def obv_slope(volume_k: float) -> np.ndarray:
        g = frame.copy()
        g.iloc[k, g.columns.get_loc("volume")] = volume_k
        mean20 = g["volume"].rolling(20).mean().to_numpy()
        return F.compute_features(g)["obv_slope_20"].to_numpy() * mean20  # the OBV slope itself

    small, huge = obv_slope(1.0), obv_slope(1e9)
    np.testing.assert_allclose(small[k : k + 20], huge[k : k + 20], rtol=1e-9)
    assert "nothing on an equal one" in F.FEATURES[F.FEATURE_NAMES.index("obv_slope_20")].text


def test_notes_are_shown_but_not_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stating a convention changes no value, so it must not orphan existing checkpoints."""
    h = F.feature_hash()
    changed = [dataclasses.replace(s, note=s.note + " (reworded)") for s in F.FEATURES]
    monkeypatch.setattr(F, "FEATURES", tuple(changed))
    assert F.feature_hash() == h
    spec = F.FeatureSpec("x", "trend", "def", 0, "a note")
    assert spec.text == "def; a note" and F.FeatureSpec("x", "trend", "def", 0).text == "def"
