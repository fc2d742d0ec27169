"""Robust scaler: statistics, the zero-IQR guard, clipping and the manifest round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtrader.errors import CheckpointError, FeatureError
from jaxtrader.scaling import Scaler, fit_scaler


def test_median_iqr_and_clip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4_001, 2))
    x[:, 1] *= 100.0
    s = fit_scaler(x, clip=5.0, names=("a", "b"))
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(s.median, q50)
    np.testing.assert_allclose(s.iqr, q75 - q25)
    z = s.transform(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(np.median(z, axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(
        np.percentile(z, 75, axis=0) - np.percentile(z, 25, axis=0), 1.0, atol=1e-5
    )
    far = s.transform(np.array([[1e9, -1e9]]))
    np.testing.assert_array_equal(far, [[5.0, -5.0]])


def test_zero_iqr_guard() -> None:
    n = 1_000
    flag = np.zeros(n)
    flag[:50] = 100.0  # a sparse pattern flag: IQR 0, std > 0
    const = np.full(n, 7.0)  # constant on train: IQR 0 and std 0
    s = fit_scaler(np.stack([flag, const], axis=1), clip=5.0)
    np.testing.assert_allclose(s.iqr[0], 1.349 * flag.std())
    assert s.iqr[1] == 1.0
    z = s.transform(np.array([[100.0, 7.0], [0.0, 9.5]]))
    np.testing.assert_allclose(z, [[100.0 / (1.349 * flag.std()), 0.0], [0.0, 2.5]], rtol=1e-6)
    assert np.isfinite(s.transform(np.stack([flag, const], axis=1))).all()


def test_round_trip_through_json() -> None:
    s = fit_scaler(np.random.default_rng(1).normal(size=(100, 3)), clip=4.0, names=("x", "y", "z"))
    back = Scaler.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_array_equal(back.median, s.median)
    np.testing.assert_array_equal(back.iqr, s.iqr)
    assert back.clip == 4.0 and back.names == ("x", "y", "z")


def test_errors() -> None:
    s = fit_scaler(np.ones((10, 3)), clip=5.0)
    with pytest.raises(FeatureError, match="expects 3 features, got 2"):
        s.transform(np.ones((1, 2)))
    with pytest.raises(FeatureError, match="NaN"):
        fit_scaler(np.array([[1.0], [np.nan]]), clip=5.0)
    with pytest.raises(CheckpointError, match="damaged"):
        Scaler.from_dict({"median": [0.0]})
    with pytest.raises(CheckpointError, match="zero"):
        Scaler.from_dict({"median": [0.0], "iqr": [0.0], "clip": 5.0})


def test_transform_in_chunks_equals_the_formula() -> None:
    rng = np.random.default_rng(2)
    x = np.asfortranarray(rng.standard_t(3, size=(2_000, 4)) * 3.0)  # many chunks, F-ordered
    x[:10] = np.nan  # warm-up rows stay NaN
    s = fit_scaler(x[10:1_000], clip=2.5)
    z = s.transform(x)
    assert z.flags["C_CONTIGUOUS"] and z.dtype == np.float32
    expected = np.clip((x - s.median) / s.iqr, -2.5, 2.5).astype(np.float32)
    np.testing.assert_array_equal(z, expected)
    np.testing.assert_array_equal(s.transform(x[123]), expected[123])  # a single row


@pytest.mark.parametrize("n", [1, 2, 5, 10, 101])
def test_quantiles_match_numpy_percentile(n: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, 3)) * [1.0, 10.0, 1e-3]
    s = fit_scaler(x, clip=5.0)
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(s.median, q50, rtol=1e-12, atol=1e-15)
    if n > 1:
        np.testing.assert_allclose(s.iqr, q75 - q25, rtol=1e-12, atol=1e-15)
