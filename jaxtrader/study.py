"""Studies: one walk-forward per (market, arch, horizon) and a leaderboard across them.

`run_study` calls `walkforward.run_walkforward` (the library function, not a subprocess) for every
cell with the same executor (local, or Ray: one task per fold), then writes `leaderboard.json`
and `leaderboard.md`. Every figure in a row is read from that cell's `report.json` (the pooled
out-of-sample accuracy with its Wilson interval on the effective n, the majority rate, the p-value
against the better of it and 50%, the seed spread, net Sharpe under the run's decision policy (by
default each fold's own policy selected on its validation block) with the plain P(up) > threshold
rule's beside it, and buy-and-hold Sharpe over the stitched test span) plus the cell's wall time;
`policy_net_sharpe` is the one place the decision policy's figures are read.
Rows are sorted by net Sharpe; a row whose p-value, Holm-adjusted over the study's rows
(`mark_edges`), is not below `alpha` is marked "(no edge)": its accuracy does not beat a constant
prediction.
It is not a hyperparameter search: each cell is one fixed configuration.

Layout of `--out` (default `runs/studies/study<N>`): `study.json` (the cells and settings),
`<market>/<arch>/h<horizon>/` (a complete walk-forward run directory each, plus `cell.json` with
its wall time and executor figures), `leaderboard.json`, `leaderboard.md`. `resume=True` keeps
cells with both `report.json` and `cell.json` and resumes the others
(`run_walkforward(resume=True)`). `.study.lock` holds the directory for one process; `study.json`
records each market file's sha256 (`check_markets`), which a resume compares.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from jaxtrader.config import AppConfig, with_overrides
from jaxtrader.errors import CheckpointError, ConfigError, DataError, JaxTraderError
from jaxtrader.logs import get_logger, log_event
from jaxtrader.walkforward import (
    PLAN_FILE,
    Executor,
    WalkForwardSettings,
    config_changes,
    local_executor,
    read_run_json,
    resume_record,
    run_lock,
    run_walkforward,
)
from jaxtrader.windows import check_seq_len

logger = get_logger("study")

STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
REPORT_FILE = "report.json"
LEADERBOARD_FILE = "leaderboard.json"
ALPHA = 0.05
_STUDY_RE = re.compile(r"^study(\d+)$")


@dataclass(frozen=True)
class StudyCell:
    """One fixed configuration: a market file (None: the embedded market), an arch, a horizon."""

    data: str | None
    arch: str
    horizon: int
    market: str  # directory name of the market (the file's stem, unique within the study)

    def directory(self, out: Path) -> Path:
        return out / self.market / self.arch / f"h{self.horizon}"


@dataclass(frozen=True)
class StudyProgress:
    """How far the study in a directory got, read from its files alone."""

    cells: int  # planned (study.json)
    finished: int  # cells with both report.json and cell.json (what a resume keeps)
    complete: bool  # every cell finished and the leaderboard written


def study_progress(directory: str | Path) -> StudyProgress | None:
    """The progress of the study in `directory`, None when it holds none (no study.json, or one
    that is no study's record). study.json is the first file a study writes there (`_open_study`,
    before any cell starts), so a study that has just begun, or was stopped, is one too."""
    out = Path(directory)
    try:
        doc = json.loads((out / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        return None
    cells = [c for c in doc["cells"] if isinstance(c, dict)]
    finished = 0
    for c in cells:
        try:
            run_dir = StudyCell(c["data"], c["arch"], int(c["horizon"]), c["market"]).directory(out)
        except (KeyError, TypeError, ValueError):
            continue  # a damaged entry: that cell is not finished as far as this can tell
        finished += (run_dir / REPORT_FILE).is_file() and (run_dir / CELL_FILE).is_file()
    board = (out / LEADERBOARD_FILE).is_file()
    return StudyProgress(
        cells=len(cells), finished=finished, complete=board and finished == len(cells)
    )


class StudyIncomplete(JaxTraderError):
    """Some cells failed (their folds did); the others are on the leaderboard."""


class StudyInterrupted(KeyboardInterrupt):
    """Stopped on request between cells: the cell in `cell` is complete, the later ones wait for
    --resume of the study in `out`."""

    def __init__(self, out: Path, cell: Path) -> None:
        super().__init__("study interrupted")
        self.out = out
        self.cell = cell


@dataclass
class StudyRun:
    out: Path
    leaderboard: dict[str, Any]
    seconds: float


def _market_name(data: str | None) -> str:
    from jaxtrader.data import symbol_slug

    return "synthetic" if data is None else symbol_slug(Path(data).name.split(".")[0])


def study_cells(
    data: Sequence[str | None], archs: Sequence[str], horizons: Sequence[int]
) -> list[StudyCell]:
    """Every (market, arch, horizon), markets in the given order; duplicate names get -2, -3."""
    if not data or not archs or not horizons:
        raise ConfigError("a study needs at least one --data (or none for the embedded market)")
    # One file twice would run as two cells and count twice in the Holm adjustment.
    seen: dict[Path, str] = {}
    for d in data:
        if d is None:
            continue
        key = Path(d).resolve()
        if key in seen:
            raise ConfigError(
                f"--data {d} is the same file as --data {seen[key]}; pass each market once"
            )
        seen[key] = d
    names: list[str] = []
    for d in data:
        name, k = _market_name(d), 2
        while name in names:
            name = f"{_market_name(d)}-{k}"
            k += 1
        names.append(name)
    return [
        StudyCell(d, a, h, name)
        for d, name in zip(data, names, strict=True)
        for a in dict.fromkeys(archs)
        for h in dict.fromkeys(horizons)
    ]


def cell_config(base: AppConfig, cell: StudyCell) -> AppConfig:
    overrides = {"model.arch": cell.arch, "dataset.horizon": cell.horizon}
    cfg = with_overrides(base, overrides)
    # The embedded market keeps data.path unset; with_overrides treats None as "not given".
    return replace(cfg, data=replace(cfg.data, path=cell.data))


def policy_net_sharpe(report: dict[str, Any]) -> tuple[str, float]:
    """The decision policy a row is judged by, and its net Sharpe over the stitched test span.

    `report["backtest"]` is the policy the walk-forward applied (`settings.policy`): with `auto`
    each fold's own policy chosen on its validation block, with `plain` (and in reports written
    before policies) long (or long/short) when the ensemble's P(up) > `settings.threshold`.
    """
    s = report["settings"]
    side = "long/short" if s["long_short"] else "long/flat"
    if s.get("policy", "plain") == "auto":
        return f"val-selected per fold, {side}", float(report["backtest"]["sharpe"])
    return f"P(up) > {s['threshold']:g}, {side}", float(report["backtest"]["sharpe"])


def plain_net_sharpe(report: dict[str, Any]) -> float:
    """The plain P(up) > threshold rule's net Sharpe (the comparison column)."""
    plain = report.get("policy", {}).get("plain")
    return float((plain or report["backtest"])["sharpe"])


def leaderboard_row(
    cell: StudyCell, report: dict[str, Any], seconds: float, run_dir: Path, alpha: float = ALPHA
) -> dict[str, Any]:
    import pandas as pd

    from jaxtrader.data import format_interval

    p = report["pooled"]
    p_best = best_constant_p(p)
    policy, sharpe = policy_net_sharpe(report)
    return {
        "market": report["settings"]["symbol"],
        # BTC/USDT 1h and 5m are two markets here: the symbol alone would print two equal rows.
        # Whole nanoseconds with their unit: pandas 2 on NumPy >= 2.5 warns on seconds=float.
        "interval": format_interval(pd.Timedelta(round(seconds_per_candle * 1e9), unit="ns"))
        if (seconds_per_candle := report["settings"].get("interval_seconds"))
        else None,
        "data": report["settings"]["data"],
        "arch": cell.arch,
        "horizon": int(report["settings"]["horizon"]),
        "n": p["n"],
        "effective_n": p["effective_n"],
        "accuracy": p["accuracy"],
        "accuracy_ci95": list(p["accuracy_ci95"]),
        "majority_rate": p["majority_rate"],
        "p_value_vs_majority": p["p_value_vs_majority"],
        "p_value_vs_best_constant": p_best,
        # Until mark_edges, over all the study's rows: this cell's test on its own.
        "p_value_holm": p_best,
        "beats_majority": bool(p_best < alpha),
        "seed_accuracy_mean": p["seed_accuracy_mean"],
        "seed_accuracy_std": p["seed_accuracy_std"],
        "policy": policy,
        "net_sharpe": sharpe,
        # Its 95% interval (walkforward_report: a stationary bootstrap); None in runs from before.
        "net_sharpe_ci95": _interval(p.get("sharpe_net_ci95")),
        "plain_net_sharpe": plain_net_sharpe(report),
        "buy_and_hold_sharpe": float(report["buy_and_hold"]["sharpe"]),
        # By the same bootstrap: a row's interval beside its market's says whether one run can
        # tell the two apart.
        "buy_and_hold_sharpe_ci95": _interval(p.get("buy_and_hold_sharpe_ci95")),
        "wall_seconds": round(seconds, 1),
        # Folds cut at --max-minutes: the cell's figures then depend on the machine's speed.
        "time_limited_folds": sum(
            f.get("stopped_reason") == "time_limit" for f in report.get("folds", [])
        ),
        "run": str(run_dir),
    }


def best_constant_p(pooled: dict[str, Any]) -> float:
    """The pooled p-value against the better of the majority rate and a coin. A training majority
    class scores below 50% on the test blocks when the balance flips, and beating it is then no
    evidence of skill (on a 3,000-candle BTC slice, 42% of coin flips did). Reports written
    before walk-forward recorded it hold both p-values; the one against the higher rate is the
    larger."""
    if "p_value_vs_best_constant" in pooled:
        return float(pooled["p_value_vs_best_constant"])
    return max(float(pooled["p_value_vs_majority"]), float(pooled["p_value_vs_chance"]))


def mark_edges(rows: list[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Each row's p-value against the better constant (majority rate or 50%), Holm-adjusted over
    the study's rows (the cells that produced one), and `beats_majority` from it: a study of many
    cells must not call the one that passed 0.05 by luck an edge."""
    from jaxtrader.evaluate.significance import holm_adjusted

    adjusted = holm_adjusted([r["p_value_vs_best_constant"] for r in rows])
    for row, adj in zip(rows, adjusted, strict=True):
        row["p_value_holm"] = adj
        row["beats_majority"] = bool(adj < alpha)


def _sharpe_key(row: dict[str, Any]) -> float:
    x = row["net_sharpe"]
    return -math.inf if x is None or math.isnan(x) else x


def new_study_dir(root: str | Path = "runs/studies") -> Path:
    parent = Path(root)
    parent.mkdir(parents=True, exist_ok=True)
    found = [int(m.group(1)) for c in parent.iterdir() if (m := _STUDY_RE.match(c.name))]
    n = max(found, default=0) + 1
    while True:
        try:
            (path := parent / f"study{n}").mkdir()
            return path
        except FileExistsError:
            n += 1


def _study_doc(
    cells: list[StudyCell],
    wf: WalkForwardSettings,
    base: AppConfig,
    data_sha256: dict[str, str | None],
) -> dict:
    from jaxtrader import config as config_mod

    return {
        "cells": [asdict(c) for c in cells],
        "walkforward": asdict(wf),
        "config": config_mod.to_dict(base),
        "data_sha256": data_sha256,
    }


def _comparable(key: str, value: Any) -> Any:
    """A study.json entry as `config_changes` compares it: cells by name, so a change reads
    `cells.BTC/lstm/h5 ...` rather than two whole lists."""
    value = json.loads(json.dumps(value))
    if key == "cells" and isinstance(value, list):
        return {
            f"{c.get('market')}/{c.get('arch')}/h{c.get('horizon')}": c.get("data")
            for c in value
            if isinstance(c, dict)
        }
    return value


def _open_study(out: Path, doc: dict[str, Any], stored: dict[str, Any] | None) -> None:
    """Writes study.json for a new study; on resume (`stored`: the study.json read already)
    refuses settings or data that differ from the stored ones."""
    path = out / STUDY_FILE
    if stored is not None:
        # Studies started before the data fingerprints were recorded have no such key.
        keys = [k for k in doc if k in stored or k != "data_sha256"]
        changed = [
            change
            for k in keys
            for change in config_changes(_comparable(k, stored.get(k)), _comparable(k, doc[k]), k)
        ]
        if changed:
            raise ConfigError(
                f"--resume {out}: the study was started with different settings or data "
                f"({'; '.join(changed)}); rerun the original command with --resume, or start a "
                "new study"
            )
        return
    if path.exists():
        raise ConfigError(
            f"--out {out} already holds a study; pass --resume {out} to finish it, or choose "
            "another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _refuse_foreign_out(out: Path) -> None:
    """A new study writes study.json, leaderboard.md/json and a folder per market into `out`:
    never into another study or a walk-forward run, nor into a folder of the user's files (it
    once wrote a study into a walk-forward run's directory, beside its report, without a word).
    A lone `.study.lock` is what a study stopped before its study.json leaves."""
    if (out / STUDY_FILE).exists():
        raise ConfigError(
            f"--out {out} already holds a study; pass --resume {out} to finish it, or choose "
            "another --out"
        )
    if (out / PLAN_FILE).exists():
        raise ConfigError(
            f"--out {out} holds a walk-forward run; a study writes study.json, its leaderboard "
            "and a folder per market there: choose a new or empty folder"
        )
    if out.is_dir():
        held = sorted(p.name for p in out.iterdir() if p.name != ".study.lock")
        if held:
            raise ConfigError(
                f"--out {out} is a folder that holds other files ({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}); a study writes study.json, its leaderboard "
                "and a folder per market there: choose a new or empty folder"
            )


def check_markets(
    base: AppConfig, cells: Sequence[StudyCell], wf: WalkForwardSettings | None = None
) -> dict[str, str | None]:
    """Loads each market file once with the data layer, so a missing, unreadable or invalid file
    is its own one-line DataError before the study directory exists, not a failed cell per arch
    and horizon whose reason is only in leaderboard.json. With `wf`, each market's folds are also
    planned for each of its horizons (`walkforward.prepare_candles`): a file too short for them
    failed its cell only after the cells before it had trained, and that cell's advice, "fix the
    cause and rerun with --resume", could not be followed (a resume refuses a changed file or
    cell list). Returns each market's data fingerprint (`data.data_sha256`; None for the
    embedded market), which a resume compares. Two files with one fingerprint are refused: the
    same market twice would be counted twice by Holm."""
    from jaxtrader.data import data_sha256, load_market
    from jaxtrader.walkforward import prepare_candles

    fingerprints: dict[str, str | None] = {}
    files: dict[str, str | None] = {}  # fingerprint -> the first file that has it
    loaded: list[tuple[StudyCell, Any]] = []
    for cell in {c.market: c for c in cells}.values():
        candles = load_market(cell_config(base, cell).data)
        digest = None if cell.data is None else data_sha256(candles)
        # A copy of one file under another name is the same market run and counted twice.
        if digest is not None and files.setdefault(digest, cell.data) != cell.data:
            raise DataError(
                f"--data {cell.data} holds the same candles as --data {files[digest]} (the "
                "files are identical); pass each market once"
            )
        fingerprints[cell.market] = digest
        loaded.append((cell, candles))
    # After every file has loaded and none is a copy: those reasons come first.
    for cell, candles in loaded:
        if wf is None:
            break
        for horizon in sorted({c.horizon for c in cells if c.market == cell.market}):
            try:
                prepare_candles(cell_config(base, replace(cell, horizon=horizon)), wf, candles)
            except (DataError, ConfigError) as e:
                name = "the embedded market" if cell.data is None else f"--data {cell.data}"
                raise type(e)(f"{name} (horizon {horizon}): {e}") from None
    return fingerprints


def run_study(
    base: AppConfig,
    wf: WalkForwardSettings,
    cells: Sequence[StudyCell],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    executor: Executor = local_executor,
    should_stop: Callable[[], bool] | None = None,
    on_cell: Callable[[int, StudyCell, Path], None] | None = None,
    on_open: Callable[[Path], None] | None = None,
    alpha: float = ALPHA,
) -> StudyRun:
    """Runs (or, on resume, reuses) one walk-forward per cell, then writes the leaderboard.

    A cell whose folds fail is reported in the leaderboard's `failed` list and the study goes on;
    `StudyIncomplete` is raised after the leaderboard is written. A stop request stops the study
    (`WalkForwardInterrupted` from the cell in progress, or `StudyInterrupted` once a cell whose
    last fold was in training is complete). `on_open(out_dir)` is called once the
    study directory holds its study.json (without `out`, the new runs/studies/study<N>).
    """
    from jaxtrader.executors import RayExecutor

    t0 = time.perf_counter()
    cells = list(cells)
    if out is None and resume:
        raise ConfigError("--resume needs the study directory: --resume DIR")
    # Every cell shares the window length (cell_config sets only arch and horizon): a bad one
    # fails once, here, not in each cell in turn behind a "rerun with --resume" that cannot help.
    check_seq_len(base.dataset.seq_len)
    # A wrong --resume DIR fails before any market is loaded; the record is read once.
    stored = resume_record(out, STUDY_FILE, "study")[1] if resume else None
    if out is not None and not resume:  # before the markets load and their folds are planned
        _refuse_foreign_out(Path(out))
    fingerprints = check_markets(base, cells, wf)
    out_dir = Path(out) if out is not None else new_study_dir()
    _open_study(out_dir, _study_doc(cells, wf, base, fingerprints), stored)
    if on_open is not None:
        on_open(out_dir)
    # One process per study directory (each cell also locks its own walk-forward run).
    with run_lock(out_dir, "study"):
        rows: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for i, cell in enumerate(cells):
            run_dir = cell.directory(out_dir)
            if on_cell is not None:
                on_cell(i, cell, run_dir)
            if resume and (run_dir / REPORT_FILE).is_file() and (run_dir / CELL_FILE).is_file():
                fix = f"delete it and rerun with --resume {out_dir} (the cell's folds are kept)"
                report = read_run_json(run_dir / REPORT_FILE, "walk-forward report", fix)
                seconds = read_run_json(run_dir / CELL_FILE, "study cell record", fix).get(
                    "seconds"
                )
                if not isinstance(seconds, int | float):
                    raise CheckpointError(f"{run_dir / CELL_FILE} has no seconds; {fix}")
                log_event(logger, "cell_skipped", cell=i, run=str(run_dir), reason="complete")
                rows.append(leaderboard_row(cell, report, seconds, run_dir, alpha))
                continue
            stats_before = len(executor.stats) if isinstance(executor, RayExecutor) else 0
            started = time.perf_counter()
            try:
                run = run_walkforward(
                    cell_config(base, cell),
                    wf,
                    out=run_dir,
                    resume=resume and (run_dir / PLAN_FILE).is_file(),
                    executor=executor,
                    should_stop=should_stop,
                )
            except JaxTraderError as e:  # folds failed, or this market's data is unusable
                failed.append({**asdict(cell), "error": str(e), "run": str(run_dir)})
                log_event(logger, "cell_failed", cell=i, run=str(run_dir), error=str(e))
                continue
            # Rounded once, here: the row must be what a resumed study rebuilds from cell.json
            # (rounding the raw figure and the stored one apart can differ in the last digit).
            seconds = round(time.perf_counter() - started, 3)
            record: dict[str, Any] = {"seconds": seconds, "cell": asdict(cell)}
            if isinstance(executor, RayExecutor):
                record["ray_folds"] = executor.stats[stats_before:]
            (run_dir / CELL_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            rows.append(leaderboard_row(cell, run.report, seconds, run_dir, alpha))
            log_event(logger, "cell_done", cell=i, run=str(run_dir), seconds=round(seconds, 1))
            # A stop asked for during a cell's last fold lets that cell finish (nothing is left to
            # stop after); the study must still stop here, not train the next cell's first fold.
            if should_stop is not None and i + 1 < len(cells) and should_stop():
                raise StudyInterrupted(out_dir, run_dir)
        mark_edges(rows, alpha)
        rows.sort(key=_sharpe_key, reverse=True)
        board = {
            "rows": rows,
            "failed": failed,
            "alpha": alpha,
            "folds": wf.folds,
            "seeds": wf.seeds,
            "window": wf.window,
            "executor": "ray" if isinstance(executor, RayExecutor) else "local",
            "seconds": round(time.perf_counter() - t0, 1),
            "out": str(out_dir),
        }
        if isinstance(executor, RayExecutor):
            board["ray"] = executor.summary()
        from jaxtrader.logs import jsonable

        (out_dir / LEADERBOARD_FILE).write_text(
            json.dumps(jsonable(board), indent=2) + "\n", encoding="utf-8"
        )
        (out_dir / "leaderboard.md").write_text(render_markdown(board), encoding="utf-8")
        if failed:
            names = ", ".join(f"{f['market']}/{f['arch']}/h{f['horizon']}" for f in failed)
            raise StudyIncomplete(
                f"{len(failed)} of {len(cells)} cells failed ({names}; the first: "
                f"{failed[0]['error']}; all errors in {out_dir / LEADERBOARD_FILE}); fix the cause "
                f"and rerun with --resume {out_dir}"
            )
        return StudyRun(out=out_dir, leaderboard=board, seconds=time.perf_counter() - t0)


def aborted_message(study_dir: Path | None, cell_dir: Path | None) -> str:
    """The "interrupted: ..." line of a study stopped at once by a second Ctrl-C outside a fold's
    training (a fold in training ends as `WalkForwardInterrupted`): while a market or a cell's
    features load, a fold is saved or a report written. It names the cell in progress
    (`cell_dir`, None before the first started) with its saved folds, and the --resume that
    finishes the study in `study_dir` (None before study.json was written: nothing to resume)."""
    from jaxtrader.walkforward import interrupted_message, run_progress

    if study_dir is None:
        return "interrupted before the study directory was written; nothing was saved"
    if cell_dir is None:
        return (
            "interrupted before the first cell started; finish the study with the same command "
            f"and --resume {study_dir}"
        )
    progress = run_progress(cell_dir)
    if progress is not None and progress.complete:  # between cells, or at the leaderboard
        return (
            f"interrupted after the cell in {cell_dir} was complete; finish the study with the "
            f"same command and --resume {study_dir}"
        )
    saved = progress.saved if progress is not None else []
    return interrupted_message(cell_dir, saved, study=study_dir)


# ---------------------------------------------------------------------------------------------
# Rendering.

COLUMNS = (
    "market",
    "arch",
    "h",
    "accuracy [95% CI]",
    "majority",
    "p vs best const. (Holm)",
    "seeds mean +- sd",
    "net Sharpe [95% CI]",
    "plain",
    "B&H Sharpe",
    "wall",
)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _cells(row: dict[str, Any]) -> list[str]:
    lo, hi = row["accuracy_ci95"]
    mark = "" if row["beats_majority"] else " (no edge)"
    p_best = row["p_value_vs_best_constant"]
    holm = row.get("p_value_holm", p_best)
    return [
        f"{row['market']} {row['interval']}" if row.get("interval") else row["market"],
        row["arch"],
        str(row["horizon"]),
        f"{_pct(row['accuracy'])} [{_pct(lo)}, {_pct(hi)}]",
        _pct(row["majority_rate"]),
        f"{p_best:.3g} ({holm:.3g}){mark}",
        f"{_pct(row['seed_accuracy_mean'])} +- {_pct(row['seed_accuracy_std'])}",
        f"{row['net_sharpe']:.2f}" + _interval_text(row.get("net_sharpe_ci95")),
        f"{row['plain_net_sharpe']:.2f}",
        f"{row['buy_and_hold_sharpe']:.2f}" + _interval_text(row.get("buy_and_hold_sharpe_ci95")),
        f"{row['wall_seconds']:.0f} s" + _time_limit_mark(row),
    ]


def _interval(ci: dict[str, Any] | None) -> list[float] | None:
    if not ci or ci.get("lo") is None:
        return None
    return [float(ci["lo"]), float(ci["hi"])]


def _interval_text(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _time_limit_mark(row: dict[str, Any]) -> str:
    cut = row.get("time_limited_folds", 0)
    return f" ({cut} fold{'s' if cut > 1 else ''} at time limit)" if cut else ""


def _footnote(board: dict[str, Any]) -> str:
    policy = board["rows"][0]["policy"] if board["rows"] else "n/a"
    n = len(board["rows"])
    rows, cells = ("row", "cell") if n == 1 else ("rows", "cells")  # "the 1 rows" read wrong
    return (
        f"Sorted by net Sharpe (policy: {policy}, net of fees; 'plain': P(up) > the threshold "
        "every candle, for comparison). p vs best const.: one-sided binomial p-value against "
        f"the higher of the majority rate and 50%, and in brackets Holm-adjusted over the {n} "
        f"{rows}. '(no edge)': the adjusted p-value is not below "
        f"{board['alpha']:g}, i.e. no better than always predicting the training majority "
        f"class or a coin once {n} {cells} had a chance. {board['folds']} folds x "
        f"{board['seeds']} seeds, "
        f"{board['window']} window, executor {board['executor']}, study wall time "
        f"{board['seconds']:.0f} s."
    )


def format_table(board: dict[str, Any]) -> str:
    """The leaderboard as an aligned text table (the CLI prints it)."""
    body = [list(COLUMNS)] + [_cells(r) for r in board["rows"]]
    widths = [max(len(r[i]) for r in body) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        f"failed: {f['market']}/{f['arch']}/h{f['horizon']}: {f['error']}" for f in board["failed"]
    ]
    return "\n".join([*lines, _footnote(board)])


def render_markdown(board: dict[str, Any]) -> str:
    lines = [
        "# Study leaderboard",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(_cells(r)) + " |" for r in board["rows"]],
        "",
        _footnote(board),
    ]
    if board["failed"]:
        lines += ["", "## Failed cells", ""]
        lines += [
            f"- {f['market']}/{f['arch']}/h{f['horizon']}: {f['error']}" for f in board["failed"]
        ]
    if board.get("ray"):
        from jaxtrader.executors import describe_summary

        lines += ["", describe_summary(board["ray"]) + "."]
    lines += [
        "",
        "Runs:",
        "",
        *[f"- {r['market']} {r['arch']} h{r['horizon']}: `{r['run']}`" for r in board["rows"]],
    ]
    return "\n".join(lines) + "\n"
