"""The evaluation pipeline for one checkpoint: load, rebuild the data it was trained on, predict,
score against baselines, backtest. The I/O edge of the evaluate package (the CLI stays thin).

The checkpoint's manifest decides the features, scaler, window and split boundaries
(`Predictor.rebuild_dataset`); the data is the manifest's own source unless `data_path` is given,
in which case a different file hash is allowed with a warning but the file must still cover the
splits (else `DataError` from the split rebuild).

The decision policy is `plain` (the rules' threshold), a given `Policy`, or `auto`: the grid of
`evaluate.selection` scored on the VALIDATION split's net backtest (whatever split is evaluated),
recorded in the report and, with `record_policy`, in the checkpoint manifest for `trade`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from jaxtrader.config import TradeRules
from jaxtrader.decisions import (
    Policy,
    PolicyRequest,
    annualization,
    check_settings,
)
from jaxtrader.errors import DataError
from jaxtrader.evaluate.baselines import predict_baselines
from jaxtrader.evaluate.summary import (
    EvalRows,
    EvalSettings,
    build_rows,
    summarize,
    verdict,
)
from jaxtrader.logs import get_logger, log_event

_log = get_logger("evaluate")
ATTENTION_WINDOWS = 4


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation produced: the report document, its rows, and material for plots."""

    doc: dict[str, Any]
    rows: EvalRows
    training_records: list[dict[str, Any]]
    attention: tuple[np.ndarray, list[str]] | None


def _load_candles(manifest: Any, config: Any, data_path: str | None) -> tuple[Any, list[str]]:
    """Candles for evaluation: `data_path` if given, else the manifest's file or synthetic market."""
    from jaxtrader.checkpoint import check_data
    from jaxtrader.data import load_market

    notes: list[str] = []
    recorded = manifest.data.get("path")
    path = data_path or recorded
    data_cfg = dataclasses.replace(config.data, path=path)
    if path is not None and not Path(path).is_file():
        raise DataError(
            f"data file {path} does not exist; pass --data with the file the model was trained on"
        )
    candles = load_market(data_cfg)
    if data_path is not None:
        check = check_data(manifest, candles)
        if check.trained_sha256 is None:
            notes.append(
                f"the model was trained on {check.trained_source}, evaluated on {data_path}"
            )
        elif not check.same:
            notes.append(
                f"data file {data_path} (sha256 {(check.now_sha256 or '')[:12]}) differs from the "
                f"training file (sha256 {check.trained_sha256[:12]}); splits are matched by "
                "timestamp, so rows outside the original file or revised candles may change the "
                "numbers"
            )
    for note in notes:
        log_event(_log, "data_mismatch", logging.WARNING, note=note)
    return candles, notes


def _attention(predictor: Any, dataset: Any, split: str) -> tuple[np.ndarray, list[str]]:
    """Attention weights (LxBxHxTxT) of the split's last few windows, labelled by timestamp."""
    from jaxtrader.models import build_model, transformer

    model = cast(transformer.TransformerClassifier, build_model(predictor.config.model))
    rows = dataset.rows(split)[-ATTENTION_WINDOWS:]
    batch = dataset.gather(rows)
    weights = transformer.attention_weights(
        model, {"params": predictor.params}, batch["seq"], batch["feats"]
    )
    labels = [ts.strftime("%Y-%m-%d %H:%M") for ts in dataset.index[rows]]
    return np.asarray(weights), labels


def evaluate_checkpoint(
    *,
    split: str,
    backtest: TradeRules,
    ckpt_dir: str | Path,
    symbol: str | None = None,
    arch: str | None = None,
    version: str = "best",
    checkpoint: str | None = None,
    data_path: str | None = None,
    seed: int = 0,
    bootstrap_samples: int = 1000,
    with_attention: bool = False,
    policy: str | Policy | PolicyRequest = "plain",
    record_policy: bool = False,
) -> Evaluation:
    """Runs the whole evaluation of one checkpoint version on one split.

    `policy`: "plain", "auto" (chosen on the val split), a `Policy`, or a `PolicyRequest` (the
    CLI's flags, resolved with the checkpoint's label horizon as the default minimum hold). With `record_policy`, an
    auto choice is written into the checkpoint's manifest (`trade` reads it from there).
    """
    from jaxtrader.data import format_interval, timestamps_ns
    from jaxtrader.evaluate.report import read_metrics_jsonl
    from jaxtrader.inference import Predictor

    if split not in ("val", "test"):
        raise DataError(f"--split must be val or test, got {split!r}")
    check_settings(
        threshold=backtest.threshold,
        long_short=backtest.long_short,
        fee_bps=backtest.fee_bps,
        slippage_bps=backtest.slippage_bps,
    )
    predictor = Predictor.load(
        ckpt_dir=ckpt_dir, symbol=symbol, arch=arch, version=version, checkpoint=checkpoint
    )
    manifest = predictor.manifest
    candles, notes = _load_candles(manifest, predictor.config, data_path)
    dataset = predictor.rebuild_dataset(candles)
    started = time.perf_counter()
    prob_up = np.asarray(predictor.predict_split(dataset, split), dtype=np.float64)
    log_event(_log, "predicted", split=split, rows=prob_up.size, seconds=_since(started))

    frame = candles.frame
    open_ = frame["open"].to_numpy(np.float64)
    close = frame["close"].to_numpy(np.float64)
    ts_ns = timestamps_ns(frame.index)
    rows = dataset.rows(split)
    train_rows = dataset.rows("train")
    horizon = int(manifest.horizon)
    started = time.perf_counter()
    baselines = predict_baselines(
        train_labels=dataset.labels("train"),
        train_feats_NxF=dataset.feats_TxF[train_rows],
        eval_feats_NxF=dataset.feats_TxF[rows],
        close=close,
        eval_rows=rows,
        horizon=horizon,
        seed=seed,
    )
    log_event(_log, "baselines_fit", seconds=_since(started))
    started = time.perf_counter()
    interval_s = float(candles.interval.total_seconds())
    ppy, basis = annualization(interval_s, ts_ns[rows])
    selection: list[dict[str, Any]] | None = None
    if isinstance(policy, PolicyRequest):
        policy = policy.resolve(
            threshold=backtest.threshold, long_short=backtest.long_short, horizon=horizon
        )
    if policy == "auto":
        started = time.perf_counter()
        chosen, selection = _select_on_val(predictor, dataset, split, prob_up, open_, close, ts_ns,
                                           interval_s, backtest, horizon)  # fmt: skip
        source = "auto: best net Sharpe on the val split"
        log_event(_log, "policy_selected", seconds=_since(started), **chosen.to_dict())
    elif policy == "plain":
        chosen, source = Policy.plain(backtest.threshold, backtest.long_short), "plain"
    elif isinstance(policy, Policy):
        chosen, source = policy, "given"
    else:
        raise DataError(f"--policy must be auto, plain or a TOML file, got {policy!r}")
    settings = EvalSettings(
        split=split,
        horizon=horizon,
        interval_seconds=interval_s,
        periods_per_year=ppy,
        annualization_basis=basis,
        rules=backtest,
        majority_class=baselines.majority_class,
        train_up_rate=baselines.train_up_rate,
        seed=seed,
        bootstrap_samples=bootstrap_samples,
        policy=chosen,
        policy_source=source,
    )
    table = build_rows(
        prob_up=prob_up,
        labels=dataset.labels(split),
        forward_return=dataset.fwd_returns(split),
        candle_rows=rows,
        timestamps_ns=ts_ns,
        open_=open_,
        close=close,
        baselines=baselines,
        settings=settings,
    )
    doc = summarize(table, settings)
    if selection is not None:
        doc["policy"]["selection"] = selection
    doc["verdict"] = verdict(doc)
    log_event(_log, "summarized", seconds=_since(started))
    version_dir = Path(predictor.version_dir)
    doc["source"] = {
        "label": f"{manifest.arch} v{manifest.version}",
        "arch": manifest.arch,
        "version": manifest.version,
        "checkpoint": str(version_dir),
        "symbol": candles.symbol,
        "data": str(candles.source),
        "data_sha256": manifest.data.get("sha256"),
        "interval": format_interval(candles.interval),
        "trained_at": manifest.created_at,
        "best_step": manifest.best_step,
    }
    if manifest.arch == "transformer":
        doc["source"]["feature_join"] = getattr(predictor.config.model, "feature_join", "add")
    doc["notes"] = [*notes, *baselines.notes]
    records: list[dict[str, Any]] = []
    if manifest.metrics_path:
        records = read_metrics_jsonl(version_dir / manifest.metrics_path)
    if not records:
        doc["notes"].append("no training metrics JSONL found: training curves skipped")
    if record_policy and selection is not None:
        from jaxtrader.checkpoint import record_policy as write_policy

        best = next(r for r in selection if r["selected"])
        write_policy(
            predictor.version_dir,
            {
                "rule": chosen.to_dict(),
                "source": "evaluate --policy auto (val split)",
                "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "val_net_sharpe": best["net_sharpe"],
                "val_trades": best["trades"],
                "fee_bps": backtest.fee_bps,
                "slippage_bps": backtest.slippage_bps,
            },
        )
        doc["policy"]["recorded_in"] = str(version_dir / "manifest.json")
    attention = None
    if with_attention and manifest.arch == "transformer":
        attention = _attention(predictor, dataset, split)
    log_event(
        _log,
        "evaluated",
        split=split,
        n=doc["n"],
        accuracy=doc["classification"]["accuracy"],
        sharpe=doc["backtest"]["sharpe"],
    )
    return Evaluation(doc=doc, rows=table, training_records=records, attention=attention)


def _select_on_val(
    predictor: Any,
    dataset: Any,
    split: str,
    prob_up: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    ts_ns: np.ndarray,
    interval_s: float,
    rules: TradeRules,
    horizon: int,
) -> tuple[Policy, list[dict[str, Any]]]:
    """The auto policy: `select_policy` on the val split's predictions and period returns only."""
    from jaxtrader.evaluate.backtest import period_returns
    from jaxtrader.evaluate.selection import select_policy

    val_rows = dataset.rows("val")
    if split == "val":
        val_prob = prob_up
    else:
        val_prob = np.asarray(predictor.predict_split(dataset, "val"), dtype=np.float64)
    val_returns, _ = period_returns(open_, close, val_rows)
    ppy, _ = annualization(interval_s, ts_ns[val_rows])
    return select_policy(val_prob, val_returns, rules, horizon=horizon, periods_per_year=ppy)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
