"""The Predictor on a really trained tiny model: fresh-process bitwise restore, shapes, datasets."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxtrader import checkpoint as ckpt
from jaxtrader.config import AppConfig, DataConfig, DatasetConfig, ModelConfig, TrainConfig
from jaxtrader.errors import CheckpointError, DeepLearningError
from jaxtrader.inference import Predictor, make_proba_fn
from jaxtrader.models import build_model
from jaxtrader.training_run import TrainRun, run_training

W = 50


def tiny_config(ckpt_dir: Path, arch: str = "lstm") -> AppConfig:
    return AppConfig(
        data=DataConfig(synth_rows=1200, synth_seed=1),
        dataset=DatasetConfig(seq_len=W),
        model=ModelConfig(
            arch=arch, num_layers=1, hidden=8, d_model=16, num_heads=2, ff_dim=32, dropout=0.0
        ),
        # epochs=500 with patience=1: early stopping after a few epochs; the same schedule as
        # tests/test_train_cli.py, so both share compiled programs through the persistent cache.
        train=TrainConfig(
            epochs=500,
            patience=1,
            batch_size=32,
            eval_batch_size=64,
            warmup_steps=2,
            ckpt_dir=str(ckpt_dir),
        ),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainRun, Predictor]:
    cfg = tiny_config(tmp_path_factory.mktemp("ckpt"))
    run = run_training(cfg)
    return run, Predictor.load(checkpoint=run.summary["path"])


def test_fresh_process_restore_is_bitwise(
    tmp_path: Path, trained: tuple[TrainRun, Predictor]
) -> None:
    run, _ = trained
    cfg = tiny_config(Path("unused"))
    # Predictions of the params fit returned (the best epoch), computed in this process.
    proba = make_proba_fn(build_model(cfg.model))
    expected = np.concatenate(
        [
            np.asarray(proba(run.result.state.params, b["seq"], b["feats"]))[b["mask"]]
            for b in run.dataset.eval_batches("test", cfg.train.eval_batch_size)
        ]
    )
    out = tmp_path / "p.npz"
    code = (
        "import sys, numpy as np, jax\n"
        "from jaxtrader.runtime import enable_compilation_cache\n"
        "enable_compilation_cache()\n"
        "from jaxtrader.data import load_market\n"
        "from jaxtrader.inference import Predictor\n"
        "p = Predictor.load(checkpoint=sys.argv[1])\n"
        "ds = p.rebuild_dataset(load_market(p.config.data))\n"
        "leaves = [np.asarray(x) for x in jax.tree.leaves(p.params)]\n"
        "np.savez(sys.argv[2], proba=p.predict_split(ds, 'test'), *leaves)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, run.summary["path"], str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(out)
    np.testing.assert_array_equal(got["proba"], expected)
    leaves = [np.asarray(x) for x in jax.tree.leaves(run.result.state.params)]
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(got[f"arr_{i}"], leaf)


def test_loaded_attributes(trained: tuple[TrainRun, Predictor]) -> None:
    run, p = trained
    assert p.version_dir == Path(run.summary["path"])
    assert p.step == run.result.best_epoch == p.manifest.best_step
    assert p.seq_len == W and p.arch == "lstm" and p.config.model.hidden == 8
    assert p.num_features == run.dataset.num_features
    np.testing.assert_array_equal(p.scaler.median, run.dataset.scaler.median)
    chex.assert_trees_all_equal(
        jax.tree.map(np.asarray, p.params), jax.tree.map(np.asarray, run.result.state.params)
    )


def test_load_by_symbol_arch_and_version(trained: tuple[TrainRun, Predictor]) -> None:
    run, p = trained
    root = Path(run.summary["path"]).parents[2]
    for version in ("best", "latest", 1, "1"):
        q = Predictor.load(ckpt_dir=root, symbol="SYNTH/USD", arch="lstm", version=version)
        assert q.version_dir == p.version_dir
    with pytest.raises(CheckpointError, match="no version v2"):
        Predictor.load(ckpt_dir=root, symbol="SYNTH/USD", arch="lstm", version=2)
    with pytest.raises(CheckpointError, match="no complete checkpoint for SYNTH/USD transformer"):
        Predictor.load(ckpt_dir=root, symbol="SYNTH/USD", arch="transformer")


def test_predict_proba_values_and_shape_errors(trained: tuple[TrainRun, Predictor]) -> None:
    run, p = trained
    rows = run.dataset.rows("train")[:64]  # batch 64: the eval program predict_split compiles
    batch = run.dataset.gather(rows)
    probs = p.predict_proba(batch["seq"], batch["feats"])
    assert probs.shape == (64,) and probs.dtype == np.float32
    assert ((probs > 0) & (probs < 1)).all() and probs.std() > 0
    # Batch-1 calls (the trading shape) agree with the batched ones.
    one = [p.predict_proba(batch["seq"][i : i + 1], batch["feats"][i : i + 1])[0] for i in range(8)]
    np.testing.assert_allclose(one, probs[:8], rtol=0, atol=1e-6)
    with pytest.raises(DeepLearningError, match=rf"expects \[B, {W}, 5\]"):
        p.predict_proba(batch["seq"][:, 1:], batch["feats"])
    with pytest.raises(DeepLearningError, match="feats has shape"):
        p.predict_proba(batch["seq"], batch["feats"][:, 1:])


def test_predict_split_covers_every_row_once(trained: tuple[TrainRun, Predictor]) -> None:
    run, p = trained
    for split in ("train", "val", "test"):
        probs = p.predict_split(run.dataset, split, batch_size=64)
        assert probs.shape == (run.dataset.size(split),)
    # Row order: each value is the batch-1 prediction of the same candle row.
    probs = p.predict_split(run.dataset, "test", batch_size=64)
    for i, row in enumerate(run.dataset.rows("test")):
        batch = run.dataset.gather(np.array([row]))
        np.testing.assert_allclose(
            p.predict_proba(batch["seq"], batch["feats"]), probs[i : i + 1], rtol=0, atol=1e-6
        )


def test_rebuild_dataset_matches_training_and_warns_on_other_data(
    trained: tuple[TrainRun, Predictor],
) -> None:
    from jaxtrader.data import load_market

    run, p = trained
    rebuilt = p.rebuild_dataset(load_market(p.config.data))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(rebuilt.rows(split), run.dataset.rows(split))
    np.testing.assert_array_equal(rebuilt.feats_TxF, run.dataset.feats_TxF)
    assert rebuilt.splits == run.dataset.splits

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("jaxtrader.inference")
    log.addHandler(handler)
    try:
        p.rebuild_dataset(load_market(dataclasses.replace(p.config.data, synth_seed=2)))
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno == logging.WARNING] == ["data_changed"]


def test_feature_hash_mismatch_is_refused(
    tmp_path: Path, trained: tuple[TrainRun, Predictor]
) -> None:
    _, p = trained
    copy = tmp_path / "v1"
    shutil.copytree(p.version_dir, copy)
    raw = json.loads((copy / ckpt.MANIFEST_FILE).read_text())
    raw["feature_hash"] = "f" * 16
    (copy / ckpt.MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=rf"checkpoint {copy} was trained on features"):
        Predictor.load(checkpoint=copy)
