"""Chronological purged splits, their timestamp round trip, and walk-forward folds."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import DatasetConfig
from jaxtrader.errors import ConfigError, DataError
from jaxtrader.splits import (
    SPLIT_NAMES,
    Splits,
    chronological_splits,
    purge_gap,
    walk_forward_folds,
)

CFG = DatasetConfig(seq_len=50, horizon=5)


def _index(n: int, start: str = "2021-01-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="1h", tz="UTC", name="timestamp")


def _assert_purged(s: Splits, cfg: DatasetConfig) -> None:
    """The rule, numerically: max over the earlier split of t + h < min over the later of t - W + 1."""
    for earlier, later in (("train", "val"), ("val", "test")):
        last_label_end = s.range(earlier)[1] - 1 + cfg.horizon
        first_window_start = s.range(later)[0] - cfg.seq_len + 1
        assert last_label_end < first_window_start, (earlier, later, s)
        # The gap is tight: the purge drops no more than needed.
        assert first_window_start - last_label_end == 1


def test_chronological_fractions_and_purge() -> None:
    s = chronological_splits(120, 10_120, CFG, _index(10_200))
    _assert_purged(s, CFG)
    assert s.train == (120, 120 + 7_000)
    assert s.val == (7_120 + purge_gap(5, 50), 120 + 8_500)
    assert s.test == (8_620 + purge_gap(5, 50), 10_120)
    rows = [set(range(*s.range(n))) for n in SPLIT_NAMES]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
    assert s.range("train")[1] <= s.range("val")[0] <= s.range("test")[0]


def test_round_trip_through_json_and_an_extended_file() -> None:
    index = _index(3_000)
    s = chronological_splits(200, 2_990, CFG, index)
    d = json.loads(json.dumps(s.to_dict()))
    assert Splits.from_dict(d, index) == s
    # A file extended at both ends maps the same timestamps to shifted rows.
    longer = _index(3_500, start="2020-12-31")  # 24 rows earlier
    moved = Splits.from_dict(d, longer)
    for name in SPLIT_NAMES:
        assert moved.range(name) == tuple(r + 24 for r in s.range(name))
        assert moved.span(name) == s.span(name)


def test_file_that_does_not_cover_a_split_is_a_data_error() -> None:
    index = _index(3_000)
    d = chronological_splits(200, 2_990, CFG, index).to_dict()
    with pytest.raises(DataError, match=r"split 'test' spans .*use the data file"):
        Splits.from_dict(d, index[:2_800])
    with pytest.raises(DataError, match="split 'train'"):
        Splits.from_dict(d, index[500:])


def test_bad_fractions_and_too_little_data() -> None:
    with pytest.raises(ConfigError, match="no test data"):
        chronological_splits(0, 1000, DatasetConfig(train_frac=0.8, val_frac=0.2))
    with pytest.raises(ConfigError, match="train_frac"):
        chronological_splits(0, 1000, DatasetConfig(train_frac=0.0))
    with pytest.raises(DataError, match="split 'val' is empty"):
        chronological_splits(0, 500, DatasetConfig(seq_len=100))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_walk_forward_folds_expand_and_stay_purged(k: int) -> None:
    index = _index(9_000)
    folds = walk_forward_folds(8_900, k, CFG, start=150, index=index)
    assert len(folds) == k
    for fold in folds:
        _assert_purged(fold, CFG)
        assert fold.train[0] == 150
    train_ends = [f.train[1] for f in folds]
    assert train_ends == sorted(train_ends) and len(set(train_ends)) == k  # expanding
    # Test blocks do not overlap and the last one ends at the span's end.
    tests = [f.test for f in folds]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(tests))
    assert tests[-1][1] == 8_900
    assert np.isclose(
        (folds[0].train[1] - 150) / (8_900 - 150), 1 / (k + 2), atol=1e-3
    )  # equal blocks
    assert folds[0].to_dict()["train"]["start"] == index[150].isoformat()
    with pytest.raises(ConfigError):
        walk_forward_folds(1000, 0, CFG)


def test_an_empty_validation_block_under_train_candles_names_that_flag() -> None:
    """`--train-candles 2500` on 2,543 candles left 14-candle blocks; the line suggested fewer
    --folds, a shorter --seq-len or --horizon, or more data, never the flag that caused it."""
    gap = purge_gap(CFG.horizon, CFG.seq_len)
    tail = "a shorter --seq-len or --horizon, or a longer candle file"
    with pytest.raises(ConfigError) as caught:
        walk_forward_folds(2543, 2, CFG, train_rows=2500)
    assert str(caught.value) == (
        "fold 0's validation block is empty: the 3 blocks after the first training span hold "
        f"about 14 candles each, and the purge gap takes {gap} candles (horizon + window - 1) "
        f"from each end; use fewer --folds, a smaller --train-candles, {tail}"
    )
    with pytest.raises(ConfigError) as caught:  # the default span: the flag is not named
        walk_forward_folds(300, 2, CFG)
    assert str(caught.value).endswith(f"; use fewer --folds, {tail}")
