"""Wilson intervals, the binomial test on the effective n, and the stationary bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from jaxtrader.decisions import sharpe
from jaxtrader.evaluate import significance as sig


def test_wilson_interval_known_values() -> None:
    lo, hi = sig.wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.40383, abs=1e-5)
    assert hi == pytest.approx(0.59617, abs=1e-5)
    lo, hi = sig.wilson_interval(0.0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-5)


def test_effective_n_divides_by_the_horizon() -> None:
    assert sig.effective_n(1000, 5) == 200
    assert sig.effective_n(3, 5) == 1
    assert sig.effective_n(1000, 1) == 1000
    assert sig.effective_n(0, 5) == 0


def test_p_value_uses_effective_n_and_scipy() -> None:
    out = sig.accuracy_significance(0.53, n=10_000, horizon=5, majority_accuracy=0.51)
    assert out["effective_n"] == 2000
    expected = binomtest(round(0.53 * 2000), 2000, 0.51, alternative="greater").pvalue
    assert out["p_value_vs_majority"] == pytest.approx(expected)
    naive = binomtest(5300, 10_000, 0.51, alternative="greater").pvalue
    # Overlapping labels: the naive test would claim far more certainty.
    assert naive < out["p_value_vs_majority"]
    lo, hi = out["accuracy_ci95"]
    nlo, nhi = out["accuracy_ci95_naive"]
    assert lo < nlo < 0.53 < nhi < hi


def test_stationary_bootstrap_indices_form_wrapped_blocks() -> None:
    rng = np.random.default_rng(0)
    idx = sig.stationary_bootstrap_indices(50, 20, 5.0, rng)
    assert idx.shape == (20, 50)
    assert idx.min() >= 0 and idx.max() < 50
    steps = (np.diff(idx, axis=1) % 50) == 1
    # Mean block length 5: about 80% of steps continue the block.
    assert 0.7 < steps.mean() < 0.9


def test_sharpe_ci_is_seeded_and_covers_the_estimate() -> None:
    r = np.random.default_rng(1).normal(0.0005, 0.01, 3000)
    a = sig.sharpe_bootstrap_ci(r, 8760, horizon=5, num_samples=300, seed=7)
    b = sig.sharpe_bootstrap_ci(r, 8760, horizon=5, num_samples=300, seed=7)
    assert a == b
    point = sharpe(r, 8760)
    assert a["lo"] < point < a["hi"]
    assert a["mean_block_length"] == max(5, round(3000 ** (1 / 3)))
    # Roughly the analytic standard error of an annualized Sharpe: sqrt(ppy / n) per side * 1.96.
    half = (a["hi"] - a["lo"]) / 2
    assert half == pytest.approx(1.96 * math.sqrt(8760 / 3000), rel=0.35)


def test_holm_adjusted_p_values_known_example() -> None:
    """Sorted 0.005, 0.01, 0.03, 0.04 (m = 4) -> 0.02, 0.03, max(0.06, 0.03), max(0.04, 0.06)."""
    adjusted = sig.holm_adjusted([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert sig.holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert sig.holm_adjusted([0.047]) == pytest.approx([0.047])  # one cell: unchanged
    assert sig.holm_adjusted([]) == []
