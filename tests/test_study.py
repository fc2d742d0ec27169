"""`jaxtrader study` on two tiny synthetic markets (files written by `jaxtrader data synth`): the
leaderboard's figures are each run's report.json figures, sorted by net Sharpe, rows without an
edge over the majority marked; --resume reuses complete cells. Real subprocesses, real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_walkforward import POOLED_KEYS, TOML


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
        assert row["plain_net_sharpe"] == report["policy"]["plain"]["sharpe"]
        assert row["buy_and_hold_sharpe"] == report["buy_and_hold"]["sharpe"]
        assert row["beats_majority"] == (p["p_value_vs_majority"] < board["alpha"])
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
        assert f"{row['plain_net_sharpe']:.2f}" in line
        assert ("(no edge)" in line) == (not row["beats_majority"])
        assert f"| {row['market']} | lstm | 2 |" in md


def test_resume_reuses_complete_cells(study_run: tuple[Path, list, str]) -> None:
    out, args, _ = study_run
    before = json.loads((out / "leaderboard.json").read_text())["rows"]
    mtimes = {r["run"]: (Path(r["run"]) / "report.json").stat().st_mtime_ns for r in before}
    resume = [a if a != "--out" else "--resume" for a in args]
    proc = _jaxtrader(*resume)
    assert "cell_skipped" in proc.stderr
    after = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert after == before
    assert mtimes == {r["run"]: (Path(r["run"]) / "report.json").stat().st_mtime_ns for r in after}


def test_a_failing_cell_is_reported_and_the_others_complete(
    study_run: tuple[Path, list, str], tmp_path: Path
) -> None:
    """A market too short for the folds fails its cell; the other cell is still on the board."""
    from test_walkforward import CFG, WF

    from jaxtrader.study import StudyIncomplete, run_study, study_cells

    good = study_run[1][4]  # the first --data file of the CLI run
    short = tmp_path / "ccc_usd_1h.csv"
    pd.read_csv(good).head(200).to_csv(short, index=False)
    cells = study_cells([good, str(short)], ["lstm"], [2])
    with pytest.raises(StudyIncomplete, match="--resume"):
        run_study(CFG, WF, cells, out=tmp_path / "study")
    board = json.loads((tmp_path / "study" / "leaderboard.json").read_text())
    assert [r["market"] for r in board["rows"]] == ["AAA/USD"]
    assert [f["market"] for f in board["failed"]] == ["ccc_usd_1h"] and board["failed"][0]["error"]
    assert "ccc_usd_1h/lstm/h2" in (tmp_path / "study" / "leaderboard.md").read_text()


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
