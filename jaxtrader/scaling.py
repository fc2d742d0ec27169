"""Robust per-feature scaling fit on training prediction rows only.

z = clip((x - median) / iqr, -clip, clip). `iqr` holds the divisor actually used: the train IQR
(75th - 25th percentile); where that is 0 (constant or mostly-constant features such as candle
pattern flags) it falls back to 1.349 x the train standard deviation (the IQR of a normal with that
deviation), and where that is 0 too (a feature constant on train) to 1.0, so the feature maps to
x - median: 0 on train and a clipped deviation elsewhere. The statistics are plain float64 arrays;
`to_dict`/`from_dict` round-trip them through JSON for the checkpoint manifest, and the same scaler is
applied unchanged to val, test and live candles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxtrader.errors import CheckpointError, FeatureError

_NORMAL_IQR_PER_STD = 1.349
_TINY = 1e-12
_CHUNK_ROWS = 256  # 256 x 86 float64 stays in L2: measured 2x faster than 8192 on F-ordered input


@dataclass(frozen=True, eq=False)
class Scaler:
    """Per-feature median and divisor (see module docstring) and the symmetric clip."""

    median: np.ndarray
    iqr: np.ndarray
    clip: float
    names: tuple[str, ...] = field(default=())

    @property
    def num_features(self) -> int:
        return int(self.median.shape[0])

    def transform(self, x_NxF: np.ndarray) -> np.ndarray:
        """C-contiguous float32[N, F] scaled and clipped; NaN stays NaN (warm-up rows are never used).

        Works through row chunks so a whole series costs one float32 output, not float64 copies.
        """
        x = np.asarray(x_NxF)
        if x.shape[-1] != self.num_features:
            raise FeatureError(
                f"scaler expects {self.num_features} features, got {x.shape[-1]}; the features "
                f"changed since the checkpoint was trained: retrain or use a matching version"
            )
        flat = x.reshape(-1, self.num_features)
        out = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, flat.shape[0], _CHUNK_ROWS):
            z = flat[start : start + _CHUNK_ROWS].astype(np.float64)  # always a fresh copy
            z -= self.median
            z /= self.iqr
            np.clip(z, -self.clip, self.clip, out=z)
            out[start : start + _CHUNK_ROWS] = z
        return out.reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median.tolist(),
            "iqr": self.iqr.tolist(),
            "clip": float(self.clip),
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        try:
            median = np.asarray(d["median"], dtype=np.float64)
            iqr = np.asarray(d["iqr"], dtype=np.float64)
            clip = float(d["clip"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"scaler in the manifest is damaged ({e}); retrain the model"
            ) from None
        names = tuple(d.get("names", ()))
        if median.ndim != 1 or median.shape != iqr.shape or (names and len(names) != median.size):
            raise CheckpointError(
                "scaler in the manifest has mismatched lengths; retrain the model"
            )
        if not (np.isfinite(median).all() and np.isfinite(iqr).all() and (iqr > 0).all()):
            raise CheckpointError(
                "scaler in the manifest has non-finite or zero statistics; retrain"
            )
        return cls(median=median, iqr=iqr, clip=clip, names=names)


def fit_scaler(train_NxF: np.ndarray, clip: float, names: Sequence[str] = ()) -> Scaler:
    """Fits on the given rows (callers pass TRAIN prediction rows only); rows must be finite."""
    x = np.asarray(train_NxF, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise FeatureError(f"cannot fit the scaler on {x.shape[0] if x.ndim else 0} training rows")
    if not np.isfinite(x).all():
        raise FeatureError(
            "training features contain NaN/inf; the feature warm-up leaked into train"
        )
    if clip <= 0:
        raise ValueError(f"scaler clip must be > 0, got {clip}")
    # One in-place sort per feature row beats np.percentile's partition here (about 3x on 50k x 86).
    sorted_FxN = np.array(x.T, order="C")
    sorted_FxN.sort(axis=1)
    q25, median, q75 = (_linear_quantile(sorted_FxN, q) for q in (0.25, 0.5, 0.75))
    divisor = q75 - q25
    flat = divisor <= _TINY
    if flat.any():
        std_scale = _NORMAL_IQR_PER_STD * x[:, flat].std(axis=0)
        divisor[flat] = np.where(std_scale > _TINY, std_scale, 1.0)
    return Scaler(median=median, iqr=divisor, clip=float(clip), names=tuple(names))


def _linear_quantile(sorted_FxN: np.ndarray, q: float) -> np.ndarray:
    """numpy's default ("linear") quantile of each row of an already sorted array."""
    pos = (sorted_FxN.shape[1] - 1) * q
    lo = int(np.floor(pos))
    hi = min(lo + 1, sorted_FxN.shape[1] - 1)
    frac = pos - lo
    return sorted_FxN[:, lo] + frac * (sorted_FxN[:, hi] - sorted_FxN[:, lo])
