"""`jaxtrader study`: one walk-forward per (market, arch, horizon), then a leaderboard.

The command parses flags and prints; the workflow is `jaxtrader.study` (imported inside the
command so `--help` stays instant). Configuration as `walkforward`: defaults < walk-forward
defaults < --config FILE < flags; --data/--arch/--horizon pick the cells.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from jaxtrader.cli.common import (
    INTERRUPTED_EXIT,
    CliState,
    HintGlobalOptions,
    data_overrides,
    echo,
    executor_options,
    note_unused_data_shards,
    prepare_executor,
    ranged,
    refuse_inputs_inside,
    train_knob_overrides,
)
from jaxtrader.cli.walkforward_cmds import walkforward
from jaxtrader.logs import notice


@click.command("study", cls=HintGlobalOptions)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    metavar="FILE",
    help="A market's candle file; repeat for several markets (--gaps and --dedupe apply to "
    "each). Default: the embedded market.",
)
@click.option(
    "--arch",
    "archs",
    multiple=True,
    type=click.Choice(["lstm", "transformer"]),
    help="Repeat for several. Default: lstm and transformer.",
)
@click.option(
    "--horizon",
    "horizons",
    multiple=True,
    type=ranged("dataset.horizon"),
    help="Label horizon in candles; repeat for several. Default: the config's.",
)
@click.option(
    "--max-minutes",
    type=ranged("train.max_minutes"),
    default=None,
    help="Training budget of each cell's walk-forward, shared equally by its folds; a study of "
    "C cells can train for C times this.",
)
@click.option("--out", type=str, default=None, help="Study directory. Default: runs/studies/studyN")
@click.option(
    "--resume",
    type=str,
    default=None,
    metavar="DIR",
    help="Finish the study in DIR: complete cells are kept, partial ones resumed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print leaderboard.json instead of a table.")
@executor_options
@click.pass_obj
def study(
    state: CliState,
    data_paths: tuple[str, ...],
    archs: tuple[str, ...],
    horizons: tuple[int, ...],
    max_minutes: float | None,
    out: str | None,
    resume: str | None,
    as_json: bool,
    executor: str,
    ray_address: str | None,
    gaps: str | None,
    dedupe: bool | None,
    folds: int,
    seeds: int,
    window: str,
    train_candles: int | None,
    policy: str,
    epochs: int | None,
    patience: int | None,
    batch_size: int | None,
    seq_len: int | None,
    seed: int | None,
    lr: float | None,
    weight_decay: float | None,
    dropout: float | None,
    threshold: float | None,
) -> None:
    """Walk-forward every (market, arch, horizon) and rank them in one leaderboard.

    Writes leaderboard.md and leaderboard.json in the study directory and prints the table:
    pooled out-of-sample accuracy with its 95% interval, majority rate, p-value, seed spread,
    net Sharpe and buy-and-hold Sharpe, wall time; sorted by net Sharpe, rows without an edge
    over the majority class marked. Ctrl-C stops after the current fold; --resume DIR finishes.
    """
    import json
    from pathlib import Path

    from jaxtrader.cli.walkforward_cmds import _StopAfterFold, effective_config
    from jaxtrader.errors import ConfigError
    from jaxtrader.executors import close_executor, describe, start_executor
    from jaxtrader.logs import jsonable
    from jaxtrader.study import (
        StudyInterrupted,
        aborted_message,
        format_table,
        run_study,
        study_cells,
    )
    from jaxtrader.walkforward import (
        WalkForwardInterrupted,
        WalkForwardSettings,
        interrupted_message,
    )

    base = effective_config(
        state,
        {
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "dataset.seq_len": seq_len,
            "train.seed": seed,
            "train.max_minutes": max_minutes,
            **train_knob_overrides(lr, weight_decay, patience, dropout, threshold),
            # Every market file; no --symbol/--interval: one value cannot fit several files.
            **data_overrides(data_path=None, symbol=None, interval=None, gaps=gaps, dedupe=dedupe),
        },
    )
    if resume is not None and out is not None and Path(out) != Path(resume):
        raise ConfigError("--out and --resume name different directories; pass only --resume DIR")
    refuse_inputs_inside(
        "--resume" if resume is not None else "--out",
        resume or out,
        [
            *(("--data", p) for p in (list(data_paths) or [base.data.path])),
            ("--config", state.config_path),
        ],
        "study",
    )
    cells = study_cells(
        list(data_paths) or [base.data.path],
        list(archs) or ["lstm", "transformer"],
        list(horizons) or [base.dataset.horizon],
    )
    wf = WalkForwardSettings(
        folds=folds,
        seeds=seeds,
        window=window,  # type: ignore[arg-type]
        train_candles=train_candles,
        policy=policy,  # type: ignore[arg-type]
    )
    wf.check()

    # Known once run_study has chosen the directory (without --out or --resume, the next
    # runs/studies/study<N>) and written study.json there, and once a cell starts.
    study_dir: list[Path] = [Path(resume)] if resume is not None else []
    cell_dir: list[Path] = []

    def on_open(out_dir: Path) -> None:
        study_dir[:] = [out_dir]

    def on_cell(i: int, cell: Any, run_dir: Path) -> None:
        cell_dir[:] = [run_dir]
        notice(
            "study_cell",
            f"cell {i + 1}/{len(cells)}: {cell.arch} on {cell.market}, horizon {cell.horizon} "
            f"-> {run_dir}",
            logging.INFO,
            out=str(run_dir),
        )

    note_unused_data_shards(base, "study")
    prepare_executor(executor, wf.seeds)  # before JAX starts
    runner = start_executor(executor, ray_address)  # before our handlers: ray.init sets SIGTERM's
    signals = _StopAfterFold()
    try:
        with signals.installed():
            run = run_study(
                base,
                wf,
                cells,
                out=resume or out,
                resume=resume is not None,
                executor=runner,
                should_stop=signals.stop_requested,
                on_cell=on_cell,
                on_open=on_open,
            )
    except WalkForwardInterrupted as e:
        notice(
            "interrupted",
            interrupted_message(e.out, e.done, study=e.out.parents[2], aborted=signals.aborted),
        )
        raise SystemExit(INTERRUPTED_EXIT) from None
    except StudyInterrupted as e:  # between cells: the one just finished is complete
        notice("interrupted", aborted_message(e.out, e.cell))
        raise SystemExit(INTERRUPTED_EXIT) from None
    except KeyboardInterrupt:  # the second Ctrl-C, outside a fold's training
        notice(
            "interrupted",
            aborted_message(
                study_dir[0] if study_dir else None, cell_dir[-1] if cell_dir else None
            ),
        )
        raise SystemExit(INTERRUPTED_EXIT) from None
    finally:
        close_executor(runner)
    if (ray_line := describe(runner)) is not None:
        echo(ray_line, err=as_json, event="ray_summary")
    if as_json:
        click.echo(json.dumps(jsonable(run.leaderboard)))
    else:
        click.echo(format_table(run.leaderboard))
        click.echo(f"leaderboard: {run.out}/leaderboard.md")


# The walk-forward flags are walkforward's own option objects, so help and checks cannot drift.
# --max-minutes is study's own: its budget is per cell, not per study.
SHARED_OPTIONS = (
    "gaps",
    "dedupe",
    "folds",
    "seeds",
    "window",
    "train_candles",
    "policy",
    "epochs",
    "patience",
    "batch_size",
    "seq_len",
    "seed",
    "lr",
    "weight_decay",
    "dropout",
    "threshold",
)
study.params[3:3] = [p for name in SHARED_OPTIONS for p in walkforward.params if p.name == name]

COMMANDS: list[click.Command] = [study]
