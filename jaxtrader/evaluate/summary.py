"""The evaluation table (one row per evaluated candle) and the summary computed from it alone.

`build_rows` turns model probabilities, labels, baseline predictions and candle prices into an
`EvalRows` table; `summarize` computes every reported number from that table plus a few scalar
settings (`EvalSettings`, which carry the decision `Policy`), so the `--predictions` CSV
(`write_csv` / `read_csv`) is enough to recompute the whole report. The one exception is the policy
selection table (`doc["policy"]["selection"]`), which is computed on the validation split by
`evaluate.run` and only recorded here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrader.config import TradeRules
from jaxtrader.decisions import Policy, describe_policy, policy_positions, positions_from_probs
from jaxtrader.errors import DataError
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.baselines import BaselinePredictions, baseline_metrics
from jaxtrader.evaluate.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_table,
)
from jaxtrader.evaluate.significance import (
    accuracy_significance,
    coverage_curve,
    sharpe_bootstrap_ci,
)

# Classification always calls "up" above 0.5; the backtest threshold is a separate trading choice.
CLASSIFY_AT = 0.5

CSV_COLUMNS = (
    "timestamp",
    "prob_up",
    "pred",
    "label",
    "forward_return",
    "position",
    "asset_return",
    "fee",
    "strategy_return",
    "equity",
    "random_pred",
    "momentum_pred",
    "logistic_prob",
    "lightgbm_prob",
)


@dataclass(frozen=True)
class EvalSettings:
    """The scalars that, with the rows, determine every reported number."""

    split: str
    horizon: int
    interval_seconds: float
    periods_per_year: float
    annualization_basis: str
    rules: TradeRules = dataclasses.field(default_factory=TradeRules)
    majority_class: int = 1
    train_up_rate: float = 0.5
    seed: int = 0
    bootstrap_samples: int = 1000
    # The policy that makes the positions; None = the plain rule of `rules` (threshold, long/short).
    policy: Policy | None = None
    policy_source: str = "plain"

    @property
    def plain_policy(self) -> Policy:
        return Policy.plain(self.rules.threshold, self.rules.long_short)

    @property
    def active_policy(self) -> Policy:
        return self.policy if self.policy is not None else self.plain_policy

    def to_dict(self) -> dict[str, Any]:
        """Flat: the rules' fields sit where they are in the report ("fee_bps", ...); the policy
        is a nested mapping."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "rules":
                out.update(dataclasses.asdict(value))
            elif f.name == "policy":
                out["policy"] = self.active_policy.to_dict()
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        names = {f.name for f in dataclasses.fields(cls)} - {"rules", "policy"}
        rule_names = {f.name for f in dataclasses.fields(TradeRules)}
        rules = TradeRules(**{k: v for k, v in d.items() if k in rule_names})
        policy = Policy.from_dict(d["policy"]) if d.get("policy") else None
        return cls(rules=rules, policy=policy, **{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class EvalRows:
    """One entry per evaluated candle (a labeled, non-gap-filled prediction point), in time order."""

    timestamp_ns: np.ndarray  # candle OPEN time of t, int64 ns UTC
    prob_up: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    forward_return: np.ndarray
    position: np.ndarray
    asset_return: np.ndarray  # what the position earns: open[t_next + 1] / open[t + 1] - 1
    fee: np.ndarray
    strategy_return: np.ndarray
    equity: np.ndarray
    random_pred: np.ndarray
    momentum_pred: np.ndarray
    logistic_prob: np.ndarray
    lightgbm_prob: np.ndarray | None

    def __len__(self) -> int:
        return int(self.prob_up.size)


def build_rows(
    *,
    prob_up: np.ndarray,
    labels: np.ndarray,
    forward_return: np.ndarray,
    candle_rows: np.ndarray,
    timestamps_ns: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    baselines: BaselinePredictions,
    settings: EvalSettings,
) -> EvalRows:
    """Assembles the evaluation table. `candle_rows` index the full candle arrays (open_, close,
    timestamps_ns); prob_up/labels/forward_return/baselines are aligned with `candle_rows`."""
    t = np.asarray(candle_rows, dtype=np.int64)
    p = np.asarray(prob_up, dtype=np.float64)
    n = t.size
    for name, arr in (("prob_up", p), ("labels", labels), ("forward_return", forward_return)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows, expected {n}")
    if n == 0:
        raise DataError(f"the {settings.split} split has no prediction rows to evaluate")
    asset_return, _ = bt.period_returns(open_, close, t)
    position = policy_positions(settings.active_policy, p)
    series = bt.simulate(position, asset_return, *bt.rates(settings.rules))
    return EvalRows(
        timestamp_ns=np.asarray(timestamps_ns, dtype=np.int64)[t],
        prob_up=p,
        pred=(p > CLASSIFY_AT).astype(np.int64),
        label=np.asarray(labels, dtype=np.int64),
        forward_return=np.asarray(forward_return, dtype=np.float64),
        position=series.position,
        asset_return=asset_return,
        fee=series.fee,
        strategy_return=series.strategy_return,
        equity=series.equity,
        random_pred=baselines.random_pred,
        momentum_pred=baselines.momentum_pred,
        logistic_prob=baselines.logistic_prob,
        lightgbm_prob=baselines.lightgbm_prob,
    )


def span_periods(timestamp_ns: np.ndarray, interval_seconds: float) -> float:
    """Candles covered by the rows: from the first decision's fill to the last period's end."""
    ts = np.asarray(timestamp_ns, dtype=np.int64)
    return float((ts[-1] - ts[0]) / (interval_seconds * 1e9) + 1.0)


def summarize(rows: EvalRows, settings: EvalSettings) -> dict[str, Any]:
    """Every reported number, computed from the rows and settings only."""
    y = rows.label
    n = len(rows)
    classification = classification_metrics(y, rows.pred, rows.prob_up)
    baselines = baseline_metrics(
        y,
        majority=settings.majority_class,
        train_up_rate=settings.train_up_rate,
        random_pred=rows.random_pred,
        momentum_pred=rows.momentum_pred,
        logistic_prob=rows.logistic_prob,
        lightgbm_prob=rows.lightgbm_prob,
        threshold=CLASSIFY_AT,
        seed=settings.seed,
    )
    majority_acc = baselines["majority"]["accuracy"]
    significance = accuracy_significance(
        classification["accuracy"], n, settings.horizon, majority_acc
    )
    ppy = settings.periods_per_year
    span = span_periods(rows.timestamp_ns, settings.interval_seconds)

    fee_rate, slip_rate = bt.rates(settings.rules)

    def run(position: np.ndarray, costs: bool = True) -> tuple[Any, dict[str, Any]]:
        rates = (fee_rate, slip_rate) if costs else (0.0, 0.0)
        series = bt.simulate(position, rows.asset_return, *rates)
        return series, bt.performance(series, ppy, span)

    strategy, strategy_perf = run(rows.position)
    _, hold_perf = run(np.ones(n))
    gross, gross_perf = run(rows.position, costs=False)
    plain_pos = policy_positions(settings.plain_policy, rows.prob_up)
    _, plain_perf = run(plain_pos)
    _, plain_gross = run(plain_pos, costs=False)
    for key, series in (("sharpe_ci95", strategy), ("sharpe_gross_ci95", gross)):
        significance[key] = sharpe_bootstrap_ci(
            series.strategy_return,
            ppy,
            horizon=settings.horizon,
            num_samples=settings.bootstrap_samples,
            seed=settings.seed,
        )
    baseline_backtests = {
        "momentum": run(rows.momentum_pred.astype(np.float64))[1],
        "logistic": run(
            positions_from_probs(
                rows.logistic_prob, settings.rules.threshold, settings.rules.long_short
            )
        )[1],
    }
    reliability = reliability_table(y, rows.prob_up)
    policy = {
        "selected": settings.active_policy.to_dict(),
        "source": settings.policy_source,
        "plain": settings.plain_policy.to_dict(),
        # Net figures of the selected policy beside the plain rule on the same rows.
        "comparison": {
            name: _activity(net, gross_)
            for name, net, gross_ in (
                ("selected", strategy_perf, gross_perf),
                ("plain", plain_perf, plain_gross),
            )
        },
    }
    return {
        "split": settings.split,
        "n": n,
        "period": {
            "first": _iso(rows.timestamp_ns[0]),
            "last": _iso(rows.timestamp_ns[-1]),
            "candles_spanned": span,
        },
        "classification": classification,
        "baselines": baselines,
        "significance": significance,
        "calibration": {
            "brier": classification["brier"],
            "log_loss": classification["log_loss"],
            "ece": expected_calibration_error(reliability),
            "reliability": reliability,
        },
        "policy": policy,
        "backtest": strategy_perf,
        # The same positions without fees or slippage: how much of the result the costs explain.
        "backtest_gross": gross_perf,
        "backtest_plain": plain_perf,
        "coverage_curve": coverage_curve(rows.prob_up, y, settings.horizon, threshold=CLASSIFY_AT),
        "buy_and_hold": hold_perf,
        "baseline_backtests": baseline_backtests,
        "annualization": {
            "periods_per_year": ppy,
            "sqrt_factor": math.sqrt(ppy),
            "basis": settings.annualization_basis,
            "interval_seconds": settings.interval_seconds,
        },
        "settings": settings.to_dict(),
    }


ACTIVITY_KEYS = (
    "total_return",
    "sharpe",
    "trades",
    "trades_per_month",
    "avg_holding_periods",
    "turnover",
    "exposure",
    "fees_paid",
)


def _activity(net: dict[str, Any], gross: dict[str, Any]) -> dict[str, Any]:
    """The comparison row of one policy: net figures, activity, and the fee drag (gross minus
    net total return)."""
    out = {k: net[k] for k in ACTIVITY_KEYS}
    out["gross_return"] = gross["total_return"]
    out["gross_sharpe"] = gross["sharpe"]
    out["fee_drag"] = gross["total_return"] - net["total_return"]
    return out


def verdict(doc: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """Plain-language conclusions drawn only from the numbers in `doc` (no new computation).

    Accuracy is judged against the stronger of a coin (0.5) and the training-majority baseline.
    """
    cls, sig, base = doc["classification"], doc["significance"], doc["baselines"]
    acc, maj = cls["accuracy"], base["majority"]["accuracy"]
    p = sig["p_value_vs_best_constant"]
    bar = f"a coin (0.5) and the training-majority baseline ({maj:.4f})"
    lines = [
        (
            f"accuracy {acc:.4f} beats both {bar} at the {1 - alpha:.0%} level "
            f"(p = {p:.3g}, effective n {sig['effective_n']})"
            if p < alpha
            else f"accuracy {acc:.4f} is NOT significantly better than the stronger of {bar}: "
            f"p = {p:.3g} on effective n {sig['effective_n']}"
        )
    ]
    best_name, best = max(
        ((k, v) for k, v in base.items() if k != "random"), key=lambda kv: kv[1]["accuracy"]
    )
    if best["accuracy"] >= acc:
        lines.append(f"the {best_name} baseline is at least as accurate ({best['accuracy']:.4f})")
    for key, label in (("sharpe_ci95", "net Sharpe"), ("sharpe_gross_ci95", "Sharpe before costs")):
        ci = sig.get(key)
        if ci and ci["lo"] is not None and ci["lo"] <= 0 <= ci["hi"]:
            lines.append(
                f"{label} has a 95% interval [{ci['lo']:.2f}, {ci['hi']:.2f}] that includes 0: "
                "no evidence of a positive risk-adjusted return"
            )
    net, gross = doc["backtest"], doc.get("backtest_gross")
    gci = sig.get("sharpe_gross_ci95")
    if (
        gross
        and gci
        and gci["lo"] is not None
        and gci["lo"] > 0
        and net["sharpe"] < gross["sharpe"]
    ):
        lines.append(
            f"before costs the signal has a Sharpe of {gross['sharpe']:.2f} (95% interval "
            f"[{gci['lo']:.2f}, {gci['hi']:.2f}]), but {net['trades']} trades paid "
            f"{net['fees_paid']:.1%} of the starting equity in costs, leaving {net['sharpe']:.2f}"
        )
    pol = doc.get("policy")
    if pol and pol["selected"] != pol["plain"]:
        sel, plain = pol["comparison"]["selected"], pol["comparison"]["plain"]
        lines.append(
            f"the {pol['source'].split(':')[0]} policy ({describe_policy(pol['selected'])}) made "
            f"{sel['trades']} trades with net Sharpe {sel['sharpe']:.2f} and fee drag "
            f"{sel['fee_drag']:.1%}; the plain rule made {plain['trades']} with "
            f"{plain['sharpe']:.2f} and {plain['fee_drag']:.1%}"
        )
    s_model, s_hold = net["sharpe"], doc["buy_and_hold"]["sharpe"]
    lines.append(
        f"net Sharpe {s_model:.2f} vs buy-and-hold {s_hold:.2f} "
        f"({'better' if s_model > s_hold else 'worse'})"
    )
    return lines


def _iso(ns: int | np.integer) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(int(ns) / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def write_csv(rows: EvalRows, path: str | Path) -> None:
    """One line per evaluated candle; floats at full precision so numbers recompute exactly
    (gzip-compressed when `path` ends in .gz; `read_csv` reads either)."""
    from jaxtrader.evaluate.trades import write_table_csv

    cols: dict[str, Any] = {
        "timestamp": [_iso(v) for v in rows.timestamp_ns],
        "lightgbm_prob": rows.lightgbm_prob if rows.lightgbm_prob is not None else [""] * len(rows),
    }
    columns = [cols[c] if c in cols else getattr(rows, c) for c in CSV_COLUMNS]
    write_table_csv(path, CSV_COLUMNS, ([col[i] for col in columns] for i in range(len(rows))))


def read_csv(path: str | Path) -> EvalRows:
    """Reads a predictions CSV written by `write_csv` back into an `EvalRows` table."""
    import pandas as pd

    from jaxtrader.data import timestamps_ns

    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read predictions file {p}: {e}") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"predictions file {p} lacks columns {missing}; write it with --predictions"
        )
    ts_ns = timestamps_ns(df["timestamp"])
    lgbm = df["lightgbm_prob"]
    return EvalRows(
        timestamp_ns=np.asarray(ts_ns, dtype=np.int64),
        prob_up=df["prob_up"].to_numpy(np.float64),
        pred=df["pred"].to_numpy(np.int64),
        label=df["label"].to_numpy(np.int64),
        forward_return=df["forward_return"].to_numpy(np.float64),
        position=df["position"].to_numpy(np.float64),
        asset_return=df["asset_return"].to_numpy(np.float64),
        fee=df["fee"].to_numpy(np.float64),
        strategy_return=df["strategy_return"].to_numpy(np.float64),
        equity=df["equity"].to_numpy(np.float64),
        random_pred=df["random_pred"].to_numpy(np.int64),
        momentum_pred=df["momentum_pred"].to_numpy(np.int64),
        logistic_prob=df["logistic_prob"].to_numpy(np.float64),
        lightgbm_prob=None if lgbm.isna().all() else lgbm.to_numpy(np.float64),
    )
