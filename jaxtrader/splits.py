"""Chronological train/val/test splits with purge gaps, and expanding or rolling walk-forward folds.

Splits are half-open ranges of candle rows; a prediction point t belongs to a split when t lies in
its range (and t is a valid prediction point, see `jaxtrader.labels`). Nothing is shuffled across
splits: train comes first, then val, then test.

Purge rule. A label at t reads closes t..t+h; a window at t reads candles t-W+1..t. For a train
point t_a and any later-split point t_b we require

    t_a + h < t_b - W + 1        (equivalently t_b - t_a >= h + W)

so no training label's horizon reaches a candle the later split uses, either as window input or as
label (its labels start at t_b >= its window start). The same holds between val and test. The ranges
are cut by time over the span of valid prediction points (train_frac / val_frac of the rows, which
on a gap-filled grid are equal steps of time), then the first `purge_gap(h, W) = h + W - 1` rows of
val and of test are dropped. Walk-forward folds use the same rule at every boundary (there the gaps
come out of the validation block, so test blocks tile the history).

The engineered features may look further back than W candles (long EMAs have unbounded memory);
the purge covers the raw window and the label, not the features' full lookback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from jaxtrader.config import DatasetConfig
from jaxtrader.errors import ConfigError, DataError, EmptySplitError

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
Range = tuple[int, int]


def purge_gap(horizon: int, seq_len: int) -> int:
    """Rows dropped at the start of a later split so that t_b - t_a >= horizon + seq_len."""
    return horizon + seq_len - 1


@dataclass(frozen=True)
class Splits:
    """Half-open row ranges per split plus their first/last timestamps (ISO, inclusive)."""

    train: Range
    val: Range
    test: Range
    times: tuple[tuple[str, str], ...] | None = None

    def range(self, name: str) -> Range:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
        r: Range = getattr(self, name)
        return r

    def span(self, name: str) -> tuple[str, str]:
        """(first, last) timestamp of the split's row range."""
        if self.times is None:
            raise ValueError("these splits were built without a time index; pass index=...")
        return self.times[SPLIT_NAMES.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: timestamps are the source of truth, rows are informative."""
        out: dict[str, Any] = {}
        for name in SPLIT_NAMES:
            start, end = self.span(name)
            out[name] = {"start": start, "end": end, "rows": list(self.range(name))}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: pd.DatetimeIndex) -> Splits:
        """Rebuilds the row ranges on `index` from stored timestamps (same or extended file)."""
        ranges: list[Range] = []
        for name in SPLIT_NAMES:
            if name not in d or "start" not in d[name] or "end" not in d[name]:
                raise DataError(
                    f"stored splits lack '{name}.start'/'{name}.end'; the manifest is damaged"
                )
            start, end = d[name]["start"], d[name]["end"]
            rows = index.get_indexer(pd.DatetimeIndex([_ts(start, index), _ts(end, index)]))
            if (rows < 0).any():
                covered = (
                    f"{index[0].isoformat()}..{index[-1].isoformat()}" if len(index) else "nothing"
                )
                raise DataError(
                    f"split '{name}' spans {start}..{end} but the candle data ({covered}) does not "
                    f"contain both ends; use the data file the model was trained on"
                )
            ranges.append((int(rows[0]), int(rows[1]) + 1))
        return _make(ranges[0], ranges[1], ranges[2], index)


def _ts(value: str, index: pd.DatetimeIndex) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if index.tz is not None:
        return ts.tz_localize(index.tz) if ts.tzinfo is None else ts.tz_convert(index.tz)
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


def _make(train: Range, val: Range, test: Range, index: pd.DatetimeIndex | None) -> Splits:
    for name, (start, stop) in zip(SPLIT_NAMES, (train, val, test), strict=True):
        if stop <= start:
            raise EmptySplitError(
                f"split '{name}' is empty: too few candles for the window, horizon and purge "
                f"gaps; use a longer candle file or a shorter --seq-len"
            )
    times = None
    if index is not None:
        times = tuple(
            (index[start].isoformat(), index[stop - 1].isoformat())
            for start, stop in (train, val, test)
        )
    return Splits(train=train, val=val, test=test, times=times)


def check_fractions(cfg: DatasetConfig) -> None:
    if not (0.0 < cfg.train_frac < 1.0 and 0.0 < cfg.val_frac < 1.0):
        raise ConfigError(
            f"dataset.train_frac={cfg.train_frac} and dataset.val_frac={cfg.val_frac} must be in (0, 1)"
        )
    if cfg.train_frac + cfg.val_frac >= 1.0:
        raise ConfigError(
            f"dataset.train_frac + dataset.val_frac = {cfg.train_frac + cfg.val_frac:g} leaves no "
            f"test data; keep the sum below 1"
        )


def chronological_splits(
    start: int, stop: int, cfg: DatasetConfig, index: pd.DatetimeIndex | None = None
) -> Splits:
    """Train/val/test over the prediction span [start, stop) with purge gaps (module docstring)."""
    check_fractions(cfg)
    n = stop - start
    gap = purge_gap(cfg.horizon, cfg.seq_len)
    train_end = start + round(cfg.train_frac * n)
    val_end = start + round((cfg.train_frac + cfg.val_frac) * n)
    return _make((start, train_end), (train_end + gap, val_end), (val_end + gap, stop), index)


def walk_forward_folds(
    n: int,
    k: int,
    cfg: DatasetConfig,
    *,
    start: int = 0,
    index: pd.DatetimeIndex | None = None,
    window: Literal["expanding", "rolling"] = "expanding",
    train_rows: int | None = None,
) -> list[Splits]:
    """k walk-forward folds over rows [start, n), each a `Splits` with the same purge rule.

    The first training span is `train_rows` rows (default: (n - start) / (k + 2)); the rest is cut
    into k + 1 equal blocks b_0 .. b_k. Fold i validates on block b_i and tests on block b_{i+1};
    it trains on everything before b_i (`expanding`) or on the last `train_rows` rows before b_i
    (`rolling`). Test blocks therefore tile [b_1 start, n) exactly, without overlap or holes, so
    fold predictions stitch into one out-of-sample series. The purge gaps come out of the
    validation block (its first and last `purge_gap` rows are dropped), never out of train or test.
    """
    if k < 1:
        raise ConfigError(f"walk-forward needs k >= 1 folds, got {k}")
    if window not in ("expanding", "rolling"):
        raise ConfigError(f"window must be expanding or rolling, got {window!r}")
    span = n - start
    first = round(span / (k + 2)) if train_rows is None else int(train_rows)
    if not 0 < first < span:
        raise ConfigError(
            f"--train-candles {first} must be between 1 and the {span} candles from the first "
            "candle with a prediction to the end; use a smaller value or more data"
        )
    gap = purge_gap(cfg.horizon, cfg.seq_len)
    a = start + first
    edges = [a + round(j * (n - a) / (k + 1)) for j in range(k + 2)]
    folds = []
    for i in range(k):
        if edges[i + 1] - edges[i] <= 2 * gap:
            # Caught here, by name: _make would only say "split 'val' is empty" and suggest
            # --seq-len, not that the fold count is what to change.
            raise ConfigError(
                f"fold {i}'s validation block is empty: the {k + 1} blocks after the first "
                f"training span hold about {(n - a) // (k + 1)} candles each, and the purge gap "
                f"takes {gap} candles (horizon + window - 1) from each end; use fewer --folds, "
                # A --train-candles that leaves too little after it is the likelier cause then.
                f"{'a smaller --train-candles, ' if train_rows is not None else ''}a shorter "
                "--seq-len or --horizon, or a longer candle file"
            )
        lo = start if window == "expanding" else max(start, edges[i] - first)
        folds.append(
            _make(
                (lo, edges[i]),
                (edges[i] + gap, edges[i + 1] - gap),
                (edges[i + 1], edges[i + 2]),
                index,
            )
        )
    return folds
