"""Walk-forward outputs: predictions.csv, the pooled report (JSON and markdown) and its plots.

Every number in `report.json` except `timing` and the fold boundaries is computed by `summarize`
from the predictions table alone plus `settings` (stored in the report), with the evaluate
package's functions: `metrics.classification_metrics`, `significance.accuracy_significance`
(Wilson interval and binomial p-values on the effective n = n // horizon, since h-candle labels
overlap), `backtest.simulate` / `backtest.performance` (net of fees, the stitched test span) and
`decisions.annualization`. So `predictions.csv` + `settings` recompute the report
(tests/test_walkforward.py does exactly that).

The decision policy (`settings.policy`): `auto` applies each fold's own policy, chosen by
`evaluate.selection.select_policy` on that fold's VAL block only (`fold_policies`: the K seeds'
mean P(up) on the val rows and the returns a position decided there earns; the test block is never
read), to that fold's test block, from flat at the block's first row (`decisions.policy_positions`);
`plain` is the old rule, long (or long/short) when P(up) > `settings.threshold`, every candle. The
chosen policies are stored in `settings.fold_policies`, the position actually taken in the
`position` column of predictions.csv, and the plain rule's backtest is reported beside the selected
one (`policy.plain`).

The majority rate of a fold is the accuracy of always predicting the fold's TRAINING majority
class on its test block (the honest constant baseline `evaluate` uses); the pooled majority rate is
the same over all test rows, each with its own fold's class.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from jaxtrader.decisions import Policy, annualization, policy_positions, positions_from_probs
from jaxtrader.errors import CheckpointError
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.metrics import classification_metrics
from jaxtrader.evaluate.significance import (
    accuracy_significance,
    count_interval,
    effective_n,
    sharpe_bootstrap_ci,
)
from jaxtrader.evaluate.summary import CLASSIFY_AT, span_periods

if TYPE_CHECKING:
    from jaxtrader.config import AppConfig
    from jaxtrader.walkforward import FoldResult, Prepared, WalkForwardSettings

PREDICTIONS_FILE = "predictions.csv"
BASE_COLUMNS = ("timestamp", "fold", "label", "forward_return", "prob_up")
_SEED_RE = re.compile(r"^prob_up_s(\d+)$")


def predictions_table(
    market_timestamp_ns: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    stitched: dict[str, np.ndarray],
) -> pd.DataFrame:
    """One row per out-of-sample test point, in time order.

    `prob_up` is the seed ensemble (mean over seeds); `asset_return` is what a position taken at
    the row earns in the stitched backtest (open-to-open to the next test row, see `backtest`).
    """
    rows = stitched["test_rows"]
    p_KxN = np.asarray(stitched["prob_up_KxN"], dtype=np.float32)
    asset_return, _ = bt.period_returns(open_, close, rows)
    ts = pd.to_datetime(np.asarray(market_timestamp_ns)[rows], utc=True)
    table = {
        "timestamp": [t.isoformat().replace("+00:00", "Z") for t in ts],
        "fold": stitched["fold"].astype(np.int64),
        "label": stitched["labels"].astype(np.int64),
        "forward_return": stitched["forward_returns"].astype(np.float64),
        "prob_up": p_KxN.mean(axis=0).astype(np.float64),
    }
    for s in range(p_KxN.shape[0]):
        table[f"prob_up_s{s}"] = p_KxN[s].astype(np.float64)
    table["asset_return"] = asset_return
    return pd.DataFrame(table)


def write_predictions(df: pd.DataFrame, path: Path) -> None:
    """Full float precision so the report recomputes exactly."""
    df.to_csv(path, index=False, float_format="%.17g")


def read_predictions(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def seed_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if _SEED_RE.match(c)]
    return sorted(cols, key=lambda c: int(_SEED_RE.match(c).group(1)))  # type: ignore[union-attr]


def _timestamps_ns(df: pd.DataFrame) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(df["timestamp"], utc=True)).as_unit("ns").asi8


def _accuracy(labels: np.ndarray, prob: np.ndarray) -> float:
    return float(np.mean((prob > CLASSIFY_AT).astype(np.int64) == labels))


def fold_policies(
    results: Sequence[FoldResult],
    rules: Any,
    horizon: int,
    interval_seconds: float,
    market_timestamp_ns: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Each fold's policy chosen on its own val block (K seeds' mean P(up) there, and the period
    returns of its val rows): the policy's fields plus its val net Sharpe, return and trades.
    Only the fold's val arrays are read, never its test block."""
    from jaxtrader.evaluate.selection import select_policy

    out = {}
    for r in results:
        if r.val_rows.size < 2:
            raise CheckpointError(
                f"fold {r.fold} was saved without its validation predictions (a run from before "
                "walk-forward policies); rerun with --policy plain, or delete its fold directory "
                "and --resume to retrain it"
            )
        # The market's calendar from its candles up to the val block's end, none after it.
        known = np.asarray(market_timestamp_ns)[: int(r.val_rows.max()) + 1]
        ppy, _ = annualization(interval_seconds, known)
        policy, table = select_policy(
            np.asarray(r.val_prob_up_KxN, np.float64).mean(axis=0),
            r.val_asset_returns,
            rules,
            horizon=horizon,
            periods_per_year=ppy,
        )
        row = next(t for t in table if t["selected"])
        out[str(r.fold)] = {
            **policy.to_dict(),
            "val_net_sharpe": row["net_sharpe"],
            "val_net_return": row["net_return"],
            "val_trades": row["trades"],
            "val_n": int(r.val_rows.size),
        }
    return out


def fold_policy(settings: dict[str, Any], fold: int) -> Policy:
    """The policy applied to `fold`'s test block under `settings` (auto: the fold's own)."""
    if settings.get("policy", "plain") == "plain":
        return Policy.plain(settings["threshold"], settings["long_short"])
    d = settings["fold_policies"][str(fold)]
    return Policy.from_dict(
        {k: d[k] for k in ("enter", "exit", "min_hold", "max_position")}
        | {"long_short": d["long_short"]}
    )


def positions(df: pd.DataFrame, settings: dict[str, Any], plain: bool = False) -> np.ndarray:
    """The position taken at every row: each fold's policy on its own test block, from flat
    (`plain`: the P(up) > threshold rule, whatever `settings.policy` says)."""
    p = df["prob_up"].to_numpy(np.float64)
    if plain or settings.get("policy", "plain") == "plain":
        return positions_from_probs(p, settings["threshold"], settings["long_short"])
    fold = df["fold"].to_numpy(np.int64)
    pos = np.zeros(len(df))
    for f in np.unique(fold):
        at = fold == f
        pos[at] = policy_positions(fold_policy(settings, int(f)), p[at])
    return pos


def _backtest(
    df: pd.DataFrame, settings: dict[str, Any], plain: bool = False
) -> tuple[dict, dict, Any, Any]:
    """The policy's and buy-and-hold's performance, then their per-candle series (net)."""
    ppy = settings["periods_per_year"]
    span = span_periods(_timestamps_ns(df), settings["interval_seconds"])
    fee, slip = settings["fee_bps"] / 1e4, settings["slippage_bps"] / 1e4
    pos = positions(df, settings, plain)
    r = df["asset_return"].to_numpy(np.float64)
    strategy = bt.simulate(pos, r, fee, slip)
    hold = bt.simulate(np.ones(len(df)), r, fee, slip)
    return bt.performance(strategy, ppy, span), bt.performance(hold, ppy, span), strategy, hold


SHARPE_BOOTSTRAP_SAMPLES = 1000  # evaluate's default (`evaluate.summary`)
# The pooled keys of the stitched net Sharpe intervals: the strategy's and buy-and-hold's.
NET_SHARPE_CI = "sharpe_net_ci95"
BUY_AND_HOLD_SHARPE_CI = "buy_and_hold_sharpe_ci95"


def _bootstrap_sharpe_ci(series: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """A stitched backtest's net Sharpe interval, as evaluate reports its own: a stationary
    bootstrap of the per-candle net returns (blocks from the label horizon), seeded by the run's
    seed, so the strategy's and buy-and-hold's intervals resample the same way."""
    return sharpe_bootstrap_ci(
        series.strategy_return,
        settings["periods_per_year"],
        horizon=int(settings["horizon"]),
        num_samples=SHARPE_BOOTSTRAP_SAMPLES,
        seed=int(settings.get("seed", 0)),
    )


def summarize(df: pd.DataFrame, settings: dict[str, Any]) -> dict[str, Any]:
    """Per-fold and pooled figures from the predictions table and settings alone."""
    h = int(settings["horizon"])
    seeds = seed_columns(df)
    y_all = df["label"].to_numpy(np.int64)
    p_all = df["prob_up"].to_numpy(np.float64)
    majority_of = {int(k): int(v) for k, v in settings["fold_majority_class"].items()}
    maj_pred = df["fold"].map(majority_of).to_numpy(np.int64)
    folds = []
    for fold_key, part in df.groupby("fold", sort=True):
        fold = int(fold_key)  # type: ignore[arg-type]
        y = part["label"].to_numpy(np.int64)
        p = part["prob_up"].to_numpy(np.float64)
        cls = classification_metrics(y, (p > CLASSIFY_AT).astype(np.int64), p)
        majority = float(np.mean(y == majority_of[fold]))
        perf, hold, _, _ = _backtest(part, settings)
        plain_perf, _, _, _ = _backtest(part, settings, plain=True)
        folds.append(
            {
                "fold": fold,
                "n": int(y.size),
                "effective_n": effective_n(int(y.size), h),
                "accuracy": cls["accuracy"],
                "accuracy_ci95": count_interval(cls["accuracy"], effective_n(y.size, h)),
                "majority_rate": majority,
                "auc": cls["roc_auc"],
                "seed_accuracies": [_accuracy(y, part[c].to_numpy(np.float64)) for c in seeds],
                "sharpe_net": perf["sharpe"],
                "sharpe_net_plain": plain_perf["sharpe"],
                "trades": perf["trades"],
                "buy_and_hold_sharpe": hold["sharpe"],
            }
        )
        if "fold_policies" in settings:
            folds[-1]["fold_policy"] = settings["fold_policies"][str(fold)]
    cls = classification_metrics(y_all, (p_all > CLASSIFY_AT).astype(np.int64), p_all)
    majority = float(np.mean(y_all == maj_pred))
    sig = accuracy_significance(cls["accuracy"], int(y_all.size), h, majority)
    seed_acc = np.array([_accuracy(y_all, df[c].to_numpy(np.float64)) for c in seeds])
    perf, hold, strategy, hold_series = _backtest(df, settings)
    pooled = {
        "n": int(y_all.size),
        "effective_n": sig["effective_n"],
        "accuracy": cls["accuracy"],
        "accuracy_ci95": sig["accuracy_ci95"],
        "majority_rate": majority,
        "p_value_vs_majority": sig["p_value_vs_majority"],
        "p_value_vs_chance": sig["p_value_vs_chance"],
        # The verdict: a training majority class can score below 50% on the test blocks when the
        # balance flips, and beating it is then no evidence; beat both constants, as evaluate does.
        "p_value_vs_best_constant": sig["p_value_vs_best_constant"],
        "auc": cls["roc_auc"],
        "seed_accuracies": seed_acc.tolist(),
        "seed_accuracy_mean": float(seed_acc.mean()),
        "seed_accuracy_std": float(seed_acc.std(ddof=1)) if seed_acc.size > 1 else 0.0,
        # `accuracy` above is the ensemble's (mean P(up) over seeds), repeated under its own name.
        "ensemble_accuracy": cls["accuracy"],
        "folds_beating_majority": int(sum(f["accuracy"] > f["majority_rate"] for f in folds)),
        "folds_beating_best_constant": int(
            sum(f["accuracy"] > max(0.5, f["majority_rate"]) for f in folds)
        ),
        # The stitched net Sharpe's uncertainty, as evaluate reports its own (a stationary
        # bootstrap of the per-candle returns, seeded by the run's seed): one run's selected
        # policy can move this figure a lot on rounding alone, and the interval says how little
        # the point figure pins down.
        NET_SHARPE_CI: _bootstrap_sharpe_ci(strategy, settings),
        # Buy-and-hold's over the same span (net of its one entry fee): whether the strategy's
        # interval and the market's own overlap is the comparison a reader makes.
        BUY_AND_HOLD_SHARPE_CI: _bootstrap_sharpe_ci(hold_series, settings),
    }
    plain_perf, _, _, _ = _backtest(df, settings, plain=True)
    mode = settings.get("policy", "plain")
    policy = {
        "mode": mode,
        "applied": "each fold's own val-selected policy on its test block"
        if mode == "auto"
        else f"P(up) > {settings['threshold']:g} every candle",
        "folds": [{"fold": f["fold"], **f.get("fold_policy", {})} for f in folds],
        "selected": perf if mode == "auto" else None,
        "plain": plain_perf,
    }
    return {
        "folds": folds,
        "pooled": pooled,
        "backtest": perf,
        "buy_and_hold": hold,
        "policy": policy,
    }


def build_settings(
    prepared: Prepared,
    cfg: AppConfig,
    wf: WalkForwardSettings,
    results: Sequence[FoldResult],
) -> dict[str, Any]:
    """The scalars that, with predictions.csv, determine every reported number."""
    interval_s = prepared.market.interval_seconds
    ppy, basis = annualization(interval_s, prepared.market.timestamp_ns)  # the market's calendar
    chosen = (
        fold_policies(
            results, cfg.backtest, cfg.dataset.horizon, interval_s, prepared.market.timestamp_ns
        )
        if wf.policy == "auto"
        else None
    )
    return {
        "symbol": prepared.market.symbol,
        "arch": cfg.model.arch,
        "data": prepared.plan["data"],
        "folds": wf.folds,
        "seeds": wf.seeds,
        "window": wf.window,
        "train_candles": wf.train_candles,
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
        "patience": cfg.train.patience,
        "horizon": cfg.dataset.horizon,
        "seq_len": cfg.dataset.seq_len,
        "interval_seconds": interval_s,
        "periods_per_year": ppy,
        "annualization_basis": basis,
        "fee_bps": cfg.backtest.fee_bps,
        "slippage_bps": cfg.backtest.slippage_bps,
        "threshold": cfg.backtest.threshold,
        "long_short": cfg.backtest.long_short,
        "fold_majority_class": {str(r.fold): r.majority_class for r in results},
        "policy": wf.policy,
        **({"fold_policies": chosen} if chosen is not None else {}),
    }


def write_outputs(
    out: Path,
    prepared: Prepared,
    cfg: AppConfig,
    wf: WalkForwardSettings,
    results: Sequence[FoldResult],
) -> dict[str, Any]:
    """predictions.csv, report.json, report.md and the plots; returns the report document."""
    from jaxtrader.logs import jsonable
    from jaxtrader.walkforward import stitch

    market = prepared.market
    stitched = stitch(results)
    df = predictions_table(
        market.timestamp_ns, market.ohlcv_Tx5[:, 0], market.ohlcv_Tx5[:, 3], stitched
    )
    settings = build_settings(prepared, cfg, wf, results)
    df["position"] = positions(df, settings)
    write_predictions(df, out / PREDICTIONS_FILE)
    if "fold_policies" in settings:
        _record_fold_policies(out, settings)
    else:
        _clear_fold_policies(out, results)
    doc = summarize(df, settings)
    by_fold = {r.fold: r for r in results}
    for row in doc["folds"]:
        r = by_fold[row["fold"]]
        spans = {
            f"{name}_{end}": r.splits[name][end]
            for name in ("train", "val", "test")
            for end in ("start", "end")
        }
        row.update(spans)
        row["seconds"] = round(r.seconds, 3)
        row["best_epochs"] = r.best_epochs
        row["stopped_reason"] = r.stopped_reason
        row["checkpoint"] = str(out / f"fold_{r.fold:02d}")
    total_samples = sum(r.samples for r in results)
    total_train = sum(r.train_seconds for r in results)
    report = {
        **doc,
        "settings": settings,
        "timing": {
            "seconds_per_fold": [round(r.seconds, 3) for r in results],
            "samples_per_s_per_fold": [
                round(r.samples / max(r.train_seconds, 1e-9), 1) for r in results
            ],
            "samples_per_s": round(total_samples / max(total_train, 1e-9), 1),
            "fold_seconds_total": round(sum(r.seconds for r in results), 3),
        },
        "out": str(out),
    }
    (out / "report.json").write_text(json.dumps(jsonable(report), indent=2) + "\n", "utf-8")
    images = [
        plot_equity(df, report, out / "equity.png"),
        plot_fold_accuracy(report, out / "fold_accuracy.png"),
        plot_seed_spread(report, out / "seed_spread.png"),
    ]
    (out / "report.md").write_text(render_markdown(report, images), encoding="utf-8")
    return report


def _record_fold_policies(out: Path, settings: dict[str, Any]) -> None:
    """Each fold checkpoint's manifest gets its val-selected policy, where `trade` reads it."""
    from jaxtrader.checkpoint import record_policy
    from jaxtrader.walkforward import fold_dir

    for fold, chosen in settings["fold_policies"].items():
        record_policy(
            fold_dir(out, int(fold)),
            {
                "rule": fold_policy(settings, int(fold)).to_dict(),
                "source": f"walkforward --policy auto (fold {fold} val block)",
                "val_net_sharpe": chosen["val_net_sharpe"],
                "val_trades": chosen["val_trades"],
                "fee_bps": settings["fee_bps"],
                "slippage_bps": settings["slippage_bps"],
            },
        )


def _clear_fold_policies(out: Path, results: Sequence[FoldResult]) -> None:
    """A plain run's fold manifests hold no policy, as a fresh plain run writes them: an auto
    policy left by an earlier run on these folds (`--resume DIR --policy plain`) would make
    `trade --checkpoint DIR/fold_XX` trade a rule this report does not show."""
    from jaxtrader.checkpoint import read_manifest, record_policy
    from jaxtrader.walkforward import fold_dir

    for r in results:
        directory = fold_dir(out, r.fold)
        if read_manifest(directory).policy is not None:  # untouched when there is nothing to drop
            record_policy(directory, None)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_summary(report: dict[str, Any]) -> str:
    """The pooled verdict in a few lines (the CLI prints it)."""
    p, s = report["pooled"], report["settings"]
    lo, hi = p["accuracy_ci95"]
    return "\n".join(
        [
            f"pooled out-of-sample: n {p['n']} (effective {p['effective_n']}, horizon "
            f"{s['horizon']}), accuracy {_pct(p['accuracy'])} [95% {_pct(lo)}, {_pct(hi)}] vs "
            f"majority {_pct(p['majority_rate'])}",
            f"p-value vs majority {p['p_value_vs_majority']:.3g}, vs chance "
            f"{p['p_value_vs_chance']:.3g}; AUC {_num(p['auc'])}",
            f"seeds: accuracy {_pct(p['seed_accuracy_mean'])} +- {_pct(p['seed_accuracy_std'])}, "
            f"ensemble {_pct(p['ensemble_accuracy'])}; folds beating majority "
            f"{p['folds_beating_majority']}/{len(report['folds'])} (and 50%: "
            f"{p['folds_beating_best_constant']})",
            f"net Sharpe {report['backtest']['sharpe']:.2f}{_sharpe_ci(report)} (return "
            f"{_pct(report['backtest']['total_return'])}, {report['backtest']['trades']} trades; "
            f"policy {_policy_name(report)}) vs buy-and-hold {report['buy_and_hold']['sharpe']:.2f}"
            f"{_sharpe_ci(report, BUY_AND_HOLD_SHARPE_CI)} (return "
            f"{_pct(report['buy_and_hold']['total_return'])}), fees {s['fee_bps']:g} bps",
            *_plain_line(report),
            *_time_limit_line(report),
            f"report: {report['out']}/report.md",
        ]
    )


def _time_limit_line(report: dict[str, Any]) -> list[str]:
    """A run cut short by --max-minutes must not read like a finished one: its figures depend on
    the machine's speed (reports written before the key existed have no such folds)."""
    cut = [str(f["fold"]) for f in report["folds"] if f.get("stopped_reason") == "time_limit"]
    if not cut:
        return []
    return [
        f"warning: fold{'s' if len(cut) > 1 else ''} {', '.join(cut)} of {len(report['folds'])} "
        "stopped at the --max-minutes time limit, before early stopping or --epochs: these "
        "figures depend on this machine's speed; rerun with a larger --max-minutes to compare"
    ]


def _policy_name(report: dict[str, Any]) -> str:
    s = report["settings"]
    if s.get("policy", "plain") == "auto":
        return "auto, chosen on each fold's val block"
    return f"plain, P(up) > {s['threshold']:g}"


def _pooled_ci(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A stitched Sharpe's interval (`key`: the strategy's or buy-and-hold's); None for reports
    written before it existed (or a backtest too short for one)."""
    ci = report["pooled"].get(key)
    return ci if ci and ci.get("lo") is not None else None


def _sharpe_ci(report: dict[str, Any], key: str = NET_SHARPE_CI) -> str:
    ci = _pooled_ci(report, key)
    return "" if ci is None else f" [95% {ci['lo']:.2f}, {ci['hi']:.2f}]"


def _sharpe_ci_paragraph(report: dict[str, Any]) -> list[str]:
    ci = _pooled_ci(report, NET_SHARPE_CI)
    if ci is None:
        return []
    hold = _pooled_ci(report, BUY_AND_HOLD_SHARPE_CI)
    # Reports written before buy-and-hold had an interval hold the strategy's only.
    versus = (
        []
        if hold is None
        else [
            f"Buy-and-hold over the same span: net Sharpe {report['buy_and_hold']['sharpe']:.2f}, "
            f"95% interval [{hold['lo']:.2f}, {hold['hi']:.2f}], by the same bootstrap of its "
            "per-candle net returns."
        ]
    )
    return [
        "",
        " ".join(
            [
                f"Net Sharpe {report['backtest']['sharpe']:.2f}, 95% interval [{ci['lo']:.2f}, "
                f"{ci['hi']:.2f}]: a stationary bootstrap of the stitched per-candle net returns "
                f"({ci['samples']} resamples, mean block {ci['mean_block_length']} candles, seed "
                f"{ci['seed']}).",
                *versus,
            ]
        ),
    ]


def _plain_line(report: dict[str, Any]) -> list[str]:
    if report["settings"].get("policy", "plain") != "auto":
        return []
    b = report["policy"]["plain"]
    return [
        f"plain P(up) > {report['settings']['threshold']:g} for comparison: net Sharpe "
        f"{b['sharpe']:.2f} (return {_pct(b['total_return'])}, {b['trades']} trades)"
    ]


def _fold_policy_cell(f: dict[str, Any]) -> str:
    d = f.get("fold_policy")
    if d is None:
        return "plain"
    from jaxtrader.decisions import stands_aside

    if stands_aside(d):
        return f"flat ({d['val_net_sharpe']:.2f})"
    return f"{d['enter']:g}/{d['exit']:g}/{d['min_hold']} ({d['val_net_sharpe']:.2f})"


def render_markdown(report: dict[str, Any], images: Sequence[Path]) -> str:
    s = report["settings"]
    lines = [
        f"# Walk-forward: {s['arch']} on {s['symbol']}",
        "",
        f"{s['folds']} folds x {s['seeds']} seeds, {s['window']} window, horizon {s['horizon']}, "
        f"seed {s['seed']}, data {s['data']}.",
        "",
        "## Pooled out-of-sample",
        "",
        *[f"- {line}" for line in format_summary(report).splitlines()[:-1]],
        "",
        "## Folds",
        "",
        "| fold | test span | n | accuracy [95%] | majority | AUC | seeds | policy enter/exit/hold"
        " (val Sharpe) | net Sharpe | plain net Sharpe | B&H Sharpe | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in report["folds"]:
        lo, hi = f["accuracy_ci95"]
        seeds = ", ".join(_pct(a) for a in f["seed_accuracies"])
        lines.append(
            f"| {f['fold']} | {f['test_start'][:10]}..{f['test_end'][:10]} | {f['n']} | "
            f"{_pct(f['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | {_pct(f['majority_rate'])} | "
            f"{_num(f['auc'])} | {seeds} | {_fold_policy_cell(f)} | {f['sharpe_net']:.2f} | "
            f"{f['sharpe_net_plain']:.2f} | {f['buy_and_hold_sharpe']:.2f} | {f['seconds']:.0f} |"
        )
    lines += [
        "",
        "## Stitched backtest (net of fees)",
        "",
        f"Policy: {_policy_name(report)}.",
        *_sharpe_ci_paragraph(report),
        "",
        "| | strategy | plain | buy and hold |",
    ]
    lines += ["|---|---|---|---|"]
    for key in ("total_return", "sharpe", "max_drawdown", "trades", "fees_paid", "exposure"):
        a, p, b = (
            report["backtest"][key],
            report["policy"]["plain"][key],
            report["buy_and_hold"][key],
        )
        fmt = _pct if key in ("total_return", "max_drawdown", "fees_paid", "exposure") else _num
        lines.append(f"| {key} | {fmt(a)} | {fmt(p)} | {fmt(b)} |")
    t = report["timing"]
    lines += [
        "",
        f"Timing: {t['fold_seconds_total']:.0f} s over folds, {t['samples_per_s']:.0f} "
        "training samples/s (summed over seeds).",
        "",
        "## Plots",
        "",
        *[f"![{Path(i).stem}]({Path(i).name})" for i in images],
    ]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_fold_axes(plt: Any, folds: list[dict[str, Any]], title: str) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_xticks([f["fold"] for f in folds])
    ax.set_xlabel("fold")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    return fig, ax


def _save(plt: Any, fig: Any, ax: Any, path: Path, legend_loc: str = "best") -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_equity(df: pd.DataFrame, report: dict[str, Any], path: Path) -> Path:
    """Stitched out-of-sample equity (net) vs buy-and-hold, fold boundaries marked."""
    plt = _pyplot()
    s = report["settings"]
    _, _, strategy, hold = _backtest(df, s)
    _, _, plain, _ = _backtest(df, s, plain=True)
    t = pd.to_datetime(df["timestamp"], utc=True)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(t, strategy.equity, lw=1.1, label=f"strategy, {_policy_name(report)} (net of fees)")
    if s.get("policy", "plain") == "auto":
        ax.plot(t, plain.equity, lw=0.9, color="tab:green", alpha=0.8, label="plain (net of fees)")
    ax.plot(t, hold.equity, lw=1.0, color="tab:orange", alpha=0.8, label="buy and hold")
    starts = df.groupby("fold")["timestamp"].first()
    for i, ts in enumerate(pd.to_datetime(starts, utc=True)):
        ax.axvline(ts, color="grey", lw=0.8, ls="--", label="fold start" if i == 0 else None)
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(f"{s['arch']} on {s['symbol']}: stitched out-of-sample equity")
    return _save(plt, fig, ax, path, "upper left")


def plot_fold_accuracy(report: dict[str, Any], path: Path) -> Path:
    """Accuracy per fold with its 95% interval (effective n) and the fold's majority rate."""
    plt = _pyplot()
    folds = report["folds"]
    x = np.array([f["fold"] for f in folds])
    acc = np.array([f["accuracy"] for f in folds])
    lo = np.array([f["accuracy_ci95"][0] for f in folds])
    hi = np.array([f["accuracy_ci95"][1] for f in folds])
    fig, ax = _per_fold_axes(plt, folds, "Out-of-sample accuracy per fold")
    ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], fmt="o", capsize=4, label="accuracy, 95% CI")
    ax.scatter(x, [f["majority_rate"] for f in folds], marker="_", s=300, c="tab:red", zorder=3)
    ax.plot([], [], "_", c="tab:red", ms=15, label="majority rate (train majority class)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    return _save(plt, fig, ax, path)


def plot_seed_spread(report: dict[str, Any], path: Path) -> Path:
    """Each seed's accuracy per fold (dots) beside the ensemble's (cross)."""
    plt = _pyplot()
    folds = report["folds"]
    fig, ax = _per_fold_axes(plt, folds, "Seed spread per fold")
    for f in folds:
        accs = f["seed_accuracies"]
        ax.scatter([f["fold"]] * len(accs), accs, c="tab:blue", alpha=0.6, s=18)
        ax.scatter([f["fold"]], [f["accuracy"]], c="black", marker="x", s=50)
    ax.scatter([], [], c="tab:blue", s=18, label="single seeds")
    ax.scatter([], [], c="black", marker="x", s=50, label="ensemble (mean P(up))")
    return _save(plt, fig, ax, path)
