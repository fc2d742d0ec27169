"""Turns an evaluation summary into words and pictures: the CLI table, report.md, report.json, PNGs.

Plots use matplotlib's Agg backend (selected before pyplot is imported, so no display is needed):
equity vs buy-and-hold with the drawdown underneath, the confusion matrix, the reliability diagram,
training curves from the run's metrics JSONL and, for the Transformer, attention heatmaps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.summary import EvalRows
from jaxtrader.evaluate.trades import Trade

CLASS_KEYS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss", "brier")
BACKTEST_KEYS = (
    "total_return",
    "cagr",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "exposure",
    "trades",
    "fees_paid",
)
# Every name `write_report` may write into its folder (report.json first: it marks the folder as
# an evaluate report's).
REPORT_FILES = (
    "report.json",
    "report.md",
    "equity.png",
    "confusion.png",
    "reliability.png",
    "trades.png",
    "coverage.png",
    "training.png",
    "attention.png",
)
# Keys of an evaluate report.json that no other report.json here has (walk-forward's has folds).
_REPORT_KEYS = ("split", "classification", "baselines", "backtest")
SIGNED_PCT_KEYS = {"total_return", "cagr", "max_drawdown"}
PCT_KEYS = {*SIGNED_PCT_KEYS, "win_rate", "exposure", "fees_paid"}


def _fmt(value: Any, pct: bool = False, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if pct:
            return f"{100 * value:+.2f}%" if signed and value else f"{100 * value:.2f}%"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def _rows(header: Sequence[str], body: Sequence[Sequence[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return out
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)) for r in body]
    return out


def _tables(doc: dict[str, Any], markdown: bool) -> list[str]:
    sig = doc["significance"]
    cls = doc["classification"]
    lines: list[str] = []
    names = ["model", *doc["baselines"].keys()]
    sources = [cls, *doc["baselines"].values()]
    lines += _rows(
        ["metric", *names],
        [[k, *(_fmt(src.get(k)) for src in sources)] for k in CLASS_KEYS],
        markdown,
    )
    lo, hi = sig["accuracy_ci95"]
    lines += [
        "",
        f"accuracy {cls['accuracy']:.4f}, 95% CI [{lo:.4f}, {hi:.4f}] on effective n "
        f"{sig['effective_n']} (= {doc['n']} rows / horizon {sig['horizon']}); one-sided p-values: "
        f"vs the training-majority baseline ({sig['majority_accuracy']:.4f}) "
        f"{sig['p_value_vs_majority']:.4g}, vs a coin (0.5) {sig['p_value_vs_chance']:.4g}",
        "",
    ]
    bh = doc["buy_and_hold"]
    extra = doc.get("baseline_backtests", {})
    bt_names = ["strategy", "before costs", "buy_and_hold", *(f"{k} rule" for k in extra)]
    bt_sources = [doc["backtest"], doc.get("backtest_gross", {}), bh, *extra.values()]
    lines += _rows(
        ["backtest", *bt_names],
        [
            [k, *(_fmt(s.get(k), k in PCT_KEYS, k in SIGNED_PCT_KEYS) for s in bt_sources)]
            for k in BACKTEST_KEYS
        ],
        markdown,
    )
    lines += ["", *_policy_lines(doc, markdown), *_coverage_lines(doc, markdown)]
    ci = sig["sharpe_ci95"]
    gci = sig.get("sharpe_gross_ci95", {})
    ann = doc["annualization"]
    st = doc["settings"]
    lines += [
        "",
        f"Sharpe {doc['backtest']['sharpe']:.3f}, 95% {ci['method']} CI "
        f"[{_fmt(ci['lo'])}, {_fmt(ci['hi'])}] (mean block {ci['mean_block_length']}, "
        f"{ci['samples']} resamples, seed {ci['seed']}); before costs "
        f"{_fmt(doc.get('backtest_gross', {}).get('sharpe'))}, CI [{_fmt(gci.get('lo'))}, "
        f"{_fmt(gci.get('hi'))}]; annualized with "
        f"{ann['periods_per_year']:g} periods/year (sqrt {ann['sqrt_factor']:.2f}, "
        f"{ann['basis']}); fees {st['fee_bps']:g} bps + slippage {st['slippage_bps']:g} bps per "
        f"side, threshold {st['threshold']}, {'long-short' if st['long_short'] else 'long-only'}",
    ]
    return lines


POLICY_KEYS = (
    "total_return",
    "sharpe",
    "gross_return",
    "fee_drag",
    "trades",
    "trades_per_month",
    "avg_holding_periods",
    "turnover",
    "exposure",
)


def _describe(policy: dict[str, Any]) -> str:
    from jaxtrader.decisions import describe_policy, stands_aside

    if stands_aside(policy):
        return describe_policy(policy)
    return (
        f"{describe_policy(policy)}, size {policy['max_position']:g}"
        f"{', long-short' if policy['long_short'] else ''}"
    )


def _policy_lines(doc: dict[str, Any], markdown: bool) -> list[str]:
    pol = doc.get("policy")
    if not pol:
        return []
    comp = pol["comparison"]
    lines = [
        f"policy ({pol['source']}): {_describe(pol['selected'])}; plain: {_describe(pol['plain'])}"
    ]
    sel = pol.get("selection")
    if sel:
        best = next(r for r in sel if r["selected"])
        lines.append(
            f"chosen on the validation split from {len(sel)} policies by net Sharpe "
            f"({best['net_sharpe']:.3f} on val, {best['trades']} trades)"
        )
    lines.append("")
    pct = {"total_return", "gross_return", "fee_drag", "exposure"}
    body = [
        [
            k,
            *(
                _fmt(comp[n].get(k), k in pct, k in pct - {"exposure"})
                for n in ("selected", "plain")
            ),
        ]
        for k in POLICY_KEYS
    ]
    lines += _rows(["policy", "selected", "plain"], body, markdown)
    return [*lines, ""]


def _coverage_lines(doc: dict[str, Any], markdown: bool) -> list[str]:
    curve = doc.get("coverage_curve")
    if not curve:
        return []
    body = []
    for r in curve:
        ci = r["ci95"]
        body.append(
            [
                f"{r['level']:g}",
                f"{100 * r['coverage']:.1f}%",
                str(r["n"]),
                str(r["effective_n"]),
                _fmt(r["accuracy"]),
                "n/a" if ci[0] is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
                _fmt(r["majority_rate"]),
            ]
        )
    return [
        "accuracy at coverage (rows with |P(up) - 0.5| >= c; interval on the effective n):",
        "",
        *_rows(["c", "coverage", "n", "eff. n", "accuracy", "95% CI", "majority"], body, markdown),
        "",
    ]


def format_table(doc: dict[str, Any]) -> str:
    """The compact human-readable summary the CLI prints."""
    head = [
        f"evaluate {doc.get('source', {}).get('label', '')} split={doc['split']} n={doc['n']} "
        f"({doc['period']['first']} .. {doc['period']['last']})".replace("  ", " "),
        "",
    ]
    head[1:1] = _out_of_market_line(doc.get("source", {}))
    notes = [f"note: {n}" for n in doc.get("notes", [])]
    verdict = [f"verdict: {v}" for v in doc.get("verdict", [])]
    tail = ["", *verdict, *notes] if verdict or notes else []
    return "\n".join(head + _tables(doc, markdown=False) + tail)


def _out_of_market_line(src: dict[str, Any]) -> list[str]:
    """The label of an out-of-market evaluation (a model scored on another market's candles)."""
    if not src.get("out_of_market"):
        return []
    trained = src.get("training_data", {}).get("symbol")
    return [f"OUT OF MARKET: a model trained on {trained}, evaluated on {src.get('symbol')}"]


def render_markdown(doc: dict[str, Any], images: Sequence[str] = ()) -> str:
    """report.md: the same numbers as the JSON, as tables, plus the plots."""
    src = doc.get("source", {})
    lines = [
        f"# Evaluation: {src.get('label', 'model')} on the {doc['split']} split",
        "",
        f"{doc['n']} prediction rows from {doc['period']['first']} to {doc['period']['last']}.",
    ]
    lines += ["", *_out_of_market_line(src)] if src.get("out_of_market") else []
    if src:
        lines += ["", "| what | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in src.items() if k != "label"]
    if doc.get("verdict"):
        lines += ["", "## Verdict", ""] + [f"- {v}" for v in doc["verdict"]]
    lines += ["", "## Classification and baselines", ""]
    lines += _tables(doc, markdown=True)
    lines += [
        "",
        "## Calibration",
        "",
        f"Brier {_fmt(doc['calibration']['brier'])}, expected "
        f"calibration error {_fmt(doc['calibration']['ece'])}.",
        "",
    ]
    lines += _rows(
        ["bin", "mean predicted", "observed up", "count"],
        [
            [
                f"{r['bin_lo']:.1f}-{r['bin_hi']:.1f}",
                _fmt(r["mean_predicted"]),
                _fmt(r["observed_frequency"]),
                str(r["count"]),
            ]
            for r in doc["calibration"]["reliability"]
        ],
        markdown=True,
    )
    for note in doc.get("notes", []):
        lines += ["", f"Note: {note}"]
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _plain_number(value: float, _pos: Any = None) -> str:
    """A log-axis tick as a plain number: 0.05, 0.5, 2, 1,000 (never 1e+03)."""
    if value >= 1 and value == round(value):
        return f"{value:,.0f}"
    return f"{value:g}"


def figure_equity(
    rows: EvalRows, fee_rate: float, slippage_rate: float = 0.0, title: str = ""
) -> Any:
    """Strategy and buy-and-hold equity with the strategy drawdown underneath (a Figure)."""
    plt = _pyplot()
    import pandas as pd
    from matplotlib import ticker

    t = pd.to_datetime(rows.timestamp_ns, utc=True)
    hold = bt.simulate(np.ones(len(rows)), rows.asset_return, fee_rate, slippage_rate).equity
    gross = bt.simulate(rows.position, rows.asset_return, 0.0).equity
    fig, (ax, ax_dd) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot(t, rows.equity, label="strategy (net of costs)", lw=1.2)
    ax.plot(t, gross, label="strategy before costs", lw=0.8, ls="--", color="tab:blue", alpha=0.6)
    ax.plot(t, hold, label="buy and hold", lw=1.0, alpha=0.8, color="tab:orange")
    both = np.concatenate([rows.equity, hold, gross])
    positive = both[both > 0]
    # Log scale only when growth spans a wide range; plain numbers read better otherwise.
    if positive.size and positive.max() / positive.min() > 4:
        ax.set_yscale("log")
        # Labels at 1, 2, 5 per decade only: labelling every minor tick (..., 7, 8, 9, 10) piles
        # the labels onto each other near each power of ten.
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_number))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel("equity (start = 1)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Equity")
    ax_dd.fill_between(
        t, bt.drawdown_curve(rows.equity) * 100, 0, color="tab:red", alpha=0.4, label="strategy"
    )
    ax_dd.plot(t, bt.drawdown_curve(hold) * 100, color="tab:orange", lw=0.8, label="buy and hold")
    ax_dd.set_ylabel("drawdown %")
    ax_dd.legend(loc="lower left", fontsize=8)
    ax_dd.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_equity(
    rows: EvalRows, fee_rate: float, slippage_rate: float, path: Path, title: str = ""
) -> Path:
    """equity.png: see `figure_equity`."""
    return _save(figure_equity(rows, fee_rate, slippage_rate, title), path)


def plot_confusion(cm: list[list[int]], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    m = np.asarray(cm, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues", vmin=0.0, vmax=max(m.max(), 1.0))  # shade by count from zero
    total = m.sum()
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{m[i, j] / total:.1%}",
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], ["down", "up"])
    ax.set_yticks([0, 1], ["down", "up"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


def figure_reliability(table: list[dict[str, Any]], title: str = "") -> Any:
    """Observed up-frequency against mean predicted P(up) per bin (a Figure).

    Each point carries its 95% Wilson interval and its count, so a bin of a handful of rows does
    not read as miscalibration; the counts are also drawn as bars underneath.
    """
    from jaxtrader.evaluate.significance import wilson_interval

    plt = _pyplot()
    used = [r for r in table if r["count"]]
    x = np.array([r["mean_predicted"] for r in used], dtype=np.float64)
    y = np.array([r["observed_frequency"] for r in used], dtype=np.float64)
    ci = np.array([wilson_interval(r["observed_frequency"], r["count"]) for r in used])
    ci = ci.reshape(-1, 2)
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.errorbar(
        x,
        y,
        yerr=np.vstack([y - ci[:, 0], ci[:, 1] - y]),
        marker="o",
        capsize=3,
        label="model (95% Wilson interval)",
    )
    for r, xi, yi in zip(used, x, y, strict=True):
        ax.annotate(
            f"n={r['count']}",
            (xi, yi),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=7,
            color="tab:blue",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency of up")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Reliability")
    ax_n.bar(
        [(r["bin_lo"] + r["bin_hi"]) / 2 for r in table], [r["count"] for r in table], width=0.09
    )
    ax_n.set_xlabel("predicted P(up)")
    ax_n.set_ylabel("count")
    fig.tight_layout()
    return fig


def plot_reliability(table: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """reliability.png: see `figure_reliability`."""
    return _save(figure_reliability(table, title), path)


def plot_coverage(curve: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy (with its Wilson 95% band) and the majority rate of the covered rows, against
    the share of rows covered at each confidence level."""
    plt = _pyplot()
    used = [r for r in curve if r["accuracy"] is not None]
    cov = [100 * r["coverage"] for r in used]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(
        cov, [r["ci95"][0] for r in used], [r["ci95"][1] for r in used], alpha=0.25,
        label="95% Wilson interval (effective n)",
    )  # fmt: skip
    ax.plot(cov, [r["accuracy"] for r in used], marker="o", label="model accuracy")
    ax.plot(cov, [r["majority_rate"] for r in used], ls="--", label="majority rate (same rows)")
    for r, x in zip(used, cov, strict=True):
        ax.annotate(f"c={r['level']:g}", (x, r["accuracy"]), fontsize=7, xytext=(2, 4),
                    textcoords="offset points")  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.invert_xaxis()  # from everything covered (left) to the most confident few (right)
    ax.set_xlabel("coverage: % of rows with |P(up) - 0.5| >= c")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Accuracy at coverage")
    fig.tight_layout()
    return _save(fig, path)


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Per-epoch training records; a missing file gives an empty list (the caller adds a note)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def epoch_positions(records: list[dict[str, Any]]) -> tuple[list[float], bool]:
    """Where each epoch record sits on an epoch axis, and whether the last one is partial.

    A full epoch k sits at k. A last epoch that ran only s of its S steps (an interrupted or
    time-limited run) sits at k - 1 + s/S. S is the record's `epoch_steps` when known (added by
    the evaluation from the dataset), else the most steps any record ran.
    """
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(records)]
    if not records:
        return epochs, False
    last = records[-1]
    ran = [r["steps"] for r in records if isinstance(r.get("steps"), int | float)]
    full = last.get("epoch_steps") or (max(ran) if ran else None)
    steps = last.get("steps")
    if not full or not isinstance(steps, int | float) or steps >= full:
        return epochs, False
    epochs[-1] = epochs[-1] - 1 + steps / full
    return epochs, True


def seed_spread(
    records: list[dict[str, Any]], key: str
) -> tuple[list[float], list[float], list[float]]:
    """`key` per epoch as (mean, min, max) over seeds. A walk-forward fold trains K seeds at once
    and logs per-seed lists (`val_loss: [..K]`); a single model's number is its own mean, min and
    max. Missing values are NaN (matplotlib leaves a gap)."""
    mean, lo, hi = [], [], []
    for r in records:
        v = r.get(key, np.nan)
        a = np.asarray(v if isinstance(v, list) else [v], dtype=float)
        a = a[np.isfinite(a)]
        mean.append(float(a.mean()) if a.size else np.nan)
        lo.append(float(a.min()) if a.size else np.nan)
        hi.append(float(a.max()) if a.size else np.nan)
    return mean, lo, hi


def figure_training(records: list[dict[str, Any]], title: str = "") -> Any:
    """Train/val loss and val accuracy (with the majority rate) per epoch (a Figure).

    Epoch ticks are integers; a partial last epoch is drawn dashed at its fraction with a hollow
    marker and labelled; the best epoch (lowest validation loss) is marked on both panels.
    """
    plt = _pyplot()
    from matplotlib import ticker

    xs, partial = epoch_positions(records)
    k = len(records) - 1 if partial else len(records)  # records of complete epochs
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))

    def curve(ax: Any, key: str) -> None:
        ys, lo, hi = seed_spread(records, key)
        seeds = any(isinstance(r.get(key), list) for r in records)
        label = f"{key} (mean of seeds, min-max shaded)" if seeds else key
        (line,) = ax.plot(xs[:k], ys[:k], marker="o", label=label)
        if seeds:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        if partial:
            color = line.get_color()
            ax.plot(xs[max(k - 1, 0) :], ys[max(k - 1, 0) :], ls="--", color=color)
            ax.plot(xs[-1:], ys[-1:], marker="o", mfc="white", color=color, ls="none")

    for key in ("train_loss", "val_loss"):
        if any(key in r for r in records):
            curve(ax_l, key)
    for key in ("train_acc", "val_acc", "val_majority_rate"):
        if any(key in r for r in records):
            curve(ax_a, key)
    losses = seed_spread(records, "val_loss")[0]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else None
    if best is not None:
        which = " (partial)" if partial and best == len(records) - 1 else ""
        what = (
            "seed-mean val loss"
            if any(isinstance(r.get("val_loss"), list) for r in records)
            else "val loss"
        )
        epoch = int(records[best].get("epoch", best + 1))
        for ax in (ax_l, ax_a):
            ax.axvline(
                xs[best],
                color="tab:green",
                ls=":",
                lw=1.5,
                label=f"best epoch {epoch}{which}: {what} {losses[best]:.4f}",
            )
        ax_l.plot([xs[best]], [losses[best]], marker="*", ms=14, color="tab:green", ls="none")
    if partial:
        last = records[-1]
        full = last.get("epoch_steps") or max(r.get("steps", 0) for r in records)
        ax_l.annotate(
            f"partial epoch {int(last.get('epoch', len(records)))}: {last['steps']}/{full} steps",
            (xs[-1], losses[-1]),
            textcoords="offset points",
            xytext=(-10, 12),
            ha="right",
            fontsize=8,
        )
    for ax, ylabel in ((ax_l, "cross-entropy"), (ax_a, "accuracy")):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min([0.5, *xs]) if xs else 0.5, max([1.0, *xs]) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return fig


def plot_training(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """training.png: see `figure_training`."""
    return _save(figure_training(records, title), path)


def figure_attention(
    weights_LxBxHxTxT: np.ndarray,
    labels: Sequence[str],
    title: str = "",
    feature_token: bool = False,
) -> Any:
    """Last block's head-averaged attention of the prediction point over the window, per sample.

    Each row is one recent window, labelled by its prediction candle's timestamp; columns are
    window positions (oldest left, the prediction candle right). The diverging colour scale is
    centred (white) on uniform attention 1/T over the T attended positions, so near-uniform
    attention reads as pale rather than as structure; red is above uniform, blue below.
    """
    plt = _pyplot()
    from matplotlib import colors

    w = np.asarray(weights_LxBxHxTxT, dtype=np.float64)
    last_BxT = w[-1].mean(axis=1)[:, -1, :]  # last layer, mean over heads, query = last position
    uniform = 1.0 / last_BxT.shape[1]
    # Symmetric around uniform (0 .. 2/T) unless a weight goes higher.
    norm = colors.TwoSlopeNorm(
        vmin=0.0, vcenter=uniform, vmax=max(2.0 * uniform, float(last_BxT.max()))
    )
    fig, ax = plt.subplots(figsize=(10, 0.5 * last_BxT.shape[0] + 1.8))
    im = ax.imshow(last_BxT, aspect="auto", cmap="RdBu_r", norm=norm)
    ax.set_yticks(range(len(labels)), list(labels), fontsize=8)
    ax.set_ylabel("prediction candle (UTC)")
    ax.set_xlabel(
        "window position (right = prediction candle"
        + ("; position 0 = the engineered-feature token)" if feature_token else ")")
    )
    ax.set_title(title or "Attention of the prediction point (last block, mean over heads)")
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label(f"attention weight (white = uniform 1/{last_BxT.shape[1]} = {uniform:.3g})")
    fig.tight_layout()
    return fig


def plot_attention(
    weights_LxBxHxTxT: np.ndarray,
    labels: Sequence[str],
    path: Path,
    title: str = "",
    feature_token: bool = False,
) -> Path:
    """attention.png: see `figure_attention`."""
    return _save(figure_attention(weights_LxBxHxTxT, labels, title, feature_token), path)


def plot_trades(
    prices: tuple[np.ndarray, np.ndarray], trades: Sequence[Trade], path: Path, title: str = ""
) -> Path:
    """Close price over the evaluated span with each trade's entry (triangle: up for a long, down
    for a short) and exit (x) at their fill prices."""
    plt = _pyplot()
    import pandas as pd

    ts_ns, close = prices
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(pd.to_datetime(ts_ns, utc=True), close, lw=0.8, color="0.35", label="close")
    for side, marker, colour in (("long", "^", "tab:green"), ("short", "v", "tab:red")):
        chosen = [t for t in trades if t.side == side]
        if chosen:
            ax.scatter(
                pd.to_datetime([t.entry_time_ns for t in chosen], utc=True),
                [t.entry_price for t in chosen],
                marker=marker,
                color=colour,
                s=28,
                zorder=3,
                label=f"{side} entry ({len(chosen)})",
            )
    if trades:
        ax.scatter(
            pd.to_datetime([t.exit_time_ns for t in trades], utc=True),
            [t.exit_price for t in trades],
            marker="x",
            color="black",
            s=22,
            zorder=3,
            label="exit",
        )
    ax.set_ylabel("price")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "Price and trades")
    fig.tight_layout()
    return _save(fig, path)


def is_evaluate_report(directory: str | Path) -> bool:
    """Whether `directory` holds a report.json that `write_report` wrote (a readable JSON object
    with an evaluation's keys and no walk-forward folds)."""
    try:
        doc = json.loads((Path(directory) / "report.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and all(k in doc for k in _REPORT_KEYS) and "folds" not in doc


def refuse_foreign_report_dir(directory: str | Path, flag: str = "--report-dir") -> None:
    """ConfigError, before any work, when `directory` holds files under the names `write_report`
    writes (report.md, the plots) and is not an earlier evaluate report's folder: they would be
    replaced without a word. Other files there are left alone, so they are no reason to refuse;
    rewriting evaluate's own report (a rerun) is allowed. A walk-forward run's directory is
    refused whatever it holds yet: a run in progress writes its own report.json, report.md and
    plots there when it finishes (over evaluate's, or evaluate's report would pass for the run's
    in the meantime), and a complete one holds them already. So is a study's directory (its
    study.json, written as the study starts): evaluate's files would sit among the study's
    leaderboard and cell runs and pass for the study's own."""
    from jaxtrader.errors import ConfigError
    from jaxtrader.study import study_progress
    from jaxtrader.walkforward import run_progress

    out = Path(directory)
    if not out.is_dir():
        return
    if (study := study_progress(out)) is not None:
        cells = f"{study.cells} cell{'' if study.cells == 1 else 's'}"
        if study.complete:
            what = f"a finished study ({cells} and its leaderboard)"
        else:
            what = (
                f"a study in progress ({study.finished} of {cells} finished), which writes its "
                "cell runs and leaderboard there until it finishes"
            )
        raise ConfigError(f"{flag} {directory} is {what}; choose another folder for the report")
    if (run := run_progress(out)) is not None:
        if run.complete:
            what = (
                f"a complete walk-forward run ({run.folds} folds), whose report.json, report.md "
                "and plots evaluate would overwrite"
            )
        else:
            what = (
                f"a walk-forward run in progress ({len(run.saved)} of {run.folds} folds saved), "
                "which writes its own report.json, report.md and plots there when it finishes"
            )
        raise ConfigError(f"{flag} {directory} is {what}; choose another folder for the report")
    taken = [name for name in REPORT_FILES if (out / name).exists() or (out / name).is_symlink()]
    if taken and not is_evaluate_report(out):
        names = ", ".join(taken[:3]) + (", ..." if len(taken) > 3 else "")
        raise ConfigError(
            f"{flag} {directory} holds {names}, which evaluate would overwrite and did not write "
            f"(no evaluate report.json there); choose a new or empty folder, or move those files"
        )


def write_report(
    directory: str | Path,
    doc: dict[str, Any],
    rows: EvalRows,
    *,
    training_records: list[dict[str, Any]] | None = None,
    attention: tuple[np.ndarray, Sequence[str]] | None = None,
    trades: Sequence[Trade] = (),
    prices: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Path]:
    """Writes report.json, report.md and the PNG plots; returns the written paths. report.json
    goes first: it is what marks the folder as an evaluate report's (`is_evaluate_report`), so a
    rerun after a failed plot may write into it again."""
    from jaxtrader.logs import jsonable

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(jsonable(doc), indent=2) + "\n", encoding="utf-8")
    label = doc.get("source", {}).get("label", "model")
    fee, slip = doc["settings"]["fee_bps"] / 1e4, doc["settings"]["slippage_bps"] / 1e4
    images = [
        plot_equity(rows, fee, slip, out / "equity.png", f"{label}: equity vs buy and hold"),
        plot_confusion(
            doc["classification"]["confusion_matrix"],
            out / "confusion.png",
            f"{label}: confusion ({doc['split']})",
        ),
        plot_reliability(
            doc["calibration"]["reliability"],
            out / "reliability.png",
            f"{label}: reliability ({doc['split']})",
        ),
    ]
    if prices is not None:
        images.append(plot_trades(prices, trades, out / "trades.png", f"{label}: price and trades"))
    if doc.get("coverage_curve"):
        images.append(
            plot_coverage(
                doc["coverage_curve"], out / "coverage.png", f"{label}: accuracy at coverage"
            )
        )
    if training_records:
        images.append(plot_training(training_records, out / "training.png", f"{label}: training"))
    if attention is not None:
        token = doc.get("source", {}).get("feature_join") == "token"
        images.append(
            plot_attention(
                attention[0],
                attention[1],
                out / "attention.png",
                f"{label}: attention of the prediction point (last block, mean over heads)",
                feature_token=token,
            )
        )
    (out / "report.md").write_text(render_markdown(doc, [str(i) for i in images]), encoding="utf-8")
    return [out / "report.json", out / "report.md", *images]
