"""The evaluation table and its summary: every number recomputes from the predictions CSV alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import TradeRules
from jaxtrader.decisions import Policy, annualization, policy_positions, sharpe
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate import summary as s
from jaxtrader.evaluate.baselines import BaselinePredictions
from jaxtrader.evaluate.metrics import classification_metrics, reliability_table
from jaxtrader.evaluate.significance import (
    coverage_curve,
    effective_n,
    success_count,
    wilson_interval,
)


def _close(a: object, b: object, rel: float = 1e-10) -> bool:
    """Recursive approximate equality for nested JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, z, rel) for x, z in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-14)
    return a == b


def make_table(tmp_path: Path, long_short: bool = False) -> tuple[s.EvalRows, s.EvalSettings]:
    rng = np.random.default_rng(0)
    T = 600
    ts = pd.date_range("2024-01-01", periods=T, freq="1h", tz="UTC").as_unit("ns").asi8
    close = 100 * np.cumprod(1 + rng.normal(0, 0.01, T))
    open_ = np.concatenate([[100.0], close[:-1]]) * (1 + rng.normal(0, 0.001, T))
    rows = np.arange(50, 590)
    rows = rows[(rows < 300) | (rows > 305)]  # a hole: gap-filled candles are not prediction points
    h = 5
    fwd = close[rows + h] / close[rows] - 1
    labels = (fwd > 0).astype(int)
    prob = np.clip(
        0.5 + 0.1 * np.sign(fwd) * rng.random(rows.size) + rng.normal(0, 0.1, rows.size), 0, 1
    )
    baselines = BaselinePredictions(
        majority_class=0,
        train_up_rate=0.47,
        random_pred=rng.integers(0, 2, rows.size),
        momentum_pred=(close[rows] > close[rows - h]).astype(int),
        logistic_prob=rng.random(rows.size),
        lightgbm_prob=None,
        seed=0,
    )
    ppy, basis = annualization(3600, ts)
    settings = s.EvalSettings(
        split="test",
        horizon=h,
        interval_seconds=3600.0,
        periods_per_year=ppy,
        annualization_basis=basis,
        rules=TradeRules(
            fee_bps=10.0,
            slippage_bps=2.0,
            threshold=0.55 if long_short else 0.5,
            long_short=long_short,
        ),
        majority_class=0,
        train_up_rate=0.47,
        seed=0,
        bootstrap_samples=200,
        # A policy with a hysteresis band and a minimum hold: positions are path-dependent.
        policy=Policy(enter=0.56, exit=0.5, min_hold=3, long_short=long_short),
        policy_source="given",
    )
    table = s.build_rows(
        prob_up=prob,
        labels=labels,
        forward_return=fwd,
        candle_rows=rows,
        timestamps_ns=ts,
        open_=open_,
        close=close,
        baselines=baselines,
        settings=settings,
    )
    return table, settings


@pytest.mark.parametrize("long_short", [False, True])
def test_every_number_recomputes_from_the_csv(tmp_path: Path, long_short: bool) -> None:
    table, settings = make_table(tmp_path, long_short)
    report = s.summarize(table, settings)
    path = tmp_path / "pred.csv"
    s.write_csv(table, path)
    doc = json.loads(json.dumps({"settings": settings.to_dict(), **report}))

    df = pd.read_csv(path)
    assert list(df.columns) == list(s.CSV_COLUMNS)
    assert len(df) == doc["n"] == len(table)
    y = df["label"].to_numpy()
    p = df["prob_up"].to_numpy()
    cls = classification_metrics(y, (p > 0.5).astype(int), p)
    assert _close(cls, doc["classification"], rel=1e-12)
    assert _close(reliability_table(y, p), doc["calibration"]["reliability"])

    cfg = doc["settings"]
    pos = policy_positions(Policy.from_dict(cfg["policy"]), p)
    np.testing.assert_array_equal(pos, df["position"].to_numpy())
    assert doc["policy"]["selected"] == cfg["policy"]
    fee, slip = cfg["fee_bps"] / 1e4, cfg["slippage_bps"] / 1e4
    series = bt.simulate(pos, df["asset_return"].to_numpy(), fee, slip)
    np.testing.assert_allclose(series.equity, df["equity"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(series.fee, df["fee"].to_numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        series.strategy_return, df["strategy_return"].to_numpy(), rtol=1e-12, atol=1e-15
    )
    ts = pd.to_datetime(df["timestamp"], utc=True)
    span = (ts.iloc[-1] - ts.iloc[0]) / pd.Timedelta(cfg["interval_seconds"], unit="s") + 1
    perf = bt.performance(series, cfg["periods_per_year"], span)
    for key, value in doc["backtest"].items():
        assert perf[key] == pytest.approx(value, rel=1e-10), key
    assert df["equity"].iloc[-1] - 1 == pytest.approx(doc["backtest"]["total_return"], rel=1e-12)
    assert df["fee"].sum() == pytest.approx(doc["backtest"]["fees_paid"], rel=1e-12)
    assert sharpe(df["strategy_return"].to_numpy(), cfg["periods_per_year"]) == pytest.approx(
        doc["backtest"]["sharpe"], rel=1e-10
    )
    hold = bt.performance(
        bt.simulate(np.ones(len(df)), df["asset_return"].to_numpy(), fee, slip),
        cfg["periods_per_year"],
        span,
    )
    assert _close(hold, doc["buy_and_hold"])
    plain_pos = policy_positions(Policy.plain(cfg["threshold"], cfg["long_short"]), p)
    plain = bt.performance(
        bt.simulate(plain_pos, df["asset_return"].to_numpy(), fee, slip),
        cfg["periods_per_year"],
        span,
    )
    assert _close(plain, doc["backtest_plain"])
    gross = bt.simulate(pos, df["asset_return"].to_numpy(), 0.0).equity[-1] - 1
    assert doc["policy"]["comparison"]["selected"]["fee_drag"] == pytest.approx(
        gross - doc["backtest"]["total_return"], rel=1e-12
    )
    assert _close(coverage_curve(p, y, cfg["horizon"]), doc["coverage_curve"])

    n_eff = effective_n(len(df), cfg["horizon"])
    assert doc["significance"]["effective_n"] == n_eff
    k = success_count(cls["accuracy"], n_eff)  # one whole count for the interval and p-value
    assert doc["significance"]["successes_effective"] == k
    assert list(wilson_interval(k / n_eff, n_eff)) == pytest.approx(
        doc["significance"]["accuracy_ci95"]
    )
    majority_acc = float(np.mean(y == cfg["majority_class"]))
    assert doc["baselines"]["majority"]["accuracy"] == pytest.approx(majority_acc)
    mom = classification_metrics(y, df["momentum_pred"].to_numpy())
    assert doc["baselines"]["momentum"]["accuracy"] == pytest.approx(mom["accuracy"])
    assert doc["annualization"]["periods_per_year"] == 8760.0

    # And the library's own reader gives the identical summary.
    again = s.summarize(s.read_csv(path), settings)
    assert _close(json.loads(json.dumps(again)), {k: v for k, v in doc.items()})


def test_sharpe_ci_and_period_are_reported(tmp_path: Path) -> None:
    table, settings = make_table(tmp_path)
    report = s.summarize(table, settings)
    ci = report["significance"]["sharpe_ci95"]
    assert ci["lo"] < report["backtest"]["sharpe"] < ci["hi"]
    assert report["period"]["first"] == "2024-01-03T02:00:00Z"
    assert math.isfinite(report["calibration"]["ece"])
    assert report["annualization"]["sqrt_factor"] == pytest.approx(math.sqrt(8760))


def test_verdict_states_significance_and_costs_plainly(tmp_path: Path) -> None:
    table, settings = make_table(tmp_path)
    doc = s.summarize(table, settings)
    doc["significance"]["p_value_vs_best_constant"] = 0.2
    lines = s.verdict(doc)
    assert "NOT significantly better than the stronger of a coin" in lines[0]
    assert "p = 0.2" in lines[0]
    doc["significance"]["p_value_vs_best_constant"] = 0.001
    assert "beats both a coin (0.5) and the training-majority" in s.verdict(doc)[0]
    doc["significance"]["sharpe_ci95"].update(lo=-1.0, hi=2.0)
    doc["significance"]["sharpe_gross_ci95"].update(lo=-0.5, hi=3.0)
    joined = "\n".join(s.verdict(doc))
    assert "net Sharpe has a 95% interval [-1.00, 2.00] that includes 0" in joined
    assert "Sharpe before costs has a 95% interval [-0.50, 3.00]" in joined
    doc["baselines"]["logistic"]["accuracy"] = 0.99
    assert any("logistic baseline is at least as accurate" in line for line in s.verdict(doc))
    doc["significance"]["sharpe_gross_ci95"].update(lo=0.2, hi=3.0)
    doc["backtest_gross"]["sharpe"], doc["backtest"]["sharpe"] = 1.5, -2.0
    doc["backtest"].update(trades=100, fees_paid=0.25)
    assert any(
        "before costs the signal has a Sharpe of 1.50" in line
        and "100 trades paid 25.0% of the starting equity" in line
        for line in s.verdict(doc)
    )


def test_a_majority_below_one_half_is_not_the_bar() -> None:
    from jaxtrader.evaluate.significance import accuracy_significance

    # The training majority (up) is the minority in the evaluated split: majority scores 0.47.
    out = accuracy_significance(0.52, n=3000, horizon=5, majority_accuracy=0.47)
    assert out["p_value_vs_majority"] < 0.05  # a weak bar...
    assert out["p_value_vs_chance"] > 0.05  # ...that a coin already clears
    assert out["p_value_vs_best_constant"] == out["p_value_vs_chance"]


def test_gross_backtest_differs_from_net_only_by_costs(tmp_path: Path) -> None:
    table, settings = make_table(tmp_path)
    doc = s.summarize(table, settings)
    gross, net = doc["backtest_gross"], doc["backtest"]
    assert gross["fees_paid"] == 0.0
    assert gross["trades"] == net["trades"] and gross["exposure"] == net["exposure"]
    assert gross["total_return"] > net["total_return"]
    free = s.summarize(table, s.EvalSettings.from_dict({**settings.to_dict(), "fee_bps": 0.0,
                                                       "slippage_bps": 0.0}))  # fmt: skip
    assert free["backtest"]["total_return"] == pytest.approx(gross["total_return"], rel=1e-12)
