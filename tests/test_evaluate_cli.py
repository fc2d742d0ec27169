"""`jaxtrader evaluate` end to end on a real (tiny) checkpoint trained from a real candle file.

One training run and one evaluate subprocess are shared; the JSON numbers are then recomputed from
the --predictions CSV alone with the pure functions of jaxtrader.evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import assert_one_interrupted_line, lightgbm_or_skip

from jaxtrader.decisions import Policy, policy_positions, positions_from_probs
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.baselines import momentum_predictions
from jaxtrader.evaluate.metrics import classification_metrics, reliability_table
from jaxtrader.evaluate.significance import (
    binomial_p_value,
    effective_n,
    sharpe_bootstrap_ci,
    wilson_interval,
)

TINY_TOML = """
[data]
synth_rows = 3000
[dataset]
seq_len = 50
[model]
num_layers = 1
hidden = 8
[train]
epochs = 1
batch_size = 64
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LSTM trained by `jaxtrader train` on a synthetic candle FILE (so the manifest
    records a path and a hash)."""
    from jaxtrader.checkpoint import resolve_version
    from jaxtrader.cli import main
    from jaxtrader.data import synth_candles, write_candles

    root = tmp_path_factory.mktemp("evalcli")
    # The name gives the market (BTC/USDT), as with real Binance files.
    data = write_candles(synth_candles(3000, seed=1).frame, root / "synth_btcusdt_1h.csv")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    ckpt = root / "ckpt"
    main(["--config", str(config), "train", "--arch", "lstm", "--data", str(data),
          "--ckpt-dir", str(ckpt)])  # fmt: skip
    version_dir = resolve_version(ckpt, arch="lstm", version="latest")
    return {"root": root, "data": data, "version_dir": version_dir}


@pytest.fixture(scope="module")
def evaluated(trained: dict[str, Path]) -> dict[str, Any]:
    """One real `jaxtrader evaluate` subprocess with --json, --predictions and --report-dir."""
    root = trained["root"]
    csv_path, report = root / "pred.csv", root / "report"
    out = subprocess.run(
        [
            sys.executable, "-m", "jaxtrader", "evaluate", "--split", "test",
            "--ckpt-dir", str(root / "ckpt"), "--arch", "lstm", "--version", "latest",
            "--fee-bps", "7", "--slippage-bps", "1", "--json",
            "--predictions", str(csv_path), "--report-dir", str(report),
            "--trades", str(root / "trades.csv"),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # The manifest as this run left it: later tests evaluate the same checkpoint again (and an
    # auto policy is recorded by every such run).
    manifest = json.loads((trained["version_dir"] / "manifest.json").read_text())
    return {"doc": json.loads(out.stdout), "csv": csv_path, "report": report, "stderr": out.stderr,
            "trades": root / "trades.csv", "manifest": manifest}  # fmt: skip


def _near(a: Any, b: Any, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def test_json_has_every_documented_field(evaluated: dict[str, Any]) -> None:
    doc = evaluated["doc"]
    assert doc["split"] == "test" and doc["n"] > 100
    cls_keys = {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc",
                "log_loss", "brier", "confusion_matrix"}  # fmt: skip
    assert cls_keys <= doc["classification"].keys()
    for name in ("random", "majority", "always_long", "momentum", "logistic"):
        assert cls_keys <= doc["baselines"][name].keys(), name
    sig_keys = {"accuracy_ci95", "p_value_vs_majority", "p_value_vs_chance", "effective_n",
                "sharpe_ci95", "sharpe_gross_ci95"}  # fmt: skip
    assert sig_keys <= doc["significance"].keys()
    assert doc["backtest_gross"]["fees_paid"] == 0.0
    bt_keys = {"total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "win_rate",
               "profit_factor", "exposure", "trades", "fees_paid"}  # fmt: skip
    assert bt_keys <= doc["backtest"].keys() and bt_keys <= doc["buy_and_hold"].keys()
    assert doc["annualization"]["periods_per_year"] == 8760.0
    assert len(doc["calibration"]["reliability"]) == 10
    assert doc["source"]["arch"] == "lstm" and doc["source"]["version"] == 1
    assert doc["settings"]["fee_bps"] == 7.0 and doc["settings"]["slippage_bps"] == 1.0
    assert doc["source"]["data_sha256"] and doc["source"]["interval"] == "1h"
    assert doc["verdict"] and isinstance(doc["verdict"][0], str)


def test_every_json_number_recomputes_from_the_predictions_csv(evaluated: dict[str, Any]) -> None:
    doc, df = evaluated["doc"], pd.read_csv(evaluated["csv"])
    st = doc["settings"]
    y, p = df["label"].to_numpy(), df["prob_up"].to_numpy()
    assert len(df) == doc["n"]

    cls = classification_metrics(y, (p > 0.5).astype(int), p)
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc",
                "log_loss", "brier"):  # fmt: skip
        assert _near(cls[key], doc["classification"][key]), key
    assert cls["confusion_matrix"] == doc["classification"]["confusion_matrix"]
    table = reliability_table(y, p)
    assert [r["count"] for r in table] == [r["count"] for r in doc["calibration"]["reliability"]]

    n_eff = effective_n(len(df), st["horizon"])
    majority_acc = float(np.mean(y == st["majority_class"]))
    assert doc["significance"]["effective_n"] == n_eff
    k = round(cls["accuracy"] * n_eff)  # the same whole count as the p-values below
    assert np.allclose(wilson_interval(k / n_eff, n_eff), doc["significance"]["accuracy_ci95"])
    assert _near(
        binomial_p_value(cls["accuracy"], n_eff, majority_acc),
        doc["significance"]["p_value_vs_majority"],
    )
    assert _near(
        binomial_p_value(cls["accuracy"], n_eff, 0.5), doc["significance"]["p_value_vs_chance"]
    )
    assert _near(majority_acc, doc["baselines"]["majority"]["accuracy"])
    assert _near(float(np.mean(y == 1)), doc["baselines"]["always_long"]["accuracy"])
    mom = classification_metrics(y, df["momentum_pred"].to_numpy())
    lr = df["logistic_prob"].to_numpy()
    assert _near(mom["accuracy"], doc["baselines"]["momentum"]["accuracy"])
    assert _near(classification_metrics(y, (lr > 0.5).astype(int), lr)["roc_auc"],
                 doc["baselines"]["logistic"]["roc_auc"])  # fmt: skip

    cost = (st["fee_bps"] / 1e4, st["slippage_bps"] / 1e4)
    pos = policy_positions(Policy.from_dict(st["policy"]), p)
    assert np.array_equal(pos, df["position"].to_numpy())
    series = bt.simulate(pos, df["asset_return"].to_numpy(), *cost)
    assert np.allclose(series.equity, df["equity"].to_numpy(), rtol=1e-12)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    span = (ts.iloc[-1] - ts.iloc[0]) / pd.Timedelta(st["interval_seconds"], unit="s") + 1
    perf = bt.performance(series, st["periods_per_year"], span)
    hold = bt.performance(
        bt.simulate(np.ones(len(df)), df["asset_return"].to_numpy(), *cost),
        st["periods_per_year"],
        span,
    )
    for key, value in doc["backtest"].items():
        assert _near(perf[key], value), key
    for key, value in doc["buy_and_hold"].items():
        assert _near(hold[key], value), key
    gross = bt.performance(bt.simulate(pos, df["asset_return"].to_numpy(), 0.0),
                           st["periods_per_year"], span)  # fmt: skip
    for key, value in doc["backtest_gross"].items():
        assert _near(gross[key], value), key
    ci = doc["significance"]["sharpe_ci95"]
    again = sharpe_bootstrap_ci(
        df["strategy_return"].to_numpy(),
        st["periods_per_year"],
        horizon=st["horizon"],
        num_samples=ci["samples"],
        seed=ci["seed"],
    )
    assert _near(again["lo"], ci["lo"]) and _near(again["hi"], ci["hi"])
    rule = positions_from_probs(lr, st["threshold"], st["long_short"])
    logistic_rule = bt.performance(
        bt.simulate(rule, df["asset_return"].to_numpy(), *cost), st["periods_per_year"], span
    )
    assert _near(logistic_rule["sharpe"], doc["baseline_backtests"]["logistic"]["sharpe"])


def test_momentum_and_returns_match_the_candle_file(
    trained: dict[str, Path], evaluated: dict[str, Any]
) -> None:
    """The CSV's per-row asset returns and momentum calls come from the candles: next opens."""
    candles = pd.read_csv(trained["data"], parse_dates=["timestamp"]).set_index("timestamp")
    df = pd.read_csv(evaluated["csv"], parse_dates=["timestamp"])
    t = candles.index.get_indexer(df["timestamp"])
    assert (t >= 0).all()
    o, c = candles["open"].to_numpy(), candles["close"].to_numpy()
    r, _ = bt.period_returns(o, c, t)
    assert np.allclose(r, df["asset_return"].to_numpy(), rtol=1e-12)
    h = evaluated["doc"]["settings"]["horizon"]
    assert np.array_equal(momentum_predictions(c, t, h), df["momentum_pred"].to_numpy())
    fwd = c[t + h] / c[t] - 1
    assert np.allclose(fwd, df["forward_return"].to_numpy(), rtol=1e-9)
    assert np.array_equal((fwd > 0).astype(int), df["label"].to_numpy())


def test_report_dir_has_json_markdown_and_plots(evaluated: dict[str, Any]) -> None:
    report = evaluated["report"]
    names = {p.name for p in report.iterdir()}
    assert {"report.json", "report.md", "equity.png", "confusion.png", "reliability.png",
            "training.png"} <= names  # fmt: skip
    saved = json.loads((report / "report.json").read_text())
    assert saved["backtest"] == evaluated["doc"]["backtest"]


def test_trades_export_totals_are_the_backtests(evaluated: dict[str, Any]) -> None:
    doc, trades = evaluated["doc"], pd.read_csv(evaluated["trades"])
    assert list(trades.columns) == [
        "entry_time", "exit_time", "side", "entry_price", "exit_price", "size", "quantity",
        "holding_candles", "fees", "pnl_gross", "pnl_net", "return_net",
    ]  # fmt: skip
    net = doc["backtest"]
    assert len(trades) == net["trades"] > 0
    assert trades["pnl_net"].sum() == pytest.approx(net["final_equity"] - 1.0, abs=1e-12)
    assert trades["fees"].sum() == pytest.approx(net["fees_paid"], abs=1e-12)
    assert (trades["pnl_gross"] - trades["fees"] - trades["pnl_net"]).abs().max() < 1e-12
    assert doc["trades_export"]["pnl_net"] == pytest.approx(net["total_return"], abs=1e-12)
    # The fills are candle opens of the evaluated file at the logged times.
    candles = pd.read_csv(evaluated["csv"].parent / "synth_btcusdt_1h.csv")
    opens = dict(zip(pd.to_datetime(candles.iloc[:, 0], utc=True), candles["open"], strict=True))
    first = trades.iloc[0]
    assert first["entry_price"] == opens[pd.Timestamp(first["entry_time"])]
    # Long-only: every holding period earns its own (net) return, as the backtest's win rate.
    wins = float((trades["pnl_net"] > 0).mean())
    assert wins == pytest.approx(net["win_rate"])
    assert (evaluated["report"] / "trades.png").stat().st_size > 10_000
    assert "![trades](trades.png)" in (evaluated["report"] / "report.md").read_text()


def test_time_range_equal_to_the_test_split_gives_its_numbers(
    trained: dict[str, Path], evaluated: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from jaxtrader.cli import main

    test = json.loads((trained["version_dir"] / "manifest.json").read_text())["splits"]["test"]
    main(["evaluate", "--ckpt-dir", str(trained["root"] / "ckpt"), "--start", test["start"],
          "--end", test["end"], "--fee-bps", "7", "--slippage-bps", "1", "--json"])  # fmt: skip
    doc, ref = json.loads(capsys.readouterr().out), evaluated["doc"]
    assert doc["split"] == "range" and doc["range"]["start"].startswith(test["start"][:19])
    assert doc["n"] == ref["n"] and doc["period"] == ref["period"]
    assert doc["backtest"] == ref["backtest"]
    assert doc["classification"] == ref["classification"]


def test_threshold_beside_the_auto_policy_is_said_to_be_the_plain_rule(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--threshold reads like the strategy's rule, but under the default auto policy it only sets
    the plain comparison: the report says so, with the rule actually traded."""
    from jaxtrader.cli import main
    from jaxtrader.decisions import describe_policy

    args = ["evaluate", "--checkpoint", str(trained["version_dir"]), "--threshold", "0.55",
            "--no-record-policy", "--json"]  # fmt: skip
    main(args)
    doc = json.loads(capsys.readouterr().out)
    chosen = doc["policy"]["selected"]
    assert doc["policy"]["source"].startswith("auto")
    assert (
        f"--threshold 0.55 sets the plain rule reported beside the strategy; the strategy is the "
        f"auto policy chosen on the val split ({describe_policy(chosen)}); pass --policy plain "
        "to trade at the threshold"
    ) in doc["notes"]
    main([*args, "--policy", "plain"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"]["selected"]["enter"] == 0.55
    assert not [n for n in doc["notes"] if n.startswith("--threshold")]


def test_a_weekday_range_of_a_24_7_market_is_annualised_by_the_calendar_year(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The market's calendar, not the span's: Monday to Friday of a market with weekend candles
    stays 8760 periods a year for 1h (the span alone would say 252 x 24 = 6048)."""
    from jaxtrader.cli import main

    test = json.loads((trained["version_dir"] / "manifest.json").read_text())["splits"]["test"]
    start = pd.Timestamp(test["start"]).ceil("D")
    monday = start + pd.Timedelta((7 - start.weekday()) % 7, unit="D")
    friday_end = monday + pd.Timedelta(4 * 24 + 23, unit="h")
    assert friday_end <= pd.Timestamp(test["end"]), "the fixture's test split holds no whole week"
    main(["evaluate", "--ckpt-dir", str(trained["root"] / "ckpt"), "--start", monday.isoformat(),
          "--end", friday_end.isoformat(), "--json"])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["n"] == 5 * 24
    h = doc["settings"]["horizon"]
    few = f"only 120 prediction points (effective n {120 // h} for {h}-candle labels): too few"
    assert any(note.startswith(few) for note in doc["notes"]) == (120 // h < 30)
    assert doc["annualization"]["periods_per_year"] == 8760.0
    assert "weekend candles present" in doc["annualization"]["basis"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--start", "TRAIN_END"], "overlaps the training span (training labels reach "),
        (["--end", "2100-01-01"], "is outside the data ("),
        (["--start", "tomorrow-ish"], "--start 'tomorrow-ish' is not a date/time"),
        (["--split", "val", "--start", "2023-01-01"], "use either --split or --start/--end"),
    ],
)
def test_bad_time_ranges_are_one_line_errors(
    trained: dict[str, Path], flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from jaxtrader.cli import main

    splits = json.loads((trained["version_dir"] / "manifest.json").read_text())["splits"]
    flags = [splits["train"]["end"] if f == "TRAIN_END" else f for f in flags]
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", str(trained["version_dir"]), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err, err


def test_changed_data_file_warns_but_evaluates(trained: dict[str, Path], tmp_path: Path) -> None:
    from jaxtrader.cli import cli

    lines = trained["data"].read_text().splitlines()
    # Revise the volume of the last candle: a different hash, same timestamps.
    ts, o, h, lo, c, v = lines[-1].split(",")
    lines[-1] = ",".join([ts, o, h, lo, c, str(float(v) + 1.0)])
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(lines) + "\n")
    args = ["evaluate", "--split", "val", "--ckpt-dir", str(trained["root"] / "ckpt"),
            "--data", str(changed), "--json", "--policy", "plain"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["split"] == "val"
    # --policy plain: the threshold rule, re-decided every candle, and no selection table.
    assert doc["policy"]["source"] == "plain" and "selection" not in doc["policy"]
    assert doc["policy"]["selected"] == doc["policy"]["plain"]
    assert doc["backtest"] == doc["backtest_plain"]
    assert any("differs from the training file" in n for n in doc["notes"])


def test_another_market_is_an_explicit_labelled_choice(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 14.3: the report named the ETH file but carried the BTC training file's hash.
    from jaxtrader.cli import main
    from jaxtrader.data import file_sha256, synth_candles, write_candles

    eth = write_candles(synth_candles(3000, seed=2).frame, tmp_path / "synth_ethusdt_1h.csv")
    args = ["evaluate", "--split", "val", "--checkpoint", str(trained["version_dir"]),
            "--data", str(eth), "--json"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: the model was trained on BTC/USDT but {eth} holds ETH/USDT; pass --other-market "
        "to evaluate it out of market (the report labels it), or --data with a BTC/USDT file"
    )
    report = tmp_path / "report"
    manifest = (trained["version_dir"] / "manifest.json").read_bytes()
    main([*args, "--other-market", "--report-dir", str(report)])
    doc = json.loads(capsys.readouterr().out)
    # A policy chosen on ETH's val split is not recorded for the BTC model `trade` would load.
    assert doc["policy"]["source"].startswith("auto") and "recorded_in" not in doc["policy"]
    assert "policy not recorded in the checkpoint" in " ".join(doc["notes"])
    assert (trained["version_dir"] / "manifest.json").read_bytes() == manifest
    src = doc["source"]
    assert src["out_of_market"] is True and src["symbol"] == "ETH/USDT"
    assert src["data_sha256"] == file_sha256(eth)
    assert src["training_data"]["symbol"] == "BTC/USDT"
    assert src["training_data"]["sha256"] == file_sha256(trained["data"]) != file_sha256(eth)
    md = (report / "report.md").read_text()
    assert "OUT OF MARKET: a model trained on BTC/USDT, evaluated on ETH/USDT" in md


def test_several_markets_need_symbol_or_data(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 14.2 through the CLI: --data's symbol picks among the markets under --ckpt-dir.
    import shutil

    from jaxtrader.checkpoint import arch_dir, read_manifest, write_manifest

    for symbol in ("BTC/USDT", "ETH/USDT"):
        vdir = arch_dir(tmp_path, symbol, "lstm") / "v1"
        shutil.copytree(trained["version_dir"], vdir)
        m = read_manifest(vdir)
        write_manifest(vdir, dataclasses.replace(m, data={**m.data, "symbol": symbol}))
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--ckpt-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path} holds models of several symbols: BTC/USDT, ETH/USDT; validation "
        "losses of different markets are not comparable, pass --symbol"
    )
    main_args = ["evaluate", "--split", "val", "--ckpt-dir", str(tmp_path), "--json"]
    main([*main_args, "--data", str(trained["data"])])  # a BTC/USDT file
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"]["checkpoint"] == str(arch_dir(tmp_path, "BTC/USDT", "lstm") / "v1")
    assert doc["source"]["out_of_market"] is False


def test_data_that_misses_the_split_is_a_one_line_error(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jaxtrader.cli import main

    lines = trained["data"].read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:2000]) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", str(trained["version_dir"]), "--data", str(short)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: split") and "does not contain both ends" in err


def test_data_of_another_interval_is_refused(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1h model given 5m candles of its market (covering its splits) was evaluated as if they
    were its own: windows, horizon and features count candles, so it reported another experiment
    (trade refuses the same feed). Nothing is recorded in the manifest either."""
    from jaxtrader.cli import main
    from jaxtrader.data import synth_candles, write_candles

    five = write_candles(
        synth_candles(3000 * 12, seed=1, interval="5m").frame, tmp_path / "synth_btcusdt_5m.csv"
    )
    before = (trained["version_dir"] / "manifest.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", str(trained["version_dir"]), "--data", str(five)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {five} holds 5m candles but the model was trained on 1h candles; pass --data "
        "with 1h candles of the market, or evaluate a model trained on 5m candles"
    )
    assert (trained["version_dir"] / "manifest.json").read_bytes() == before


def test_missing_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--ckpt-dir", str(tmp_path / "none")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: checkpoint folder {tmp_path / 'none'} not found; pass --ckpt-dir"
    )
    assert len(err.strip().splitlines()) == 1


def test_bad_fee_fails_fast_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--fee-bps", "-5", "--ckpt-dir", "/nonexistent"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --fee-bps must be")


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_the_baselines_cannot_take_is_refused_up_front(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """scikit-learn and LightGBM take seeds 0 .. 2**32 - 1: `--seed -1` failed once the model had
    run, as "internal error (ValueError: ...)", exit 1."""
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--seed", seed, "--ckpt-dir", "/nonexistent"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        f"error: Invalid value for '--seed': {seed} is not in the range 0<=x<=4294967295; see "
        "'jaxtrader evaluate --help'\n"
    )


def test_training_records_know_the_full_epoch_length(trained: dict[str, Path]) -> None:
    """The evaluation adds `epoch_steps` to each training record, counted as training counts
    steps, so the training plot tells a partial last epoch from a full one."""
    from jaxtrader.config import TradeRules
    from jaxtrader.evaluate.report import epoch_positions
    from jaxtrader.evaluate.run import evaluate_checkpoint

    result = evaluate_checkpoint(split="val", backtest=TradeRules(),
                                 ckpt_dir=str(trained["root"] / "ckpt"), arch="lstm",
                                 version="latest", bootstrap_samples=10)  # fmt: skip
    (record,) = result.training_records  # one full epoch
    assert record["epoch_steps"] == record["steps"] > 0
    assert epoch_positions(result.training_records) == ([1.0], False)
    assert epoch_positions([{**record, "steps": record["steps"] // 2}])[1] is True


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"epoch": 1, "train_lo', "JSONDecodeError"),  # a cut-off last line
        ("[1, 2]\n", "a line is not a JSON object"),
    ],
)
def test_a_damaged_metrics_jsonl_costs_only_the_training_curves(
    trained: dict[str, Path], tmp_path: Path, content: str, problem: str
) -> None:
    """metrics.jsonl feeds only the report's training plot: a damaged one was an internal error
    (JSONDecodeError) that stopped the whole evaluation."""
    import shutil

    from jaxtrader.config import TradeRules
    from jaxtrader.evaluate.run import evaluate_checkpoint

    vdir = shutil.copytree(trained["version_dir"], tmp_path / "v1")
    (vdir / "metrics.jsonl").write_text(content)
    result = evaluate_checkpoint(split="test", backtest=TradeRules(), ckpt_dir=str(tmp_path),
                                 checkpoint=str(vdir), bootstrap_samples=10)  # fmt: skip
    assert result.training_records == []
    (note,) = [n for n in result.doc["notes"] if "training metrics" in n]
    assert note.startswith(f"training metrics {vdir / 'metrics.jsonl'} cannot be read (")
    assert problem in note and note.endswith("): training curves skipped")
    assert result.doc["n"] > 100  # the evaluation itself is whole


def test_shared_flags_help_describes_evaluate() -> None:
    """--symbol and --threshold are shared with trade; their help told evaluate's users about a
    ccxt market and trade's recorded-policy rule, neither of which evaluate has."""
    from jaxtrader.cli.evaluate_cmds import evaluate

    helps = {p.name: getattr(p, "help", "") or "" for p in evaluate.params}
    assert "trade" not in helps["symbol"] and "ccxt" not in helps["symbol"]
    assert helps["symbol"].startswith("Market whose model to pick")
    assert "trade" not in helps["threshold"]
    assert "beside another policy, the rule it is compared with" in helps["threshold"]


def test_lightgbm_baseline_is_in_the_evaluate_report(evaluated: dict[str, Any]) -> None:
    """`evaluate` fits the LightGBM baseline when the `gbm` extra is installed (tox's py311 env
    installs it and makes its absence a failure) and its numbers recompute from the CSV."""
    lightgbm_or_skip()
    doc, df = evaluated["doc"], pd.read_csv(evaluated["csv"])
    y, prob = df["label"].to_numpy(), df["lightgbm_prob"].to_numpy(np.float64)
    assert np.isfinite(prob).all() and ((prob > 0) & (prob < 1)).all()
    ours = classification_metrics(y, (prob > 0.5).astype(int), prob)
    for key in ("accuracy", "roc_auc", "log_loss", "brier"):
        assert _near(ours[key], doc["baselines"]["lightgbm"][key]), key
    assert not any("lightgbm skipped" in n for n in doc["notes"])


def test_auto_policy_is_chosen_on_val_and_recorded_for_trade(
    trained: dict[str, Path], evaluated: dict[str, Any]
) -> None:
    from jaxtrader.evaluate.selection import policy_grid

    pol = evaluated["doc"]["policy"]
    assert pol["source"].startswith("auto")
    table = pol["selection"]
    assert len(table) == len(policy_grid(evaluated["doc"]["settings"]["horizon"]))
    (best,) = [r for r in table if r["selected"]]
    assert best["net_sharpe"] == max(r["net_sharpe"] for r in table)
    assert {k: best[k] for k in pol["selected"]} == pol["selected"]
    recorded = evaluated["manifest"].get("policy")
    assert recorded is not None and recorded["rule"] == pol["selected"]
    for name in ("selected", "plain"):
        row = pol["comparison"][name]
        assert row["fee_drag"] == pytest.approx(row["gross_return"] - row["total_return"])
        assert {"trades_per_month", "avg_holding_periods", "turnover"} <= row.keys()
    curve = evaluated["doc"]["coverage_curve"]
    assert curve[0]["level"] == 0.0 and curve[0]["coverage"] == 1.0
    assert curve[0]["accuracy"] == pytest.approx(evaluated["doc"]["classification"]["accuracy"])
    coverages = [row["coverage"] for row in curve]
    assert coverages == sorted(coverages, reverse=True)


def test_policy_series_equals_the_trade_step_on_real_predictions(
    evaluated: dict[str, Any],
) -> None:
    """The real tiny checkpoint's test predictions through both implementations of each policy:
    the vectorized series function (evaluate) and the one-candle step (trade)."""
    from jaxtrader.decisions import PolicyState, policy_step
    from jaxtrader.evaluate.selection import policy_grid

    df = pd.read_csv(evaluated["csv"])
    p = df["prob_up"].to_numpy()
    selected = Policy.from_dict(evaluated["doc"]["policy"]["selected"])
    np.testing.assert_array_equal(policy_positions(selected, p), df["position"].to_numpy())
    for pol in [selected, *policy_grid(5), *policy_grid(5, long_short=True)]:
        state, stepped = PolicyState(), []
        for x in p:
            state = policy_step(pol, state, float(x))
            stepped.append(state.position * pol.max_position)
        np.testing.assert_array_equal(policy_positions(pol, p), stepped, err_msg=str(pol))


def test_policy_selection_cannot_see_the_test_split(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """Every test-split price (and so every test label) rewritten: the chosen policy and the
    whole selection table stay the same."""
    from jaxtrader.checkpoint import read_manifest
    from jaxtrader.config import DataConfig, TradeRules
    from jaxtrader.data import load_market, timestamps_ns
    from jaxtrader.evaluate.run import _select_on_val
    from jaxtrader.inference import Predictor

    frame = pd.read_csv(trained["data"])
    test_start = pd.Timestamp(read_manifest(trained["version_dir"]).splits["test"]["start"])
    in_test = pd.to_datetime(frame["timestamp"], utc=True) >= test_start
    rng = np.random.default_rng(9)
    factor = np.cumprod(1 + rng.normal(0, 0.02, int(in_test.sum())))
    for col in ("open", "high", "low", "close"):
        frame.loc[in_test, col] = frame.loc[in_test, col].to_numpy() * factor
    changed = tmp_path / "changed_test.csv"
    frame.to_csv(changed, index=False)

    # What `evaluate --policy auto --split test` runs (evaluate.run._select_on_val), on datasets
    # rebuilt from each file by the checkpoint's own predictor; the test split's probabilities
    # passed in are the real ones of each file.
    predictor = Predictor.load(checkpoint=str(trained["version_dir"]))
    horizon = int(predictor.manifest.horizon)

    def select(data: Path) -> tuple[Any, Any, np.ndarray]:
        candles = load_market(DataConfig(path=str(data)))
        ds = predictor.rebuild_dataset(candles)
        f = candles.frame
        chosen, table = _select_on_val(
            predictor, ds, "test", np.asarray(predictor.predict_split(ds, "test")),
            f["open"].to_numpy(), f["close"].to_numpy(), timestamps_ns(f.index), 3600.0,
            TradeRules(fee_bps=10.0), horizon,
        )  # fmt: skip
        return chosen, table, ds.labels("test")

    (a, table_a, labels_a), (b, table_b, labels_b) = select(trained["data"]), select(changed)
    assert a == b
    assert table_a == table_b
    assert not np.array_equal(labels_a, labels_b)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_parameters_are_one_line_on_stderr(
    trained: dict[str, Path], tmp_path: Path, damage: str
) -> None:
    """Arrays damaged inside a checkpoint that is otherwise whole: the restore fails on the first
    bad chunk while TensorStore finishes the other reads; those must not print tracebacks around
    the error (they did, 24-26 of them), and the error must not quote TensorStore's method repr."""
    import shutil

    vdir = shutil.copytree(trained["version_dir"], tmp_path / "v1")
    chunks = [p for p in vdir.glob("*/params/**/d/*") if p.is_file()]
    assert chunks
    for p in chunks:
        data = p.read_bytes()
        if damage == "truncate":
            p.write_bytes(data[: len(data) // 2])
        else:
            p.write_bytes(data[:64] + bytes(b ^ 0xFF for b in data[64:]))
    out = subprocess.run(
        [sys.executable, "-m", "jaxtrader", "evaluate", "--checkpoint", str(vdir),
         "--split", "test", "--policy", "plain", "--no-record-policy"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: checkpoint step {vdir}/"), lines[0]
    assert "partial or corrupt" in lines[0] and "bound method" not in lines[0]


def test_unusable_output_paths_are_one_line_errors(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory where a file goes is refused by the parser, before the evaluation (it used to
    fail as an internal error after it); a path the OS refuses later is one line, exit 2."""
    from jaxtrader.cli import main

    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--checkpoint", str(trained["version_dir"]), "--policy", "plain",
                  "--no-record-policy", *args])  # fmt: skip
        return int(exc.value.code or 0), capsys.readouterr().err.strip().splitlines()[-1]

    a_dir, a_file = tmp_path / "d", tmp_path / "f.csv"
    a_dir.mkdir()
    a_file.write_text("x")
    assert run("--predictions", str(a_dir)) == (
        2,
        f"error: Invalid value for '--predictions': File '{a_dir}' is a directory; see "
        "'jaxtrader evaluate --help'",
    )
    assert run("--trades", str(a_dir))[1].startswith(
        f"error: Invalid value for '--trades': File '{a_dir}' is a directory;"
    )
    assert run("--report-dir", str(a_file))[1].startswith(
        f"error: Invalid value for '--report-dir': Directory '{a_file}' is a file;"
    )
    code, line = run("--trades", str(a_file / "t.csv"))  # under a file: only the OS can tell
    assert code == 2 and line.startswith(f"error: cannot use {a_file}") and "internal" not in line


def test_flags_that_contradict_the_checkpoint_are_refused(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--checkpoint wins over the search flags; one that names another model was silently
    ignored (the report was of the checkpoint's model)."""
    from jaxtrader.cli import main

    vdir = trained["version_dir"]  # an LSTM of BTC/USDT
    for flag, value, expected in (
        ("--arch", "transformer", f"--arch transformer contradicts --checkpoint {vdir}, whose "
         "model is lstm; drop --arch"),
        ("--symbol", "ETH/USDT", f"--symbol ETH/USDT contradicts --checkpoint {vdir}, a model of "
         "BTC/USDT; drop --symbol"),
        ("--version", "7", f"--version 7 contradicts --checkpoint {vdir}, which is v1; drop "
         "--version, or pass the version you mean as --checkpoint"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--checkpoint", str(vdir), flag, value])
        assert exc.value.code == 2
        assert capsys.readouterr().err.strip().startswith(f"error: {expected}")


def _error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error: ...` line of a refused `jaxtrader` command line (exit 2)."""
    from jaxtrader.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_outputs_never_overwrite_the_checkpoint_or_the_data_its_manifest_names(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --data and --checkpoint the inputs are the picked version and the candle file its
    manifest names: `--predictions <that file>` replaced the candles with a CSV of predictions,
    exit 0, and `--trades <version>/manifest.json` the manifest. Both are refused before any
    work, and the files are left as they were."""
    import shutil

    data = Path(shutil.copy(trained["data"], tmp_path / trained["data"].name))
    ckpt = tmp_path / "ckpt"
    vdir = Path(
        shutil.copytree(
            trained["version_dir"],
            ckpt / trained["version_dir"].relative_to(trained["root"] / "ckpt"),
        )
    )
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["data"]["path"] = str(data)  # this copy's own candles, not the shared fixture's
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    before = [data.read_bytes(), (vdir / "manifest.json").read_bytes()]
    base = ["evaluate", "--ckpt-dir", str(ckpt), "--arch", "lstm", "--policy", "plain",
            "--no-record-policy"]  # fmt: skip
    for flag, out, what in (
        ("--predictions", data, f"the checkpoint's data file {data}"),
        ("--trades", vdir / "manifest.json", f"the checkpoint {vdir}"),
        ("--report-dir", vdir, f"the checkpoint {vdir}"),
    ):
        assert _error_line([*base, flag, str(out)], capsys) == (
            f"error: {flag} {out} would overwrite what {what} holds; write it somewhere else"
        )
    assert [data.read_bytes(), (vdir / "manifest.json").read_bytes()] == before
    config = tmp_path / "run.toml"
    config.write_text("[backtest]\nfee_bps = 7\n")
    assert _error_line(["--config", str(config), *base, "--trades", str(config)], capsys) == (
        f"error: --trades {config} would overwrite what --config {config} holds; write it "
        "somewhere else"
    )


def test_policy_flags_that_the_named_policy_would_replace_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--policy plain --enter 0.6` evaluated a manual rule (source "given"), exit 0; so did
    `--policy auto` with them. Refused before any checkpoint is looked for."""
    base = ["evaluate", "--ckpt-dir", str(tmp_path / "none"), "--no-record-policy"]
    assert _error_line([*base, "--policy", "plain", "--enter", "0.6"], capsys) == (
        "error: --policy plain is long above --threshold, re-decided every candle, which "
        "contradicts --enter 0.6; drop --policy plain to use the manual rule, or drop --enter to "
        "use the plain rule"
    )
    assert _error_line(
        [*base, "--policy", "auto", "--exit", "0.45", "--min-hold", "3"], capsys
    ) == (
        "error: --policy auto chooses enter/exit/min-hold on the validation split, which "
        "contradicts --exit 0.45 --min-hold 3; drop --policy auto to use the manual rule, or drop "
        "--exit and --min-hold to let auto choose"
    )


def test_dedupe_and_gzip_outputs(
    trained: dict[str, Path], evaluated: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A candle file with a repeated row: the error named --dedupe, which evaluate did not have.
    Outputs named .csv.gz were plain text; now gzip, read back by `read_csv` and pandas. The
    manual flags alone (the default --policy) still give a manual rule."""
    from jaxtrader.cli import cli
    from jaxtrader.evaluate.summary import read_csv

    lines = trained["data"].read_text().splitlines(keepends=True)
    dup = tmp_path / trained["data"].name
    dup.write_text("".join([*lines, lines[-1]]))
    args = ["evaluate", "--split", "test", "--checkpoint", str(trained["version_dir"]),
            "--data", str(dup), "--no-record-policy", "--fee-bps", "7", "--slippage-bps", "1"]  # fmt: skip
    line = _error_line(args, capsys)
    assert "duplicate timestamp" in line and "evaluate, trade)" in line
    pred, trades = tmp_path / "p.csv.gz", tmp_path / "t.csv.gz"
    result = CliRunner().invoke(
        cli, [*args, "--dedupe", "--enter", "0.6", "--json", "--predictions", str(pred),
              "--trades", str(trades)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["policy"]["source"] == "given" and doc["policy"]["selected"]["enter"] == 0.6
    assert pred.read_bytes()[:2] == trades.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    rows = read_csv(pred)
    reference = read_csv(evaluated["csv"])  # the same candles once deduplicated
    assert len(rows) == doc["n"] == evaluated["doc"]["n"]
    np.testing.assert_array_equal(rows.prob_up, reference.prob_up)
    exported = pd.read_csv(trades)
    assert len(exported) == doc["trades_export"]["trades"]
    assert exported["pnl_net"].sum() == pytest.approx(doc["trades_export"]["pnl_net"], abs=1e-12)


def test_a_walkforward_fold_keeps_the_policy_its_run_chose(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate --checkpoint <run>/fold_01` (--policy auto, the default) recorded its own choice
    into the fold's manifest, replacing the one the walk-forward run chose for that fold on its
    val block, which the run's report and predictions.csv were computed with. Now the manifest is
    left as it was, one note says why, and the evaluation is reported as usual. A checkpoint
    folder beside a run's plan.json (a manifest without `ensemble`) is treated the same."""
    import shutil

    from jaxtrader.cli import main
    from jaxtrader.config import AppConfig, DataConfig, DatasetConfig, TrainConfig
    from jaxtrader.models import with_defaults
    from jaxtrader.walkforward import WalkForwardSettings, run_walkforward

    cfg = AppConfig(  # tests/test_walkforward.py's tiny run, one epoch
        data=DataConfig(synth_rows=1500),
        dataset=DatasetConfig(seq_len=50, horizon=2),
        model=with_defaults("lstm", hidden=8, num_layers=1),
        train=TrainConfig(epochs=1, batch_size=32, patience=1),
    )
    run = tmp_path / "run"
    run_walkforward(cfg, WalkForwardSettings(folds=2, seeds=2), out=run)
    fold = run / "fold_01"
    before = (fold / "manifest.json").read_bytes()
    assert json.loads(before)["policy"]["source"] == "walkforward --policy auto (fold 1 val block)"
    capsys.readouterr()
    main(["evaluate", "--checkpoint", str(fold), "--split", "test"])
    out = capsys.readouterr().out
    assert (fold / "manifest.json").read_bytes() == before
    note = (
        f"note: policy not recorded in the checkpoint: it is fold 1 of the walk-forward run {run}, "
        "whose report used the policy that run chose for the fold, which `trade` keeps applying"
    )
    assert out.splitlines().count(note) == 1, out
    main(["evaluate", "--checkpoint", str(fold), "--split", "test", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"]["source"].startswith("auto") and "recorded_in" not in doc["policy"]
    report = json.loads((run / "report.json").read_text())
    assert doc["n"] == report["folds"][1]["n"]  # still the fold's test block, evaluated as usual
    assert (fold / "manifest.json").read_bytes() == before

    # A single model's checkpoint inside a run folder: plan.json beside it says where it is.
    vdir = Path(shutil.copytree(trained["version_dir"], run / "fold_07"))
    plain = (vdir / "manifest.json").read_bytes()
    main(["evaluate", "--checkpoint", str(vdir), "--split", "test", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert f"it is a fold of the walk-forward run {run}," in " ".join(doc["notes"])
    assert "recorded_in" not in doc["policy"] and (vdir / "manifest.json").read_bytes() == plain


def test_report_dir_never_replaces_files_evaluate_did_not_write(
    trained: dict[str, Path], evaluated: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`--report-dir DIR` wrote report.md and the plots into DIR whatever it held: a user's own
    report.md was replaced, exit 0. A folder holding such names that evaluate did not write is
    refused before any work, exit 2; its files stay; rerunning into evaluate's own earlier report
    folder rewrites it, and files of other names there are left alone."""
    import shutil

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    (mine / "equity.png").write_bytes(b"my plot")
    base = ["evaluate", "--checkpoint", str(trained["version_dir"]), "--split", "test",
            "--policy", "plain", "--no-record-policy"]  # fmt: skip
    assert _error_line([*base, "--report-dir", str(mine)], capsys) == (
        f"error: --report-dir {mine} holds report.md, equity.png, which evaluate would overwrite "
        "and did not write (no evaluate report.json there); choose a new or empty folder, or "
        "move those files"
    )
    assert (mine / "report.md").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["equity.png", "report.md"]

    # A walk-forward run's report.json is not evaluate's: its report.md is refused too.
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "report.json").write_text(json.dumps({"folds": [], "pooled": {}, "backtest": {}}))
    (wf / "report.md").write_text("walk-forward report\n")
    assert _error_line([*base, "--report-dir", str(wf)], capsys).startswith(
        f"error: --report-dir {wf} holds report.json, report.md, which evaluate would overwrite"
    )

    own = Path(shutil.copytree(evaluated["report"], tmp_path / "own"))
    (own / "notes.txt").write_text("kept\n")
    old_md = (own / "report.md").read_text()
    from jaxtrader.cli import main

    main([*base, "--report-dir", str(own), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["report_dir"] == str(own) and doc["policy"]["source"] == "plain"
    assert json.loads((own / "report.json").read_text())["policy"]["source"] == "plain"
    assert (own / "report.md").read_text() != old_md  # rewritten: fees 7 bps then, 10 bps now
    assert (own / "notes.txt").read_text() == "kept\n"


# A Ctrl-C handled while a gc callback runs: `signal.raise_signal` runs the SIGINT handler at once,
# so the KeyboardInterrupt starts inside the callback, which Python reports as "Exception ignored"
# and drops. The collection comes as evaluate starts its work; a marker file says it happened.
_SWALLOWED_CTRL_C = """
import gc, signal, sys
from pathlib import Path
import jaxtrader.evaluate.run as run
signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, in the background too
armed = []
def callback(phase, info):
    if armed and phase == "start" and not Path({marker!r}).exists():
        Path({marker!r}).touch()
        signal.raise_signal(signal.SIGINT)
gc.callbacks.append(callback)
original = run.evaluate_checkpoint
def evaluate_checkpoint(*args, **kwargs):
    armed.append(True)
    gc.collect()
    return original(*args, **kwargs)
run.evaluate_checkpoint = evaluate_checkpoint
from jaxtrader.cli import main
main({args!r})
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_ctrl_c_swallowed_inside_a_gc_callback_still_stops_evaluate(
    trained: dict[str, Path], tmp_path: Path, log_format: str
) -> None:
    """Python reports a KeyboardInterrupt raised inside a gc callback (JAX registers some) through
    sys.unraisablehook and carries on: evaluate ran to its end, printed its table and wrote its
    files, exit 0, with an "Exception ignored ... KeyboardInterrupt" traceback on stderr. It ends
    as any Ctrl-C does now: exit 130, one "interrupted" line (one JSON record), nothing written."""
    marker, csv_path = tmp_path / "fired", tmp_path / "pred.csv"
    args = ["--log-format", log_format, "evaluate", "--checkpoint", str(trained["version_dir"]),
            "--split", "test", "--policy", "plain", "--no-record-policy",
            "--predictions", str(csv_path)]  # fmt: skip
    code = _SWALLOWED_CTRL_C.format(marker=str(marker), args=args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert marker.exists(), proc.stderr[-3000:]  # the Ctrl-C did land inside the callback
    assert (proc.returncode, proc.stdout) == (130, ""), proc.stderr[-3000:]
    assert not csv_path.exists()
    assert_one_interrupted_line(proc.stderr, log_format)


def test_report_dir_refuses_a_walkforward_run_directory(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """`--report-dir` named a walk-forward run still in progress (plan.json, some folds saved,
    no report yet): evaluate wrote its report.json, report.md and plots among the run's files,
    exit 0, and the run's --resume later wrote its own over them. Such a directory is refused
    before any work now, saying what it is; so is a complete run (named as such), and the run's
    files are left as they were."""
    from conftest import evaluate_report_dir_refused, tree_bytes
    from test_walkforward import CFG, WF

    from jaxtrader.walkforward import WalkForwardInterrupted, run_walkforward

    out = tmp_path / "run"
    with pytest.raises(WalkForwardInterrupted):  # stopped after its first fold: in progress
        run_walkforward(CFG, WF, out=out, should_stop=lambda: True)

    before = tree_bytes(out)
    assert "plan.json" in before and "report.json" not in before
    for checkpoint in (out / "fold_00", trained["version_dir"]):
        assert evaluate_report_dir_refused(out, checkpoint) == (
            f"error: --report-dir {out} is a walk-forward run in progress (1 of 2 folds saved), "
            "which writes its own report.json, report.md and plots there when it finishes; "
            "choose another folder for the report\n"
        )
    assert tree_bytes(out) == before

    run_walkforward(CFG, WF, out=out, resume=True)  # complete now
    before = tree_bytes(out)
    assert evaluate_report_dir_refused(out, out / "fold_00") == (
        f"error: --report-dir {out} is a complete walk-forward run (2 folds), whose report.json, "
        "report.md and plots evaluate would overwrite; choose another folder for the report\n"
    )
    assert tree_bytes(out) == before


def test_a_range_is_logged_as_a_range_and_a_plain_fold_names_the_plain_rule(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`evaluate --start/--end` reported split=range but logged `predicted` and `evaluated` with
    split=test. And a fold of a `walkforward --policy plain` run (its manifest holds no policy)
    got the note that `trade` keeps applying the policy the run chose, when it applies the plain
    rule."""
    import shutil

    import jaxtrader.evaluate.run as run_mod
    from jaxtrader.checkpoint import record_policy
    from jaxtrader.cli import main
    from jaxtrader.walkforward import PLAN_FILE

    events: list[tuple[str, dict[str, Any]]] = []
    real = run_mod.log_event
    monkeypatch.setattr(
        run_mod, "log_event",
        lambda log, event, *a, **kw: (events.append((event, kw)), real(log, event, *a, **kw)),
    )  # fmt: skip
    test = json.loads((trained["version_dir"] / "manifest.json").read_text())["splits"]["test"]
    main(["evaluate", "--checkpoint", str(trained["version_dir"]), "--start", test["start"],
          "--no-record-policy", "--json"])  # fmt: skip
    assert json.loads(capsys.readouterr().out)["split"] == "range"
    logged = {e: kw["split"] for e, kw in events if e in ("predicted", "evaluated")}
    assert logged == {"predicted": "range", "evaluated": "range"}

    run = tmp_path / "run"
    run.mkdir()
    (run / PLAN_FILE).write_text("{}")
    fold = Path(shutil.copytree(trained["version_dir"], run / "fold_00"))
    record_policy(fold, None)  # what a --policy plain run writes
    main(["evaluate", "--checkpoint", str(fold), "--split", "test", "--json"])
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert (
        f"policy not recorded in the checkpoint: it is a fold of the walk-forward run {run}, "
        "which holds no policy (a --policy plain run), so `trade` applies the plain rule"
    ) in notes, notes
