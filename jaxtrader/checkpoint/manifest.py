"""The manifest of a checkpoint version: what evaluate and trade need to rebuild exactly what
training saw (config, features, scaler, splits, data fingerprint, metrics), how it is built from a
finished run, and the checks a loaded checkpoint must pass against the running code
(`check_features`) and the candles it is given (`check_data`).
"""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jaxtrader.errors import CheckpointError

if TYPE_CHECKING:
    import pandas as pd

    from jaxtrader.config import AppConfig
    from jaxtrader.data import Candles
    from jaxtrader.scaling import Scaler
    from jaxtrader.splits import Splits


class FittedSplits(Protocol):
    """What a manifest records of a dataset: its train-fit scaler and its split boundaries
    (`dataset.Dataset`, or one walk-forward fold's scaler and splits)."""

    @property
    def scaler(self) -> Scaler: ...

    @property
    def splits(self) -> Splits: ...


MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_SCHEMA = 1
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pandas", "ta-lib")
_REQUIRED_KEYS = (
    "schema",
    "config",
    "arch",
    "version",
    "feature_names",
    "feature_hash",
    "scaler",
    "seq_len",
    "horizon",
    "threshold",
    "data",
    "splits",
    "seed",
    "packages",
    "metrics",
    "best_step",
    "created_at",
    "metrics_path",
)
RETRAIN_HINT = "retrain with `jaxtrader train` or pick another version with --version"


@dataclass(frozen=True)
class Manifest:
    """Everything needed to rebuild a trained model's inputs and judge its metrics.

    `config` is the full AppConfig as a dict; `data` holds path, sha256 (None for the synthetic
    market), symbol, interval, start, end and rows; `splits` is `dataset.Splits.to_dict()`;
    `metrics` holds the final train/val figures (train_loss, val_loss, val_accuracy,
    val_majority_rate, best_epoch, epochs, stopped_reason, train_seconds).
    """

    config: dict[str, Any]
    arch: str
    version: int
    feature_names: tuple[str, ...]
    feature_hash: str
    scaler: dict[str, Any]
    seq_len: int
    horizon: int
    threshold: float
    data: dict[str, Any]
    splits: dict[str, Any]
    seed: int
    packages: dict[str, str]
    metrics: dict[str, Any]
    best_step: int
    created_at: str
    metrics_path: str
    schema: int = MANIFEST_SCHEMA
    # A seed ensemble (walk-forward folds): {"seeds": K, ...}; its params carry a leading K axis.
    ensemble: dict[str, Any] | None = None
    # The decision policy chosen for this model (optional; older manifests have none):
    # {"rule": Policy fields, "source": how it was chosen, "chosen_at": ISO time, ...}.
    # `trade` applies `rule` one candle at a time; absent = the plain threshold rule.
    policy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["feature_names"] = list(self.feature_names)
        if d["policy"] is None:
            del d["policy"]  # manifests without a policy stay byte-identical to older ones
        return d

    def candle_interval(self) -> pd.Timedelta:
        """The interval of the candles the model was trained on (stored as str(Timedelta))."""
        import pandas as pd

        text = str(self.data.get("interval", ""))
        try:
            # Not pd.Timedelta(text): on pandas 2 with NumPy >= 2.5 it warns that it will fail
            # (NumPy's 'generic' timedelta unit); to_timedelta's array parser does not.
            interval = pd.to_timedelta([text])[0]
        except (ValueError, OverflowError):
            raise CheckpointError(
                f"the manifest's data.interval {text!r} is not a time span; {RETRAIN_HINT}"
            ) from None
        if not interval > pd.Timedelta(0):
            raise CheckpointError(
                f"the manifest's data.interval {text!r} is not positive; {RETRAIN_HINT}"
            )
        return pd.Timedelta(interval)

    def model_dict(self) -> dict[str, Any]:
        """What identifies the trained model: everything but the (re-choosable) policy."""
        d = self.to_dict()
        d.pop("policy", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: Path | str = "manifest") -> Manifest:
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise CheckpointError(
                f"{where} is missing {', '.join(missing)}; it was written by an incompatible "
                f"version or is damaged: {RETRAIN_HINT}"
            )
        kwargs = {k: d[k] for k in _REQUIRED_KEYS}
        for key in _REQUIRED_KEYS:
            kinds, wanted = _FIELD_KINDS[_FIELD_TYPES[key]]
            value = kwargs[key]
            # bool is an int to isinstance, but never a count or a seed in a manifest.
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise CheckpointError(
                    f"{where}: {key} is {value!r}, not {wanted}; the file was edited or damaged: "
                    f"{RETRAIN_HINT}"
                )
        kwargs["feature_names"] = tuple(d["feature_names"])
        if d.get("ensemble") is not None:
            kwargs["ensemble"] = dict(d["ensemble"])
        return cls(**kwargs, policy=d.get("policy"))


# What each manifest field must hold, by its annotation: a hand-edited `"horizon": "five"` became
# an internal error deep in dataset building instead of a line naming the key.
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Manifest)}
_FIELD_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "str": (str, "text"),
    "dict[str, Any]": (dict, "a JSON object"),
    "dict[str, str]": (dict, "a JSON object"),
    "tuple[str, ...]": ((list, tuple), "a list of names"),
}


@dataclass(frozen=True)
class DataCheck:
    """How candles compare with the data a checkpoint was trained on (see `check_data`)."""

    same: bool
    trained_source: str | None  # the manifest's data source (a path, or the synthetic generator)
    trained_path: str | None
    trained_sha256: str | None  # None: trained on the synthetic market
    now_source: str
    now_sha256: str | None  # computed only when the training data has a sha256


def check_data(manifest: Manifest, candles: Candles) -> DataCheck:
    """Compares `candles` with the manifest's data: by file sha256 when training read a file,
    else by source name (the synthetic market's generator and seed)."""
    from jaxtrader.data import file_sha256

    trained = manifest.data
    source = str(candles.source)
    expected = trained.get("sha256") or None
    now = file_sha256(source) if expected and Path(source).is_file() else None
    return DataCheck(
        same=now == expected if expected else trained.get("source") == source,
        trained_source=trained.get("source"),
        trained_path=trained.get("path"),
        trained_sha256=expected,
        now_source=source,
        now_sha256=now,
    )


def check_features(manifest: Manifest, where: str | Path) -> None:
    """Refuses a checkpoint trained on a different feature set than the running code computes."""
    from jaxtrader.features import feature_hash

    current = feature_hash()
    if manifest.feature_hash != current:
        raise CheckpointError(
            f"checkpoint {where} was trained on features with hash {manifest.feature_hash} but this "
            f"code computes {current}; retrain with `jaxtrader train` (or use the jaxtrader version "
            "that trained it)"
        )


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_manifest(
    *,
    cfg: AppConfig,
    version: int,
    candles: Candles,
    dataset: FittedSplits,
    metrics: Mapping[str, Any],
    best_step: int,
    metrics_path: str | Path,
) -> Manifest:
    """Assembles the manifest of a finished run from the config, candles, dataset and metrics.

    `cfg` is the AppConfig, `candles` a `data.Candles`, `dataset` a `dataset.Dataset` or
    anything with its `scaler` and `splits`. `metrics_path` is relative to the version directory so a copied
    checkpoint stays self-contained. The data fingerprint is the file's sha256, or None for the synthetic
    market (whose `source` string names its generator and seed).
    """
    from jaxtrader.config import to_dict
    from jaxtrader.data import file_sha256
    from jaxtrader.features import FEATURE_NAMES, feature_hash

    source = str(candles.source)
    is_file = cfg.data.path is not None and Path(source).is_file()
    index = candles.frame.index
    data = {
        "path": str(Path(source).absolute()) if is_file else None,
        "source": source,
        "sha256": file_sha256(source) if is_file else None,
        "symbol": candles.symbol,
        "interval": str(candles.interval),
        "start": index[0].isoformat() if len(index) else None,
        "end": index[-1].isoformat() if len(index) else None,
        "rows": len(index),
    }
    return Manifest(
        config=to_dict(cfg),
        arch=cfg.model.arch,
        version=version,
        feature_names=tuple(FEATURE_NAMES),
        feature_hash=feature_hash(),
        scaler=plain(dataset.scaler.to_dict()),
        seq_len=cfg.dataset.seq_len,
        horizon=cfg.dataset.horizon,
        threshold=cfg.dataset.threshold,
        data=data,
        splits=plain(dataset.splits.to_dict()),
        seed=cfg.train.seed,
        packages=package_versions(),
        metrics={k: plain(v) for k, v in metrics.items()},
        best_step=best_step,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics_path=str(metrics_path),
    )


def plain(value: Any) -> Any:
    """JSON-friendly value (numpy / jax arrays and scalars become Python; NaN becomes None)."""
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
