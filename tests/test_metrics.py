"""Classification and calibration metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import chex
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxtrader.evaluate import metrics as m


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    # Informative but noisy, with ties (rounded) so the tie handling of the AUC is exercised.
    p = np.clip(np.round(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, 400), 2), 0.0, 1.0)
    return y, p


def test_matches_scikit_learn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    pred = (p > 0.5).astype(int)
    out = m.classification_metrics(y, pred, p)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert out["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=1e-12
    )
    assert out["precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert out["recall"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert out["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert out["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-9)
    assert out["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert out["n"] == 400


def test_hand_computed_confusion() -> None:
    y = np.array([1, 1, 1, 0, 0])
    pred = np.array([1, 1, 0, 1, 0])
    out = m.classification_metrics(y, pred)
    assert out["confusion_matrix"] == [[1, 1], [1, 2]]
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Without probabilities: AUC of the hard labels equals balanced accuracy; no log loss / Brier.
    assert out["roc_auc"] == pytest.approx(out["balanced_accuracy"])
    assert out["log_loss"] is None and out["brier"] is None


def test_undefined_metrics_are_none_not_invented() -> None:
    out = m.classification_metrics(np.array([1, 1, 1]), np.array([0, 0, 0]), np.full(3, 0.3))
    assert out["roc_auc"] is None  # one class only
    assert out["precision"] is None  # no positive predictions
    assert out["recall"] == 0.0
    assert out["f1"] is None


def test_constant_score_auc_is_one_half_and_coin_log_loss_is_ln2() -> None:
    y = np.array([0, 1, 0, 1, 1])
    assert m.roc_auc(y, np.full(5, 0.5)) == 0.5
    assert m.log_loss(y, np.full(5, 0.5)) == pytest.approx(math.log(2))
    assert m.brier(y, np.full(5, 0.5)) == pytest.approx(0.25)
    assert m.log_loss(np.array([1]), np.array([1.0])) == pytest.approx(-math.log1p(-m.LOG_LOSS_EPS))


def test_reliability_table_by_hand() -> None:
    p = np.array([0.05, 0.08, 0.55, 0.58, 0.52, 1.0])
    y = np.array([0, 1, 1, 1, 0, 1])
    table = m.reliability_table(y, p)
    assert len(table) == 10
    assert table[0]["count"] == 2
    assert table[0]["mean_predicted"] == pytest.approx(0.065)
    assert table[0]["observed_frequency"] == pytest.approx(0.5)
    assert table[5]["count"] == 3
    assert table[5]["observed_frequency"] == pytest.approx(2 / 3)
    assert table[9]["count"] == 1  # p == 1.0 lands in the last bin
    assert table[3]["count"] == 0 and table[3]["mean_predicted"] is None
    assert sum(r["count"] for r in table) == 6
    ece = m.expected_calibration_error(table)
    expected = (2 * abs(0.5 - 0.065) + 3 * abs(2 / 3 - (0.55 + 0.58 + 0.52) / 3) + 0.0) / 6
    assert ece == pytest.approx(expected)


def test_perfectly_calibrated_forecasts_have_near_zero_gap() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)
    table = m.reliability_table(y, p)
    gaps = [abs(r["observed_frequency"] - r["mean_predicted"]) for r in table]
    chex.assert_scalar_positive(len(gaps))
    assert max(gaps) < 0.01
