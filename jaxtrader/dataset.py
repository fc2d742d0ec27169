"""The training dataset: labels, purged splits, train-only scaling and index-gathered batches.

This module assembles the pieces (`labels`, `splits`, `scaling`, `windows`) into a `Dataset` and is
the import point for them. The whole candle series is held once as float32[T, 5] raw inputs and
float32[T, F] scaled features; batches gather rows by index, so no window is ever materialised
outside a batch. `model_inputs` builds one live input through the same functions.

Batch dicts: {"seq": f32[B, W, 5], "feats": f32[B, F], "label": i32[B]} and, from `eval_batches`,
"mask": bool[B] (padding rows False). Shuffling takes an int seed or a JAX PRNG key (typed
`jax.random.key` or raw `PRNGKey`); the key only seeds a numpy permutation, so the order is the same
for the same seed/key on every platform.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from jaxtrader.config import DatasetConfig
from jaxtrader.errors import DataError, FeatureError
from jaxtrader.labels import UNLABELED, make_labels, prediction_mask
from jaxtrader.logs import get_logger, log_event
from jaxtrader.scaling import Scaler, fit_scaler
from jaxtrader.splits import (
    SPLIT_NAMES,
    Splits,
    chronological_splits,
    purge_gap,
    walk_forward_folds,
)
from jaxtrader.windows import check_seq_len, gather_windows, raw_series, raw_series_of

if TYPE_CHECKING:
    from jaxtrader.data import Candles

__all__ = [
    "SPLIT_NAMES",
    "UNLABELED",
    "Dataset",
    "Scaler",
    "Splits",
    "build_dataset",
    "chronological_splits",
    "fit_scaler",
    "gather_windows",
    "label_balance",
    "majority_rate",
    "make_labels",
    "model_inputs",
    "model_inputs_of",
    "purge_gap",
    "walk_forward_folds",
]

Batch = dict[str, np.ndarray]
_log = get_logger("dataset")


def _rng(key: Any) -> np.random.Generator:
    """A numpy Generator from an int seed or a JAX key (typed or raw uint32)."""
    if isinstance(key, int | np.integer):
        return np.random.default_rng(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and str(dtype).startswith("key<"):
        import jax

        key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.dtype.kind not in "iu":
        raise TypeError(f"shuffle key must be an int seed or a JAX PRNG key, got {type(key)}")
    return np.random.default_rng(data.astype(np.uint64).ravel().tolist())


@dataclass(frozen=True, eq=False)
class Dataset:
    """Whole-series arrays plus the prediction rows of each split (see module docstring)."""

    cfg: DatasetConfig
    index: pd.DatetimeIndex
    raw_Tx5: np.ndarray
    feats_TxF: np.ndarray
    label_T: np.ndarray
    fwd_return_T: np.ndarray
    valid_T: np.ndarray
    splits: Splits
    scaler: Scaler
    points: Mapping[str, np.ndarray]
    feature_names: tuple[str, ...]

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    @property
    def num_features(self) -> int:
        return int(self.feats_TxF.shape[1])

    def rows(self, split: str) -> np.ndarray:
        """int64 candle rows of the split's prediction points, ascending."""
        self.splits.range(split)  # validates the name
        return self.points[split]

    def size(self, split: str) -> int:
        return int(self.rows(split).shape[0])

    def labels(self, split: str) -> np.ndarray:
        return self.label_T[self.rows(split)]

    def fwd_returns(self, split: str) -> np.ndarray:
        return self.fwd_return_T[self.rows(split)]

    def timestamps(self, split: str) -> pd.DatetimeIndex:
        return self.index[self.rows(split)]

    def gather(self, rows_B: np.ndarray) -> Batch:
        """The batch dict for explicit candle rows (must be valid prediction points)."""
        return {
            "seq": gather_windows(self.raw_Tx5, rows_B, self.cfg.seq_len),
            "feats": self.feats_TxF[rows_B],
            "label": self.label_T[rows_B].astype(np.int32),
        }

    def num_batches(self, split: str, batch_size: int) -> int:
        """Full batches per epoch from `batches` (the remainder is dropped)."""
        return self.size(split) // batch_size

    def batches(self, split: str, batch_size: int, key: Any = None) -> Iterator[Batch]:
        """Fixed-shape batches; shuffled within the split when `key` (int seed or JAX key) is given.

        The remainder that does not fill a batch is dropped, so every row appears at most once per
        pass and jit sees one shape. Use `eval_batches` to cover every row.
        """
        rows = self.rows(split)
        if batch_size < 1 or rows.shape[0] < batch_size:
            raise DataError(
                f"split '{split}' has {rows.shape[0]} prediction points, fewer than batch size "
                f"{batch_size}; use a smaller --batch-size or more data"
            )
        if key is not None:
            rows = rows[_rng(key).permutation(rows.shape[0])]
        for b in range(rows.shape[0] // batch_size):
            yield self.gather(rows[b * batch_size : (b + 1) * batch_size])

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """All rows in order; the last batch is padded (repeating its last row) with mask False."""
        rows = self.rows(split)
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start : start + batch_size]
            n = chunk.shape[0]
            padded = np.concatenate([chunk, np.full(batch_size - n, chunk[-1], dtype=np.int64)])
            batch = self.gather(padded)
            batch["mask"] = np.arange(batch_size) < n
            batch["label"][n:] = 0
            yield batch

    def folds(
        self, k: int, window: str = "expanding", train_rows: int | None = None
    ) -> list[Splits]:
        """Walk-forward folds over this dataset's prediction span (pass one to `build_dataset`);
        `window` and `train_rows` as in `splits.walk_forward_folds`."""
        valid = np.flatnonzero(self.valid_T)
        return walk_forward_folds(
            int(valid[-1]) + 1,
            k,
            self.cfg,
            start=int(valid[0]),
            index=self.index,
            window=window,  # type: ignore[arg-type]
            train_rows=train_rows,
        )


def _frame_of(candles: Candles | pd.DataFrame) -> pd.DataFrame:
    frame = getattr(candles, "frame", candles)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected Candles or a DataFrame, got {type(candles)}")
    return frame


def _compute_features(frame: pd.DataFrame) -> pd.DataFrame:
    from jaxtrader.features import compute_features

    return compute_features(frame)


def _check_purged(points: Mapping[str, np.ndarray], cfg: DatasetConfig) -> None:
    """Safety net for splits from a manifest: the purge rule on the actual prediction points."""
    for earlier, later in itertools.pairwise(SPLIT_NAMES):
        if points[earlier][-1] + cfg.horizon >= points[later][0] - cfg.seq_len + 1:
            raise DataError(
                f"splits '{earlier}' and '{later}' are not purged for horizon {cfg.horizon} and "
                f"seq_len {cfg.seq_len}; rebuild with the checkpoint's own dataset config"
            )


def _read_only(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


def build_dataset(
    candles: Candles | pd.DataFrame,
    cfg: DatasetConfig,
    scaler: Scaler | None = None,
    splits: Splits | None = None,
    *,
    features: pd.DataFrame | None = None,
) -> Dataset:
    """Labels, splits, scaler and arrays for `candles` (a `data.Candles` or its frame).

    With `scaler`/`splits` given (from a checkpoint manifest) nothing is refit. `features` may pass
    a precomputed `compute_features(frame)` (e.g. reused across walk-forward folds).
    """
    started = time.perf_counter()
    check_seq_len(cfg.seq_len)
    if cfg.horizon < 1:
        raise DataError(f"dataset.horizon={cfg.horizon} must be at least 1 candle")
    frame = _frame_of(candles)
    feats_df = _compute_features(frame) if features is None else features
    if len(feats_df) != len(frame):
        raise FeatureError(f"features have {len(feats_df)} rows for {len(frame)} candles")
    feats_TxF = feats_df.to_numpy(dtype=np.float64)
    label_T, fwd_T = make_labels(frame["close"].to_numpy(), cfg.horizon, cfg.threshold)
    filled_T = (
        frame["filled"].to_numpy(dtype=bool)
        if "filled" in frame.columns
        else np.zeros(len(frame), dtype=bool)
    )
    valid_T = prediction_mask(
        label_T, np.isfinite(feats_TxF).all(axis=1), filled_T, cfg.seq_len, cfg.horizon
    )
    valid_rows = np.flatnonzero(valid_T)
    if valid_rows.size == 0:
        raise DataError(
            f"no valid prediction points in {len(frame)} candles (window {cfg.seq_len}, horizon "
            f"{cfg.horizon}, plus the feature warm-up); use a longer candle file"
        )
    index = pd.DatetimeIndex(frame.index)
    if splits is None:
        splits = chronological_splits(int(valid_rows[0]), int(valid_rows[-1]) + 1, cfg, index)
    points: dict[str, np.ndarray] = {}
    for name in SPLIT_NAMES:
        start, stop = splits.range(name)
        if not 0 <= start < stop <= len(frame):
            raise DataError(
                f"split '{name}' rows {start}..{stop} lie outside the {len(frame)} candles"
            )
        rows = valid_rows[(valid_rows >= start) & (valid_rows < stop)]
        if rows.size == 0:
            raise DataError(
                f"split '{name}' ({start}..{stop}) holds no valid prediction points; use more data"
            )
        points[name] = _read_only(rows)
    _check_purged(points, cfg)
    names = tuple(str(c) for c in feats_df.columns)
    if scaler is None:
        scaler = fit_scaler(feats_TxF[points["train"]], cfg.scaler_clip, names)
    elif scaler.names and names and scaler.names != names:
        raise FeatureError(
            "the checkpoint's scaler was fit on different feature names than compute_features "
            "gives now; retrain or use a matching version"
        )
    dataset = Dataset(
        cfg=cfg,
        index=index,
        raw_Tx5=_read_only(raw_series(frame)),
        feats_TxF=_read_only(scaler.transform(feats_TxF)),
        label_T=_read_only(label_T),
        fwd_return_T=_read_only(fwd_T),
        valid_T=_read_only(valid_T),
        splits=splits,
        scaler=scaler,
        points=points,
        feature_names=names,
    )
    log_event(
        _log,
        "dataset_built",
        rows=len(frame),
        **{f"{n}_points": int(points[n].size) for n in SPLIT_NAMES},
        seconds=round(time.perf_counter() - started, 3),
    )
    return dataset


def model_inputs(
    frame: pd.DataFrame, scaler: Scaler, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(seq f32[1, W, 5], feats f32[1, F]) for a prediction at the LAST candle of `frame`.

    Features are computed on the whole frame (long-memory features need the history the trading
    buffer holds); the window and scaling go through the training functions unchanged.
    """
    from jaxtrader.features import candle_columns

    check_seq_len(seq_len)
    cols, ts_ns = candle_columns(_frame_of(frame))
    return model_inputs_of(cols, ts_ns, scaler, seq_len)


def model_inputs_of(
    cols: Sequence[np.ndarray] | np.ndarray, ts_ns: np.ndarray, scaler: Scaler, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """`model_inputs` on contiguous float64 [open, high, low, close, volume] columns (a list or a
    C-ordered float64[5, T]) and int64 UTC ns open times: no pandas, for the trading hot path."""
    from jaxtrader.features import last_feature_row

    check_seq_len(seq_len)
    if len(ts_ns) < seq_len:
        raise DataError(f"need at least {seq_len} candles for one window, got {len(ts_ns)}")
    o, h, low, c, v = cols
    last_1xF = last_feature_row(o, h, low, c, v, ts_ns)[None, :]
    if not np.isfinite(last_1xF).all():
        raise FeatureError(
            f"features at {_stamp(ts_ns, -1)} are not finite: {len(ts_ns)} candles do not cover "
            f"the feature warm-up; keep a longer candle buffer"
        )
    tail = len(ts_ns) - seq_len
    raw_Wx5 = raw_series_of([c[tail:] for c in cols], lambda i: _stamp(ts_ns, tail + i))
    seq_1xWx5 = gather_windows(raw_Wx5, np.array([seq_len - 1]), seq_len)
    return seq_1xWx5, scaler.transform(last_1xF)


def _stamp(ts_ns: np.ndarray, i: int) -> str:
    return str(pd.Timestamp(int(ts_ns[i]), unit="ns", tz="UTC"))


def label_balance(dataset: Dataset) -> dict[str, float]:
    """Fraction of up labels (1) among each split's prediction points."""
    return {name: float(dataset.labels(name).mean()) for name in SPLIT_NAMES}


def majority_rate(dataset: Dataset) -> dict[str, float]:
    """Accuracy per split of always predicting TRAIN's majority class (the honest constant baseline)."""
    up = label_balance(dataset)
    majority_up = up["train"] >= 0.5
    return {name: (p if majority_up else 1.0 - p) for name, p in up.items()}


def split_summary(dataset: Dataset) -> dict[str, dict[str, Any]]:
    """Per split: prediction points, share of all points, first/last timestamp, up fraction."""
    total = sum(dataset.size(n) for n in SPLIT_NAMES)
    balance = label_balance(dataset)
    out: dict[str, dict[str, Any]] = {}
    for name in SPLIT_NAMES:
        ts = dataset.timestamps(name)
        out[name] = {
            "points": dataset.size(name),
            "share": dataset.size(name) / total,
            "start": ts[0].isoformat(),
            "end": ts[-1].isoformat(),
            "up": balance[name],
        }
    return out
