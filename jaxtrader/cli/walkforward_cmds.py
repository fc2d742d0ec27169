"""`jaxtrader walkforward`: K seeds per fold, stitched out-of-sample predictions, pooled report.

The command only parses flags, prints the plan and the result; the workflow is
`jaxtrader.walkforward` (imported inside the command so `--help` stays instant).

Configuration: defaults < walk-forward defaults (`WF_DEFAULTS`, only for keys the --config file
does not set) < --config FILE < flags.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from jaxtrader.cli.common import (
    INTERRUPTED_EXIT,
    CliState,
    HintGlobalOptions,
    batch_window_options,
    check_arch,
    data_options,
    data_overrides,
    echo,
    executor_options,
    knob_options,
    note_unused_data_shards,
    prepare_executor,
    ranged,
    refuse_inputs_inside,
    train_knob_overrides,
)
from jaxtrader.logs import notice

# Walk-forward trains folds x seeds models: fewer epochs than `train` keeps the default run
# (6 folds x 4 seeds on the embedded market) inside 10 minutes on 2 cores (README: measured).
WF_DEFAULTS: dict[str, Any] = {"train.epochs": 1, "train.patience": 1}


def _file_keys(path: str | None) -> set[str]:
    """Dotted keys the --config file sets (so walk-forward defaults never override the file)."""
    if path is None:
        return set()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()  # load_config reports the problem with the right message
    return {
        f"{section}.{key}"
        for section, table in raw.items()
        if isinstance(table, dict)
        for key in table
    }


def effective_config(state: CliState, flags: dict[str, Any]) -> Any:
    """defaults < WF_DEFAULTS (keys the file leaves alone) < --config FILE < flags."""
    from jaxtrader.config import with_overrides

    base = state.config()  # defaults < file (and reports a bad file)
    in_file = _file_keys(state.config_path)
    wf = {k: v for k, v in WF_DEFAULTS.items() if k not in in_file}
    return with_overrides(with_overrides(base, wf), flags)


class _StopAfterFold:
    """First SIGINT/SIGTERM: finish and save the current fold, then stop; second: stop at once."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        # Set by the second signal: the fold in training was given up, which the interrupted
        # line says first (the executor reports the stop as a WalkForwardInterrupted either way).
        self.aborted = False
        self._logged = False
        self._previous: dict[int, Any] = {}

    def stop_requested(self) -> bool:
        return self.requested is not None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            # No logging here: a handler writing to stderr mid-write raises "reentrant call".
            self.requested = signal.Signals(signum)
        else:
            self.aborted = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        self._previous = {s: signal.signal(s, self._handler) for s in sigs}
        try:
            yield
        finally:
            for s, previous in self._previous.items():
                signal.signal(s, previous)


@click.command("walkforward", cls=HintGlobalOptions)
@click.option("--arch", type=str, default=None, metavar="ARCH", help="lstm or transformer.")
@data_options
@click.option(
    "--folds",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Walk-forward folds (test blocks).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Seeds (models) trained per fold in one compiled step.",
)
@click.option(
    "--window",
    type=click.Choice(["expanding", "rolling"]),
    default="expanding",
    show_default=True,
    help="Train on all history before each fold, or on the last --train-candles candles.",
)
@click.option(
    "--train-candles",
    type=click.IntRange(min=1),
    default=None,
    help="Length of the first (rolling: every) training span in candles, from the first "
    "candle with a prediction (gap candles count). Default: the history / (folds + 2).",
)
@click.option(
    "--policy",
    type=click.Choice(["auto", "plain"]),
    default="auto",
    show_default=True,
    help="auto: each fold's decision policy is the grid policy with the best net Sharpe on that "
    "fold's VALIDATION block, applied to its test block; plain: long when P(up) > the "
    "backtest threshold (0.5), re-decided every candle. The plain backtest is reported beside.",
)
@click.option(
    "--epochs",
    type=ranged("train.epochs"),
    default=None,
    help=f"Maximum epochs per fold [{WF_DEFAULTS['train.epochs']}].",
)
@batch_window_options
@click.option("--seed", type=int, default=None, help="Run seed (every fold and seed derive keys).")
@click.option(
    "--max-minutes",
    type=ranged("train.max_minutes"),
    default=None,
    help="Training budget for the whole run, shared equally by the folds.",
)
@click.option("--out", type=str, default=None, help="Run directory. Default: runs/<SYM>/<arch>/wfN")
@click.option(
    "--resume",
    type=str,
    default=None,
    metavar="DIR",
    help="Finish the run in DIR: folds whose manifests say complete are kept as they are.",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of a summary.")
@knob_options(WF_DEFAULTS)
@executor_options
@click.pass_obj
def walkforward(
    state: CliState,
    arch: str | None,
    folds: int,
    seeds: int,
    window: str,
    train_candles: int | None,
    policy: str,
    epochs: int | None,
    batch_size: int | None,
    seq_len: int | None,
    horizon: int | None,
    seed: int | None,
    max_minutes: float | None,
    out: str | None,
    resume: str | None,
    as_json: bool,
    executor: str,
    ray_address: str | None,
    lr: float | None,
    weight_decay: float | None,
    patience: int | None,
    dropout: float | None,
    threshold: float | None,
    **data_flags: Any,
) -> None:
    """Walk-forward research: train K seeds per fold in one compiled step, predict every test block
    out of sample, and report pooled, seed-aware significance.

    Prints the plan (one row per fold) before training. Ctrl-C (or SIGTERM) stops after the
    current fold is saved (exit 130); rerun the same command with --resume DIR to finish it.
    With --executor ray, each fold is one Ray task; Ctrl-C cancels the running folds at once.
    """
    import json

    from jaxtrader.errors import ConfigError
    from jaxtrader.walkforward import (
        PLAN_FILE,
        WalkForwardInterrupted,
        WalkForwardSettings,
        format_plan,
        interrupted_message,
        resume_record,
        run_progress,
        run_walkforward,
    )
    from jaxtrader.walkforward_report import format_summary

    cfg = effective_config(
        state,
        {
            "model.arch": arch,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "dataset.seq_len": seq_len,
            "dataset.horizon": horizon,
            "train.seed": seed,
            "train.max_minutes": max_minutes,
            **train_knob_overrides(lr, weight_decay, patience, dropout, threshold),
            **data_overrides(**data_flags),
        },
    )
    check_arch(cfg.model.arch)  # before loading data: a typo fails at once
    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ConfigError("--out and --resume name different directories; pass only --resume DIR")
    refuse_inputs_inside(
        "--resume" if resume is not None else "--out",
        resume or out,
        [("--data", cfg.data.path), ("--config", state.config_path)],
        "walkforward",
    )
    stored_plan = None
    if resume is not None:  # before the executor starts and the candles load
        stored_plan = resume_record(resume, PLAN_FILE, "walk-forward run")[1]
    wf = WalkForwardSettings(
        folds=folds,
        seeds=seeds,
        window=window,  # type: ignore[arg-type]
        train_candles=train_candles,
        policy=policy,  # type: ignore[arg-type]
    )

    run_dir: list[Path] = []  # known once the plan is written

    def on_plan(plan: dict[str, Any], out_dir: Path) -> None:
        run_dir[:] = [out_dir]
        text = f"{format_plan(plan)}\nrun directory: {out_dir}"
        echo(text, err=as_json, event="walkforward_plan", out=str(out_dir))

    note_unused_data_shards(cfg, "walkforward")
    prepare_executor(executor, wf.seeds)  # before JAX starts

    from jaxtrader.executors import close_executor, describe, start_executor

    # Started before our signal handlers are installed: ray.init replaces the SIGTERM handler.
    runner = start_executor(executor, ray_address)
    signals = _StopAfterFold()
    try:
        with signals.installed():
            run = run_walkforward(
                cfg,
                wf,
                out=resume or out,
                resume=resume is not None,
                executor=runner,
                should_stop=signals.stop_requested,
                on_plan=on_plan,
                stored_plan=stored_plan,
            )
    except WalkForwardInterrupted as e:  # local or Ray: one wording (interrupted_message)
        notice("interrupted", interrupted_message(e.out, e.done, aborted=signals.aborted))
        raise SystemExit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:  # a fold aborted, or a stop before the plan was written
        if run_dir:
            progress = run_progress(run_dir[0])
            saved = progress.saved if progress is not None else []
            message = interrupted_message(run_dir[0], saved, aborted=True)
        else:
            message = "interrupted before the run's plan was written; nothing was saved"
        notice("interrupted", message)
        raise SystemExit(INTERRUPTED_EXIT) from None
    finally:
        close_executor(runner)
    if (ray_line := describe(runner)) is not None:
        echo(ray_line, err=as_json, event="ray_summary")
    if as_json:
        from jaxtrader.logs import jsonable

        click.echo(json.dumps(jsonable(run.report)))
    else:
        click.echo(format_summary(run.report))
        click.echo(f"wall time: {run.seconds:.1f} s")


COMMANDS: list[click.Command] = [walkforward]
