"""Baselines: analytic coin, training-split majority, causal momentum, train-only logistic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import lightgbm_or_skip

from jaxtrader.evaluate import baselines as b
from jaxtrader.evaluate.metrics import classification_metrics


def test_random_expected_metrics_are_analytic_and_match_many_coins() -> None:
    y = np.array([1] * 30 + [0] * 70)
    exp = b.random_expected_metrics(y)
    assert exp["accuracy"] == 0.5 and exp["roc_auc"] == 0.5
    assert exp["log_loss"] == pytest.approx(math.log(2)) and exp["brier"] == 0.25
    assert exp["precision"] == pytest.approx(0.3)
    assert exp["confusion_matrix"] == [[35.0, 35.0], [15.0, 15.0]]
    sims = [classification_metrics(y, b.random_predictions(100, s)) for s in range(400)]
    assert np.mean([s["accuracy"] for s in sims]) == pytest.approx(0.5, abs=0.01)
    assert np.mean([s["recall"] for s in sims]) == pytest.approx(0.5, abs=0.01)


def test_random_simulation_is_seeded() -> None:
    np.testing.assert_array_equal(b.random_predictions(50, 3), b.random_predictions(50, 3))
    assert not np.array_equal(b.random_predictions(50, 3), b.random_predictions(50, 4))


def test_majority_comes_from_training_labels_not_the_evaluated_split() -> None:
    train = np.array([1, 1, 1, 0])  # mostly up in training
    test = np.array([0, 0, 0, 1])  # mostly down in the evaluated split
    cls, rate = b.majority_class(train)
    assert (cls, rate) == (1, 0.75)
    out = b.baseline_metrics(
        test,
        majority=cls,
        train_up_rate=rate,
        random_pred=np.zeros(4, dtype=int),
        momentum_pred=np.zeros(4, dtype=int),
        logistic_prob=np.full(4, 0.4),
    )
    assert out["majority"]["accuracy"] == 0.25  # honest: the train majority is wrong here
    assert out["majority"]["brier"] == pytest.approx(np.mean((0.75 - test) ** 2))
    assert out["always_long"]["accuracy"] == 0.25
    assert out["logistic"]["pred_up_rate"] == 0.0
    assert "lightgbm" not in out


def test_momentum_uses_only_the_past() -> None:
    close = np.array([10.0, 11.0, 12.0, 11.5, 11.0, 13.0, 9.0])
    rows = np.array([2, 3, 4, 5])
    pred = b.momentum_predictions(close, rows, horizon=2)
    np.testing.assert_array_equal(pred, [1, 1, 0, 1])
    future_changed = close.copy()
    future_changed[6] = 100.0
    np.testing.assert_array_equal(b.momentum_predictions(future_changed, rows, 2), pred)


def test_logistic_is_fit_on_train_only_and_finds_a_real_signal() -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(2000, 5))
    y_train = (x_train[:, 0] + 0.5 * rng.normal(size=2000) > 0).astype(int)
    x_eval = rng.normal(size=(500, 5))
    y_eval = (x_eval[:, 0] > 0).astype(int)
    close = np.cumprod(1 + rng.normal(0, 0.01, 600))
    kwargs = dict(
        train_labels=y_train,
        train_feats_NxF=x_train,
        eval_feats_NxF=x_eval,
        close=close,
        eval_rows=np.arange(100, 600),
        horizon=5,
        seed=0,
    )
    preds = b.predict_baselines(**kwargs)
    assert preds.logistic_prob.shape == (500,)
    acc = np.mean((preds.logistic_prob > 0.5) == y_eval)
    assert acc > 0.9
    # Deterministic for a seed; the evaluated labels are not even an argument of the fit.
    again = b.predict_baselines(**kwargs)
    np.testing.assert_array_equal(preds.logistic_prob, again.logistic_prob)
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        assert preds.lightgbm_prob is None
        assert any("lightgbm skipped" in n for n in preds.notes)


def test_lightgbm_baseline_when_installed() -> None:
    lightgbm_or_skip()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)  # an interaction a linear model cannot see
    preds = b.predict_baselines(
        train_labels=y[:1000],
        train_feats_NxF=x[:1000],
        eval_feats_NxF=x[1000:],
        close=np.linspace(1, 2, 1500),
        eval_rows=np.arange(1000, 1500),
        horizon=5,
    )
    assert preds.lightgbm_prob is not None
    assert np.mean((preds.lightgbm_prob > 0.5) == y[1000:]) > 0.8
