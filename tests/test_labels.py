"""Labels on hand-made series and the prediction-point rule."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtrader.labels import UNLABELED, make_labels, prediction_mask


def test_labels_known_up_down_and_unlabeled_tail() -> None:
    close = np.array([100.0, 101.0, 99.0, 102.0, 102.0, 98.0])
    label, fwd = make_labels(close, horizon=2, threshold=0.0)
    # t=0: 99 > 100? no; t=1: 102 > 101 yes; t=2: 102 > 99 yes; t=3: 98 > 102 no; tail unlabeled.
    np.testing.assert_array_equal(label, [0, 1, 1, 0, UNLABELED, UNLABELED])
    np.testing.assert_allclose(fwd[:4], [99 / 100 - 1, 102 / 101 - 1, 102 / 99 - 1, 98 / 102 - 1])
    assert np.isnan(fwd[4:]).all()
    assert label.dtype == np.int8


def test_equal_close_is_not_up() -> None:
    label, fwd = make_labels(np.array([5.0, 5.0, 5.0]), horizon=1)
    np.testing.assert_array_equal(label, [0, 0, UNLABELED])
    np.testing.assert_array_equal(fwd[:2], [0.0, 0.0])


def test_threshold_turns_small_rises_into_zeros() -> None:
    close = np.array([100.0, 100.5, 101.5, 100.0])
    no_thr, _ = make_labels(close, horizon=1, threshold=0.0)
    thr, _ = make_labels(close, horizon=1, threshold=0.008)
    np.testing.assert_array_equal(no_thr, [1, 1, 0, UNLABELED])
    # +0.5% is below the 0.8% threshold; +0.995% is above it.
    np.testing.assert_array_equal(thr, [0, 1, 0, UNLABELED])


def test_series_shorter_than_horizon_is_all_unlabeled() -> None:
    label, fwd = make_labels(np.array([1.0, 2.0]), horizon=5)
    assert (label == UNLABELED).all() and np.isnan(fwd).all()
    with pytest.raises(ValueError, match="horizon"):
        make_labels(np.array([1.0, 2.0]), horizon=0)


def test_prediction_mask_rules() -> None:
    n, w, h = 12, 3, 2
    close = np.arange(1.0, n + 1.0)
    label, _ = make_labels(close, h)
    finite = np.ones(n, dtype=bool)
    finite[:4] = False  # feature warm-up
    filled = np.zeros(n, dtype=bool)
    filled[6] = True  # gap-filled candle
    mask = prediction_mask(label, finite, filled, seq_len=w, horizon=h)
    expected = np.zeros(n, dtype=bool)
    expected[4:10] = True  # after warm-up (window needs t >= 2) and before the unlabeled tail
    expected[6] = False  # prediction point itself filled
    expected[4] = False  # target candle 4 + 2 = 6 is filled: its close is carried forward
    np.testing.assert_array_equal(mask, expected)
    # The window at t=7 (rows 5..7) and the horizon of t=5 (rows 6..7) cross the filled candle
    # but their target closes are real: they stay.
    assert mask[7] and mask[5]


def test_prediction_mask_window_requirement() -> None:
    label, _ = make_labels(np.arange(1.0, 11.0), 1)
    mask = prediction_mask(label, np.ones(10, bool), np.zeros(10, bool), seq_len=4, horizon=1)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(3, 9))
