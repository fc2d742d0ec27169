"""`jaxtrader train` (one versioned checkpoint per run) and `jaxtrader models list`.

Training wires the pipeline together: load_market -> build_dataset -> build_model ->
create_train_state -> fit (each epoch saved through checkpoint.make_manager) -> manifest ->
summary. Heavy libraries are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jaxtrader.cli.common import CliState, data_options, data_overrides

if TYPE_CHECKING:
    from jaxtrader.checkpoint import VersionInfo
    from jaxtrader.config import AppConfig
    from jaxtrader.dataset import Dataset
    from jaxtrader.train import FitResult

INTERRUPTED_EXIT = 130


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _check_arch(arch: str) -> None:
    """Validates against the registry lazily, so `--help` never imports Flax."""
    from jaxtrader.errors import ConfigError
    from jaxtrader.models import ARCHS

    if arch not in ARCHS:
        raise ConfigError(
            f"--arch {arch!r} is not a registered architecture; choose one of "
            f"{', '.join(sorted(ARCHS))}"
        )


def _summary_lines(summary: dict[str, Any]) -> str:
    vs = summary["val_accuracy"] - summary["val_majority_rate"]
    rows = [
        ("checkpoint", summary["path"]),
        ("model", f"{summary['arch']} v{summary['version']} on {summary['symbol']}"),
        (
            "epochs",
            f"{summary['epochs']} (best {summary['best_epoch']}, {summary['stopped_reason']})",
        ),
        ("best val loss", f"{summary['val_loss']:.4f}"),
        (
            "val accuracy",
            f"{summary['val_accuracy']:.2%} vs majority {summary['val_majority_rate']:.2%} "
            f"({vs:+.2%})",
        ),
        (
            "train time",
            f"{summary['train_seconds']:.1f} s (total {summary['total_seconds']:.1f} s)",
        ),
        ("checkpoint size", _mb(summary["size_bytes"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class _StopSignals:
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


# glibc's mallopt parameter number for the arena cap (malloc.h M_ARENA_MAX).
_M_ARENA_MAX = -8


def _glibc() -> Any | None:
    """The process's C library when it offers glibc's heap controls, else None (macOS, musl)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's malloc arenas; call before JAX starts its threads.

    XLA's worker threads each get their own arena by default (up to 8 per core); freed step, eval
    and checkpoint buffers then sit in different arenas and the heap grows with every epoch
    (measured on BTC 1h: +20-60 MB per validation + save cycle). No effect on any result.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Returns the heap's free pages to the OS (glibc `malloc_trim`); no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass(frozen=True)
class TrainRun:
    """What one `jaxtrader train` produced: the printed summary, fit's result and the dataset."""

    summary: dict[str, Any]
    result: FitResult
    dataset: Dataset


def run_training(cfg: AppConfig) -> TrainRun:
    """Trains one new checkpoint version per `cfg` (the body of `jaxtrader train`).

    On SIGINT/SIGTERM during training, saves the epochs done (the last one possibly partial) with a
    manifest whose stopped_reason is "interrupted", then raises TrainingInterrupted carrying the
    summary; raises a plain KeyboardInterrupt when nothing could be saved.
    """
    import shutil
    import time

    import jax

    from jaxtrader import checkpoint as ckpt
    from jaxtrader.data import load_market
    from jaxtrader.dataset import build_dataset
    from jaxtrader.logs import get_logger, log_event
    from jaxtrader.models import build_model
    from jaxtrader.train import create_train_state, enable_compilation_cache, fit, steps_per_epoch

    t_start = time.perf_counter()
    logger = get_logger("train")
    enable_compilation_cache()
    candles = load_market(cfg.data)
    dataset = build_dataset(candles, cfg.dataset)
    model = build_model(cfg.model)
    init_key, fit_key = jax.random.split(jax.random.key(cfg.train.seed))
    sample = next(dataset.eval_batches("train", cfg.train.batch_size))
    epoch_steps = steps_per_epoch(dataset, cfg.train.batch_size)
    state = create_train_state(model, cfg.train, init_key, sample, epoch_steps * cfg.train.epochs)

    version, vdir = ckpt.new_version_dir(cfg.train.ckpt_dir, candles.symbol, cfg.model.arch)
    log_event(logger, "train_start", path=str(vdir), arch=cfg.model.arch, symbol=candles.symbol)
    manager = ckpt.make_manager(vdir, max_to_keep=cfg.train.max_to_keep)
    history: list[dict[str, Any]] = []

    signals = _StopSignals()

    def on_epoch(epoch: int, st: Any, record: dict[str, float]) -> None:
        with signals.hold():
            ckpt.save_step(manager, epoch, st, record)
            history.append(record)
        # Validation and the save's host copies leave free chunks behind; without this the next
        # epoch's train steps raise the peak instead of reusing them.
        release_free_memory()

    aborted = False  # a second Ctrl-C: KeyboardInterrupt out of fit, finished epochs kept
    t_fit = time.perf_counter()
    with signals.installed():
        try:
            result = fit(
                state,
                dataset,
                cfg.train,
                fit_key,
                on_epoch,
                metrics_path=vdir / ckpt.METRICS_FILE,
                should_stop=signals.stop_requested,
            )
            best_epoch, stopped = result.best_epoch, str(result.stopped_reason)
        except KeyboardInterrupt:
            aborted = True
        except BaseException:
            manager.close()
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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training after the finished epochs were saved; carries the summary."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("training interrupted")
        self.summary = summary


def _print_summary(state: CliState, summary: dict[str, Any]) -> None:
    import json

    if state.log_format == "json":
        click.echo(json.dumps(summary))
    else:
        click.echo(_summary_lines(summary))


@click.command("train")
@click.option(
    "--arch",
    type=str,
    default=None,
    metavar="ARCH",
    help="Model architecture from the registry (lstm, transformer). Default: model.arch.",
)
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Training batch size.")
@click.option("--seq-len", type=click.IntRange(min=2), default=None, help="Window length W.")
@click.option(
    "--horizon", type=click.IntRange(min=1), default=None, help="Label horizon in candles."
)
@click.option("--seed", type=int, default=None, help="PRNG seed (init, shuffling, dropout).")
@click.option("--ckpt-dir", type=str, default=None, help="Checkpoint root. Default: ckpt.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Wall-clock limit; training stops cleanly and still saves.",
)
@click.pass_obj
def train(
    state: CliState,
    arch: str | None,
    epochs: int | None,
    batch_size: int | None,
    seq_len: int | None,
    horizon: int | None,
    seed: int | None,
    ckpt_dir: str | None,
    max_minutes: float | None,
    **data_flags: Any,
) -> None:
    """Train a model and save it as a new version under CKPT_DIR/<SYMBOL>/<ARCH>/v<N>.

    Uses the embedded synthetic market unless --data is given. Flags override --config FILE.
    Ctrl-C (or SIGTERM) stops after the current step, validates and saves the partial epoch, writes
    the manifest, prints the summary and exits with code 130; a second Ctrl-C stops at once,
    keeping only the epochs saved so far.
    """
    cfg = state.config(
        {
            "model.arch": arch,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "dataset.seq_len": seq_len,
            "dataset.horizon": horizon,
            "train.seed": seed,
            "train.ckpt_dir": ckpt_dir,
            "train.max_minutes": max_minutes,
            **data_overrides(**data_flags),
        }
    )
    _check_arch(cfg.model.arch)
    limit_malloc_arenas()
    try:
        summary = run_training(cfg).summary
    except TrainingInterrupted as e:
        _print_summary(state, e.summary)
        s = e.summary
        partial = " (the last one partial)" if s["last_epoch_partial"] else ""
        click.echo(
            f"interrupted: saved {s['epochs']} epoch(s){partial}, {s['steps']} steps, to "
            f"{s['path']} (best epoch {s['best_epoch']})",
            err=True,
        )
        raise SystemExit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:
        click.echo("interrupted: no complete version was saved", err=True)
        raise SystemExit(INTERRUPTED_EXIT) from None
    _print_summary(state, summary)


@click.group("models")
def models_group() -> None:
    """List trained model versions."""


def _format_versions(rows: list[VersionInfo]) -> str:
    header = ("symbol", "arch", "ver", "created", "data", "val loss", "val acc", "majority", "size")
    table = [header]
    for r in rows:
        table.append(
            (
                r.symbol,
                r.arch,
                f"v{r.version}",
                (r.created_at or "incomplete")[:19],
                f"{(r.data_start or '?')[:10]}..{(r.data_end or '?')[:10]}" if r.complete else "-",
                f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-",
                f"{r.val_accuracy:.2%}" if r.val_accuracy is not None else "-",
                f"{r.val_majority_rate:.2%}" if r.val_majority_rate is not None else "-",
                _mb(r.size_bytes),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


@models_group.command("list")
@click.option("--symbol", type=str, default=None, help="Only this symbol, e.g. BTC/USDT.")
@click.option(
    "--ckpt-dir", type=str, default=None, help="Checkpoint root. Default: train.ckpt_dir."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array instead of a table.")
@click.pass_obj
def models_list(state: CliState, symbol: str | None, ckpt_dir: str | None, as_json: bool) -> None:
    """Versions with their data span, validation loss, accuracy vs majority rate and size."""
    import json

    from jaxtrader.checkpoint import list_versions

    root = Path(ckpt_dir or state.config().train.ckpt_dir)
    rows = list_versions(root, symbol)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows]))
    elif not rows:
        click.echo(f"no model versions under {root}; train one with `jaxtrader train`")
    else:
        click.echo(_format_versions(rows))


COMMANDS: list[click.Command] = [train, models_group]
