"""Labels, forward returns and the prediction-point rule.

A prediction point is a row t at which the model is asked "is close[t + h] above close[t]?". The
label at t is 1 if close[t+h] > close[t] * (1 + threshold), else 0; the last h rows have no full
horizon and are unlabeled (-1). The forward return close[t+h] / close[t] - 1 is kept for backtests.

Row t is a valid prediction point only if all of these hold:
  * it is labeled (t + h < number of rows);
  * every engineered feature at t is finite (past the feature warm-up);
  * a full window of W candles ends at t (t >= W - 1);
  * the candle at t is real (not gap-filled): a decision needs a real close;
  * the TARGET candle t + h is real. Gap filling repeats the previous close, so a filled close[t+h]
    is the last traded price before t+h, not a price at t+h: if an outage starts right after t the
    "return" is exactly 0 and the label a spurious 0. Such labels are dropped. Filled candles
    strictly between t and t+h (or inside the window) are kept: the target price is a real
    observation and the window shows the outage as flat candles with zero volume, which is what the
    trading runner would also see.
"""

from __future__ import annotations

import numpy as np

UNLABELED = -1


def make_labels(
    close: np.ndarray, horizon: int, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (label int8[T] with -1 = unlabeled, forward return float64[T] with NaN tail)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    close_T = np.asarray(close, dtype=np.float64)
    n = close_T.shape[0]
    label_T = np.full(n, UNLABELED, dtype=np.int8)
    fwd_T = np.full(n, np.nan, dtype=np.float64)
    if n > horizon:
        now, future = close_T[:-horizon], close_T[horizon:]
        # The comparison is written exactly as the definition (not fwd > threshold) so the label
        # does not depend on the rounding of the division.
        label_T[:-horizon] = (future > now * (1.0 + threshold)).astype(np.int8)
        fwd_T[:-horizon] = future / now - 1.0
    return label_T, fwd_T


def prediction_mask(
    label_T: np.ndarray,
    feats_finite_T: np.ndarray,
    filled_T: np.ndarray,
    seq_len: int,
    horizon: int,
) -> np.ndarray:
    """bool[T]: rows that are valid prediction points under the rule in the module docstring."""
    n = label_T.shape[0]
    filled = np.asarray(filled_T, dtype=bool)
    target_filled = np.ones(n, dtype=bool)  # unlabeled tail has no target: treat as unusable
    if n > horizon:
        target_filled[:-horizon] = filled[horizon:]
    has_window = np.arange(n) >= seq_len - 1
    return (
        (label_T != UNLABELED)
        & np.asarray(feats_finite_T, dtype=bool)
        & has_window
        & ~filled
        & ~target_filled
    )
