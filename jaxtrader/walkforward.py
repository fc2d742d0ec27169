"""Walk-forward research: K seeds trained per fold, out-of-sample predictions stitched over history.

The workflow (the CLI only parses and prints):
1. `prepare` loads the candles once, computes the features once (they are causal) and cuts the
   folds (`splits.walk_forward_folds`: test blocks tile the history after fold 0's validation
   block, which follows the first training span and is never tested).
2. `run_fold` is the unit of work, with plain inputs and outputs so that a remote executor can run
   one fold per task: a `FoldTask` (numpy arrays + frozen config) in, a `FoldResult` (numpy arrays,
   lists, floats) out. It builds the fold's dataset with `dataset.build_dataset` on the fold's
   splits (the scaler is fit on that fold's training rows only), trains K seeds in one compiled
   step (`jaxtrader.seeds`), stops each seed early on the fold's validation block, and predicts the
   val and test blocks with every seed. It touches no files. The val predictions (and the returns a
   position decided at each val row earns) are what the fold's decision policy is chosen on
   (`walkforward_report.fold_policies`, `--policy auto`); the test block is only predicted.
3. The driver (`run_walkforward`) maps `run_fold` over the folds with an executor (`local`: in this
   process, one fold after another), saves each result as it arrives (one Orbax checkpoint per fold
   holding all K seeds, with the usual manifest plus `ensemble`; `fold.json`; `predictions.npz`),
   then writes `predictions.csv` and the report (`jaxtrader.walkforward_report`).

Layout of `--out` (default `runs/<SYMBOL-SLUG>/<arch>/wf<N>/`): `plan.json`, `fold_<i>/` (a
checkpoint version directory `Predictor.load(checkpoint=...)` reads as the seed ensemble),
`predictions.csv`, `report.json`, `report.md`, PNG plots, and `.walkforward.lock` (`run_lock`:
one process per run directory). A fold directory is complete when its `manifest.json` exists
(written last, atomically); `resume=True` reuses complete folds whose weights and records load,
and trains the others again (`fold_redo`).

Keys: the run key is `key(train.seed)`; fold i uses `fold_in(run key, i)` as its own run key, and
seed s of it `fold_in(fold key, s)` (see `seeds`), so a fold's result does not depend on which
folds ran before it in this process: resuming gives the same predictions as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from jaxtrader.config import AppConfig
from jaxtrader.errors import CheckpointError, ConfigError, DataError, EmptySplitError
from jaxtrader.logs import get_logger, log_event, progress_bar
from jaxtrader.runtime import huge_pages_requested, release_free_memory, tcmalloc_active
from jaxtrader.splits import SPLIT_NAMES, Splits

if TYPE_CHECKING:
    from jaxtrader.scaling import Scaler

logger = get_logger("walkforward")

Window = Literal["expanding", "rolling"]
PolicyMode = Literal["auto", "plain"]
PLAN_FILE = "plan.json"
# Fewer validation points than this and a fold's early stopping and policy choice rest on noise
# (an accuracy's standard error is 5 points at 100); the audit found 10 folds of a 3,000-candle
# file validating on 3 or 4 points each, silently.
MIN_VAL_POINTS = 100
FOLD_FILE = "fold.json"
FOLD_PREDICTIONS = "predictions.npz"
# Held (flock) by the process working on a run directory, so a second one is refused.
LOCK_FILE = ".walkforward.lock"
# What a walk-forward resume does with a fold it cannot reuse (the checkpoint messages advise
# `jaxtrader train`, which does not apply to a fold).
REDO_NOTE = "the fold is trained again"
# FoldResult's array fields, saved in the fold's predictions.npz.
FOLD_ARRAYS = (
    "test_rows",
    "labels",
    "forward_returns",
    "prob_up_KxN",
    "val_rows",
    "val_asset_returns",
    "val_prob_up_KxN",
)
PROGRESS_EVERY = 10  # steps between JSON progress lines when no bar is shown


@dataclass(frozen=True)
class WalkForwardSettings:
    """What the walk-forward adds to the AppConfig."""

    folds: int = 6
    seeds: int = 4
    window: Window = "expanding"
    train_candles: int | None = None
    # auto: each fold's policy is chosen on its own val block; plain: P(up) > threshold.
    policy: PolicyMode = "auto"

    def check(self) -> None:
        if self.folds < 1:
            raise ConfigError(f"--folds must be at least 1, got {self.folds}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if self.window not in ("expanding", "rolling"):
            raise ConfigError(f"--window must be expanding or rolling, got {self.window!r}")
        if self.policy not in ("auto", "plain"):
            raise ConfigError(f"--policy must be auto or plain, got {self.policy!r}")


@dataclass(frozen=True, eq=False)
class MarketArrays:
    """Candles and their (causal, unscaled) features as plain arrays: what a fold task needs."""

    timestamp_ns: np.ndarray  # int64[T] candle open times, UTC
    ohlcv_Tx5: np.ndarray  # float64[T, 5]
    filled_T: np.ndarray  # bool[T]
    features_TxF: np.ndarray  # float64[T, F]
    feature_names: tuple[str, ...]
    symbol: str
    interval_seconds: float

    def index(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(pd.to_datetime(self.timestamp_ns, utc=True), name="timestamp")

    def frame(self) -> pd.DataFrame:
        cols = ["open", "high", "low", "close", "volume"]
        frame = pd.DataFrame(self.ohlcv_Tx5, index=self.index(), columns=cols)
        frame["filled"] = self.filled_T
        return frame

    def features(self) -> pd.DataFrame:
        return pd.DataFrame(self.features_TxF, index=self.index(), columns=list(self.feature_names))


def market_arrays(candles: Any) -> MarketArrays:
    """Plain arrays of `candles` (a `data.Candles`), features computed once for every fold."""
    from jaxtrader.features import compute_features

    frame = candles.frame
    feats = compute_features(frame)
    filled = (
        frame["filled"].to_numpy(dtype=bool)
        if "filled" in frame.columns
        else np.zeros(len(frame), dtype=bool)
    )
    return MarketArrays(
        timestamp_ns=pd.DatetimeIndex(frame.index).as_unit("ns").asi8.copy(),
        ohlcv_Tx5=frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64),
        filled_T=filled,
        features_TxF=feats.to_numpy(np.float64),
        feature_names=tuple(str(c) for c in feats.columns),
        symbol=str(candles.symbol),
        interval_seconds=float(candles.interval.total_seconds()),
    )


@dataclass(frozen=True, eq=False)
class FoldTask:
    """One fold's work: plain arrays and frozen config (picklable for a remote executor)."""

    fold: int
    splits: Splits
    market: MarketArrays
    cfg: AppConfig
    seeds: int
    folds_total: int = 0  # for the progress label "fold i/N" only


@dataclass
class FoldResult:
    """One fold's outcome: per-seed test predictions, the seeds' best params, training records."""

    fold: int
    splits: dict[str, Any]  # Splits.to_dict()
    scaler: dict[str, Any]  # Scaler.to_dict() (fit on this fold's train rows)
    test_rows: np.ndarray  # int64[N] candle rows of the test points
    labels: np.ndarray  # int64[N]
    forward_returns: np.ndarray  # float64[N]
    prob_up_KxN: np.ndarray  # float32[K, N]
    best_epochs: list[int]
    best_val_losses: list[float]
    best_val_accs: list[float]
    val_majority_rate: float
    stopped_reason: str
    seed_stopped_epochs: list[int]
    epochs_run: int
    steps: int
    train_points: int
    seconds: float
    train_seconds: float
    samples: int
    train_up_rate: float
    history: list[dict[str, Any]] = field(default_factory=list)
    # The val block, for choosing the fold's policy (empty in folds saved before policies).
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_asset_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))  # period_returns
    val_prob_up_KxN: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    params: Any = None  # numpy pytree, leading seed axis (None when loaded back from disk)

    @property
    def majority_class(self) -> int:
        """The training majority class: the honest constant baseline for this fold's test."""
        return int(self.train_up_rate >= 0.5)

    def record(self) -> dict[str, Any]:
        """JSON-able fields (everything but the arrays and params)."""
        skip = {*FOLD_ARRAYS, "params"}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }


def fold_time_limit(cfg: AppConfig, folds: int) -> AppConfig:
    """`train.max_minutes` is the whole run's training budget: each fold gets an equal share."""
    if cfg.train.max_minutes is None:
        return cfg
    per_fold = cfg.train.max_minutes / folds
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_minutes=per_fold))


def _fold_run_key(seed: int, fold: int) -> Any:
    import jax

    return jax.random.fold_in(jax.random.key(seed), fold)


class _FoldProgress:
    """A progress bar per fold; JSON progress lines when there is no bar (JSON logs, no tty)."""

    def __init__(self, fold: int, folds: int, total: int) -> None:
        self.fold, self.folds, self.total = fold, folds, total
        self.bar = progress_bar(total, f"fold {fold + 1}/{folds}")
        self.start = time.perf_counter()

    def step(self, step: int, loss: float) -> None:
        self.bar.update(1)
        if step == 1 or step % PROGRESS_EVERY == 0:
            rate = step / max(time.perf_counter() - self.start, 1e-9)
            if getattr(self.bar, "disable", False):
                log_event(
                    logger,
                    "walkforward_progress",
                    fold=self.fold,
                    step=step,
                    max_steps=self.total,
                    loss=loss,
                    steps_per_s=round(rate, 2),
                )
            else:
                self.bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{rate:.1f}")

    def close(self) -> None:
        self.bar.close()


def run_fold(
    task: FoldTask, show_progress: bool = True, poll: Callable[[], object] | None = None
) -> FoldResult:
    """Trains the fold's K seeds and predicts its test block (pure compute: no files written).

    `poll()` (optional) is called after every step, e.g. to notice a stop request early.
    """
    import jax

    from jaxtrader import seeds, train
    from jaxtrader.dataset import build_dataset
    from jaxtrader.evaluate.backtest import period_returns
    from jaxtrader.inference import seed_proba_up
    from jaxtrader.models import build_model

    started = time.perf_counter()
    cfg = task.cfg
    dataset = build_dataset(
        task.market.frame(), cfg.dataset, splits=task.splits, features=task.market.features()
    )
    model = build_model(cfg.model)
    init_keys, fit_keys = seeds.seed_init_fit_keys(
        _fold_run_key(cfg.train.seed, task.fold), task.seeds
    )
    sample = next(dataset.eval_batches("train", cfg.train.batch_size))
    epoch_steps = train.steps_per_epoch(dataset, cfg.train.batch_size)
    states = seeds.create_seed_states(
        model, cfg.train, init_keys, sample, epoch_steps * cfg.train.epochs
    )
    bar = (
        _FoldProgress(task.fold, task.folds_total or task.fold + 1, epoch_steps * cfg.train.epochs)
        if show_progress
        else None
    )

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.step(step, loss)
        if poll is not None:
            poll()

    try:
        fit = seeds.fit_seeds(states, dataset, cfg.train, fit_keys, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    params = jax.device_get(fit.state.params)
    t_predict = time.perf_counter()

    # Every batch is dispatched before any is read, so the host builds the next windows while the
    # devices compute (6.7 against 7.9 s for 4,678 rows, K = 4 LSTM, AVX2).
    pending, masks = [], []
    for batch in dataset.eval_batches("test", cfg.train.eval_batch_size):
        pending.append(seed_proba_up(model, fit.state.params, batch["seq"], batch["feats"]))
        masks.append(np.asarray(batch["mask"], bool))
    test_prob_KxN = np.concatenate(
        [np.asarray(p_KxB)[:, m] for p_KxB, m in zip(jax.device_get(pending), masks, strict=True)],
        axis=1,
    ).astype(np.float32)
    val_prob_KxN = fit.val_prob_up_KxN  # from the validation pass that chose these params
    val_rows = np.asarray(dataset.rows("val"), dtype=np.int64)
    # What a position decided at each val row earns; the last val row's period ends at the
    # candle after it, still before the purge gap, so no test price enters.
    val_returns, _ = period_returns(
        task.market.ohlcv_Tx5[:, 0], task.market.ohlcv_Tx5[:, 3], val_rows
    )
    log_event(
        logger,
        "fold_predicted",
        fold=task.fold,
        rows=dataset.size("test"),
        seconds=round(time.perf_counter() - t_predict, 3),
    )
    counts = train.label_counts(dataset, "train")
    return FoldResult(
        fold=task.fold,
        splits=json.loads(json.dumps(dataset.splits.to_dict())),
        scaler=_plain(dataset.scaler.to_dict()),
        test_rows=np.asarray(dataset.rows("test"), dtype=np.int64),
        labels=np.asarray(dataset.labels("test"), dtype=np.int64),
        forward_returns=np.asarray(dataset.fwd_returns("test"), dtype=np.float64),
        prob_up_KxN=test_prob_KxN,
        best_epochs=fit.best_epochs,
        best_val_losses=fit.best_val_losses,
        best_val_accs=fit.best_val_accs,
        val_majority_rate=fit.val_majority_rate,
        stopped_reason=str(fit.stopped_reason),
        seed_stopped_epochs=fit.seed_stopped_epochs,
        epochs_run=fit.epochs_run,
        steps=fit.steps,
        train_points=dataset.size("train"),
        seconds=time.perf_counter() - started,
        train_seconds=fit.train_seconds,
        samples=fit.samples,
        train_up_rate=float(counts[1] / max(counts.sum(), 1)),
        history=_plain(fit.history),
        val_rows=val_rows,
        val_asset_returns=np.asarray(val_returns, dtype=np.float64),
        val_prob_up_KxN=val_prob_KxN,
        params=params,
    )


def _plain(value: Any) -> Any:
    """JSON-able copy (numpy arrays and scalars become lists and numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist()))


Executor = Callable[..., Iterator[FoldResult]]


def local_executor(
    tasks: Sequence[FoldTask], poll: Callable[[], object] | None = None
) -> Iterator[FoldResult]:
    """Runs the folds one after another in this process (their K seeds share one compiled step).

    An executor takes the tasks (and an optional `poll` callable for stop notices) and yields
    results as folds finish, in any order.
    """
    for task in tasks:
        yield run_fold(task, poll=poll)


# ---------------------------------------------------------------------------------------------
# The plan: folds, spans and counts, checked again on resume.


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything the driver needs before training: the candles, their arrays and the folds."""

    candles: Any
    market: MarketArrays
    folds: list[Splits]
    plan: dict[str, Any]


def prepare(cfg: AppConfig, wf: WalkForwardSettings) -> Prepared:
    """Loads the candles, computes features once and cuts the folds; the plan as a JSON-able dict."""
    from jaxtrader.data import load_market

    wf.check()
    return prepare_candles(cfg, wf, load_market(cfg.data))


def prepare_candles(cfg: AppConfig, wf: WalkForwardSettings, candles: Any) -> Prepared:
    """`prepare` on candles already loaded (`study.check_markets` plans every market's folds
    before its first cell trains): a DataError/ConfigError when they cannot make the folds."""
    from jaxtrader.data import data_sha256
    from jaxtrader.dataset import build_dataset

    wf.check()
    market = market_arrays(candles)
    # The whole-series dataset only supplies the valid prediction points the folds are cut over.
    try:
        full = build_dataset(candles, cfg.dataset, features=market.features())
    except EmptySplitError:
        # Its 70/15/15 split is no part of a walk-forward: "split 'val' is empty" would mislead.
        raise DataError(
            f"{len(market.timestamp_ns)} candles are too few for a walk-forward with --seq-len "
            f"{cfg.dataset.seq_len} and --horizon {cfg.dataset.horizon}; use a longer candle file "
            "or a shorter --seq-len"
        ) from None
    folds = full.folds(wf.folds, wf.window, wf.train_candles)
    valid_T = np.asarray(full.valid_T)
    rows = []
    for i, fold in enumerate(folds):
        row: dict[str, Any] = {"fold": i}
        for name in SPLIT_NAMES:
            start, stop = fold.range(name)
            first, last = fold.span(name)
            row[f"{name}_start"], row[f"{name}_end"] = first, last
            row[f"{name}_points"] = int(valid_T[start:stop].sum())
        if row["train_points"] < cfg.train.batch_size:
            # Here, before a run directory is made: found while training, it left a plan.json
            # that refused the rerun the message asks for.
            raise DataError(
                f"fold {i}'s training split has {row['train_points']} prediction points, fewer "
                f"than batch size {cfg.train.batch_size}; use a smaller --batch-size, a longer "
                "--train-candles or more data"
            )
        if row["val_points"] < MIN_VAL_POINTS:
            raise DataError(
                f"fold {i}'s validation block has {row['val_points']} prediction points, fewer "
                f"than {MIN_VAL_POINTS}: early stopping and the decision policy would be chosen "
                "on noise; use fewer --folds, "
                f"{'a smaller --train-candles, ' if wf.train_candles is not None else ''}"
                "a shorter --seq-len or --horizon, or more data"
            )
        rows.append(row)
    plan = {
        "symbol": candles.symbol,
        "arch": cfg.model.arch,
        "data": str(candles.source),
        # The file's contents, not its name: a resume must not stitch folds of two files.
        "data_sha256": data_sha256(candles),
        "folds": wf.folds,
        "seeds": wf.seeds,
        "window": wf.window,
        "train_candles": wf.train_candles,
        "seed": cfg.train.seed,
        "purge_gap": cfg.dataset.horizon + cfg.dataset.seq_len - 1,
        "fold_plan": rows,
    }
    return Prepared(candles=candles, market=market, folds=folds, plan=plan)


def format_plan(plan: dict[str, Any]) -> str:
    """One line per fold: train / val / test spans as timestamps and point counts."""

    def span(row: dict[str, Any], name: str) -> str:
        return f"{row[f'{name}_start'][:16]}..{row[f'{name}_end'][:16]} ({row[f'{name}_points']})"

    head = (
        f"walk-forward {plan['arch']} on {plan['symbol']}: {plan['folds']} folds x "
        f"{plan['seeds']} seeds, {plan['window']} window, purge gap {plan['purge_gap']} candles"
    )
    lines = [head, f"{'fold':<5} {'train':<42} {'val':<42} test"]
    for row in plan["fold_plan"]:
        lines.append(
            f"{row['fold']:<5} {span(row, 'train'):<42} {span(row, 'val'):<42} {span(row, 'test')}"
        )
    return "\n".join(lines)


_RUN_RE = re.compile(r"^wf(\d+)$")


def new_run_dir(root: str | Path, symbol: str, arch: str) -> Path:
    """Creates `<root>/<SYMBOL-SLUG>/<arch>/wf<N>` with N one above the highest existing."""
    from jaxtrader.data import symbol_slug

    parent = Path(root) / symbol_slug(symbol) / arch
    parent.mkdir(parents=True, exist_ok=True)
    found = [int(m.group(1)) for c in parent.iterdir() if (m := _RUN_RE.match(c.name))]
    n = max(found, default=0) + 1
    while True:
        path = parent / f"wf{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def fold_dir(out: Path, fold: int) -> Path:
    return out / f"fold_{fold:02d}"


@dataclass(frozen=True)
class RunProgress:
    """How far the walk-forward run in a directory got, read from its files alone."""

    folds: int  # planned (plan.json)
    saved: list[int]  # folds whose manifest marks them complete
    complete: bool  # every fold saved and the run's report.json written


def run_progress(directory: str | Path) -> RunProgress | None:
    """The progress of the walk-forward run in `directory`, None when it holds none (no plan.json,
    or a plan.json that is no walk-forward plan). A run is complete once every fold's manifest
    exists and its report.json (written last, by `write_outputs`) is a walk-forward report;
    until then `--resume DIR` finishes it, and the run writes its report there."""
    from jaxtrader.checkpoint.manifest import MANIFEST_FILE

    out = Path(directory)
    try:
        plan = json.loads((out / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(plan, dict) or "fold_plan" not in plan:
        return None
    folds = plan.get("folds")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 1:
        return None
    saved = [i for i in range(folds) if (fold_dir(out, i) / MANIFEST_FILE).is_file()]
    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        report = None
    written = isinstance(report, dict) and isinstance(report.get("folds"), list)
    return RunProgress(folds=folds, saved=saved, complete=len(saved) == folds and written)


# ---------------------------------------------------------------------------------------------
# Saving and loading one fold.


def _manifest(prepared: Prepared, cfg: AppConfig, result: FoldResult, best_step: int) -> Any:
    from jaxtrader import checkpoint as ckpt
    from jaxtrader.dataset import Scaler

    holder = _ScalerSplits(
        scaler=Scaler.from_dict(result.scaler),
        splits=Splits.from_dict(result.splits, prepared.market.index()),
    )
    metrics = {
        "val_loss": float(np.mean(result.best_val_losses)),
        "val_accuracy": float(np.mean(result.best_val_accs)),
        "val_majority_rate": result.val_majority_rate,
        "best_epoch": int(max(result.best_epochs)),
        "epochs": result.epochs_run,
        "steps": result.steps,
        "stopped_reason": result.stopped_reason,
        "train_seconds": round(result.train_seconds, 3),
        "seed_best_epochs": result.best_epochs,
        "seed_val_losses": result.best_val_losses,
        "seed_val_accuracies": result.best_val_accs,
        "complete": True,
    }
    manifest = ckpt.build_manifest(
        cfg=cfg,
        version=result.fold,
        candles=prepared.candles,
        dataset=holder,
        metrics=metrics,
        best_step=best_step,
        metrics_path=ckpt.METRICS_FILE,
    )
    ensemble = {
        "seeds": int(result.prob_up_KxN.shape[0]),
        "combine": "mean_prob_up",
        "fold": result.fold,
        "folds": prepared.plan["folds"],
        "walkforward": prepared.plan["window"],
        "seed_keys": "fold_in(fold_in(key(train.seed), fold), seed), split (init, fit)",
        "seed_best_epochs": result.best_epochs,
    }
    return dataclasses.replace(manifest, ensemble=ensemble)


@dataclass(frozen=True)
class _ScalerSplits:
    """What `checkpoint.build_manifest` reads from a dataset."""

    scaler: Scaler
    splits: Splits


def save_fold(out: Path, prepared: Prepared, cfg: AppConfig, result: FoldResult) -> Path:
    """Writes the fold's checkpoint (all K seeds' best params), records and predictions; the
    manifest goes last, so a fold directory with a manifest is complete."""
    from flax import struct

    from jaxtrader import checkpoint as ckpt
    from jaxtrader.tensorboard_log import EpochWriter

    @struct.dataclass
    class Saved:
        params: Any
        best_epoch: Any

    started = time.perf_counter()
    directory = fold_dir(out, result.fold)
    # A fold is only saved when it is not complete: what is there is an interrupted save or a
    # fold whose weights were damaged, and Orbax will not write over an existing step.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    step = max(result.epochs_run, 1)
    manager = ckpt.make_manager(directory, max_to_keep=1)
    try:
        record = {
            "val_loss": float(np.mean(result.best_val_losses)),
            "epoch": step,
            "seed_val_losses": result.best_val_losses,
        }
        ckpt.save_step(
            manager,
            step,
            Saved(params=result.params, best_epoch=np.asarray(result.best_epochs, np.int64)),
            record,
        )
        manager.wait_until_finished()
    finally:
        manager.close()
    with (directory / ckpt.METRICS_FILE).open("w", encoding="utf-8") as f:
        for rec in result.history:
            f.write(json.dumps(rec) + "\n")
    tensorboard = EpochWriter(directory)  # `tensorboard --logdir runs`: one curve per seed
    for rec in result.history:
        tensorboard.add(rec)
    tensorboard.close()
    np.savez(directory / FOLD_PREDICTIONS, **{k: getattr(result, k) for k in FOLD_ARRAYS})
    (directory / FOLD_FILE).write_text(
        json.dumps(_plain(result.record()), indent=2) + "\n", encoding="utf-8"
    )
    ckpt.write_manifest(directory, _manifest(prepared, cfg, result, step))
    log_event(
        logger,
        "fold_saved",
        fold=result.fold,
        path=str(directory),
        seconds=round(time.perf_counter() - started, 3),
    )
    return directory


def load_fold(out: Path, fold: int) -> FoldResult | None:
    """The saved result of a complete fold (its manifest exists), else None; CheckpointError when
    its records cannot be read (the driver then trains the fold again)."""
    from jaxtrader import checkpoint as ckpt

    directory = fold_dir(out, fold)
    if not (directory / ckpt.MANIFEST_FILE).is_file():
        return None
    try:
        rec = json.loads((directory / FOLD_FILE).read_text(encoding="utf-8"))
        # Opened here: np.load leaves its own handle open when the archive is damaged.
        with open(directory / FOLD_PREDICTIONS, "rb") as f, np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        return FoldResult(**rec, **arrays)  # TypeError: fold.json is not the record's fields
    # A truncated or overwritten .npz raises BadZipFile or EOFError, not OSError.
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"fold {fold} in {directory} has a manifest but its records are damaged "
            f"({type(e).__name__}: {e}); {REDO_NOTE}"
        ) from None


def _weights_damage(out: Path, fold: int, cfg: AppConfig, prepared: Prepared) -> str | None:
    """Why the saved weights of a complete fold cannot be restored (None when they can): the
    restore evaluate and trade do (`checkpoint.restore_params`, shapes only, nothing compiled)."""
    from jaxtrader import checkpoint as ckpt
    from jaxtrader.checkpoint.manifest import RETRAIN_HINT
    from jaxtrader.inference import abstract_params, stacked_abstract
    from jaxtrader.models import build_model

    model = build_model(cfg.model)
    target = abstract_params(model, cfg.dataset.seq_len, len(prepared.market.feature_names))
    try:
        ckpt.restore_params(fold_dir(out, fold), stacked_abstract(target, prepared.plan["seeds"]))
    except CheckpointError as e:
        return f"{str(e).removesuffix(f'; {RETRAIN_HINT}')}; {REDO_NOTE}"
    return None


# ---------------------------------------------------------------------------------------------
# The driver.


class WalkForwardInterrupted(KeyboardInterrupt):
    """Stopped on request after a fold's save; carries the run directory and the folds done."""

    def __init__(self, out: Path, done: list[int]) -> None:
        super().__init__("walk-forward interrupted")
        self.out = out
        self.done = done


def interrupted_message(
    out: Path, done: Sequence[int], study: Path | None = None, aborted: bool = False
) -> str:
    """The one "interrupted: ..." line of a walk-forward stopped after `done` folds were saved in
    `out`, whichever executor ran them (`walkforward`, and `study` for its cell `out`, whose
    study directory is `study`): "no fold was complete", "fold 0 is saved", "folds 0, 1 are
    saved", and the --resume that finishes it. `aborted`: a fold in progress was given up."""
    folds = ", ".join(str(i) for i in sorted(done))
    lead = "interrupted: the fold in progress was not saved; " if aborted else "interrupted: "
    if study is None:
        if not done:
            return (
                f"{lead}no fold was complete; rerun the same command with --resume {out} "
                "to start the run again"
            )
        saved = f"fold {folds} is" if len(done) == 1 else f"folds {folds} are"
        return f"{lead}{saved} saved in {out}; finish with the same command and --resume {out}"
    cell = f"of the cell in {out}"
    if not done:
        saved = f"no fold {cell} was complete"
    elif len(done) == 1:
        saved = f"fold {folds} {cell} is saved"
    else:
        saved = f"folds {folds} {cell} are saved"
    return f"{lead}{saved}; finish the study with the same command and --resume {study}"


@dataclass
class WalkForwardRun:
    """What `run_walkforward` produced."""

    out: Path
    report: dict[str, Any]
    results: list[FoldResult]
    seconds: float


def read_run_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A run directory's JSON record (`plan.json`, `study.json`, ...) as a dict; a damaged file is
    one CheckpointError naming it and `fix`, not a JSONDecodeError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); {fix}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not a {what} (not a JSON object); {fix}")
    return doc


def resume_record(out: str | Path | None, name: str, what: str) -> tuple[Path, dict[str, Any]]:
    """The --resume directory `out` and its record `name`, read before any data is loaded: a
    missing directory or record, or a damaged one, is one ConfigError/CheckpointError."""
    if out is None:
        raise ConfigError("--resume needs the run directory: --resume DIR")
    out = Path(out)
    if not out.exists():
        raise ConfigError(
            f"--resume {out}: the directory does not exist; pass the directory a previous run "
            "printed, or start a new run without --resume"
        )
    if not out.is_dir():
        raise ConfigError(f"--resume {out}: not a directory; pass the {what}'s directory")
    path = out / name
    if not path.is_file():
        raise ConfigError(f"--resume {out}: {name} is missing; it is not a {what}")
    return out, read_run_json(
        path,
        what,
        f"restore it from a backup, or start a new {what} with another --out ({out} cannot "
        "be resumed without it)",
    )


def config_changes(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """`key old -> new` for every leaf where two nested config dicts differ (dotted keys)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return [
            change
            for k in sorted(set(stored) | set(current), key=str)
            for change in config_changes(
                stored.get(k), current.get(k), f"{prefix}.{k}" if prefix else str(k)
            )
        ]
    if stored == current:
        return []
    return [f"{prefix} {json.dumps(stored)} -> {json.dumps(current)}"]


def _check_plan(out: Path, stored: dict[str, Any], plan: dict[str, Any]) -> None:
    # Runs planned before the fingerprint was recorded have no key: nothing to compare then.
    was, now = stored.get("data_sha256", plan["data_sha256"]), plan["data_sha256"]
    planned_on = stored.get("data")
    if was != now and isinstance(planned_on, str) and planned_on != plan["data"]:
        # Another file (or the embedded market, `--data` left out of the resume command): say
        # which one the run needs; two fingerprints ("... then, None... now") did not.
        if was is None:  # planned on the embedded market: its source names no file
            fix = "rerun the original command, without --data, with --resume"
        else:
            fix = f"rerun the original command, with --data {planned_on}, with --resume"
        raise ConfigError(
            f"--resume {out}: the run was planned on {planned_on}, and this command reads "
            f"{plan['data']}; {fix}, or start a new run without --resume"
        )
    if was != now:
        raise ConfigError(
            f"--resume {out}: the candles differ from the ones the run was planned on "
            f"({plan['data']}: sha256 {str(was)[:12]}... then, {str(now)[:12]}... now); resume "
            "with the original file, or start a new run without --resume"
        )
    keys = ("symbol", "arch", "folds", "seeds", "window", "train_candles", "seed", "fold_plan")
    diff = [k for k in keys if stored.get(k) != plan.get(k)]
    if diff:
        raise ConfigError(
            f"--resume {out}: the run was planned with different {', '.join(diff)}; rerun with "
            "the same data and flags as the original command, or start a new run without --resume"
        )
    if stored.get("config") is not None:
        changed = config_changes(stored["config"], json.loads(json.dumps(plan.get("config"))))
        if changed:
            raise ConfigError(
                f"--resume {out}: the run was planned with a different configuration "
                f"({'; '.join(changed)}); rerun the original command (same --config and flags) "
                "with --resume, or start a new run without --resume"
            )


def _refuse_a_run_in(out_dir: Path, others_too: bool = False) -> None:
    """A run never writes into another run, nor (`others_too`) into a folder holding other files:
    its fixed names (report.md, plots, fold_00/...) would replace a user's files without a word.
    A lone lock file is what a run killed before its plan leaves."""
    if (out_dir / PLAN_FILE).exists():
        raise ConfigError(
            f"--out {out_dir} already holds a walk-forward run; pass --resume {out_dir} "
            "to finish it, or choose another --out"
        )
    if others_too and out_dir.is_dir():
        held = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)
        if held:
            raise ConfigError(
                f"--out {out_dir} is a folder that holds other files ({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}); a walk-forward run writes plan.json, "
                "report.md, plots and fold folders there: choose a new or empty folder"
            )


@contextlib.contextmanager
def run_lock(out_dir: Path, command: str = "walkforward") -> Iterator[None]:
    """Holds an advisory lock on the run directory while the run works in it: two processes on
    one run would both train every fold and overwrite each other's files. The kernel drops the
    lock when the file is closed or the process dies, so a killed run never leaves it stuck.
    (`trade` guards its strategies with a row in its SQLite state instead; a run directory has
    no database.) `study` holds one on its directory too (`.study.lock`), beside each cell's."""
    path = out_dir / (LOCK_FILE if command == "walkforward" else f".{command}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            raise ConfigError(
                f"{out_dir} is in use by another {command} process"
                f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish or "
                "stop it, then rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))  # named to a refused second process
        yield
    finally:
        os.close(fd)


def run_walkforward(
    cfg: AppConfig,
    wf: WalkForwardSettings,
    *,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    resume: bool = False,
    prepared: Prepared | None = None,
    executor: Executor = local_executor,
    should_stop: Callable[[], bool] | None = None,
    on_plan: Callable[[dict[str, Any], Path], None] | None = None,
    stored_plan: dict[str, Any] | None = None,
) -> WalkForwardRun:
    """The whole walk-forward: plan, folds (skipping complete ones on resume), outputs.

    `should_stop()` is checked after each fold's save: when it returns True the run raises
    `WalkForwardInterrupted` (completed folds stay on disk; rerun with `resume=True`).
    `stored_plan`: with `resume`, the run's plan.json as the caller already read it with
    `resume_record(out, PLAN_FILE, ...)` (the CLI, before the executor starts), so it is read once.
    """
    from jaxtrader import config as config_mod
    from jaxtrader.runtime import enable_compilation_cache
    from jaxtrader.walkforward_report import write_outputs

    t0 = time.perf_counter()
    with contextlib.ExitStack() as held:  # the run directory's lock, released however we leave
        # Before the candles are loaded: a wrong --resume DIR fails at once.
        resumed: tuple[Path, dict[str, Any]] | None = None
        if resume and stored_plan is not None and out is not None:
            resumed = Path(out), stored_plan
        elif resume:
            resumed = resume_record(out, PLAN_FILE, "walk-forward run")
        if resumed is not None:  # before any work: a second process on this run stops here
            held.enter_context(run_lock(resumed[0]))
        elif out is not None:
            _refuse_a_run_in(Path(out), others_too=True)
        enable_compilation_cache()
        prepared = prepared or prepare(cfg, wf)
        plan = {**prepared.plan, "config": config_mod.to_dict(cfg)}
        if resumed is not None:
            out_dir, stored = resumed
            _check_plan(out_dir, stored, plan)
        else:
            if out is None:
                out_dir = new_run_dir(runs_root, prepared.market.symbol, cfg.model.arch)
                held.enter_context(run_lock(out_dir))
            else:
                out_dir = Path(out)
                _refuse_a_run_in(out_dir)
                out_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(run_lock(out_dir))
                _refuse_a_run_in(out_dir)  # planned by another process meanwhile
            (out_dir / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        if on_plan is not None:
            on_plan(plan, out_dir)
        fold_cfg = fold_time_limit(cfg, wf.folds)
        results: dict[int, FoldResult] = {}
        todo: list[FoldTask] = []
        for i, splits in enumerate(prepared.folds):
            try:
                done = load_fold(out_dir, i) if resume else None
            except CheckpointError as e:
                # Damaged records are redone like damaged weights: save_fold replaces the folder.
                log_event(logger, "fold_redo", fold=i, reason=str(e))
                done = None
            if done is not None and (damage := _weights_damage(out_dir, i, cfg, prepared)):
                # Only the manifest said complete: evaluate and trade would fail on these weights.
                log_event(logger, "fold_redo", fold=i, reason=damage)
                done = None
            if done is not None:
                results[i] = done
                log_event(logger, "fold_skipped", fold=i, reason="complete")
            else:
                todo.append(FoldTask(i, splits, prepared.market, fold_cfg, wf.seeds, wf.folds))
        log_event(
            logger,
            "walkforward_start",
            out=str(out_dir),
            folds=wf.folds,
            to_train=len(todo),
            # cli.main's restart (runtime.restart_environment)
            allocator="tcmalloc" if tcmalloc_active() else "glibc",
            huge_pages=huge_pages_requested(),
        )
        noticed: list[bool] = []

        def poll() -> bool:
            # Logged here, from the training loop, never from a signal handler (reentrant stderr).
            if should_stop is not None and not noticed and should_stop():
                noticed.append(True)
                log_event(
                    logger,
                    "stop_requested",
                    note="stopping after the current fold is saved; press Ctrl-C again to abort it",
                )
            return bool(noticed)  # executors that run folds elsewhere cancel them on True

        for result in _saved_or_reported(executor(todo, poll=poll), out_dir, results):
            save_fold(out_dir, prepared, cfg, result)
            result.params = None  # on disk now; keep memory flat across folds
            release_free_memory()  # the fold's freed buffers (runtime.tune_malloc keeps them otherwise)
            results[result.fold] = result
            log_event(
                logger,
                "fold_done",
                fold=result.fold,
                seconds=round(result.seconds, 2),
                best_epochs=result.best_epochs,
                samples_per_s=round(result.samples / max(result.train_seconds, 1e-9), 1),
            )
            if should_stop is not None and should_stop() and len(results) < wf.folds:
                raise WalkForwardInterrupted(out_dir, sorted(results))
        ordered = [results[i] for i in range(wf.folds)]
        report = write_outputs(out_dir, prepared, cfg, wf, ordered)
        return WalkForwardRun(
            out=out_dir, report=report, results=ordered, seconds=time.perf_counter() - t0
        )


def _saved_or_reported(
    stream: Iterator[FoldResult], out: Path, results: dict[int, FoldResult]
) -> Iterator[FoldResult]:
    """The executor's results; an executor stopping (Ctrl-C) or reporting failed folds becomes an
    error naming the run directory and the folds already saved there (so --resume can finish)."""
    from jaxtrader.executors import FoldsFailed

    try:
        yield from stream
    except WalkForwardInterrupted:
        raise
    except KeyboardInterrupt:
        raise WalkForwardInterrupted(out, sorted(results)) from None
    except FoldsFailed as e:
        raise FoldsFailed(e.failures, e.attempts, out=out) from None


def stitch(results: Iterable[FoldResult]) -> dict[str, np.ndarray]:
    """The folds' test predictions as one time-ordered table (test blocks never overlap)."""
    ordered = sorted(results, key=lambda r: r.fold)
    out = {
        "test_rows": np.concatenate([r.test_rows for r in ordered]),
        "fold": np.concatenate([np.full(r.test_rows.size, r.fold) for r in ordered]),
        "labels": np.concatenate([r.labels for r in ordered]),
        "forward_returns": np.concatenate([r.forward_returns for r in ordered]),
        "prob_up_KxN": np.concatenate([r.prob_up_KxN for r in ordered], axis=1),
    }
    if np.any(np.diff(out["test_rows"]) <= 0):
        raise CheckpointError("fold test blocks overlap or are out of order; delete the run")
    return out
