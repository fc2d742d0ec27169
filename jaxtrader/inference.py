"""Inference from a checkpoint: the `Predictor` that evaluation and trading both use.

`Predictor.load(...)` resolves a version (see `jaxtrader.checkpoint` for best/latest/N), refuses a
checkpoint whose feature hash differs from the running code, restores only the parameters of the
version's best step onto an abstract target (no optimizer is built), and compiles one jitted
`P(up)` function, warmed up at load for batch 1 (the trading shape).

Stable API (evaluate and trade code against it):
- `Predictor.load(ckpt_dir=None, symbol=None, arch=None, version="best", checkpoint=None)`;
  `version_dir_to_load(...)` (same arguments) names the version it would load, loading nothing
- attributes `manifest` (checkpoint.Manifest), `config` (AppConfig the model was trained with),
  `scaler` (dataset.Scaler), `seq_len`, `version_dir`, `step`, `params`
- `predict_proba(seq_BxWx5, feats_BxF) -> np.ndarray[B]` float32 P(label == 1, "up")
- `predict_split(dataset, split) -> np.ndarray[N]` in `dataset.rows(split)` order
- `rebuild_dataset(candles) -> Dataset` exactly as trained (manifest scaler and split boundaries)

A checkpoint whose manifest has `ensemble` (a walk-forward fold: K seeds stacked on a leading axis)
loads as the seed ensemble: `predict_proba` returns the mean P(up) over its seeds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrader import checkpoint as ckpt
from jaxtrader.config import AppConfig, from_dict
from jaxtrader.errors import CheckpointError, ConfigError, DeepLearningError
from jaxtrader.logs import get_logger, log_event

if TYPE_CHECKING:
    from jaxtrader.data import Candles
    from jaxtrader.dataset import Dataset, Scaler

logger = get_logger(__name__)

ProbaFn = Callable[[Any, Any, Any], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def proba_up(model: Any, params: Any, seq_BxWx5: Any, feats_BxF: Any) -> jax.Array:
    """P(up)[B] of a Flax classifier with dropout off.

    Jitted once at module level with the (hashable, frozen) module as a static argument, so every
    Predictor of the same architecture and shapes reuses one compiled program.
    """
    logits_Bx2 = model.apply({"params": params}, seq_BxWx5, feats_BxF, deterministic=True)
    return up_probability(logits_Bx2)


def up_probability(logits_Bx2: jax.Array) -> jax.Array:
    """P(up)[B] from a classifier's (down, up) logits."""
    return jax.nn.softmax(logits_Bx2.astype(jnp.float32), axis=-1)[:, 1]


def make_proba_fn(model: Any) -> ProbaFn:
    """`(params, seq_BxWx5, feats_BxF) -> P(up)[B]` for `model` (see `proba_up`)."""
    return functools.partial(proba_up, model)


@functools.partial(jax.jit, static_argnums=0)
def seed_proba_up(model: Any, params_K: Any, seq_BxWx5: Any, feats_BxF: Any) -> jax.Array:
    """P(up)[K, B] of K seeds whose params are stacked on a leading axis (one program for all K)."""
    return jax.vmap(lambda p: proba_up(model, p, seq_BxWx5, feats_BxF))(params_K)


@functools.partial(jax.jit, static_argnums=0)
def ensemble_proba_up(model: Any, params_K: Any, seq_BxWx5: Any, feats_BxF: Any) -> jax.Array:
    """The seed ensemble's P(up)[B]: the mean over seeds of `seed_proba_up`."""
    return jnp.mean(seed_proba_up(model, params_K, seq_BxWx5, feats_BxF), axis=0)


def stacked_abstract(abstract: Any, k: int) -> Any:
    """`abstract` params with a leading seed axis of size k."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype), abstract)


def abstract_params(model: Any, seq_len: int, num_features: int) -> Any:
    """Shapes and dtypes of `model`'s params, without allocating or compiling anything."""
    seq = jax.ShapeDtypeStruct((1, seq_len, 5), jnp.float32)
    feats = jax.ShapeDtypeStruct((1, num_features), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), seq, feats)["params"]


def version_dir_to_load(
    *,
    ckpt_dir: str | Path | None = None,
    symbol: str | None = None,
    arch: str | None = None,
    version: str | int = "best",
    checkpoint: str | Path | None = None,
    include_partial: bool = False,
    fallback_symbol: str | None = None,
) -> Path:
    """The version directory `Predictor.load` restores for these arguments, without loading it:
    `checkpoint` as given, else `checkpoint.resolve_version` under `ckpt_dir`. Commands call it
    to check their flags against the version before the model loads (evaluate's outputs must not
    name its files; trade's --threshold must not be overruled by its recorded policy)."""
    if checkpoint is not None:
        return Path(checkpoint)
    return ckpt.resolve_version(
        ckpt.checkpoint_root(ckpt_dir),
        symbol,
        arch,
        version,
        include_partial=include_partial,
        fallback_symbol=fallback_symbol,
    )


@dataclass(frozen=True, eq=False)
class Predictor:
    """A restored model plus everything needed to build its inputs. Create with `load`."""

    manifest: ckpt.Manifest
    config: AppConfig
    scaler: Scaler
    seq_len: int
    version_dir: Path
    step: int
    params: Any
    proba_fn: ProbaFn

    @classmethod
    def load(
        cls,
        *,
        ckpt_dir: str | Path | None = None,
        symbol: str | None = None,
        arch: str | None = None,
        version: str | int = "best",
        checkpoint: str | Path | None = None,
        include_partial: bool = False,
        fallback_symbol: str | None = None,
    ) -> Predictor:
        """Restores a version's best step in this process.

        `checkpoint` (a `v<N>` version directory) wins over the search arguments. Otherwise the
        version is resolved under `ckpt_dir` (default `train.ckpt_dir`, "ckpt") for `symbol` and
        `arch` (None = any) by `version`: "best" (lowest best validation loss), "latest" (highest
        N) or a number; `include_partial` and `fallback_symbol` as in `checkpoint.resolve_version`.
        Raises CheckpointError for a missing, partial, corrupt or incompatible
        checkpoint.
        """
        from jaxtrader.dataset import Scaler
        from jaxtrader.models import build_model

        version_dir = version_dir_to_load(
            ckpt_dir=ckpt_dir,
            symbol=symbol,
            arch=arch,
            version=version,
            checkpoint=checkpoint,
            include_partial=include_partial,
            fallback_symbol=fallback_symbol,
        )
        manifest = ckpt.read_manifest(version_dir)
        if checkpoint is not None and arch is not None and arch != manifest.arch:
            # --checkpoint wins over the search flags, but a flag that contradicts it is a
            # mistake to report, not to ignore.
            raise ConfigError(
                f"--arch {arch} contradicts --checkpoint {version_dir}, whose model is {manifest.arch}; "
                "drop --arch or pick a checkpoint of that architecture"
            )
        if checkpoint is not None and str(version).isdigit() and int(version) != manifest.version:
            # Likewise a version number (best and latest, the default and its twin, say nothing
            # of one checkpoint): `--checkpoint .../v1 --version 3` evaluated v1 without a word.
            raise ConfigError(
                f"--version {version} contradicts --checkpoint {version_dir}, which is "
                f"v{manifest.version}; drop --version, or pass the version you mean as --checkpoint"
            )
        ckpt.check_features(manifest, version_dir)
        try:
            config = from_dict(manifest.config)
        except ConfigError as e:
            raise CheckpointError(
                f"{version_dir / ckpt.MANIFEST_FILE} holds a config this code "
                f"cannot read ({e}); retrain with `jaxtrader train`"
            ) from None
        scaler = Scaler.from_dict(manifest.scaler)
        model = build_model(config.model)
        target = abstract_params(model, manifest.seq_len, scaler.num_features)
        proba_fn: ProbaFn = make_proba_fn(model)
        if manifest.ensemble is not None:  # K seeds stacked: predict their mean P(up)
            target = stacked_abstract(target, int(manifest.ensemble["seeds"]))
            proba_fn = functools.partial(ensemble_proba_up, model)
        params, step = ckpt.restore_params(version_dir, target)
        predictor = cls(
            manifest=manifest,
            config=config,
            scaler=scaler,
            seq_len=manifest.seq_len,
            version_dir=version_dir,
            step=step,
            params=params,
            proba_fn=proba_fn,
        )
        predictor.predict_proba(
            np.zeros((1, predictor.seq_len, 5), np.float32),
            np.zeros((1, predictor.num_features), np.float32),
        )  # compile the batch-1 program now, not on the first live candle
        log_event(
            logger,
            "predictor_loaded",
            path=str(version_dir),
            arch=manifest.arch,
            version=manifest.version,
            step=step,
            symbol=manifest.data.get("symbol"),
        )
        return predictor

    @property
    def num_features(self) -> int:
        return self.scaler.num_features

    @property
    def arch(self) -> str:
        return self.manifest.arch

    def predict_proba(self, seq_BxWx5: Any, feats_BxF: Any) -> np.ndarray:
        """P(up) per row as float32[B]; inputs are raw windows and SCALED features (float32)."""
        seq = np.asarray(seq_BxWx5, dtype=np.float32)
        feats = np.asarray(feats_BxF, dtype=np.float32)
        if seq.ndim != 3 or seq.shape[1:] != (self.seq_len, 5):
            raise DeepLearningError(
                f"seq has shape {seq.shape}; the model at {self.version_dir} expects "
                f"[B, {self.seq_len}, 5] (build inputs with dataset.model_inputs)"
            )
        if feats.shape != (seq.shape[0], self.num_features):
            raise DeepLearningError(
                f"feats has shape {feats.shape}; the model at {self.version_dir} expects "
                f"[{seq.shape[0]}, {self.num_features}]"
            )
        return np.asarray(self.proba_fn(self.params, seq, feats))

    def predict_split(
        self, dataset: Dataset, split: str, batch_size: int | None = None
    ) -> np.ndarray:
        """P(up) for every prediction point of `split`, in `dataset.rows(split)` order.

        Runs fixed-shape padded eval batches (one compile per batch size) and drops the padding.
        """
        if dataset.seq_len != self.seq_len:
            raise DeepLearningError(
                f"dataset windows are {dataset.seq_len} candles but the model at "
                f"{self.version_dir} was trained on {self.seq_len}; use rebuild_dataset"
            )
        size = batch_size or self.config.train.eval_batch_size
        out = [
            self.predict_proba(batch["seq"], batch["feats"])[np.asarray(batch["mask"], bool)]
            for batch in dataset.eval_batches(split, size)
        ]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def rebuild_dataset(self, candles: Candles) -> Dataset:
        """The dataset exactly as trained: the manifest's scaler and split boundaries, no refit.

        Works on the training file or an extended one (boundaries are timestamps). Logs a WARNING
        `data_changed` when the candle source differs from the one the model was trained on.
        """
        import pandas as pd

        from jaxtrader.dataset import Splits, build_dataset

        self._check_data(candles)
        splits = Splits.from_dict(self.manifest.splits, pd.DatetimeIndex(candles.frame.index))
        return build_dataset(candles, self.config.dataset, scaler=self.scaler, splits=splits)

    def _check_data(self, candles: Candles) -> None:
        check = ckpt.check_data(self.manifest, candles)
        if check.same:
            return
        fields: dict[str, Any]
        if check.trained_sha256:
            fields = {
                "trained_on": check.trained_path,
                "trained_sha256": check.trained_sha256,
                "now_sha256": check.now_sha256,
            }
        else:
            fields = {"trained_on": check.trained_source}
        log_event(
            logger,
            "data_changed",
            logging.WARNING,
            checkpoint=str(self.version_dir),
            now=check.now_source,
            **fields,
        )
