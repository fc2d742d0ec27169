"""One training run, end to end: candles -> dataset -> model -> fit -> a new checkpoint version
with its manifest -> the run's summary. `jaxtrader train` calls `run_training` (any workflow that
trains one model end to end could). Walk-forward does not: it trains K seeds per fold with
`seeds.fit_seeds` (`walkforward.run_fold`) and saves its own fold checkpoints.

Stop handling: while training, SIGINT/SIGTERM ask fit to stop after the current step (`StopSignals`);
the partial epoch is validated and saved like any other and `TrainingInterrupted` carries the
summary. A second Ctrl-C aborts at once, keeping the epochs already saved.

Each saved epoch's metrics also go to TensorBoard event files in the version directory
(`tensorboard_log.EpochWriter`, when tensorboardX is installed).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxtrader.config import AppConfig
    from jaxtrader.data import Candles
    from jaxtrader.dataset import Dataset
    from jaxtrader.train import FitResult


class StopSignals:
    """SIGINT/SIGTERM during training: the first asks fit to stop after the current step.

    fit then validates the partial epoch and the run saves it like any other (exit 130). A second
    Ctrl-C raises KeyboardInterrupt as it would without this handler (the finished epochs are kept)
    and a second SIGTERM gets its previous (default: terminate) handler. A KeyboardInterrupt that
    arrives while an epoch's save is being queued is held and raised right after the save call
    returns: a save cut in half could leave Orbax's bookkeeping inconsistent.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._logged = False
        self.holding = False
        self.pending = False
        self._previous: dict[int, Any] = {}

    def stop_requested(self) -> bool:
        # The event is logged here, from fit's loop, not in the handler: a handler that writes to
        # stderr while the interrupted code is writing there raises "reentrant call" and the line
        # is lost (seen once on Python 3.13).
        if self.requested is not None and not self._logged:
            from jaxtrader.logs import get_logger, log_event

            self._logged = True
            log_event(
                get_logger("train"),
                "stop_requested",
                signal=self.requested.name,
                note="stopping after the current step; press Ctrl-C again to abort at once",
            )
        return self.requested is not None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum)
            if signal.SIGTERM in self._previous:
                signal.signal(signal.SIGTERM, self._previous[signal.SIGTERM])
        elif self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        self._previous = {s: signal.signal(s, self._handler) for s in self._SIGNALS}
        try:
            yield
        finally:
            for s, previous in self._previous.items():
                signal.signal(s, previous)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


@dataclass(frozen=True)
class TrainRun:
    """What one training run produced: the summary (what `jaxtrader train` prints), fit's result
    and the dataset it trained on."""

    summary: dict[str, Any]
    result: FitResult
    dataset: Dataset


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training after the finished epochs were saved; carries the summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("training interrupted")
        self.summary = summary


def run_training(
    cfg: AppConfig,
    *,
    candles: Candles | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = True,
) -> TrainRun:
    """Trains one new checkpoint version per `cfg` (the body of `jaxtrader train`).

    `candles` replaces loading `cfg.data` (a caller that slices the market itself); `on_epoch`
    gets each epoch's record once it is saved; `should_stop()` is polled like a signal and ends
    training after the current step, returning normally with stopped_reason "interrupted".
    With `handle_signals`, SIGINT/SIGTERM during training save the epochs done (the last one
    possibly partial) with a manifest whose stopped_reason is "interrupted", then raise
    TrainingInterrupted carrying the summary; a plain KeyboardInterrupt when nothing could be saved.
    """
    import dataclasses
    import shutil
    import time

    import jax

    from jaxtrader import checkpoint as ckpt
    from jaxtrader.config import data_shards
    from jaxtrader.data import load_market
    from jaxtrader.dataset import build_dataset
    from jaxtrader.logs import get_logger, log_event
    from jaxtrader.models import build_model
    from jaxtrader.runtime import enable_compilation_cache, release_free_memory, tcmalloc_active
    from jaxtrader.tensorboard_log import EpochWriter
    from jaxtrader.train import create_train_state, fit, steps_per_epoch

    t_start = time.perf_counter()
    logger = get_logger("train")
    # The arch's default shard count, resolved here so the manifest records the number trained with.
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, data_shards=data_shards(cfg))
    )
    enable_compilation_cache()
    if candles is None:
        candles = load_market(cfg.data)
    dataset = build_dataset(candles, cfg.dataset)
    model = build_model(cfg.model)
    init_key, fit_key = jax.random.split(jax.random.key(cfg.train.seed))
    sample = next(dataset.eval_batches("train", cfg.train.batch_size))
    epoch_steps = steps_per_epoch(dataset, cfg.train.batch_size)
    state = create_train_state(model, cfg.train, init_key, sample, epoch_steps * cfg.train.epochs)

    version, vdir = ckpt.new_version_dir(cfg.train.ckpt_dir, candles.symbol, cfg.model.arch)
    log_event(
        logger,
        "train_start",
        path=str(vdir),
        arch=cfg.model.arch,
        symbol=candles.symbol,
        allocator="tcmalloc" if tcmalloc_active() else "glibc",  # cli.main's restart
    )
    manager = ckpt.make_manager(vdir, max_to_keep=cfg.train.max_to_keep)
    history: list[dict[str, Any]] = []
    tensorboard = EpochWriter(vdir)  # event files beside the steps: `tensorboard --logdir ckpt`

    signals = StopSignals()

    def saved(epoch: int, st: Any, record: dict[str, float]) -> None:
        with signals.hold():
            ckpt.save_step(manager, epoch, st, record)
            history.append(record)
        # Validation and the save's host copies leave free chunks behind; without this the next
        # epoch's train steps raise the peak instead of reusing them.
        release_free_memory()
        tensorboard.add(record)
        if on_epoch is not None:
            on_epoch(record)

    def stop() -> bool:
        return signals.stop_requested() or (should_stop is not None and should_stop())

    aborted = False  # a second Ctrl-C: KeyboardInterrupt out of fit, finished epochs kept
    t_fit = time.perf_counter()
    with signals.installed() if handle_signals else contextlib.nullcontext():
        try:
            result = fit(
                state,
                dataset,
                cfg.train,
                fit_key,
                saved,
                metrics_path=vdir / ckpt.METRICS_FILE,
                should_stop=stop,
                # The compiler's freed memory would otherwise sit in the heap all through epoch 1
                # (tune_malloc keeps freed memory): peak RSS 1,077-1,169 -> 971 MB cold and
                # 899 -> 808 MB with the compile cache warm (Transformer, embedded market).
                after_first_step=release_free_memory,
            )
            best_epoch, stopped = result.best_epoch, str(result.stopped_reason)
        except KeyboardInterrupt:
            aborted = True
        except BaseException:
            manager.close()
            tensorboard.close()
            if not manager.all_steps():
                shutil.rmtree(vdir, ignore_errors=True)  # nothing finished: leave no empty version
            raise
        train_seconds = time.perf_counter() - t_fit
        # Orbax saves asynchronously: the last (possibly partial) epoch must reach disk before the
        # manifest points at it and before the process exits.
        with signals.hold():
            manager.wait_until_finished()
            best_step = manager.best_step()
            manager.close()
            tensorboard.close()
    if aborted:
        if best_step is None:
            shutil.rmtree(vdir, ignore_errors=True)
            log_event(logger, "train_interrupted", saved=False)
            raise KeyboardInterrupt
        best_epoch, stopped = best_step, "interrupted"
    if best_step != best_epoch:  # cannot happen with the shared tie rule; never trust silently
        raise ckpt.CheckpointError(
            f"checkpoint {vdir} holds best step {best_step} but training chose epoch {best_epoch}; "
            "delete the version and retrain"
        )
    best = next(r for r in history if r["epoch"] == best_epoch)
    metrics = {
        "train_loss": best["train_loss"],
        "train_accuracy": best["train_acc"],
        "val_loss": best["val_loss"],
        "val_accuracy": best["val_acc"],
        "val_majority_rate": best["val_majority_rate"],
        "best_epoch": best_epoch,
        "epochs": len(history),
        "steps": history[-1]["global_step"],
        "last_epoch_partial": history[-1]["steps"] < epoch_steps,
        "stopped_reason": stopped,
        "train_seconds": round(train_seconds, 3),
    }
    manifest = ckpt.build_manifest(
        cfg=cfg,
        version=version,
        candles=candles,
        dataset=dataset,
        metrics=metrics,
        best_step=best_epoch,
        metrics_path=ckpt.METRICS_FILE,
    )
    ckpt.write_manifest(vdir, manifest)
    summary = {
        "path": str(vdir),
        "arch": cfg.model.arch,
        "version": version,
        "symbol": candles.symbol,
        **metrics,
        "size_bytes": ckpt.dir_size(vdir),
        "total_seconds": round(time.perf_counter() - t_start, 3),
    }
    log_event(logger, "train_done", **summary)
    if aborted or signals.stop_requested():
        raise TrainingInterrupted(summary)
    return TrainRun(summary=summary, result=result, dataset=dataset)
