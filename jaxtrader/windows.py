"""Raw candle windows gathered by index from one contiguous array, normalised per window.

Windows are never materialised for a whole split (50k x 100 x 5 floats per split would be copied
for nothing): the series is kept once as float32[T, 5] = (log open, log high, log low, log close,
log1p volume), and a batch is gathered with one `np.take` over an index grid, then made
scale-free per window:
  * prices: log(price / close at t) = log price - log close[t]; the last close is 0 by construction;
  * volume: log1p(volume) z-scored within the window (population std, eps-guarded); a window whose
    volume is constant gives zeros.
Training, evaluation and live inference all go through `gather_windows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from jaxtrader.config import SEQ_LEN_RANGE
from jaxtrader.errors import ConfigError, DataError

RAW_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
NUM_RAW = len(RAW_COLUMNS)
CLOSE = 3
VOLUME = 4
VOLUME_EPS = 1e-6


def check_seq_len(seq_len: int) -> None:
    lo, hi = SEQ_LEN_RANGE
    if not lo <= seq_len <= hi:
        raise ConfigError(f"dataset.seq_len={seq_len} is outside the allowed {lo}..{hi} candles")


def raw_series(frame: pd.DataFrame) -> np.ndarray:
    """float32[T, 5]: log prices and log1p volume of a candle frame, C-contiguous."""
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"candle frame lacks column(s) {', '.join(missing)}")
    # Column by column: selecting a column list costs ~5 ms of pandas indexing per live candle.
    cols = [frame[c].to_numpy(dtype=np.float64) for c in RAW_COLUMNS]
    return raw_series_of(cols, lambda i: str(frame.index[i]))


def raw_series_of(cols: Sequence[np.ndarray], where: Callable[[int], str]) -> np.ndarray:
    """`raw_series` on float64 open/high/low/close/volume columns; `where(i)` names row i."""
    prices = np.column_stack(cols[:VOLUME])
    volume = np.asarray(cols[VOLUME], dtype=np.float64)
    if not (prices > 0).all() or not (volume >= 0).all():
        bad = int(np.flatnonzero(~((prices > 0).all(axis=1) & (volume >= 0)))[0])
        raise DataError(
            f"candle at {where(bad)} has a non-positive price or negative volume; "
            f"load candles through jaxtrader.data so they are validated"
        )
    out = np.empty((prices.shape[0], NUM_RAW), dtype=np.float32)
    out[:, :VOLUME] = np.log(prices)
    out[:, VOLUME] = np.log1p(volume)
    return out


def gather_windows(raw_Tx5: np.ndarray, rows_B: np.ndarray, seq_len: int) -> np.ndarray:
    """float32[B, W, 5]: the W candles ending at each row in `rows_B`, normalised per window."""
    rows = np.asarray(rows_B, dtype=np.int64)
    if rows.size and (rows.min() < seq_len - 1 or rows.max() >= raw_Tx5.shape[0]):
        raise IndexError(f"window rows must lie in [{seq_len - 1}, {raw_Tx5.shape[0]})")
    grid_BxW = rows[:, None] + np.arange(1 - seq_len, 1, dtype=np.int64)[None, :]
    # One gather into a fresh [B, W, 5] array we may modify in place. np.take and the fancy index
    # raw_Tx5[grid_BxW] are within noise of each other; sliding_window_view + take is ~100x slower
    # (it copies the whole strided view). See scripts/bench_dataset.py.
    seq_BxWx5 = np.take(raw_Tx5, grid_BxW, axis=0)
    seq_BxWx5[..., :VOLUME] -= raw_Tx5[rows, CLOSE][:, None, None]
    vol_BxW = seq_BxWx5[..., VOLUME]
    mean_Bx1 = vol_BxW.mean(axis=1, keepdims=True)
    std_Bx1 = vol_BxW.std(axis=1, keepdims=True)
    # Below eps the window's volume is constant up to float32 rounding: zeros, not amplified noise.
    vol_BxW -= mean_Bx1
    np.divide(vol_BxW, std_Bx1, out=vol_BxW, where=std_Bx1 > VOLUME_EPS)
    vol_BxW[np.broadcast_to(std_Bx1 <= VOLUME_EPS, vol_BxW.shape)] = 0.0
    return seq_BxWx5
