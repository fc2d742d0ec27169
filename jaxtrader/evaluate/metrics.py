"""Classification and calibration metrics on numpy arrays: the numbers every evaluation row feeds.

Pure functions of `labels` (0 = down, 1 = up) and `prob_up` / `pred`; no model, no I/O. The
positive class is "up" (1). Metrics that are undefined for the given input (ROC AUC with a single
class, precision with no positive predictions) are returned as `None` rather than a made-up number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Probabilities are clipped this far from 0 and 1 for the log loss (scikit-learn >= 1.5 does too).
LOG_LOSS_EPS = float(np.finfo(np.float64).eps)
RELIABILITY_BINS = 10


def _check(labels: np.ndarray, other: np.ndarray, name: str) -> None:
    if labels.shape != other.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and {name} {other.shape} must be equal 1-D shapes")


def confusion_matrix(labels: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    """[[tn, fp], [fn, tp]]: rows are the true class (down, up), columns the predicted class."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    _check(y, p, "pred")
    counts = np.bincount(2 * y + p, minlength=4)
    return [[int(counts[0]), int(counts[1])], [int(counts[2]), int(counts[3])]]


def roc_auc(labels: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(score, dtype=np.float64)
    _check(y, s, "score")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks_sorted = np.empty(s.size, dtype=np.float64)
    # Average ranks over ties so a constant score gives exactly 0.5.
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks_sorted[:] = np.repeat(avg, counts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, prob_up: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(prob_up, dtype=np.float64), LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    _check(y, p, "prob_up")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def brier(labels: np.ndarray, prob_up: np.ndarray) -> float:
    """Mean squared error of P(up) against the 0/1 outcome (0.25 for a constant 0.5)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(prob_up, dtype=np.float64)
    _check(y, p, "prob_up")
    return float(np.mean((p - y) ** 2))


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def classification_metrics(
    labels: np.ndarray, pred: np.ndarray, prob_up: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, precision/recall/F1 of "up", ROC AUC, log loss, Brier, confusion.

    Without `prob_up` (hard-label predictors such as momentum) the ROC AUC is computed on the hard
    predictions (it then equals the balanced accuracy) and the log loss and Brier score are `None`:
    a 0/1 "probability" would make them meaningless.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    _check(y, p, "pred")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    (tn, fp), (fn, tp) = confusion_matrix(y, p)
    n = y.size
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    if precision is None or recall is None or precision + recall == 0:
        f1 = None if precision is None or recall is None else 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    present = [r for r in (recall, specificity) if r is not None]
    out: dict[str, Any] = {
        "accuracy": float((tp + tn) / n),
        "balanced_accuracy": float(np.mean(present)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(y, p if prob_up is None else np.asarray(prob_up, dtype=np.float64)),
        "log_loss": None if prob_up is None else log_loss(y, prob_up),
        "brier": None if prob_up is None else brier(y, prob_up),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": int(n),
        "up_rate": float(y.mean()),
        "pred_up_rate": float(p.mean()),
    }
    return out


def reliability_table(
    labels: np.ndarray, prob_up: np.ndarray, bins: int = RELIABILITY_BINS
) -> list[dict[str, Any]]:
    """Equal-width bins over [0, 1]: mean predicted P(up), observed up frequency and count per bin.

    A probability of exactly 1.0 falls in the last bin. Empty bins report `None` for the means.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(prob_up, dtype=np.float64)
    _check(y, p, "prob_up")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    table = []
    for b in range(bins):
        c = int(counts[b])
        table.append(
            {
                "bin_lo": b / bins,
                "bin_hi": (b + 1) / bins,
                "mean_predicted": float(sum_p[b] / c) if c else None,
                "observed_frequency": float(sum_y[b] / c) if c else None,
                "count": c,
            }
        )
    return table


def expected_calibration_error(table: list[dict[str, Any]]) -> float:
    """Count-weighted mean |observed - predicted| over the reliability bins."""
    total = sum(row["count"] for row in table)
    if total == 0:
        return math.nan
    return float(
        sum(
            row["count"] * abs(row["observed_frequency"] - row["mean_predicted"])
            for row in table
            if row["count"]
        )
        / total
    )
