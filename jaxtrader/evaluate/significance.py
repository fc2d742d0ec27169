"""How sure are we: Wilson intervals, a binomial test on an effective sample size, and a seeded
stationary bootstrap for the Sharpe ratio.

Labels over an h-candle horizon overlap, so consecutive rows share most of their outcome; treating
n overlapping rows as n independent trials overstates certainty by about a factor sqrt(h). Every
test here therefore runs on `effective_n = n // h` unless told otherwise, with ONE whole success
count `k = round(accuracy x effective_n)` (`success_count`) shared by the Wilson interval and the
binomial p-value, so the two always describe the same k of n.

`coverage_curve` states accuracy at a stated coverage: for confidence levels c, the rows with
|P(up) - 0.5| >= c, their share, their accuracy with a Wilson interval on their effective n, and
the majority rate of those same rows (what a constant guess would have scored on them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def effective_n(n: int, horizon: int) -> int:
    """Independent-trial equivalent of n rows whose labels overlap by `horizon` candles (>= 1)."""
    if n <= 0:
        return 0
    return max(1, n // max(1, horizon))


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion observed as `accuracy` over `n` trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1.0 + z * z / n
    center = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def success_count(accuracy: float, n: int) -> int:
    """The whole number of successes an accuracy stands for on n (effective) trials."""
    return max(0, min(n, round(accuracy * n)))


def binomial_p_value(accuracy: float, n: int, p0: float) -> float:
    """One-sided P(X >= k) for X ~ Binomial(n, p0), k = success_count(accuracy, n): accuracy > p0?"""
    from scipy.stats import binomtest

    if n <= 0:
        return 1.0
    return float(binomtest(success_count(accuracy, n), n, p0, alternative="greater").pvalue)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: a study tests one hypothesis per
    cell, and at 0.05 each of 20 null cells would pass by luck one time in twenty; an adjusted
    p-value below alpha keeps the chance of ANY false edge among them at most alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def count_interval(accuracy: float, n: int) -> list[float]:
    """The Wilson 95% interval of the same whole count the p-value uses."""
    k = success_count(accuracy, n)
    return list(wilson_interval(k / n if n > 0 else accuracy, n))


def default_block_length(n: int, horizon: int) -> int:
    """Mean block length: at least the label horizon, and n^(1/3) (the usual order for Sharpe)."""
    return max(1, horizon, round(n ** (1.0 / 3.0)))


def stationary_bootstrap_indices(
    n: int, num_samples: int, mean_block: float, rng: np.random.Generator
) -> np.ndarray:
    """Politis-Romano stationary bootstrap: [num_samples, n] row indices with geometric blocks.

    Each position starts a new block with probability 1 / mean_block at a uniform random row, and
    otherwise continues the previous block with the next row (wrapping around).
    """
    restart = rng.random((num_samples, n)) < 1.0 / mean_block
    restart[:, 0] = True
    starts = rng.integers(0, n, size=(num_samples, n))
    pos = np.broadcast_to(np.arange(n), (num_samples, n))
    # The position of the latest block start at or before each column.
    last = np.maximum.accumulate(np.where(restart, pos, 0), axis=1)
    block_start = np.take_along_axis(starts, last, axis=1)
    return (block_start + (pos - last)) % n


def sharpe_bootstrap_ci(
    returns: np.ndarray,
    periods_per_year: float,
    *,
    horizon: int = 1,
    num_samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval of the annualized Sharpe over stationary-bootstrap resamples (seeded)."""
    r = np.asarray(returns, dtype=np.float64)
    n = r.size
    block = default_block_length(n, horizon)
    out: dict[str, Any] = {
        "method": "stationary_bootstrap",
        "mean_block_length": block,
        "samples": num_samples,
        "seed": seed,
        "level": level,
    }
    if n < 2:
        return {**out, "lo": None, "hi": None}
    rng = np.random.default_rng(seed)
    sharpes = np.empty(num_samples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounds memory to a few tens of MB per chunk
    for s in range(0, num_samples, chunk):
        m = min(chunk, num_samples - s)
        sample_BxN = r[stationary_bootstrap_indices(n, m, block, rng)]
        sd = sample_BxN.std(axis=1, ddof=1)
        mean = sample_BxN.mean(axis=1)
        safe = sd > 1e-15
        sharpes[s : s + m] = np.where(safe, mean / np.where(safe, sd, 1.0), 0.0)
    sharpes *= math.sqrt(periods_per_year)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(sharpes, [alpha, 1.0 - alpha])
    return {**out, "lo": float(lo), "hi": float(hi)}


def accuracy_significance(
    accuracy: float, n: int, horizon: int, majority_accuracy: float
) -> dict[str, Any]:
    """Wilson 95% CI (on the effective n, plus the naive one on n) and one-sided p-values.

    The majority baseline can score below 0.5 when the evaluated split's balance flips from the
    training split's, which makes "better than majority" a weak bar; `p_value_vs_chance` (0.5) and
    `p_value_vs_best_constant` (the higher of the two) are reported beside it.
    """
    n_eff = effective_n(n, horizon)
    return {
        "accuracy_ci95": count_interval(accuracy, n_eff),
        "accuracy_ci95_naive": count_interval(accuracy, n),
        "successes_effective": success_count(accuracy, n_eff),
        "p_value_vs_majority": binomial_p_value(accuracy, n_eff, majority_accuracy),
        "p_value_vs_chance": binomial_p_value(accuracy, n_eff, 0.5),
        "p_value_vs_best_constant": binomial_p_value(accuracy, n_eff, max(0.5, majority_accuracy)),
        "majority_accuracy": majority_accuracy,
        "effective_n": n_eff,
        "n": n,
        "horizon": horizon,
    }


COVERAGE_LEVELS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)


def coverage_curve(
    prob_up: np.ndarray,
    labels: np.ndarray,
    horizon: int,
    levels: tuple[float, ...] = COVERAGE_LEVELS,
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Accuracy at stated coverage: one entry per confidence level c (|P(up) - 0.5| >= c).

    `accuracy` is of the call "up when P(up) > threshold" on the covered rows; its 95% Wilson
    interval and the p-value against the covered rows' majority rate use the effective n of those
    rows (n_covered // horizon) and one whole success count. Levels that cover no row are kept
    with `None` figures so the curve's x-axis is the same for every model.
    """
    p = np.asarray(prob_up, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pred = (p > threshold).astype(np.int64)
    out = []
    for c in levels:
        mask = np.abs(p - 0.5) >= c
        n_c = int(mask.sum())
        row: dict[str, Any] = {"level": float(c), "coverage": n_c / p.size if p.size else 0.0}
        row["n"] = n_c
        if n_c == 0:
            out.append({**row, "effective_n": 0, "accuracy": None, "ci95": [None, None],
                        "successes_effective": 0, "majority_rate": None, "up_rate": None,
                        "p_value_vs_majority": None})  # fmt: skip
            continue
        acc = float(np.mean(pred[mask] == y[mask]))
        up = float(np.mean(y[mask]))
        n_eff = effective_n(n_c, horizon)
        majority = max(up, 1.0 - up)
        out.append(
            {
                **row,
                "effective_n": n_eff,
                "accuracy": acc,
                "successes_effective": success_count(acc, n_eff),
                "ci95": count_interval(acc, n_eff),
                "majority_rate": majority,
                "up_rate": up,
                "p_value_vs_majority": binomial_p_value(acc, n_eff, majority),
            }
        )
    return out
