"""Walk-forward: folds never leak, the past does not see the future, resume equals an uninterrupted
run, the pooled report recomputes from predictions.csv, fold checkpoints load as seed ensembles,
and the CLI runs a tiny config end to end (a real subprocess, real checkpoints).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import cli_counting_reads, event_scalars, extra_or_skip

from jaxtrader.config import AppConfig, DataConfig, DatasetConfig, TrainConfig
from jaxtrader.decisions import Policy, policy_positions
from jaxtrader.errors import CheckpointError, ConfigError, DataError
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.metrics import roc_auc
from jaxtrader.evaluate.significance import binomial_p_value, sharpe_bootstrap_ci, wilson_interval
from jaxtrader.models import with_defaults
from jaxtrader.splits import purge_gap, walk_forward_folds
from jaxtrader.walkforward import (
    WalkForwardInterrupted,
    WalkForwardSettings,
    prepare,
    run_walkforward,
)
from jaxtrader.walkforward_report import format_summary

TOML = """
[data]
synth_rows = 1500
[dataset]
seq_len = 50
horizon = 2
[model]
arch = "lstm"
hidden = 8
num_layers = 1
[train]
epochs = 2
batch_size = 32
patience = 1
"""
CFG = AppConfig(
    data=DataConfig(synth_rows=1500),
    dataset=DatasetConfig(seq_len=50, horizon=2),
    model=with_defaults("lstm", hidden=8, num_layers=1),
    train=TrainConfig(epochs=2, batch_size=32, patience=1),
)
WF = WalkForwardSettings(folds=2, seeds=2)

FOLD_KEYS = {
    "fold",
    "train_start",
    "train_end",
    "val_start",
    "val_end",
    "test_start",
    "test_end",
    "n",
    "accuracy",
    "majority_rate",
    "auc",
    "seed_accuracies",
    "sharpe_net",
    "sharpe_net_plain",
    "fold_policy",
    "buy_and_hold_sharpe",
    "seconds",
}
POOLED_KEYS = {
    "n",
    "effective_n",
    "accuracy",
    "accuracy_ci95",
    "majority_rate",
    "p_value_vs_majority",
    "p_value_vs_chance",
    "auc",
    "seed_accuracy_mean",
    "seed_accuracy_std",
    "ensemble_accuracy",
    "folds_beating_majority",
    "p_value_vs_best_constant",
    "folds_beating_best_constant",
}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`jaxtrader walkforward` on the tiny config in a real subprocess (run A)."""
    tmp = tmp_path_factory.mktemp("wf_cli")
    config = tmp / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    out = tmp / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxtrader",
            "--log-format",
            "json",
            "--config",
            str(config),
            "walkforward",
            "--folds",
            "2",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold  train" in proc.stderr  # the plan is printed (to stderr with --json)
    (tmp / "stderr.log").write_text(proc.stderr, encoding="utf-8")
    return out, json.loads(proc.stdout)


def test_cli_end_to_end_writes_every_output(cli_run: tuple[Path, dict]) -> None:
    out, report = cli_run
    for name in ("plan.json", "predictions.csv", "report.json", "report.md"):
        assert (out / name).is_file(), name
    for name in ("equity.png", "fold_accuracy.png", "seed_spread.png"):
        assert (out / name).stat().st_size > 1000, name
    assert {"folds", "pooled", "backtest", "buy_and_hold", "settings", "timing"} <= set(report)
    # --policy auto is the default: each fold's policy, chosen on its val block, plain beside it.
    assert report["settings"]["policy"] == "auto" and report["policy"]["mode"] == "auto"
    assert report["policy"]["selected"] == report["backtest"]
    assert {"sharpe", "total_return", "trades"} <= set(report["policy"]["plain"])
    for row in report["policy"]["folds"]:
        assert {"enter", "exit", "min_hold", "val_net_sharpe", "val_trades"} <= set(row)
    assert len(report["folds"]) == 2
    for fold in report["folds"]:
        assert set(fold) >= FOLD_KEYS
        assert len(fold["seed_accuracies"]) == 2
    assert set(report["pooled"]) >= POOLED_KEYS
    assert {"sharpe", "total_return", "max_drawdown", "trades", "fees_paid"} <= set(
        report["backtest"]
    )
    plan = json.loads((out / "plan.json").read_text())
    assert [r["fold"] for r in plan["fold_plan"]] == [0, 1]
    assert {"train_start", "test_end", "test_points"} <= set(plan["fold_plan"][0])
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.columns[:7]) == [
        "timestamp",
        "fold",
        "label",
        "forward_return",
        "prob_up",
        "prob_up_s0",
        "prob_up_s1",
    ]
    assert "position" in df.columns and set(df["position"]) <= {0.0, 1.0}
    assert pd.to_datetime(df["timestamp"]).is_monotonic_increasing
    np.testing.assert_allclose(df["prob_up"], df[["prob_up_s0", "prob_up_s1"]].mean(axis=1))


@pytest.mark.parametrize(
    ("window", "train_rows"), [("expanding", None), ("rolling", None), ("rolling", 900)]
)
def test_folds_never_leak_and_tests_tile(window: str, train_rows: int | None) -> None:
    cfg = DatasetConfig(seq_len=50, horizon=5)
    gap = purge_gap(cfg.horizon, cfg.seq_len)
    folds = walk_forward_folds(
        5_000,
        4,
        cfg,
        start=120,
        window=window,
        train_rows=train_rows,  # type: ignore[arg-type]
    )
    for f in folds:
        last_train, first_val = f.train[1] - 1, f.val[0]
        last_val, first_test = f.val[1] - 1, f.test[0]
        # Every later point's window starts after the earlier split's last label ends.
        assert first_val - last_train >= cfg.horizon + cfg.seq_len
        assert first_test - last_val >= cfg.horizon + cfg.seq_len
        assert first_test - last_train >= gap + 1
        if window == "rolling":
            assert f.train[1] - f.train[0] == (train_rows or folds[0].train[1] - 120)
    # Test blocks tile the history after the first training span: no overlap, no holes.
    for a, b in itertools.pairwise(folds):
        assert a.test[1] == b.test[0]
    assert folds[-1].test[1] == 5_000
    with pytest.raises(ConfigError, match="--train-candles"):
        walk_forward_folds(5_000, 4, cfg, start=120, train_rows=6_000)


def test_the_past_does_not_see_the_future() -> None:
    """Fold 0 trained and predicted on candles whose future was replaced gives the same output."""
    from jaxtrader.walkforward import FoldTask, run_fold

    prepared = prepare(CFG, WF)
    fold = prepared.folds[0]
    cut = fold.test[1] + CFG.dataset.horizon  # the last candle fold 0's test labels read
    m = prepared.market
    ohlcv = m.ohlcv_Tx5.copy()
    rng = np.random.default_rng(0)
    ohlcv[cut + 1 :] *= rng.uniform(0.8, 1.2, size=(len(ohlcv) - cut - 1, 1))
    ohlcv[cut + 1 :, 1] = ohlcv[cut + 1 :, :4].max(axis=1)
    ohlcv[cut + 1 :, 2] = ohlcv[cut + 1 :, :4].min(axis=1)
    from jaxtrader.features import compute_features

    changed_frame = dataclasses.replace(m, ohlcv_Tx5=ohlcv).frame()
    feats = compute_features(changed_frame)
    changed = dataclasses.replace(m, ohlcv_Tx5=ohlcv, features_TxF=feats.to_numpy(np.float64))
    assert not np.allclose(changed.features_TxF[cut + 1 :], m.features_TxF[cut + 1 :])
    a = run_fold(FoldTask(0, fold, m, CFG, 2), show_progress=False)
    b = run_fold(FoldTask(0, fold, changed, CFG, 2), show_progress=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.prob_up_KxN, b.prob_up_KxN, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.val_prob_up_KxN, b.val_prob_up_KxN, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.val_asset_returns, b.val_asset_returns)
    assert a.best_epochs == b.best_epochs


def _scrambled_from(m: Any, start: int, seed: int = 1) -> Any:
    """`m` with every candle from `start` on moved by a random factor (features recomputed)."""
    from jaxtrader.features import compute_features

    ohlcv = m.ohlcv_Tx5.copy()
    rng = np.random.default_rng(seed)
    ohlcv[start:, :4] *= rng.uniform(0.8, 1.25, size=(len(ohlcv) - start, 1))
    ohlcv[start:, 1] = ohlcv[start:, :4].max(axis=1)
    ohlcv[start:, 2] = ohlcv[start:, :4].min(axis=1)
    feats = compute_features(dataclasses.replace(m, ohlcv_Tx5=ohlcv).frame())
    return dataclasses.replace(m, ohlcv_Tx5=ohlcv, features_TxF=feats.to_numpy(np.float64))


def test_fold_policy_cannot_see_the_fold_test_block() -> None:
    """Changing every price (hence every label) of fold 0's test block and after leaves the val
    predictions, the val returns and the chosen policy unchanged, while the test labels move."""
    from jaxtrader.walkforward import FoldTask, run_fold
    from jaxtrader.walkforward_report import fold_policies

    prepared = prepare(CFG, WF)
    fold = prepared.folds[0]
    m = prepared.market
    changed = _scrambled_from(m, fold.test[0])
    a = run_fold(FoldTask(0, fold, m, CFG, 2), show_progress=False)
    b = run_fold(FoldTask(0, fold, changed, CFG, 2), show_progress=False)
    assert not np.array_equal(a.labels, b.labels)  # the test block did change
    assert a.val_rows.size > 2 and np.array_equal(a.val_rows, b.val_rows)
    assert a.val_rows.max() < fold.test[0]
    np.testing.assert_allclose(a.val_prob_up_KxN, b.val_prob_up_KxN, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.val_asset_returns, b.val_asset_returns)
    chosen = [
        fold_policies([r], CFG.backtest, CFG.dataset.horizon, m.interval_seconds, m.timestamp_ns)
        for r in (a, b)
    ]
    fields = ("enter", "exit", "min_hold", "max_position", "long_short", "val_trades")
    assert [chosen[0]["0"][k] for k in fields] == [chosen[1]["0"][k] for k in fields]
    assert chosen[0]["0"]["val_net_sharpe"] == pytest.approx(chosen[1]["0"]["val_net_sharpe"])


def test_resume_gives_the_same_outputs(cli_run: tuple[Path, dict], tmp_path: Path) -> None:
    """Run B (library, this process) stops after fold 0's save, resumes, and matches run A."""
    out_a, report_a = cli_run
    out_b = tmp_path / "run_b"
    with pytest.raises(WalkForwardInterrupted) as stopped:
        run_walkforward(CFG, WF, out=out_b, should_stop=lambda: True)
    assert stopped.value.done == [0]
    assert (out_b / "fold_00" / "manifest.json").is_file()
    assert not (out_b / "fold_01").exists()
    first_fold = (out_b / "fold_00" / "fold.json").read_text()
    resumed = run_walkforward(CFG, WF, out=out_b, resume=True)
    assert (out_b / "fold_00" / "fold.json").read_text() == first_fold  # kept, not retrained
    a = pd.read_csv(out_a / "predictions.csv")
    b = pd.read_csv(out_b / "predictions.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-6)
    for key in ("pooled", "backtest", "buy_and_hold"):
        for k, v in report_a[key].items():
            assert resumed.report[key][k] == pytest.approx(v, abs=1e-6), (key, k)
    # The folds' policies come from the saved val predictions: the same choices after resume.
    assert resumed.report["settings"]["fold_policies"] == report_a["settings"]["fold_policies"]
    assert resumed.report["policy"]["plain"] == pytest.approx(report_a["policy"]["plain"])
    # --policy plain on the same saved folds (no retraining) is the old rule: P(up) > threshold.
    plain = run_walkforward(CFG, dataclasses.replace(WF, policy="plain"), out=out_b, resume=True)
    assert plain.report["settings"]["policy"] == "plain"
    assert plain.report["backtest"] == pytest.approx(report_a["policy"]["plain"])
    df_plain = pd.read_csv(out_b / "predictions.csv")
    s = plain.report["settings"]
    np.testing.assert_array_equal(
        df_plain["position"], (df_plain["prob_up"] > s["threshold"]).astype(float)
    )
    # A fold saved before policies (no val predictions): auto refuses it by name, plain reports.
    npz = out_b / "fold_00" / "predictions.npz"
    with np.load(npz) as z:
        old = {k: z[k] for k in z.files if not k.startswith("val_")}
    np.savez(npz, **old)
    with pytest.raises(CheckpointError, match=r"fold 0 .*--policy plain"):
        run_walkforward(CFG, WF, out=out_b, resume=True)
    again = run_walkforward(CFG, dataclasses.replace(WF, policy="plain"), out=out_b, resume=True)
    assert again.report["backtest"] == pytest.approx(plain.report["backtest"])
    # A different plan is refused on resume, naming what differs.
    with pytest.raises(ConfigError, match="seeds"):
        run_walkforward(CFG, dataclasses.replace(WF, seeds=3), out=out_b, resume=True)


def test_pooled_figures_recompute_from_predictions_csv(cli_run: tuple[Path, dict]) -> None:
    out, report = cli_run
    df = pd.read_csv(out / "predictions.csv")
    s = report["settings"]
    y = df["label"].to_numpy()
    p = df["prob_up"].to_numpy()
    pooled = report["pooled"]
    acc = float(np.mean((p > 0.5) == y))
    n_eff = len(df) // s["horizon"]  # overlapping h-candle labels
    majority = float(np.mean(y == df["fold"].map(lambda f: s["fold_majority_class"][str(f)])))
    assert pooled["n"] == len(df) and pooled["effective_n"] == n_eff
    assert pooled["accuracy"] == pytest.approx(acc) == pooled["ensemble_accuracy"]
    assert pooled["majority_rate"] == pytest.approx(majority)
    # The interval of the same whole success count the p-values use (issue 11).
    k = round(acc * n_eff)
    assert pooled["accuracy_ci95"] == pytest.approx(list(wilson_interval(k / n_eff, n_eff)))
    assert pooled["p_value_vs_majority"] == pytest.approx(binomial_p_value(acc, n_eff, majority))
    assert pooled["p_value_vs_chance"] == pytest.approx(binomial_p_value(acc, n_eff, 0.5))
    best = binomial_p_value(acc, n_eff, max(0.5, majority))
    assert pooled["p_value_vs_best_constant"] == pytest.approx(best)
    assert pooled["auc"] == pytest.approx(roc_auc(y, p))
    seeds = [float(np.mean((df[f"prob_up_s{k}"] > 0.5) == y)) for k in range(s["seeds"])]
    assert pooled["seed_accuracy_mean"] == pytest.approx(np.mean(seeds))
    assert pooled["seed_accuracy_std"] == pytest.approx(np.std(seeds, ddof=1))
    beating = beating_both = 0
    for f, part in df.groupby("fold"):
        fold_acc = float(np.mean((part["prob_up"] > 0.5) == part["label"]))
        fold_maj = float(np.mean(part["label"] == s["fold_majority_class"][str(f)]))
        assert report["folds"][int(f)]["accuracy"] == pytest.approx(fold_acc)
        assert report["folds"][int(f)]["majority_rate"] == pytest.approx(fold_maj)
        beating += fold_acc > fold_maj
        beating_both += fold_acc > max(0.5, fold_maj)
    assert pooled["folds_beating_majority"] == beating
    assert pooled["folds_beating_best_constant"] == beating_both
    # The positions taken: each fold's own val-selected policy on its test block, from flat.
    expected = np.zeros(len(df))
    for f, part in df.groupby("fold"):
        chosen = s["fold_policies"][str(f)]
        policy = Policy(
            enter=chosen["enter"],
            exit=chosen["exit"],
            min_hold=chosen["min_hold"],
            max_position=chosen["max_position"],
            long_short=chosen["long_short"],
        )
        assert report["folds"][int(f)]["fold_policy"] == chosen
        expected[(df["fold"] == f).to_numpy()] = policy_positions(
            policy, part["prob_up"].to_numpy()
        )
    np.testing.assert_array_equal(df["position"].to_numpy(), expected)
    # The stitched backtests, net of fees, from the CSV's positions and returns: the applied
    # policy's, the plain P(up) > threshold rule's, and buy-and-hold.
    cost = (s["fee_bps"] + s["slippage_bps"]) / 1e4
    r = df["asset_return"].to_numpy()
    plain = (p > s["threshold"]).astype(float)
    ts = pd.DatetimeIndex(pd.to_datetime(df["timestamp"], utc=True)).as_unit("ns").asi8
    span = (ts[-1] - ts[0]) / (s["interval_seconds"] * 1e9) + 1
    runs = (
        (report["backtest"], df["position"].to_numpy()),
        (report["policy"]["plain"], plain),
        (report["buy_and_hold"], np.ones(len(df))),
    )
    for i, (reported, positions) in enumerate(runs):
        perf = bt.performance(bt.simulate(positions, r, cost), s["periods_per_year"], span)
        for k in ("total_return", "sharpe", "max_drawdown", "trades", "fees_paid"):
            assert reported[k] == pytest.approx(perf[k]), (i, k)
    # The stitched net Sharpe's interval: evaluate's stationary bootstrap of the same per-candle
    # net returns, with the run's seed and the label horizon.
    net = bt.simulate(df["position"].to_numpy(), r, cost).strategy_return
    ci = sharpe_bootstrap_ci(net, s["periods_per_year"], horizon=s["horizon"], seed=s["seed"])
    assert pooled["sharpe_net_ci95"] == pytest.approx(ci)
    assert ci["lo"] < ci["hi"] and ci["samples"] == 1000
    # Buy-and-hold's over the same stitched span, resampled the same way (its own net returns:
    # long every row, one entry fee), printed beside the strategy's in the summary and report.md.
    hold = bt.simulate(np.ones(len(df)), r, cost).strategy_return
    hold_ci = sharpe_bootstrap_ci(hold, s["periods_per_year"], horizon=s["horizon"], seed=s["seed"])
    assert pooled["buy_and_hold_sharpe_ci95"] == pytest.approx(hold_ci)
    assert hold_ci["lo"] < hold_ci["hi"] and hold_ci != pytest.approx(ci)  # its own returns
    hold_text = (
        f"buy-and-hold {report['buy_and_hold']['sharpe']:.2f} "
        f"[95% {hold_ci['lo']:.2f}, {hold_ci['hi']:.2f}] (return"
    )
    assert hold_text in format_summary(report)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert hold_text in markdown
    assert (
        f"Buy-and-hold over the same span: net Sharpe {report['buy_and_hold']['sharpe']:.2f}, "
        f"95% interval [{hold_ci['lo']:.2f}, {hold_ci['hi']:.2f}]"
    ) in markdown
    for f in df["fold"].unique():
        at = (df["fold"] == f).to_numpy()
        fspan = (ts[at][-1] - ts[at][0]) / (s["interval_seconds"] * 1e9) + 1
        for key, positions in (("sharpe_net", df["position"]), ("sharpe_net_plain", plain)):
            sim = bt.simulate(np.asarray(positions)[at], r[at], cost)
            perf = bt.performance(sim, s["periods_per_year"], fspan)
            assert report["folds"][int(f)][key] == pytest.approx(perf["sharpe"]), (f, key)


def test_fold_checkpoint_loads_as_the_seed_ensemble(cli_run: tuple[Path, dict]) -> None:
    from jaxtrader.data import load_market
    from jaxtrader.features import feature_hash
    from jaxtrader.inference import Predictor

    out, report = cli_run
    predictor = Predictor.load(checkpoint=out / "fold_01")
    m = predictor.manifest
    # The fold's val-selected policy is in its manifest, where `trade` reads it.
    assert m.policy is not None
    chosen = report["settings"]["fold_policies"]["1"]
    assert m.policy["rule"] == {k: chosen[k] for k in m.policy["rule"]}
    assert m.ensemble is not None and m.ensemble["seeds"] == 2 and m.ensemble["fold"] == 1
    assert m.feature_hash == feature_hash() and m.metrics["complete"] is True
    assert m.data["sha256"] is None and m.data["source"].startswith("synthetic")
    dataset = predictor.rebuild_dataset(load_market(predictor.config.data))
    probs = predictor.predict_split(dataset, "test")
    df = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(probs, df.loc[df["fold"] == 1, "prob_up"], atol=1e-6)


def test_walkforward_and_study_take_every_train_knob_flag() -> None:
    """`walkforward` (and `study`, which reuses its options) accept train's knob flags, mapped to
    the config by the same `train_knob_overrides` that `train` uses."""
    from jaxtrader.cli.common import train_knob_overrides
    from jaxtrader.cli.study_cmds import study
    from jaxtrader.cli.train_cmds import train
    from jaxtrader.cli.walkforward_cmds import walkforward

    knobs = {"lr", "weight_decay", "patience", "dropout", "threshold"}
    for command in (train, walkforward, study):
        assert knobs <= {p.name for p in command.params}, command.name
    assert train_knob_overrides(0.5, 0.01, 7, 0.3, 0.002) == {
        "train.learning_rate": 0.5,
        "train.weight_decay": 0.01,
        "train.patience": 7,
        "model.dropout": 0.3,
        "dataset.threshold": 0.002,
    }


def test_fold_directories_hold_tensorboard_events_per_seed(cli_run: tuple[Path, dict]) -> None:
    """Issue 14: walk-forward runs write TensorBoard events too, one curve per seed per fold."""
    extra_or_skip("tensorboardX", "tensorboard")
    out, _ = cli_run
    for fold in (0, 1):
        fdir = out / f"fold_{fold:02d}"
        (event_file,) = fdir.glob("events.out.tfevents.*")
        scalars = event_scalars(event_file)
        records = [json.loads(line) for line in (fdir / "metrics.jsonl").read_text().splitlines()]
        assert records
        assert scalars["loss/train"] == {
            r["epoch"]: pytest.approx(r["train_loss"]) for r in records
        }
        for seed in (0, 1):
            assert scalars[f"loss/val/seed{seed}"] == {
                r["epoch"]: pytest.approx(r["val_loss"][seed]) for r in records
            }


def test_cli_restarts_on_tcmalloc_or_with_huge_pages_where_the_machine_has_them(
    cli_run: tuple[Path, dict],
) -> None:
    from jaxtrader import runtime

    out, _ = cli_run
    records = [
        json.loads(line)
        for line in (out.parent / "stderr.log").read_text(encoding="utf-8").splitlines()
        if line.startswith("{")
    ]
    fits = [r for r in records if r.get("event") == "fit_seeds_end"]
    assert len(fits) == 2  # one per fold
    # cli.main restarted the process on tcmalloc where it is installed, else with glibc's
    # huge-page tunable iff this machine honours it.
    restart = runtime.restart_environment() or {}
    on_tcmalloc = "libtcmalloc" in restart.get("LD_PRELOAD", "")
    huge = not on_tcmalloc and runtime.huge_page_environment() is not None
    starts = [r for r in records if r.get("event") == "walkforward_start"]
    assert len(starts) == 1, records[:5]
    assert starts[0]["allocator"] == ("tcmalloc" if on_tcmalloc else "glibc"), starts
    assert starts[0]["huge_pages"] == huge, starts
    # On glibc only for want of tcmalloc: the user is told how to get it, once.
    advice = runtime.tcmalloc_advice()
    stderr = (out.parent / "stderr.log").read_text(encoding="utf-8")
    assert stderr.count("note: tcmalloc is not installed") == (advice is not None), stderr[:500]
    # With huge pages every train loop (one per epoch) maps its step blocks from the start;
    # without, the tiny config stays far under the 1.3 GB budget and keeps them in the heap; on
    # tcmalloc glibc's heap is not used at all.
    mapping = huge and runtime.seed_device_count(2) == 2
    assert all(r["epochs_run"] >= 1 for r in fits), fits
    expected = [r["epochs_run"] if mapping else 0 for r in fits]
    assert [r["loops_mapping_step_blocks"] for r in fits] == expected, fits


def test_resume_checks_the_directory_before_loading_any_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing directory, a missing or damaged plan.json: one line naming it, no data loaded."""
    import jaxtrader.walkforward as wf_mod

    def no_data(*args: Any) -> Any:
        raise AssertionError("the candles were loaded before --resume DIR was checked")

    monkeypatch.setattr(wf_mod, "prepare", no_data)
    missing = tmp_path / "nope"
    with pytest.raises(
        ConfigError, match=re.escape(f"--resume {missing}: the directory does not exist")
    ):
        run_walkforward(CFG, WF, out=missing, resume=True)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError, match=r"plan\.json is missing; it is not a walk-forward run"):
        run_walkforward(CFG, WF, out=run, resume=True)
    for damaged in ("", '{"symbol": ', "[1, 2]"):
        (run / "plan.json").write_text(damaged)
        with pytest.raises(CheckpointError) as caught:
            run_walkforward(CFG, WF, out=run, resume=True)
        message = str(caught.value)
        assert message.startswith(f"{run / 'plan.json'} is ")
        assert "restore it from a backup, or start a new walk-forward run with another --out" in (
            message
        )


def test_resume_names_changed_config_keys_and_redoes_a_fold_with_damaged_weights(
    cli_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import jaxtrader.walkforward as wf_mod
    from jaxtrader.config import from_dict, with_overrides
    from jaxtrader.inference import Predictor

    out = tmp_path / "run"
    shutil.copytree(cli_run[0], out)
    cfg = from_dict(json.loads((out / "plan.json").read_text())["config"])  # the CLI's config
    changed = with_overrides(cfg, {"train.learning_rate": 0.01, "model.dropout": 0.2})
    with pytest.raises(ConfigError) as caught:
        run_walkforward(changed, WF, out=out, resume=True)
    assert "different configuration (model.dropout 0.1 -> 0.2; train.learning_rate 0.001 -> " in (
        str(caught.value)
    )

    # Fold 1's weights are damaged; only its manifest would say it is complete.
    (params,) = (out / "fold_01").glob("*/params")
    for data in params.rglob("d/*"):
        data.write_bytes(b"\0" * data.stat().st_size)
    events: list[tuple[str, dict]] = []
    real_log_event = wf_mod.log_event
    monkeypatch.setattr(
        wf_mod,
        "log_event",
        lambda lg, event, *a, **kw: (events.append((event, kw)), real_log_event(lg, event, **kw)),
    )
    fold0 = (out / "fold_00" / "fold.json").read_text()
    resumed = run_walkforward(cfg, WF, out=out, resume=True)
    redo = [kw for event, kw in events if event == "fold_redo"]
    assert [kw["fold"] for kw in redo] == [1] and "corrupt" in redo[0]["reason"]
    # Walk-forward retrains the fold itself: `jaxtrader train` / --version do not apply here.
    assert redo[0]["reason"].endswith("; the fold is trained again")
    assert "jaxtrader train" not in redo[0]["reason"] and "--version" not in redo[0]["reason"]
    assert ("fold_skipped", {"fold": 0, "reason": "complete"}) in events
    assert (out / "fold_00" / "fold.json").read_text() == fold0  # kept
    Predictor.load(checkpoint=out / "fold_01")  # the retrained weights restore
    a = pd.read_csv(cli_run[0] / "predictions.csv")
    pd.testing.assert_frame_equal(a, pd.read_csv(out / "predictions.csv"), atol=1e-6)
    assert resumed.report["pooled"]["n"] == cli_run[1]["pooled"]["n"]


def test_a_fold_smaller_than_a_batch_fails_before_the_run_directory_exists(
    tmp_path: Path,
) -> None:
    """It used to fail while training fold 0, after plan.json was written: rerunning with the
    smaller --batch-size the message asked for was then refused ("already holds a run")."""
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, batch_size=4096))
    out = tmp_path / "wf"
    with pytest.raises(DataError, match=r"fold 0's training split has \d+ prediction points, "
                       r"fewer than batch size 4096; use a smaller --batch-size"):  # fmt: skip
        run_walkforward(cfg, WF, out=out)
    assert not out.exists()


def test_a_file_too_short_for_any_walk_forward_says_so(tmp_path: Path) -> None:
    """It said "split 'val' is empty", the 70/15/15 split a walk-forward does not have."""
    from jaxtrader.data import synth_candles, write_candles
    from jaxtrader.walkforward import prepare

    market = tmp_path / "short.csv"
    write_candles(synth_candles(rows=700, seed=3).frame, market)
    cfg = dataclasses.replace(CFG, data=DataConfig(path=str(market)))
    with pytest.raises(DataError) as caught:
        prepare(cfg, WF)
    assert str(caught.value) == (
        f"700 candles are too few for a walk-forward with --seq-len {cfg.dataset.seq_len} and "
        f"--horizon {cfg.dataset.horizon}; use a longer candle file or a shorter --seq-len"
    )


def _plan_refusal(out: Path, stored: dict, now: dict) -> str:
    """The one-line ConfigError `--resume out` gives for a plan `now` against the `stored` one."""
    from jaxtrader.walkforward import _check_plan

    with pytest.raises(ConfigError) as caught:
        _check_plan(out, stored, now)
    return str(caught.value)


def test_resume_refuses_a_data_file_whose_contents_changed(tmp_path: Path) -> None:
    """plan.json records the file's sha256: a resume on an edited file (same name) would stitch
    folds trained on two different histories into one predictions.csv."""
    from jaxtrader.data import synth_candles, write_candles
    from jaxtrader.walkforward import _check_plan, prepare

    market = tmp_path / "m.csv"
    write_candles(synth_candles(rows=1500, seed=3).frame, market)
    cfg = dataclasses.replace(CFG, data=DataConfig(path=str(market)))
    before = prepare(cfg, WF).plan
    assert len(before["data_sha256"]) == 64
    _check_plan(tmp_path, before, prepare(cfg, WF).plan)  # the same file: accepted
    frame = synth_candles(rows=1500, seed=3).frame
    frame.iloc[1400:, :4] *= 1.5  # a late revision: the plan's spans and counts stay the same
    write_candles(frame, market)
    after = prepare(cfg, WF).plan
    assert {k: v for k, v in after.items() if k != "data_sha256"} == {
        k: v for k, v in before.items() if k != "data_sha256"
    }
    assert _plan_refusal(tmp_path, before, after) == (
        f"--resume {tmp_path}: the candles differ from the ones the run was planned on ({market}: "
        f"sha256 {before['data_sha256'][:12]}... then, {after['data_sha256'][:12]}... now); "
        "resume with the original file, or start a new run without --resume"
    )
    # A plan written before the fingerprint was recorded is not refused for lacking it.
    _check_plan(tmp_path, {k: v for k, v in before.items() if k != "data_sha256"}, after)


def test_resume_on_another_market_names_the_one_the_run_was_planned_on(tmp_path: Path) -> None:
    """`--resume DIR` without the run's --data (the README's resume line has none) was refused
    with "the candles differ ... (synthetic:...: sha256 9400c2ea1db5... then, None... now)": two
    fingerprints, one of them None, and not the file to pass. The line names both sources and
    the --data that resumes the run."""
    from jaxtrader.data import synth_candles, write_candles
    from jaxtrader.walkforward import _check_plan, prepare

    market = tmp_path / "m.csv"
    write_candles(synth_candles(rows=1500, seed=3).frame, market)
    on_file = prepare(dataclasses.replace(CFG, data=DataConfig(path=str(market))), WF).plan
    embedded = prepare(CFG, WF).plan
    assert _plan_refusal(tmp_path, on_file, embedded) == (
        f"--resume {tmp_path}: the run was planned on {market}, and this command reads "
        f"{embedded['data']}; rerun the original command, with --data {market}, with --resume, "
        "or start a new run without --resume"
    )
    assert _plan_refusal(tmp_path, embedded, on_file) == (
        f"--resume {tmp_path}: the run was planned on {embedded['data']}, and this command reads "
        f"{market}; rerun the original command, without --data, with --resume, or start a new "
        "run without --resume"
    )
    # The same bytes under another name (a moved file) are the same candles: accepted.
    moved = tmp_path / "moved.csv"
    moved.write_bytes(market.read_bytes())
    _check_plan(tmp_path, on_file, {**on_file, "data": str(moved)})


def test_too_many_folds_are_refused_by_name_before_the_run_directory_exists(
    tmp_path: Path,
) -> None:
    """Ten folds of a 3,000-candle file once validated on 3-4 points each, silently; with more
    folds the error spoke of "split 'val'" and --seq-len, never of --folds."""
    cfg = CFG.dataset
    gap = purge_gap(cfg.horizon, cfg.seq_len)
    with pytest.raises(ConfigError) as caught:
        walk_forward_folds(1_450, 14, cfg)
    assert str(caught.value).startswith(
        f"fold 0's validation block is empty: the 15 blocks after the first training span hold "
        f"about 90 candles each, and the purge gap takes {gap} candles"
    )
    assert "use fewer --folds" in str(caught.value)
    out = tmp_path / "wf"
    with pytest.raises(DataError) as small:
        run_walkforward(CFG, dataclasses.replace(WF, folds=6), out=out)
    assert re.fullmatch(
        r"fold 0's validation block has \d\d prediction points, fewer than 100: early stopping "
        r"and the decision policy would be chosen on noise; use fewer --folds, a shorter "
        r"--seq-len or --horizon, or more data",
        str(small.value),
    )
    # With --train-candles given, the span it leaves for the blocks is named too.
    with pytest.raises(DataError, match=r"use fewer --folds, a smaller --train-candles, a shorter"):
        run_walkforward(CFG, dataclasses.replace(WF, folds=2, train_candles=600), out=out)
    assert not out.exists()


def test_an_out_folder_holding_other_files_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--out` on a folder of the user's replaced its report.md without a word."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    (out / "a.csv").write_text("x\n")
    with pytest.raises(ConfigError) as caught:
        run_walkforward(CFG, WF, out=out)
    assert str(caught.value) == (
        f"--out {out} is a folder that holds other files (a.csv, report.md); a walk-forward run "
        "writes plan.json, report.md, plots and fold folders there: choose a new or empty folder"
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "report.md"]
    assert (out / "report.md").read_text() == "my notes\n"


def test_folds_cut_short_by_the_time_limit_are_named_in_the_report(
    cli_run: tuple[Path, dict],
) -> None:
    """A --max-minutes run printed a normal summary: the time limit showed only in log lines."""
    from jaxtrader.walkforward_report import format_summary

    out, report = cli_run
    for f in report["folds"]:
        fold = json.loads((out / f"fold_{f['fold']:02d}" / "fold.json").read_text())
        assert f["stopped_reason"] == fold["stopped_reason"] != "time_limit"
    assert "time limit" not in format_summary(report)
    cut = json.loads(json.dumps(report))
    cut["folds"][1]["stopped_reason"] = "time_limit"
    assert (
        "warning: fold 1 of 2 stopped at the --max-minutes time limit, before early stopping or "
        "--epochs: these figures depend on this machine's speed"
    ) in format_summary(cut)
    cut["folds"][0]["stopped_reason"] = "time_limit"
    assert "warning: folds 0, 1 of 2 stopped at" in format_summary(cut)


@pytest.mark.parametrize("command", ["walkforward", "study"])
def test_an_input_inside_the_run_directory_is_refused(tmp_path: Path, command: str) -> None:
    """The run directory gets fixed names (predictions.csv, report.json, ...): a --data file
    inside it, e.g. an earlier run's predictions.csv, would be overwritten by the run reading it."""
    out = tmp_path / "run"
    out.mkdir()
    data = out / "predictions.csv"
    from jaxtrader.data import synth_candles, write_candles

    write_candles(synth_candles(rows=1500, seed=1).frame, data)
    before = data.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", command, "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: --data {data} lies inside --out {out}, which {command} writes into; pass "
        "another --out, or move the file out of it\n"
    )
    assert data.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [data.name]


def _copy_run(cli_run: tuple[Path, dict], tmp_path: Path) -> tuple[Path, AppConfig]:
    """A copy of run A (the module's CLI run) and the config the CLI ran it with."""
    import shutil

    from jaxtrader.config import from_dict

    out = tmp_path / "run"
    shutil.copytree(cli_run[0], out)
    return out, from_dict(json.loads((out / "plan.json").read_text())["config"])


def test_evaluate_writes_the_report_of_a_walkforward_fold(
    cli_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """A fold's metrics.jsonl holds per-seed lists: `evaluate --report-dir` on a fold crashed in
    the training plot (internal error, exit 1) and wrote no report.md or report.json."""
    out, _ = _copy_run(cli_run, tmp_path)
    first = json.loads((out / "fold_01" / "metrics.jsonl").read_text().splitlines()[0])
    assert isinstance(first["val_loss"], list) and len(first["val_loss"]) == WF.seeds
    rep = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrader", "--config", str(cli_run[0].parent / "tiny.toml"),
         "evaluate", "--checkpoint", str(out / "fold_01"), "--split", "test",
         "--report-dir", str(rep)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((rep / "report.json").read_text())
    # The fold's test block, as the walk-forward report counted it.
    assert doc["split"] == "test" and doc["n"] == cli_run[1]["folds"][1]["n"]
    # Named as the fold it is, not "lstm v1" (the fold's manifest numbers it like a version).
    assert doc["source"]["label"] == "lstm fold 1"
    assert "![training](training.png)" in (rep / "report.md").read_text()
    assert (rep / "training.png").stat().st_size > 1000


def test_resume_with_policy_plain_removes_the_auto_policies_from_the_fold_manifests(
    cli_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """`--resume DIR --policy plain` on an auto run reported the plain rule but left each fold's
    auto policy in its manifest, which `trade --checkpoint DIR/fold_XX` applies; a fresh plain
    run records none. The same flags must give the same checkpoints whatever the run's history."""
    from jaxtrader.checkpoint import read_manifest
    from jaxtrader.trading.runner import trade_policy

    out, cfg = _copy_run(cli_run, tmp_path)
    manifests = [out / f"fold_{i:02d}" / "manifest.json" for i in range(WF.folds)]
    before = [json.loads(m.read_text()) for m in manifests]
    assert all(d["policy"]["source"].startswith("walkforward --policy auto") for d in before)
    plain = run_walkforward(cfg, dataclasses.replace(WF, policy="plain"), out=out, resume=True)
    assert plain.report["settings"]["policy"] == "plain"
    for path, old in zip(manifests, before, strict=True):
        now = json.loads(path.read_text())
        # What a fresh plain run writes: no policy key; everything else as it was.
        assert "policy" not in now and now == {k: v for k, v in old.items() if k != "policy"}
        manifest = read_manifest(path.parent)
        assert trade_policy("checkpoint", manifest, cfg.backtest) is None  # trade: plain rule
    # Back to auto on the same folds: each fold's val-chosen policy is recorded again.
    auto = run_walkforward(cfg, WF, out=out, resume=True)
    for fold, path in enumerate(manifests):
        rule = json.loads(path.read_text())["policy"]["rule"]
        chosen = auto.report["settings"]["fold_policies"][str(fold)]
        assert rule["enter"] == chosen["enter"] and rule["min_hold"] == chosen["min_hold"]


def test_resume_redoes_a_fold_with_damaged_predictions(
    cli_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated fold predictions.npz raised BadZipFile through the CLI (internal error, exit
    1); like damaged weights, the fold is now trained again, with a `fold_redo` event."""
    import jaxtrader.walkforward as wf_mod

    out, cfg = _copy_run(cli_run, tmp_path)
    npz = out / "fold_00" / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    events = _record_events(monkeypatch, wf_mod)
    resumed = run_walkforward(cfg, WF, out=out, resume=True)
    redo = [kw for event, kw in events if event == "fold_redo"]
    assert [kw["fold"] for kw in redo] == [0]
    assert redo[0]["reason"].startswith(
        f"fold 0 in {out / 'fold_00'} has a manifest but its records are damaged (BadZipFile: "
    )
    assert redo[0]["reason"].endswith("; the fold is trained again")
    assert ("fold_skipped", {"fold": 1, "reason": "complete"}) in events
    with np.load(npz) as z:  # rewritten whole
        assert z["prob_up_KxN"].shape[0] == WF.seeds
    a = pd.read_csv(cli_run[0] / "predictions.csv")
    pd.testing.assert_frame_equal(a, pd.read_csv(out / "predictions.csv"), atol=1e-6)
    assert resumed.report["pooled"]["n"] == cli_run[1]["pooled"]["n"]


def _record_events(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[str, dict]]:
    """The (event, fields) pairs `module` logs from now on (still logged as usual)."""
    events: list[tuple[str, dict]] = []
    real_log_event = module.log_event
    monkeypatch.setattr(
        module,
        "log_event",
        lambda lg, event, *a, **kw: (events.append((event, kw)), real_log_event(lg, event, **kw)),
    )
    return events


def test_a_second_walkforward_on_a_run_directory_is_refused(
    cli_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """Two `--resume DIR` processes on one run both trained every fold into the same folders,
    and one then failed with a misleading "damaged checkpoint" error. The run holds a lock."""
    import fcntl
    import os

    out, cfg = _copy_run(cli_run, tmp_path)
    lock = out / ".walkforward.lock"  # the name the README gives

    def files() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*"))
        }

    def lock_is_free() -> bool:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    # The lock is held while the run works (checked from the plan callback, mid-run).
    seen: list[bool] = []
    run_walkforward(cfg, WF, out=out, resume=True, on_plan=lambda *_: seen.append(lock_is_free()))
    assert seen == [False] and lock_is_free()  # and released when it ends
    # Released on error too (the plan check fails after the lock is taken).
    with pytest.raises(ConfigError, match="seeds"):
        run_walkforward(cfg, dataclasses.replace(WF, seeds=3), out=out, resume=True)
    assert lock_is_free()

    # Another process holds it: the CLI says so in one line, exit 2, and writes nothing.
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"4242\n")
        snapshot = files()
        proc = subprocess.run(
            [sys.executable, "-m", "jaxtrader", "--config", str(cli_run[0].parent / "tiny.toml"),
             "walkforward", "--folds", "2", "--seeds", "2", "--resume", str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == (
        f"error: {out} is in use by another walkforward process (pid 4242); wait for it to "
        "finish or stop it, then rerun\n"
    )
    assert files() == snapshot


def test_sigterm_after_a_fold_says_interrupted_once_and_exits_130(tmp_path: Path) -> None:
    """The first SIGTERM stops the run after the fold in progress is saved: exactly one
    "interrupted: ..." line on stderr in text mode (it was reported printed twice), exit 130."""
    import os
    import signal
    import time

    config = tmp_path / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxtrader", "--config", str(config), "walkforward",
         "--folds", "3", "--seeds", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (out / "fold_00" / "manifest.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    done = sorted(int(p.parent.name[5:]) for p in out.glob("fold_*/manifest.json"))
    assert done in ([0], [0, 1])  # fold 1 too when the signal came after its training began
    saved = "fold 0 is" if done == [0] else "folds 0, 1 are"
    line = f"interrupted: {saved} saved in {out}; finish with the same command and --resume {out}"
    assert [x for x in stderr.splitlines() if "interrupted" in x] == [line]
    assert stderr.endswith(f"\n{line}\n")
    assert "fold  train" in stdout and "Traceback" not in stderr


def test_a_second_ctrl_c_in_the_first_fold_says_no_fold_was_complete(tmp_path: Path) -> None:
    """Ctrl-C twice in fold 0 (the first asks to stop after the fold, the second aborts it):
    the local executor said "interrupted: folds [] are saved in DIR; finish with ...", as Ray did.
    Both say it with one wording now: no fold was complete, and the --resume that starts again;
    after the second Ctrl-C, first that the fold in progress was not saved."""
    import os
    import signal
    import threading

    config = tmp_path / "tiny.toml"
    config.write_text(TOML, encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxtrader", "--config", str(config), "walkforward",
         "--folds", "2", "--seeds", "2", "--epochs", "500", "--patience", "500", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    lines: list[str] = []
    hung = threading.Timer(240, proc.kill)  # a run that never stops must not hang the suite
    hung.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            # The first once the folds start (walkforward's handler is installed by then), the
            # second once the training loop has noticed it: fold 0 has hundreds of epochs to go.
            if " walkforward_start " in line or " stop_requested " in line:
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        hung.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr[-3000:]
    assert not list(out.glob("fold_*/manifest.json")) and (out / "plan.json").is_file()
    # The second Ctrl-C gave up fold 0 in training: the line says so first (README: "a second
    # aborts the fold in progress and says so first"; it did only outside a fold's training).
    line = (
        "interrupted: the fold in progress was not saved; no fold was complete; rerun the same "
        f"command with --resume {out} to start the run again"
    )
    assert [x for x in stderr.splitlines() if "interrupted" in x] == [line]
    assert stderr.endswith(f"\n{line}\n") and "Traceback" not in stderr


def test_the_interrupted_line_reads_naturally_for_no_one_or_several_folds() -> None:
    """One wording for walkforward (local or Ray) and study: a list of fold numbers, never the
    Python list "folds [] are saved"."""
    from jaxtrader.walkforward import interrupted_message

    run, study = Path("runs/x"), Path("runs/studies/s")
    assert interrupted_message(run, []) == (
        "interrupted: no fold was complete; rerun the same command with --resume runs/x to start "
        "the run again"
    )
    assert interrupted_message(run, [0]) == (
        "interrupted: fold 0 is saved in runs/x; finish with the same command and --resume runs/x"
    )
    assert interrupted_message(run, [2, 0, 1]) == (
        "interrupted: folds 0, 1, 2 are saved in runs/x; finish with the same command and "
        "--resume runs/x"
    )
    finish = "finish the study with the same command and --resume runs/studies/s"
    assert interrupted_message(run, [], study) == (
        f"interrupted: no fold of the cell in runs/x was complete; {finish}"
    )
    assert interrupted_message(run, [3], study) == (
        f"interrupted: fold 3 of the cell in runs/x is saved; {finish}"
    )
    assert interrupted_message(run, [0, 1], study) == (
        f"interrupted: folds 0, 1 of the cell in runs/x are saved; {finish}"
    )
    # A second Ctrl-C that gave up a fold in progress says so first (it printed "--resume DIR").
    assert interrupted_message(run, [0], aborted=True) == (
        "interrupted: the fold in progress was not saved; fold 0 is saved in runs/x; finish with "
        "the same command and --resume runs/x"
    )


def test_resume_reads_plan_json_once(cli_run: tuple[Path, dict], tmp_path: Path) -> None:
    """`walkforward --resume DIR` read and parsed plan.json twice: in the CLI's check before the
    executor starts, and again in run_walkforward. The CLI passes the record it read."""
    out, _ = _copy_run(cli_run, tmp_path)
    args = ["--config", str(cli_run[0].parent / "tiny.toml"), "walkforward", "--folds", "2",
            "--seeds", "2", "--resume", str(out), "--json"]  # fmt: skip
    code = cli_counting_reads("plan.json", args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == "plan.json reads: 1"
    assert json.loads(proc.stdout)["pooled"]["n"] == cli_run[1]["pooled"]["n"]  # it resumed
