"""Versioned Orbax checkpoints with a manifest: the only place Orbax options and layout live.

Layout: `<ckpt_dir>/<SYMBOL-SLUG>/<arch>/v<N>/` is one training run (a *version*, N increases per
run). Inside it Orbax keeps one step per epoch (`<epoch>/params`, `<epoch>/opt`, `<epoch>/epoch`,
`<epoch>/metrics`) and the version root holds `manifest.json` (everything evaluate and trade need to
rebuild exactly what training saw) and `metrics.jsonl` (the run's per-epoch metrics).

Params are saved as their own Orbax item so inference restores them without an optimizer; the rest
of the train state (step, optimizer state) is a second item, restored onto an abstract target so
optax state keeps its types. Saves are asynchronous: call `manager.wait_until_finished()` (or
`close()`) before the process exits, otherwise only a `*.orbax-checkpoint-tmp` folder remains.

Version selection (`resolve_version`): `latest` is the highest N (across architectures: the newest
`created_at`), `best` is the version whose best
validation loss is lowest, an integer is that N. Only complete versions (with a manifest) are
candidates for `best`/`latest`. Within a version the step with the lowest validation loss (the
manifest's `best_step`) is always the one restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtrader.errors import CheckpointError

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_SCHEMA = 1
_VERSION_RE = re.compile(r"^v(\d+)$")
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
_RETRAIN_HINT = "retrain with `jaxtrader train` or pick another version with --version"


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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["feature_names"] = list(self.feature_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: Path | str = "manifest") -> Manifest:
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise CheckpointError(
                f"{where} is missing {', '.join(missing)}; it was written by an incompatible "
                f"version or is damaged: {_RETRAIN_HINT}"
            )
        kwargs = {k: d[k] for k in _REQUIRED_KEYS}
        kwargs["feature_names"] = tuple(d["feature_names"])
        if d.get("ensemble") is not None:
            kwargs["ensemble"] = dict(d["ensemble"])
        return cls(**kwargs)


@dataclass(frozen=True)
class VersionInfo:
    """One row of `jaxtrader models list`."""

    symbol: str
    arch: str
    version: int
    path: str
    complete: bool
    created_at: str | None
    data_start: str | None
    data_end: str | None
    best_val_loss: float | None
    val_accuracy: float | None
    val_majority_rate: float | None
    epochs: int | None
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Orbax manager: the one place its options live.


def _rank(metrics: Mapping[str, Any]) -> Any:
    """Sort key of a step: validation loss, then epoch, so ties go to the earlier epoch as in fit.

    Orbax only sorts by this key (best = smallest with best_mode="min"), so a tuple works.
    """
    return (float(metrics["val_loss"]), int(metrics.get("epoch", 0)))


def make_manager(
    directory: str | Path, *, max_to_keep: int = 3, create: bool = True
) -> ocp.CheckpointManager:
    """The Orbax manager used by train, evaluate and trade, so options can never disagree.

    Keeps the best step by validation loss plus the latest `max_to_keep` steps (at most
    `max_to_keep + 1` steps on disk). `preservation_policy` replaces the deprecated `max_to_keep`
    option; `best_fn` is still needed so Orbax stores per-step metrics and `best_step()` works.
    """
    import orbax.checkpoint as ocp

    if max_to_keep < 1:
        raise CheckpointError(f"train.max_to_keep must be >= 1, got {max_to_keep}")
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        best_fn=_rank,
        best_mode="min",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.BestN(get_metric_fn=_rank, reverse=True, n=1),
                policies.LatestN(n=max_to_keep),
            ]
        ),
        create=create,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_step(
    manager: ocp.CheckpointManager, step: int, state: Any, metrics: Mapping[str, Any]
) -> None:
    """Queues an asynchronous save of one epoch: params, the rest of the state, epoch metrics.

    `state` is a flax TrainState-like dataclass with `params` and `replace`. A non-finite val loss
    ranks last so it can never become the best step.
    """
    import orbax.checkpoint as ocp

    epoch_metrics = {k: _plain(v) for k, v in metrics.items()}
    val_loss = epoch_metrics.get("val_loss")
    if not isinstance(val_loss, float) or not math.isfinite(val_loss):
        val_loss = float("inf")
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt=ocp.args.StandardSave(state.replace(params=None)),
            epoch=ocp.args.JsonSave(epoch_metrics),
        ),
        metrics={"val_loss": val_loss, "epoch": int(step)},
    )


def _plain(value: Any) -> Any:
    """JSON-friendly value (numpy / jax arrays and scalars become Python; NaN becomes None)."""
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Layout and versions.


def arch_dir(ckpt_dir: str | Path, symbol: str, arch: str) -> Path:
    """`<ckpt_dir>/<SYMBOL-SLUG>/<arch>`."""
    from jaxtrader.data import symbol_slug

    return Path(ckpt_dir) / symbol_slug(symbol) / arch


def _version_numbers(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        m = _VERSION_RE.match(child.name)
        if m and child.is_dir():
            found.append(int(m.group(1)))
    return sorted(found)


def new_version_dir(ckpt_dir: str | Path, symbol: str, arch: str) -> tuple[int, Path]:
    """Creates and returns the next `v<N>` directory (N = highest existing + 1, from 1).

    `mkdir(exist_ok=False)` makes two concurrent runs take different numbers.
    """
    root = arch_dir(ckpt_dir, symbol, arch)
    root.mkdir(parents=True, exist_ok=True)
    n = (_version_numbers(root) or [0])[-1] + 1
    while True:
        path = root / f"v{n}"
        try:
            path.mkdir()
            return n, path
        except FileExistsError:
            n += 1


def write_manifest(version_dir: str | Path, manifest: Manifest) -> Path:
    """Writes `manifest.json` atomically (temporary file in the same directory, then rename)."""
    directory = Path(version_dir)
    target = directory / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest.to_dict(), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _missing_manifest(directory: Path) -> str:
    """Why a directory has no manifest, with the likeliest fix."""
    versions = _version_numbers(directory)
    if versions:
        return (
            f"{directory} is not a version directory; pass one of its versions, e.g. "
            f"{directory / f'v{versions[-1]}'}"
        )
    if (directory.parent / MANIFEST_FILE).is_file():
        return f"{directory} is a step inside a version; pass the version {directory.parent}"
    return (
        f"{directory / MANIFEST_FILE} is missing: the training run did not finish or the "
        f"checkpoint was damaged; {_RETRAIN_HINT}"
    )


def read_manifest(version_dir: str | Path) -> Manifest:
    """Reads and checks `manifest.json`; CheckpointError naming the path when missing or corrupt."""
    path = Path(version_dir) / MANIFEST_FILE
    if not Path(version_dir).is_dir():
        raise CheckpointError(f"checkpoint {version_dir} does not exist; {_RETRAIN_HINT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(_missing_manifest(Path(version_dir))) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); {_RETRAIN_HINT}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); {_RETRAIN_HINT}")
    return Manifest.from_dict(raw, where=path)


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


def dir_size(path: str | Path) -> int:
    """Bytes of all files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed by a concurrent Orbax cleanup
                total += (Path(root) / name).stat().st_size
    return total


def _best_val_loss(manifest: Manifest) -> float:
    value = manifest.metrics.get("val_loss")
    return float(value) if isinstance(value, int | float) else float("inf")


def _arch_dirs(ckpt_dir: Path, symbol: str | None, arch: str | None) -> list[Path]:
    if symbol is not None:
        from jaxtrader.data import symbol_slug

        symbol_dirs = [ckpt_dir / symbol_slug(symbol)]
    else:
        symbol_dirs = (
            sorted(p for p in ckpt_dir.iterdir() if p.is_dir()) if ckpt_dir.is_dir() else []
        )
    dirs = []
    for sdir in symbol_dirs:
        if not sdir.is_dir():
            continue
        for adir in sorted(p for p in sdir.iterdir() if p.is_dir()):
            if arch is None or adir.name == arch:
                dirs.append(adir)
    return dirs


def resolve_version(
    ckpt_dir: str | Path,
    symbol: str | None = None,
    arch: str | None = None,
    version: str | int = "best",
) -> Path:
    """The version directory for `best`, `latest` or a number (see the module docstring).

    `symbol=None` / `arch=None` widen the search to every symbol / architecture under `ckpt_dir`
    (so `version="best"` with `arch=None` picks the best model of any architecture).
    """
    root = Path(ckpt_dir)
    what = " ".join(x for x in (symbol, arch) if x) or "any model"
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, int):
        candidates = [d / f"v{version}" for d in _arch_dirs(root, symbol, arch)]
        existing = [p for p in candidates if p.is_dir()]
        if len(existing) == 1:
            return existing[0]
        if not existing:
            raise CheckpointError(
                f"no version v{version} for {what} under {root}; list them with "
                "`jaxtrader models list`"
            )
        raise CheckpointError(
            f"v{version} exists for several models under {root} "
            f"({', '.join(str(p) for p in existing)}); pass --symbol and --arch"
        )
    if version not in ("best", "latest"):
        raise CheckpointError(f"version must be best, latest or a number, got {version!r}")
    complete: list[tuple[Path, Manifest]] = []
    for adir in _arch_dirs(root, symbol, arch):
        for n in _version_numbers(adir):
            vdir = adir / f"v{n}"
            if (vdir / MANIFEST_FILE).is_file():
                try:
                    complete.append((vdir, read_manifest(vdir)))
                except CheckpointError:
                    continue  # a damaged version is never picked implicitly
    if not complete:
        raise CheckpointError(
            f"no complete checkpoint for {what} under {root}; train one with `jaxtrader train`"
        )
    if version == "latest":
        if len({vdir.parent for vdir, _ in complete}) == 1:
            return max(complete, key=lambda vm: vm[1].version)[0]
        return max(complete, key=lambda vm: (vm[1].created_at, vm[1].version))[0]
    return min(complete, key=lambda vm: (_best_val_loss(vm[1]), -vm[1].version))[0]


def list_versions(ckpt_dir: str | Path, symbol: str | None = None) -> list[VersionInfo]:
    """Every version under `ckpt_dir` (optionally one symbol), complete or not, oldest first."""
    rows = []
    for adir in _arch_dirs(Path(ckpt_dir), symbol, None):
        for n in _version_numbers(adir):
            vdir = adir / f"v{n}"
            manifest: Manifest | None
            try:
                manifest = read_manifest(vdir)
            except CheckpointError:
                manifest = None
            m = manifest.metrics if manifest else {}
            rows.append(
                VersionInfo(
                    symbol=manifest.data.get("symbol", adir.parent.name)
                    if manifest
                    else adir.parent.name,
                    arch=adir.name,
                    version=n,
                    path=str(vdir),
                    complete=manifest is not None,
                    created_at=manifest.created_at if manifest else None,
                    data_start=manifest.data.get("start") if manifest else None,
                    data_end=manifest.data.get("end") if manifest else None,
                    best_val_loss=m.get("val_loss"),
                    val_accuracy=m.get("val_accuracy"),
                    val_majority_rate=m.get("val_majority_rate"),
                    epochs=m.get("epochs"),
                    size_bytes=dir_size(vdir),
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Restore.


def _open_steps(version_dir: Path) -> tuple[ocp.CheckpointManager, list[int]]:
    if not version_dir.is_dir():
        raise CheckpointError(f"checkpoint {version_dir} does not exist; {_RETRAIN_HINT}")
    manager = make_manager(version_dir, create=False)
    steps = list(manager.all_steps())
    if not steps:
        manager.close()
        raise CheckpointError(
            f"checkpoint {version_dir} has no finished step (an interrupted save leaves only a "
            f"*.orbax-checkpoint-tmp folder); {_RETRAIN_HINT}"
        )
    return manager, steps


def _pick_step(version_dir: Path, steps: list[int], step: int | None) -> int:
    if step is None:
        manifest_path = version_dir / MANIFEST_FILE
        if manifest_path.is_file():
            step = read_manifest(version_dir).best_step
        else:
            raise CheckpointError(_missing_manifest(version_dir))
    if step not in steps:
        raise CheckpointError(
            f"step {step} is missing from checkpoint {version_dir} (steps on disk: "
            f"{', '.join(map(str, steps))}); {_RETRAIN_HINT}"
        )
    return step


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{key path as names: shape} of a params pytree (dict keys, attributes or indices)."""
    import jax

    def name(entry: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(name(e) for e in path): tuple(leaf.shape) for path, leaf in flat}


def _check_params_layout(version_dir: Path, step: int, target: Any) -> None:
    """Refuses params saved from a different model definition than the one this code builds.

    The feature hash covers the inputs; this covers the model (a renamed layer or a changed size
    would otherwise surface as an opaque Orbax structure error). Unreadable metadata is left to
    the restore, which reports damage.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    item = (version_dir / str(step) / "params").absolute()
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = _leaf_shapes(handler.metadata(epath.Path(item)))
    except Exception:
        return
    finally:
        handler.close()
    wanted = _leaf_shapes(target)
    if saved == wanted:
        return

    def show(keys: list[tuple[str, ...]]) -> str:
        return ", ".join("/".join(k) for k in keys[:3]) + (" ..." if len(keys) > 3 else "")

    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    resized = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    found = [
        f"{label} {show(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("resized", resized))
        if keys
    ]
    raise CheckpointError(
        f"checkpoint {version_dir} holds parameters of a different model than this code builds "
        f"for its config ({'; '.join(found)}); retrain with `jaxtrader train` or use the "
        "jaxtrader version that trained it"
    )


def _restore(version_dir: Path, step: int | None, items: dict[str, Any]) -> tuple[Any, int]:
    import orbax.checkpoint as ocp

    manager, steps = _open_steps(version_dir)
    try:
        chosen = _pick_step(version_dir, steps, step)
        if "params" in items:
            _check_params_layout(version_dir, chosen, items["params"])
        try:
            restored = manager.restore(
                chosen,
                args=ocp.args.Composite(
                    **{k: ocp.args.StandardRestore(v) for k, v in items.items()}
                ),
            )
        except Exception as e:  # Orbax/tensorstore raise many types for damaged files
            first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise CheckpointError(
                f"checkpoint step {version_dir / str(chosen)} is partial or corrupt "
                f"({type(e).__name__}: {first_line}); {_RETRAIN_HINT}"
            ) from e
    finally:
        manager.close()
    return restored, chosen


def restore_params(
    version_dir: str | Path, abstract_params: Any, step: int | None = None
) -> tuple[Any, int]:
    """Restores only the params (no optimizer) of `step` (default: the manifest's best step).

    `abstract_params` is a pytree of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape` of the
    model init); returns `(params, step)`.
    """
    restored, chosen = _restore(Path(version_dir), step, {"params": abstract_params})
    return restored["params"], chosen


def restore_state(version_dir: str | Path, target_state: Any, step: int | None = None) -> Any:
    """Restores a full train state (params, step, optimizer state) onto `target_state`'s structure.

    `target_state` may be concrete or abstract; only shapes/dtypes/tree structure are used, so the
    optimizer state comes back with its optax types.
    """
    import jax

    abstract = jax.eval_shape(lambda: target_state)
    restored, _ = _restore(
        Path(version_dir),
        step,
        {"params": abstract.params, "opt": abstract.replace(params=None)},
    )
    return restored["opt"].replace(params=restored["params"])


# ---------------------------------------------------------------------------------------------
# Manifest construction.


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
    cfg: Any,
    version: int,
    candles: Any,
    dataset: Any,
    metrics: Mapping[str, Any],
    best_step: int,
    metrics_path: str | Path,
) -> Manifest:
    """Assembles the manifest of a finished run from the config, candles, dataset and metrics.

    `cfg` is the AppConfig, `candles` a `data.Candles`, `dataset` a `dataset.Dataset` (its
    `scaler` and `splits`). `metrics_path` is relative to the version directory so a copied
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
        scaler=_plain(dataset.scaler.to_dict()),
        seq_len=cfg.dataset.seq_len,
        horizon=cfg.dataset.horizon,
        threshold=cfg.dataset.threshold,
        data=data,
        splits=_plain(dataset.splits.to_dict()),
        seed=cfg.train.seed,
        packages=package_versions(),
        metrics={k: _plain(v) for k, v in metrics.items()},
        best_step=best_step,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metrics_path=str(metrics_path),
    )
