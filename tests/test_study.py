"""`jaxtrader study` on two tiny synthetic markets (files written by `jaxtrader data synth`): the
leaderboard's figures are each run's report.json figures, sorted by net Sharpe, rows without an
edge over the majority marked; --resume reuses complete cells. Real subprocesses, real files.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import cli_counting_reads
from test_walkforward import POOLED_KEYS, TOML

from jaxtrader.evaluate.significance import binomial_p_value


def _jaxtrader(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str]:
    tmp = tmp_path_factory.mktemp("study")
    config = tmp / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    files = []
    for seed, name in ((1, "aaa_usd_1h.csv"), (2, "bbb_usd_1h.csv")):
        _jaxtrader("data", "synth", "--rows", "1500", "--seed", str(seed), "--out", str(tmp / name))
        files.append(str(tmp / name))
    out = tmp / "study"
    args = ["--config", str(config), "study", "--data", files[0], "--data", files[1]]
    args += ["--arch", "lstm", "--folds", "2", "--seeds", "2", "--out", str(out)]
    proc = _jaxtrader(*args)
    return out, args, proc.stdout


def test_leaderboard_figures_are_the_runs_report_figures(study_run: tuple[Path, list, str]) -> None:
    out, _, printed = study_run
    board = json.loads((out / "leaderboard.json").read_text())
    rows = board["rows"]
    assert {r["market"] for r in rows} == {"AAA/USD", "BBB/USD"} and board["failed"] == []
    assert [r["net_sharpe"] for r in rows] == sorted((r["net_sharpe"] for r in rows), reverse=True)
    for row in rows:
        run = Path(row["run"])
        assert run.parent.parent.parent == out and run.name == f"h{row['horizon']}"
        report = json.loads((run / "report.json").read_text())
        p = report["pooled"]
        for key in POOLED_KEYS & set(row):
            assert row[key] == p[key], key
        # The applied (val-selected per fold) policy's net Sharpe, the plain rule's beside it.
        assert report["settings"]["policy"] == "auto"
        assert row["net_sharpe"] == report["backtest"]["sharpe"]
        assert row["net_sharpe"] == report["policy"]["selected"]["sharpe"]
        ci = p["sharpe_net_ci95"]
        assert row["net_sharpe_ci95"] == [ci["lo"], ci["hi"]]
        assert row["plain_net_sharpe"] == report["policy"]["plain"]["sharpe"]
        assert row["buy_and_hold_sharpe"] == report["buy_and_hold"]["sharpe"]
        hold = p["buy_and_hold_sharpe_ci95"]
        assert row["buy_and_hold_sharpe_ci95"] == [hold["lo"], hold["hi"]]
        # The verdict's p-value is against the better constant: the majority rate or a coin.
        best = binomial_p_value(p["accuracy"], p["effective_n"], max(0.5, p["majority_rate"]))
        assert row["p_value_vs_best_constant"] == pytest.approx(best, rel=1e-12)
        assert best == max(p["p_value_vs_majority"], p["p_value_vs_chance"])
        # Holm over the study's rows: the smallest p times the row count, and so on up.
        raw = sorted(r["p_value_vs_best_constant"] for r in rows)
        rank = raw.index(row["p_value_vs_best_constant"])
        holm = max(min(1.0, (len(raw) - j) * raw[j]) for j in range(rank + 1))
        assert row["p_value_holm"] == pytest.approx(holm)
        assert row["p_value_holm"] >= best
        assert row["beats_majority"] == (holm < board["alpha"])
        assert row["interval"] == "1h"
        assert row["time_limited_folds"] == 0
        assert row["arch"] == report["settings"]["arch"] == "lstm"
        assert row["horizon"] == report["settings"]["horizon"] == 2
        assert row["wall_seconds"] == round(
            json.loads((run / "cell.json").read_text())["seconds"], 1
        )
        assert (run / "predictions.csv").is_file() and (run / "fold_01" / "manifest.json").is_file()
    md = (out / "leaderboard.md").read_text()
    for row in rows:
        line = next(x for x in printed.splitlines() if x.startswith(row["market"]))
        assert f"{row['net_sharpe']:.2f}" in line and f"{100 * row['accuracy']:.2f}%" in line
        lo, hi = row["net_sharpe_ci95"]
        assert f"{row['net_sharpe']:.2f} [{lo:.2f}, {hi:.2f}]" in line
        assert f"{row['plain_net_sharpe']:.2f}" in line
        # The B&H Sharpe column, read from the markdown row by its header.
        header = next(x for x in md.splitlines() if x.startswith("| market"))
        md_row = next(x for x in md.splitlines() if x.startswith(f"| {row['market']} "))
        cells = dict(zip(header.split("|"), md_row.split("|"), strict=True))
        lo, hi = row["buy_and_hold_sharpe_ci95"]
        assert cells[" B&H Sharpe "].strip() == (
            f"{row['buy_and_hold_sharpe']:.2f} [{lo:.2f}, {hi:.2f}]"
        )
        assert ("(no edge)" in line) == (not row["beats_majority"])
        assert f"| {row['market']} 1h | lstm | 2 |" in md
        assert f"{row['p_value_vs_best_constant']:.3g} ({row['p_value_holm']:.3g})" in line


def test_resume_reuses_complete_cells(study_run: tuple[Path, list, str]) -> None:
    out, args, _ = study_run
    before = json.loads((out / "leaderboard.json").read_text())["rows"]
    mtimes = {r["run"]: (Path(r["run"]) / "report.json").stat().st_mtime_ns for r in before}
    resume = [a if a != "--out" else "--resume" for a in args]
    # Counting study.json reads: the resume check and the settings comparison each parsed it.
    code = cli_counting_reads("study.json", resume)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == "study.json reads: 1"
    assert "cell_skipped" in proc.stderr
    after = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert after == before
    assert mtimes == {r["run"]: (Path(r["run"]) / "report.json").stat().st_mtime_ns for r in after}


def test_a_second_study_on_its_directory_is_refused(study_run: tuple[Path, list, str]) -> None:
    """Two `study --resume DIR` at once would both write study.json and the leaderboard; the
    second hit only the first cell's walk-forward lock, failing that cell. The study holds a lock
    on its directory: a second process gets one line, exit 2, and writes nothing."""
    import fcntl
    import os

    out, args, _ = study_run
    resume = [a if a != "--out" else "--resume" for a in args]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    fd = os.open(out / ".study.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"4242\n")
        proc = subprocess.run([sys.executable, "-m", "jaxtrader", *resume], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    finally:
        os.close(fd)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out} is in use by another study process (pid 4242); wait for it to finish or "
        "stop it, then rerun"
    )
    lock = out / ".study.lock"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != lock} == {
        p: t for p, t in before.items() if p != lock
    }


def test_evaluate_refuses_a_study_directory_as_its_report_dir(
    study_run: tuple[Path, list, str], tmp_path: Path
) -> None:
    """`evaluate --report-dir` named a study's directory, in progress or finished: evaluate wrote
    its report.json, report.md and plots among the study's study.json, leaderboard and cell runs,
    exit 0 (a walk-forward run's directory was refused already). It is refused before any work
    now, one line saying what the directory is, exit 2, and nothing there changes. study.json,
    written as the study starts, is what marks it: a study stopped in its first fold is one."""
    from conftest import evaluate_report_dir_refused, tree_bytes
    from test_walkforward import CFG, WF

    from jaxtrader.errors import ConfigError
    from jaxtrader.evaluate.report import refuse_foreign_report_dir
    from jaxtrader.study import _open_study, _study_doc, check_markets, run_study, study_cells
    from jaxtrader.walkforward import WalkForwardInterrupted

    # The moment a study starts: its directory holds study.json alone.
    cells = study_cells([None], ["lstm"], [2, 3])
    started = tmp_path / "started"
    _open_study(started, _study_doc(cells, WF, CFG, check_markets(CFG, cells)), None)
    assert sorted(tree_bytes(started)) == ["study.json"]
    with pytest.raises(ConfigError) as caught:
        refuse_foreign_report_dir(started)
    assert str(caught.value) == (
        f"--report-dir {started} is a study in progress (0 of 2 cells finished), which writes its "
        "cell runs and leaderboard there until it finishes; choose another folder for the report"
    )

    # Stopped after the first cell's first fold, as a Ctrl-C leaves it.
    out = tmp_path / "study"
    with pytest.raises(WalkForwardInterrupted):
        run_study(CFG, WF, cells, out=out, should_stop=lambda: True)
    before = tree_bytes(out)
    assert "synthetic/lstm/h2/fold_00/manifest.json" in before and "leaderboard.json" not in before
    assert evaluate_report_dir_refused(out, out / "synthetic" / "lstm" / "h2" / "fold_00") == (
        f"error: --report-dir {out} is a study in progress (0 of 2 cells finished), which writes "
        "its cell runs and leaderboard there until it finishes; choose another folder for the "
        "report\n"
    )
    assert tree_bytes(out) == before

    # A finished one (the module's two-market study).
    done = study_run[0]
    before = tree_bytes(done)
    run = Path(json.loads((done / "leaderboard.json").read_text())["rows"][0]["run"])
    assert evaluate_report_dir_refused(done, run / "fold_00") == (
        f"error: --report-dir {done} is a finished study (2 cells and its leaderboard); choose "
        "another folder for the report\n"
    )
    assert tree_bytes(done) == before


# Ctrl-C twice, by the command's own signal handler, as `module.name` starts: the first asks to
# stop after the current fold, the second stops at once (KeyboardInterrupt).
_CTRL_C_TWICE_IN = """
import signal
import {module} as target
original = target.{name}
def twice(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)
    return original(*args, **kwargs)
target.{name} = twice
from jaxtrader.cli import main
main({args!r})
"""


@pytest.mark.parametrize(
    ("module", "name", "line"),
    [
        # While the first cell's market and features are prepared: its directory is named.
        (
            "jaxtrader.walkforward",
            "prepare",
            "interrupted: no fold of the cell in runs/studies/study1/synthetic/lstm/h2 was "
            "complete; finish the study with the same command and --resume runs/studies/study1",
        ),
        # While the markets are checked, before the study has a directory.
        (
            "jaxtrader.study",
            "check_markets",
            "interrupted before the study directory was written; nothing was saved",
        ),
    ],
    ids=["in-a-cell", "before-the-directory"],
)
def test_a_second_ctrl_c_names_the_default_study_directory(
    tmp_path: Path, module: str, name: str, line: str
) -> None:
    """A second Ctrl-C outside a fold's training in a study started without --out or --resume
    said "finish with the same command and --resume DIR", a placeholder, when the study had
    chosen runs/studies/study1 (relative to the command's directory) and written its study.json
    there. It names that directory and the cell in progress now, or, before the directory
    exists, says that nothing was saved."""
    config = tmp_path / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    args = ["--config", str(config), "study", "--arch", "lstm", "--folds", "2", "--seeds", "2"]
    code = _CTRL_C_TWICE_IN.format(module=module, name=name, args=args)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert (proc.returncode, proc.stdout) == (130, ""), proc.stderr[-3000:]
    assert [x for x in proc.stderr.splitlines() if "interrupted" in x] == [line]
    assert proc.stderr.splitlines()[-1] == line and "Traceback" not in proc.stderr
    study = tmp_path / "runs" / "studies" / "study1"
    assert (study / "study.json").is_file() == (name == "prepare")


def test_the_aborted_line_before_a_cell_or_after_a_complete_one(tmp_path: Path) -> None:
    """A second Ctrl-C before the first cell starts names the study directory to resume (no
    placeholder DIR); one after a cell is complete does not call it unfinished."""
    from test_walkforward import CFG, WF

    from jaxtrader.study import aborted_message
    from jaxtrader.walkforward import run_walkforward

    study = tmp_path / "s"
    assert aborted_message(study, None) == (
        "interrupted before the first cell started; finish the study with the same command and "
        f"--resume {study}"
    )
    cell = study / "m" / "lstm" / "h2"
    run_walkforward(CFG, WF, out=cell)
    assert aborted_message(study, cell) == (
        f"interrupted after the cell in {cell} was complete; finish the study with the same "
        f"command and --resume {study}"
    )


def test_a_stop_during_a_cells_last_fold_stops_before_the_next_cell(tmp_path: Path) -> None:
    """Ctrl-C during a cell's last fold let that cell finish (right) and then trained the next
    cell's first fold before stopping (with one fold per cell, the whole study ran on and exited
    0). The study stops once that cell is complete, and a resume finishes the rest."""
    from test_walkforward import CFG, WF

    from jaxtrader.study import StudyInterrupted, aborted_message, run_study, study_cells

    one_fold = dataclasses.replace(WF, folds=1)
    cells = study_cells([None], ["lstm"], [2, 3])
    out = tmp_path / "study"
    with pytest.raises(StudyInterrupted) as caught:
        run_study(CFG, one_fold, cells, out=out, should_stop=lambda: True)
    first, second = (c.directory(out) for c in cells)
    assert (caught.value.out, caught.value.cell) == (out, first)
    assert (first / "report.json").is_file() and (first / "cell.json").is_file()
    assert not second.exists() and not (out / "leaderboard.json").exists()
    assert aborted_message(out, first) == (
        f"interrupted after the cell in {first} was complete; finish the study with the same "
        f"command and --resume {out}"
    )
    board = run_study(CFG, one_fold, cells, out=out, resume=True).leaderboard
    assert sorted(r["horizon"] for r in board["rows"]) == [2, 3] and board["failed"] == []


def test_a_failing_cell_is_reported_and_the_others_complete(
    study_run: tuple[Path, list, str], tmp_path: Path
) -> None:
    """A cell whose folds fail (here: every fold task of the BBB market) is on the board's failed
    list; the other cell is still on the board."""
    from test_walkforward import CFG, WF

    from jaxtrader.executors import FoldsFailed
    from jaxtrader.study import StudyIncomplete, run_study, study_cells
    from jaxtrader.walkforward import local_executor

    def executor(tasks: Any, poll: Any = None) -> Any:
        if tasks and tasks[0].market.symbol == "BBB/USD":
            raise FoldsFailed({t.fold: "worker lost" for t in tasks}, 2)
        yield from local_executor(tasks, poll=poll)

    good, bad = study_run[1][4], study_run[1][6]  # the CLI run's --data files
    cells = study_cells([good, bad], ["lstm"], [2])
    with pytest.raises(StudyIncomplete, match="--resume") as caught:
        run_study(CFG, WF, cells, out=tmp_path / "study", executor=executor)
    board = json.loads((tmp_path / "study" / "leaderboard.json").read_text())
    # The first failed cell's reason is in the one line, not only in leaderboard.json.
    assert f"bbb_usd_1h/lstm/h2; the first: {board['failed'][0]['error']}; all errors in" in str(
        caught.value
    )
    assert [r["market"] for r in board["rows"]] == ["AAA/USD"]
    assert [f["market"] for f in board["failed"]] == ["bbb_usd_1h"]
    assert board["failed"][0]["error"].startswith("2 fold(s) failed after 2 attempt(s)")
    assert "bbb_usd_1h/lstm/h2" in (tmp_path / "study" / "leaderboard.md").read_text()


def test_a_market_too_short_for_the_folds_is_refused_before_any_cell(
    study_run: tuple[Path, list, str], tmp_path: Path
) -> None:
    """A market file too short for the walk-forward failed its cell only after the cells before
    it had trained, and the line said "fix the cause and rerun with --resume DIR", which a resume
    then refused (a changed file, or a changed list of cells). Every market's folds are planned
    before the study directory exists: one line naming the file, nothing written."""
    from test_walkforward import CFG, WF

    from jaxtrader.errors import ConfigError, DataError
    from jaxtrader.study import run_study, study_cells

    good = study_run[1][4]
    short = tmp_path / "ccc_usd_1h.csv"
    pd.read_csv(good).head(200).to_csv(short, index=False)
    out = tmp_path / "study"
    with pytest.raises(DataError) as caught:
        run_study(CFG, WF, study_cells([good, str(short)], ["lstm"], [2]), out=out)
    assert str(caught.value) == (
        f"--data {short} (horizon 2): no valid prediction points in 200 candles (window 50, "
        "horizon 2, plus the feature warm-up); use a longer candle file"
    )
    # Long enough for prediction points, too short for validation blocks worth the name.
    medium = tmp_path / "ddd_usd_1h.csv"
    pd.read_csv(good).head(700).to_csv(medium, index=False)
    with pytest.raises((ConfigError, DataError), match=re.escape(f"--data {medium} (horizon 2): ")):
        run_study(CFG, WF, study_cells([good, str(medium)], ["lstm"], [2]), out=out)
    assert not out.exists()


def test_out_on_a_walkforward_run_or_a_folder_of_files_is_refused(tmp_path: Path) -> None:
    """`study --out` a walk-forward run's directory (or any folder of the user's) wrote study.json,
    leaderboard.md and a folder per market beside that run's report and exited 0, where
    `walkforward` refuses such a folder. Refused now, one line, nothing written."""
    from test_walkforward import CFG, WF

    from jaxtrader.errors import ConfigError
    from jaxtrader.study import run_study, study_cells

    cells = study_cells([None], ["lstm"], [2])
    run = tmp_path / "wf1"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:
        run_study(CFG, WF, cells, out=run)
    assert str(caught.value) == (
        f"--out {run} holds a walk-forward run; a study writes study.json, its leaderboard and "
        "a folder per market there: choose a new or empty folder"
    )
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / ".study.lock").write_text("")  # left by a study stopped before its study.json
    with pytest.raises(ConfigError) as caught:
        run_study(CFG, WF, cells, out=folder)
    assert str(caught.value) == (
        f"--out {folder} is a folder that holds other files (notes.txt); a study writes "
        "study.json, its leaderboard and a folder per market there: choose a new or empty folder"
    )
    assert sorted(p.name for p in run.iterdir()) == ["plan.json"]
    assert sorted(p.name for p in folder.iterdir()) == [".study.lock", "notes.txt"]


def test_the_footnote_of_a_one_row_board_reads_in_the_singular(
    study_run: tuple[Path, list, str],
) -> None:
    """A one-market, one-arch study's footnote said "Holm-adjusted over the 1 rows" and "once 1
    cells had a chance"."""
    from jaxtrader.study import _footnote

    board = json.loads((study_run[0] / "leaderboard.json").read_text())
    assert "over the 2 rows." in _footnote(board) and "once 2 cells had" in _footnote(board)
    one = _footnote({**board, "rows": board["rows"][:1]})
    assert "over the 1 row." in one and "once 1 cell had a chance." in one


def test_a_setting_every_cell_shares_fails_once_before_any_cell(tmp_path: Path) -> None:
    """A config file's out-of-range seq_len is one ConfigError before the study directory exists,
    not a failed cell per market behind a "rerun with --resume" that cannot help."""
    import dataclasses

    from test_walkforward import CFG, WF

    from jaxtrader.errors import ConfigError
    from jaxtrader.study import StudyIncomplete, run_study, study_cells

    bad = dataclasses.replace(CFG, dataset=dataclasses.replace(CFG.dataset, seq_len=16))
    cells = study_cells([None], ["lstm", "transformer"], [2])
    with pytest.raises(ConfigError, match="seq_len=16") as caught:
        run_study(bad, WF, cells, out=tmp_path / "study")
    assert not isinstance(caught.value, StudyIncomplete)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("command", ["train", "walkforward", "study"])
def test_seq_len_flag_out_of_range_is_refused_by_the_parser(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", command, "--seq-len", "16"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "'--seq-len': 16 is not in the range 50<=x<=200" in proc.stderr


def _candle_csv(path: Path, rows: int = 10, nan_row: int | None = None) -> Path:
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(rows):
        close = "nan" if i == nan_row else "100.5"
        lines.append(f"2023-01-01T{i:02d}:00:00Z,100,101,99,{close},10")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_market_files_fail_once_with_the_data_layers_reason(tmp_path: Path) -> None:
    """Each --data file is loaded once before the study directory exists: the reason (the row
    with a NaN, a directory) is the one-line error, not "1 of 1 cells failed (...)"."""
    nan = _candle_csv(tmp_path / "nan_usd_1h.csv", nan_row=4)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    out = tmp_path / "study"
    for data, reason in [
        (nan, f"{nan}: line 6 (2023-01-01T04:00:00Z): missing or non-finite value"),
        (folder, f"{folder}: is a directory; pass a candle file"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "jaxtrader", "study", "--data", str(data), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"error: {reason}") and proc.stderr.count("\n") == 1
        assert not out.exists()


def test_resume_refuses_a_missing_or_damaged_study_by_name(tmp_path: Path) -> None:
    from test_walkforward import CFG, WF

    from jaxtrader.config import with_overrides
    from jaxtrader.errors import CheckpointError, ConfigError
    from jaxtrader.study import run_study, study_cells

    cells = study_cells([None], ["lstm"], [2])
    missing = tmp_path / "nope"
    with pytest.raises(
        ConfigError, match=re.escape(f"--resume {missing}: the directory does not exist")
    ):
        run_study(CFG, WF, cells, out=missing, resume=True)
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text("{")
    with pytest.raises(CheckpointError) as caught:
        run_study(CFG, WF, cells, out=out, resume=True)
    assert str(caught.value).startswith(f"{out / 'study.json'} is unreadable (")
    assert "start a new study with another --out" in str(caught.value)
    # A changed configuration is named key by key, old and new value.
    from jaxtrader.study import _open_study, _study_doc

    _open_study(tmp_path / "s2", _study_doc(cells, WF, CFG, {"synthetic": None}), stored=None)
    changed = with_overrides(CFG, {"train.learning_rate": 0.01})
    with pytest.raises(
        ConfigError,
        match=re.escape("different settings or data (config.train.learning_rate 0.001 -> 0.01)"),
    ):
        run_study(changed, WF, cells, out=tmp_path / "s2", resume=True)
    # So is a changed walk-forward setting (it once said only "different walkforward").
    with pytest.raises(ConfigError, match=re.escape("(walkforward.seeds 2 -> 3)")):
        run_study(CFG, dataclasses.replace(WF, seeds=3), cells, out=tmp_path / "s2", resume=True)


def test_resume_refuses_a_market_file_whose_contents_changed(tmp_path: Path) -> None:
    """The file's sha256 is recorded when the study starts: a complete cell of the old file must
    not sit on one leaderboard with cells of the new one."""
    from test_walkforward import CFG, WF

    from jaxtrader.data import synth_candles, write_candles
    from jaxtrader.errors import ConfigError
    from jaxtrader.study import _open_study, _study_doc, check_markets, study_cells

    market = tmp_path / "m.csv"
    write_candles(synth_candles(rows=400, seed=1).frame, market)
    cells = study_cells([str(market)], ["lstm"], [2])
    first = check_markets(CFG, cells)
    assert list(first) == ["m"] and len(first["m"] or "") == 64
    _open_study(tmp_path / "s", _study_doc(cells, WF, CFG, first), stored=None)
    write_candles(synth_candles(rows=400, seed=2).frame, market)
    with pytest.raises(ConfigError) as caught:
        stored = json.loads((tmp_path / "s" / "study.json").read_text())
        _open_study(tmp_path / "s", _study_doc(cells, WF, CFG, check_markets(CFG, cells)), stored)
    assert f"(data_sha256.m {json.dumps(first['m'])} -> " in str(caught.value)


def test_a_cell_cut_by_the_time_limit_is_marked(study_run: tuple[Path, list, str]) -> None:
    """A cell whose folds stopped at --max-minutes looked finished on the leaderboard."""
    from jaxtrader.study import _cells, leaderboard_row, study_cells

    out, _, _ = study_run
    row = json.loads((out / "leaderboard.json").read_text())["rows"][0]
    report = json.loads((Path(row["run"]) / "report.json").read_text())
    (cell,) = study_cells([row["data"]], ["lstm"], [2])
    assert _cells(leaderboard_row(cell, report, 1.0, Path(row["run"])))[-1] == "1 s"
    report["folds"][0]["stopped_reason"] = "time_limit"
    cut = leaderboard_row(cell, report, 1.0, Path(row["run"]))
    assert cut["time_limited_folds"] == 1 and _cells(cut)[-1] == "1 s (1 fold at time limit)"


def test_one_market_given_twice_is_refused_before_the_study_directory(tmp_path: Path) -> None:
    """The same --data twice ran as two cells and counted twice in the Holm
    adjustment. The same path (however spelled) and an identical copy are both refused."""
    data = _candle_csv(tmp_path / "aaa_usd_1h.csv")
    copy = tmp_path / "copy_usd_1h.csv"
    copy.write_bytes(data.read_bytes())
    out = tmp_path / "study"
    spelled = tmp_path / "." / data.name
    for second, line in [
        (data, f"error: --data {data} is the same file as --data {data}; pass each market once"),
        (spelled, f"error: --data {spelled} is the same file as --data {data}; pass each market once"),
        (copy, f"error: --data {copy} holds the same candles as --data {data} (the files are "
               "identical); pass each market once"),
    ]:  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "jaxtrader", "study", "--data", str(data), "--data",
             str(second), "--arch", "lstm", "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr == line + "\n"
        assert not out.exists()


def test_dedupe_and_gaps_reach_every_market_file(tmp_path: Path) -> None:
    """study had no --dedupe or --gaps: a file with a duplicate timestamp was refused by an error
    naming --dedupe, which study did not accept."""
    data = _candle_csv(tmp_path / "dup_usd_1h.csv", rows=4)
    rows = data.read_text().splitlines()
    rows[3] = rows[2]  # 01:00 twice, 02:00 missing
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "study"
    base = [sys.executable, "-m", "jaxtrader", "study", "--data", str(data), "--arch", "lstm"]
    for flags, line in [
        ([], f"error: {data}: line 4: duplicate timestamp 2023-01-01T01:00:00Z "),
        (["--dedupe", "--gaps", "error"], f"error: {data}: 1 gaps (1 missing candles), "),
        # Accepted: the market gets the 4 candles (3 kept, 1 filled) and is refused for its
        # length before the study directory exists.
        (["--dedupe"], f"error: --data {data} (horizon 5): no valid prediction points in 4 "
                       "candles "),
    ]:  # fmt: skip
        proc = subprocess.run(
            [*base, *flags, "--out", str(out)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines()[-1].startswith(line)
        assert not out.exists()
        if not flags:  # one line, naming the flag
            assert proc.stderr.count("\n") == 1 and "--dedupe" in proc.stderr


def test_a_cell_that_beats_only_a_majority_rate_below_a_coin_has_no_edge() -> None:
    """Audit, 2026-12-05: on a BTC slice whose balance flipped after training, the training
    majority class scored 45.72%, and a 50.91% cell passed against it (p 0.028) though a coin
    explains it (p 0.37)."""
    from jaxtrader.study import best_constant_p, mark_edges

    n_eff, acc, maj = 339, 0.5091, 0.4572
    pooled = {
        "p_value_vs_majority": binomial_p_value(acc, n_eff, maj),
        "p_value_vs_chance": binomial_p_value(acc, n_eff, 0.5),
    }
    assert pooled["p_value_vs_majority"] < 0.05 < pooled["p_value_vs_chance"]
    # Reports written before walk-forward recorded the best-constant p-value give the same one.
    best = binomial_p_value(acc, n_eff, max(0.5, maj))
    assert best_constant_p(pooled) == best == best_constant_p({"p_value_vs_best_constant": best})
    rows = [{"p_value_vs_best_constant": best_constant_p(pooled)}]
    mark_edges(rows)
    assert rows[0]["beats_majority"] is False and rows[0]["p_value_holm"] == best
