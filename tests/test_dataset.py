"""The assembled dataset: split hygiene, no look-ahead, train-only scaling, batches, live inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import chex
import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import DatasetConfig
from jaxtrader.data import synth_candles
from jaxtrader.dataset import (
    SPLIT_NAMES,
    Dataset,
    Scaler,
    Splits,
    build_dataset,
    label_balance,
    majority_rate,
    model_inputs,
)
from jaxtrader.errors import DataError, FeatureError
from jaxtrader.features import NUM_FEATURES, WARMUP, compute_features

CFG = DatasetConfig(seq_len=50, horizon=5)
ROWS = 3_000


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synth_candles(rows=ROWS, seed=3).frame


@pytest.fixture(scope="module")
def feats(frame: pd.DataFrame) -> pd.DataFrame:
    return compute_features(frame)


@pytest.fixture(scope="module")
def data(frame: pd.DataFrame) -> Dataset:
    return build_dataset(frame, CFG)  # the default path: features computed inside


def _continue_randomly(frame: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """Replaces every candle after row t with different, valid candles."""
    other = synth_candles(rows=len(frame), seed=seed).frame
    scale = frame["close"].iloc[t] / other["close"].iloc[t]
    out = frame.copy()
    cols = ["open", "high", "low", "close"]
    out.loc[out.index[t + 1 :], cols] = other[cols].iloc[t + 1 :].to_numpy() * scale
    out.loc[out.index[t + 1 :], "volume"] = other["volume"].iloc[t + 1 :].to_numpy() * 7.0
    return out


def test_splits_are_chronological_disjoint_and_purged(data: Dataset) -> None:
    w, h = CFG.seq_len, CFG.horizon
    stamps = [set(data.timestamps(n)) for n in SPLIT_NAMES]
    assert not (stamps[0] & stamps[1] or stamps[1] & stamps[2] or stamps[0] & stamps[2])
    for earlier, later in (("train", "val"), ("val", "test")):
        assert data.rows(earlier).max() + h < data.rows(later).min() - w + 1
    # 70/15/15 of the prediction span by time, then the purge gap comes off val and test.
    span = ROWS - CFG.horizon - max(WARMUP, w - 1)
    gap = h + w - 1
    cut1, cut2 = round(0.70 * span), round(0.85 * span)
    sizes = [data.size(n) for n in SPLIT_NAMES]
    assert sizes == [cut1, cut2 - cut1 - gap, span - cut2 - gap]
    # Every point is valid, labeled, past the warm-up and the window.
    for name in SPLIT_NAMES:
        rows = data.rows(name)
        assert data.valid_T[rows].all() and (data.labels(name) >= 0).all()
        assert rows.min() >= max(WARMUP, CFG.seq_len - 1)
        assert np.isfinite(data.feats_TxF[rows]).all()
    assert data.rows("test").max() == ROWS - 1 - CFG.horizon  # unlabeled tail excluded


def test_inputs_do_not_move_when_the_future_changes(frame: pd.DataFrame, data: Dataset) -> None:
    t = int(data.rows("val")[len(data.rows("val")) // 2])
    changed = _continue_randomly(frame, t, seed=11)
    other = build_dataset(changed, CFG, features=compute_features(changed))
    assert other.splits == data.splits
    np.testing.assert_array_equal(other.scaler.median, data.scaler.median)
    rows = data.valid_T.nonzero()[0]
    past = rows[rows <= t]
    a, b = data.gather(past), other.gather(past)
    np.testing.assert_array_equal(a["seq"], b["seq"])
    np.testing.assert_array_equal(a["feats"], b["feats"])
    # Labels are the future by definition: only those whose horizon ends by t are unchanged.
    settled = past[past + CFG.horizon <= t]
    np.testing.assert_array_equal(data.label_T[settled], other.label_T[settled])
    # The test has teeth: the very next point already sees the replaced candle.
    nxt = rows[rows > t][:1]
    assert not np.array_equal(data.gather(nxt)["seq"], other.gather(nxt)["seq"])
    assert not np.array_equal(data.gather(nxt)["feats"], other.gather(nxt)["feats"])


def test_inputs_are_causal_inside_train_with_the_stored_scaler(
    frame: pd.DataFrame, data: Dataset
) -> None:
    # Inside train a refit scaler legitimately moves (its statistics span train); with the
    # checkpoint's scaler and splits, as evaluate and trade rebuild them, nothing at t' <= t moves.
    t = int(data.rows("train")[300])
    changed = _continue_randomly(frame, t, seed=12)
    other = build_dataset(changed, CFG, scaler=data.scaler, splits=data.splits)
    past = data.rows("train")[:301]
    a, b = data.gather(past), other.gather(past)
    np.testing.assert_array_equal(a["seq"], b["seq"])
    np.testing.assert_array_equal(a["feats"], b["feats"])
    refit = build_dataset(changed, CFG, features=compute_features(changed))
    assert not np.array_equal(refit.scaler.median, data.scaler.median)


def test_model_inputs_on_a_prefix_equal_the_training_inputs(
    frame: pd.DataFrame, data: Dataset
) -> None:
    for t in (int(data.rows("train")[0]), int(data.rows("test")[-1]), 1_234):
        seq, feats = model_inputs(frame.iloc[: t + 1], data.scaler, CFG.seq_len)
        batch = data.gather(np.array([t]))
        chex.assert_shape(seq, (1, CFG.seq_len, 5))
        chex.assert_shape(feats, (1, NUM_FEATURES))
        np.testing.assert_array_equal(seq, batch["seq"])
        np.testing.assert_array_equal(feats, batch["feats"])
    with pytest.raises(DataError, match="at least 50 candles"):
        model_inputs(frame.iloc[:40], data.scaler, CFG.seq_len)
    with pytest.raises(FeatureError, match="warm-up"):
        model_inputs(frame.iloc[:WARMUP], data.scaler, CFG.seq_len)
    seq, feats = model_inputs(frame.iloc[: WARMUP + 1], data.scaler, CFG.seq_len)
    assert np.isfinite(feats).all() and np.isfinite(seq).all()


def test_scaler_sees_only_train_rows(
    frame: pd.DataFrame, feats: pd.DataFrame, data: Dataset
) -> None:
    later = data.splits.range("train")[1]
    shifted = feats.copy()
    shifted.iloc[later:] = shifted.iloc[later:] * 10.0 + 3.0
    other = build_dataset(frame, CFG, features=shifted)
    np.testing.assert_array_equal(other.scaler.median, data.scaler.median)
    np.testing.assert_array_equal(other.scaler.iqr, data.scaler.iqr)
    train_x = feats.to_numpy()[data.rows("train")]
    np.testing.assert_allclose(data.scaler.median, np.median(train_x, axis=0))
    # val/test are transformed with the train statistics, not their own.
    test_rows = other.rows("test")
    expected = np.clip(
        (shifted.to_numpy()[test_rows] - data.scaler.median) / data.scaler.iqr, -5.0, 5.0
    )
    np.testing.assert_allclose(other.feats_TxF[test_rows], expected, rtol=1e-6, atol=1e-6)


def test_gap_filled_points_are_excluded(frame: pd.DataFrame) -> None:
    gapped = frame.copy()
    gapped["filled"] = False
    gap = np.arange(1_500, 1_510)
    gapped.iloc[gap, gapped.columns.get_loc("filled")] = True
    gapped.iloc[gap, [gapped.columns.get_loc(c) for c in ("open", "high", "low", "close")]] = (
        gapped["close"].iloc[1_499]
    )
    gapped.iloc[gap, gapped.columns.get_loc("volume")] = 0.0
    data = build_dataset(gapped, CFG)
    used = np.concatenate([data.rows(n) for n in SPLIT_NAMES])
    assert not np.isin(gap, used).any()
    # Points whose target candle falls in the gap are excluded; 1_494 (target 1_499) is kept.
    assert not np.isin(gap - CFG.horizon, used).any()
    assert 1_494 in used and 1_510 in used


def test_rebuild_from_manifest_dicts(
    frame: pd.DataFrame, feats: pd.DataFrame, data: Dataset
) -> None:
    manifest = json.loads(
        json.dumps({"splits": data.splits.to_dict(), "scaler": data.scaler.to_dict()})
    )
    splits = Splits.from_dict(manifest["splits"], pd.DatetimeIndex(frame.index))
    again = build_dataset(
        frame,
        CFG,
        scaler=Scaler.from_dict(manifest["scaler"]),
        splits=splits,
        features=feats,
    )
    for name in SPLIT_NAMES:
        np.testing.assert_array_equal(again.rows(name), data.rows(name))
    np.testing.assert_array_equal(again.feats_TxF, data.feats_TxF)
    with pytest.raises(DataError, match="split 'test'"):
        Splits.from_dict(manifest["splits"], pd.DatetimeIndex(frame.index[:2_900]))


def test_manifest_splits_for_another_window_are_refused(
    frame: pd.DataFrame, feats: pd.DataFrame, data: Dataset
) -> None:
    longer = dataclasses.replace(CFG, seq_len=120)
    with pytest.raises(DataError, match="not purged for horizon 5 and seq_len 120"):
        build_dataset(frame, longer, splits=data.splits, features=feats)


def test_walk_forward_folds_build_purged_datasets(
    frame: pd.DataFrame, feats: pd.DataFrame, data: Dataset
) -> None:
    folds = data.folds(3)
    test_rows = []
    for fold in folds:
        fold_data = build_dataset(frame, CFG, splits=fold, features=feats)
        for earlier, later in (("train", "val"), ("val", "test")):
            assert fold_data.rows(earlier).max() + CFG.horizon < (
                fold_data.rows(later).min() - CFG.seq_len + 1
            )
        test_rows.append(fold_data.rows("test"))
    # Test blocks are disjoint and end with the last prediction point.
    joined = np.concatenate(test_rows)
    assert np.unique(joined).size == joined.size
    assert joined.max() == data.rows("test").max()


def test_arrays_are_read_only(data: Dataset) -> None:
    with pytest.raises(ValueError, match="read-only"):
        data.feats_TxF[0, 0] = 1.0
    batch = next(data.eval_batches("test", 16))
    batch["feats"][0, 0] = 1.0  # batches are copies the caller may modify


def test_train_batches_shapes_seeded_shuffle(data: Dataset) -> None:
    bs = 64
    batches = list(data.batches("train", bs, key=0))
    assert len(batches) == data.num_batches("train", bs) == data.size("train") // bs
    for batch in batches:
        chex.assert_shape(
            [batch["seq"], batch["feats"], batch["label"]],
            [(bs, CFG.seq_len, 5), (bs, NUM_FEATURES), (bs,)],
        )
        chex.assert_type(
            [batch["seq"], batch["feats"], batch["label"]], [np.float32, np.float32, np.int32]
        )
    # Recover rows from the closing log price (0 at t) is not possible; use the gather order instead.
    order = lambda key: np.concatenate([b["label"] for b in data.batches("train", bs, key=key)])  # noqa: E731
    np.testing.assert_array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    first = next(data.batches("train", bs, key=5))["feats"]
    np.testing.assert_array_equal(first, next(data.batches("train", bs, key=5))["feats"])
    assert not np.array_equal(first, next(data.batches("train", bs, key=6))["feats"])
    # Unshuffled order is chronological.
    np.testing.assert_array_equal(
        next(data.batches("train", bs))["feats"], data.feats_TxF[data.rows("train")[:bs]]
    )


def test_every_train_row_at_most_once_per_epoch(
    data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[np.ndarray] = []
    real_gather = Dataset.gather

    def spy(self: Dataset, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(np.asarray(rows_B).copy())
        return real_gather(self, rows_B)

    monkeypatch.setattr(Dataset, "gather", spy)
    list(data.batches("train", 100, key=3))
    rows = np.concatenate(seen)
    assert np.unique(rows).size == rows.size == (data.size("train") // 100) * 100
    assert np.isin(rows, data.rows("train")).all()


def test_jax_keys_are_accepted_and_deterministic(data: Dataset) -> None:
    import jax

    typed = next(data.batches("train", 32, key=jax.random.key(7)))["feats"]
    again = next(data.batches("train", 32, key=jax.random.key(7)))["feats"]
    raw = next(data.batches("train", 32, key=jax.random.PRNGKey(7)))["feats"]
    other = next(data.batches("train", 32, key=jax.random.fold_in(jax.random.key(7), 1)))["feats"]
    np.testing.assert_array_equal(typed, again)
    np.testing.assert_array_equal(typed, raw)  # same key bits, same order
    assert not np.array_equal(typed, other)


def test_eval_batches_cover_everything_with_a_mask(data: Dataset) -> None:
    bs = 128
    batches = list(data.eval_batches("val", bs))
    n = data.size("val")
    assert len(batches) == -(-n // bs)
    for batch in batches:
        chex.assert_shape([batch["seq"], batch["mask"]], [(bs, CFG.seq_len, 5), (bs,)])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == n and mask[:n].all() and not mask[n:].any()
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:n], data.labels("val"))
    assert (labels[n:] == 0).all()
    feats = np.concatenate([b["feats"] for b in batches])[:n]
    np.testing.assert_array_equal(feats, data.feats_TxF[data.rows("val")])
    with pytest.raises(DataError, match="fewer than batch size"):
        next(data.batches("val", n + 1))


def test_label_balance_and_majority_rate(data: Dataset) -> None:
    balance = label_balance(data)
    for name in SPLIT_NAMES:
        assert balance[name] == pytest.approx((data.labels(name) == 1).mean())
    majority = majority_rate(data)
    up = balance["train"] >= 0.5
    for name in SPLIT_NAMES:
        assert majority[name] == pytest.approx(balance[name] if up else 1 - balance[name])


def test_config_validation(frame: pd.DataFrame, feats: pd.DataFrame) -> None:
    from jaxtrader.errors import ConfigError

    with pytest.raises(ConfigError, match="seq_len"):
        build_dataset(frame, dataclasses.replace(CFG, seq_len=20), features=feats)
    with pytest.raises(DataError, match="no valid prediction points"):
        build_dataset(frame.iloc[: WARMUP + 2], CFG)


@pytest.mark.realdata
def test_btc_1h_split_sizes_and_label_balance(btc_1h: Path) -> None:
    from jaxtrader.data import load_candles

    candles = load_candles(btc_1h)
    data = build_dataset(candles, DatasetConfig())
    sizes = np.array([data.size(n) for n in SPLIT_NAMES])
    np.testing.assert_allclose(sizes / sizes.sum(), [0.70, 0.15, 0.15], atol=0.005)
    balance = label_balance(data)
    print({n: (int(s), round(balance[n], 4)) for n, s in zip(SPLIT_NAMES, sizes, strict=True)})
    assert all(0.45 < balance[n] < 0.55 for n in SPLIT_NAMES)
    h, w = data.cfg.horizon, data.cfg.seq_len
    assert data.rows("train").max() + h < data.rows("val").min() - w + 1
    assert data.rows("val").max() + h < data.rows("test").min() - w + 1
    filled = candles.frame["filled"].to_numpy()
    used = np.concatenate([data.rows(n) for n in SPLIT_NAMES])
    assert not filled[used].any() and not filled[used + h].any()
