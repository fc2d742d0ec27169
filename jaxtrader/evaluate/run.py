"""The evaluation pipeline for one checkpoint: load, rebuild the data it was trained on, predict,
score against baselines, backtest. The I/O edge of the evaluate package (the CLI stays thin).

The checkpoint's manifest decides the features, scaler, window and split boundaries
(`Predictor.rebuild_dataset`); the data is the manifest's own source unless `data_path` is given.
Another file of the same market (revised or extended candles) is evaluated with a note; the file
must still cover the splits (else `DataError` from the split rebuild). A file of another market
(symbols inferred from the file names differ) is refused unless `other_market`: then the report
labels it (`source.out_of_market`, both symbols). The report always carries the sha256 of the file
evaluated (`source.data_sha256`) and, separately, the training data's (`source.training_data`).

The decision policy is `plain` (the rules' threshold), a given `Policy`, or `auto`: the grid of
`evaluate.selection` scored on the VALIDATION split's net backtest (whatever split is evaluated),
recorded in the report and, with `record_policy`, in the checkpoint manifest for `trade` (never
in a walk-forward fold's: the run chose that fold's policy, and its report rests on it).
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
from jaxtrader.errors import ConfigError, DataError
from jaxtrader.evaluate.baselines import predict_baselines
from jaxtrader.evaluate.summary import (
    EvalRows,
    EvalSettings,
    build_rows,
    summarize,
    verdict,
)
from jaxtrader.evaluate.trades import Trade, extract_trades
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
    trades: list[Trade] = dataclasses.field(default_factory=list)
    # Candle open times (int64 ns) and closes over the evaluated span, for the trades chart.
    prices: tuple[np.ndarray, np.ndarray] | None = None


def evaluation_inputs(
    *,
    ckpt_dir: str | Path,
    symbol: str | None = None,
    arch: str | None = None,
    version: str = "best",
    checkpoint: str | None = None,
    include_partial: bool = False,
    data_path: str | None = None,
) -> tuple[Path, str | None]:
    """The checkpoint version and the candle file (None: the synthetic market) that
    `evaluate_checkpoint` with these arguments reads, found without loading the model, so the CLI
    can refuse an output that would overwrite either before any work. Raises CheckpointError as
    the evaluation would."""
    from jaxtrader.checkpoint import read_manifest
    from jaxtrader.data import infer_symbol
    from jaxtrader.inference import version_dir_to_load

    version_dir = version_dir_to_load(
        ckpt_dir=ckpt_dir,
        symbol=symbol,
        arch=arch,
        version=version,
        checkpoint=checkpoint,
        include_partial=include_partial,
        fallback_symbol=infer_symbol(data_path) if data_path else None,
    )
    if data_path:
        return version_dir, data_path
    recorded = read_manifest(version_dir).data.get("path")  # what `_load_candles` reads
    return version_dir, None if recorded is None else str(recorded)


def _load_candles(
    manifest: Any, config: Any, data_path: str | None, other_market: bool, dedupe: bool = False
) -> tuple[Any, list[str], bool]:
    """Candles for evaluation: `data_path` if given, else the manifest's file or synthetic market.
    Duplicate timestamps are dropped (keeping the last) if `dedupe` or the training run did.

    Returns the candles, notes for the report, and whether they are of another market than the
    training data (refused with DataError unless `other_market`)."""
    from jaxtrader.checkpoint import check_data
    from jaxtrader.data import format_interval, load_market

    notes: list[str] = []
    recorded = manifest.data.get("path")
    path = data_path or recorded
    # A given file's symbol comes from its own name, not from the training run's --symbol; its
    # interval from its own spacing (checked against the model's below: the data layer's mismatch
    # message advises --interval, which evaluate does not have).
    data_cfg = dataclasses.replace(
        config.data,
        path=path,
        symbol=None if data_path else config.data.symbol,
        interval=None if data_path else config.data.interval,
        dedupe=dedupe or config.data.dedupe,
    )
    if path is not None and not Path(path).is_file():
        raise DataError(
            f"data file {path} does not exist; pass --data with the file the model was trained on"
        )
    candles = load_market(data_cfg)
    trained_interval = manifest.candle_interval()
    if candles.interval != trained_interval:
        # A 1h model on 5m candles was evaluated without a word (windows, horizon and features
        # count candles, so it is another model's experiment); trade refuses the same feed.
        got, want = format_interval(candles.interval), format_interval(trained_interval)
        raise DataError(
            f"{path} holds {got} candles but the model was trained on {want} candles; pass "
            f"--data with {want} candles of the market, or evaluate a model trained on {got} "
            "candles"
        )
    trained_symbol = str(manifest.data.get("symbol"))
    # Symbols inferred from names without BASE/QUOTE (e.g. "candles.csv") say nothing of the market.
    out_of_market = (
        data_path is not None
        and "/" in candles.symbol
        and "/" in trained_symbol
        and candles.symbol != trained_symbol
    )
    if out_of_market and not other_market:
        raise DataError(
            f"the model was trained on {trained_symbol} but {data_path} holds {candles.symbol}; "
            f"pass --other-market to evaluate it out of market (the report labels it), or --data "
            f"with a {trained_symbol} file"
        )
    if data_path is not None and not out_of_market:
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
    if out_of_market:
        notes.append(
            f"out-of-market test: a {trained_symbol} model evaluated on {candles.symbol} "
            "candles (scaler and split dates of the training data)"
        )
    for note in notes:
        log_event(_log, "data_mismatch", logging.INFO, note=note)
    return candles, notes, out_of_market


def _source_sha256(candles: Any) -> str | None:
    """sha256 of the candle file evaluated; None for the synthetic market."""
    from jaxtrader.data import file_sha256

    source = str(candles.source)
    return file_sha256(source) if Path(source).is_file() else None


FEW_EFFECTIVE_POINTS = 30


def _range_rows(dataset: Any, start: Any, end: Any) -> tuple[np.ndarray, list[str]]:
    """Prediction rows with start <= time <= end (UTC timestamps or None = open), and notes.

    DataError when the span leaves the data, holds no prediction point, or reaches back into the
    training span: its first point must be purged from the last training point like the val and
    test splits are (t - t_train >= horizon + seq_len)."""
    import pandas as pd

    index = dataset.index
    first, last = index[0], index[-1]
    span = f"{start.isoformat() if start is not None else 'start'}..{end.isoformat() if end is not None else 'end'}"
    if start is not None and end is not None and start > end:
        raise DataError(f"--start {start.isoformat()} is after --end {end.isoformat()}")
    if (start is not None and not first <= start <= last) or (
        end is not None and not first <= end <= last
    ):
        raise DataError(
            f"--start/--end {span} is outside the data ({first.isoformat()}..{last.isoformat()}); "
            "pick a span inside it"
        )
    train_last = int(dataset.rows("train")[-1])
    allowed = train_last + dataset.cfg.horizon + dataset.cfg.seq_len
    if allowed >= len(index):
        raise DataError("the data ends within the training span's purge gap; use a longer file")
    allowed_ts = index[allowed]
    if start is None:
        start = allowed_ts
    if start < allowed_ts:
        raise DataError(
            f"--start/--end {span} overlaps the training span (training labels reach "
            f"{index[train_last + dataset.cfg.horizon].isoformat()}, purged to "
            f"{allowed_ts.isoformat()}); use --start {allowed_ts.isoformat()} or later"
        )
    times = pd.DatetimeIndex(index)
    in_span = (times >= start) & (times <= (end if end is not None else last))
    rows = np.flatnonzero(np.asarray(dataset.valid_T, dtype=bool) & in_span)
    rows = rows[rows + 1 < len(index)]  # the last decision needs the next candle to be filled
    if rows.size == 0:
        raise DataError(f"--start/--end {span} holds no prediction point; pick a wider span")
    notes = []
    n_eff = rows.size // dataset.cfg.horizon
    if n_eff < FEW_EFFECTIVE_POINTS:
        # A 2-point span reported an annualised Sharpe of -3,358 with nothing said.
        notes.append(
            f"only {rows.size} prediction points (effective n {n_eff} for {dataset.cfg.horizon}-"
            f"candle labels): too few for the intervals, p-values and annualised figures to mean "
            "much; widen --start/--end"
        )
    test_start, _ = dataset.splits.range("test")
    if rows[0] < test_start:
        notes.append(
            "the range includes validation candles, which chose the best epoch (early stopping); "
            "only the test split is untouched by training"
        )
    rows.flags.writeable = False
    return rows, notes


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
    other_market: bool = False,
    include_partial: bool = False,
    seed: int = 0,
    bootstrap_samples: int = 1000,
    with_attention: bool = False,
    start: Any = None,
    end: Any = None,
    policy: str | Policy | PolicyRequest = "plain",
    record_policy: bool = False,
    dedupe: bool = False,
) -> Evaluation:
    """Runs the whole evaluation of one checkpoint version on one split, or on the candles from
    `start` to `end` (UTC timestamps; either may be None) when one of them is given, reported as
    split "range".

    `policy`: "plain", "auto" (chosen on the val split), a `Policy`, or a `PolicyRequest` (the
    CLI's flags, resolved with the checkpoint's label horizon as the default minimum hold). With
    `record_policy`, an auto choice is written into the checkpoint's manifest (`trade` reads it
    from there), except under `other_market` or into a walk-forward run's fold, whose manifest
    keeps the policy the run chose (a note says so). `dedupe` keeps the last of duplicate
    timestamps in the candle file.
    """
    from jaxtrader.data import format_interval, infer_symbol, timestamps_ns
    from jaxtrader.inference import Predictor

    if split not in ("val", "test"):
        raise DataError(f"--split must be val or test, got {split!r}")
    check_settings(
        threshold=backtest.threshold,
        long_short=backtest.long_short,
        fee_bps=backtest.fee_bps,
        slippage_bps=backtest.slippage_bps,
    )
    if checkpoint is not None and symbol is not None:
        from jaxtrader.checkpoint import read_manifest

        trained_symbol = read_manifest(Path(checkpoint)).data.get("symbol")
        if symbol != trained_symbol:
            # --checkpoint wins over --symbol, but a contradiction is a mistake to report.
            raise ConfigError(
                f"--symbol {symbol} contradicts --checkpoint {checkpoint}, a model of "
                f"{trained_symbol}; drop --symbol (to evaluate another market's candles, pass "
                "--data and --other-market)"
            )
    predictor = Predictor.load(
        ckpt_dir=ckpt_dir,
        symbol=symbol,
        arch=arch,
        version=version,
        checkpoint=checkpoint,
        include_partial=include_partial,
        fallback_symbol=infer_symbol(data_path) if data_path else None,
    )
    manifest = predictor.manifest
    candles, notes, out_of_market = _load_candles(
        manifest, predictor.config, data_path, other_market, dedupe
    )
    dataset = predictor.rebuild_dataset(candles)
    if start is not None or end is not None:
        # The range becomes the dataset's "test" rows; the report calls it "range".
        range_rows, range_notes = _range_rows(dataset, start, end)
        dataset = dataclasses.replace(dataset, points={**dataset.points, "test": range_rows})
        notes = [*notes, *range_notes]
        split, label = "test", "range"
    else:
        label = split
    started = time.perf_counter()
    prob_up = np.asarray(predictor.predict_split(dataset, split), dtype=np.float64)
    log_event(_log, "predicted", split=label, rows=prob_up.size, seconds=_since(started))

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
    ppy, basis = annualization(interval_s, ts_ns)  # the market's calendar, not the span's
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
        split=label,
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
    trades = extract_trades(
        position=table.position,
        fee=table.fee,
        equity=table.equity,
        candle_rows=rows,
        timestamps_ns=ts_ns,
        open_=open_,
        close=close,
    )
    span = slice(int(rows[0]), int(rows[-1]) + 2)  # through the last fill's candle
    doc = summarize(table, settings)
    if selection is not None:
        doc["policy"]["selection"] = selection
    doc["verdict"] = verdict(doc)
    if label == "range":
        doc["range"] = {
            "start": None if start is None else start.isoformat(),
            "end": None if end is None else end.isoformat(),
        }
    log_event(_log, "summarized", seconds=_since(started))
    version_dir = Path(predictor.version_dir)
    doc["source"] = {
        # A walk-forward fold's manifest numbers it like a version; "lstm v1" read as a training
        # run's version 1.
        "label": f"{manifest.arch} v{manifest.version}"
        if (fold := (manifest.ensemble or {}).get("fold")) is None
        else f"{manifest.arch} fold {fold}",
        "arch": manifest.arch,
        "version": manifest.version,
        "checkpoint": str(version_dir),
        "symbol": candles.symbol,
        "data": str(candles.source),
        "data_sha256": _source_sha256(candles),
        "training_data": {
            "symbol": manifest.data.get("symbol"),
            "source": manifest.data.get("source"),
            "sha256": manifest.data.get("sha256"),
        },
        "out_of_market": out_of_market,
        "interval": format_interval(candles.interval),
        "trained_at": manifest.created_at,
        "best_step": manifest.best_step,
    }
    if manifest.arch == "transformer":
        doc["source"]["feature_join"] = getattr(predictor.config.model, "feature_join", "add")
    doc["notes"] = [*notes, *baselines.notes]
    records: list[dict[str, Any]] = []
    unreadable = None
    if manifest.metrics_path:
        records, unreadable = _training_records(version_dir / manifest.metrics_path)
        # Steps of a full epoch (as train.steps_per_epoch counts them), so the training plot can
        # tell a partial last epoch even when it is the only one.
        full = max(dataset.num_batches("train", predictor.config.train.batch_size), 1)
        records = [{"epoch_steps": full, **r} for r in records]
    if unreadable is not None:
        doc["notes"].append(unreadable)
    elif not records:
        doc["notes"].append("no training metrics JSONL found: training curves skipped")
    run_fold = _walkforward_fold(version_dir, manifest)
    if record_policy and selection is not None and out_of_market:
        # Chosen on another market's val split: `trade` on the model's own market must not
        # inherit it.
        doc["notes"].append(
            "policy not recorded in the checkpoint: it was chosen on another market's val split"
        )
    elif record_policy and selection is not None and run_fold is not None:
        # The run chose this fold's policy on the fold's own val block (or none, under --policy
        # plain); its report, predictions.csv and `trade --checkpoint` all rest on that choice.
        doc["notes"].append(
            f"policy not recorded in the checkpoint: it is {run_fold}, whose report used the "
            "policy that run chose for the fold, which `trade` keeps applying"
            if manifest.policy is not None
            # A --policy plain run (or a resume under it) chose none: `trade` trades the plain
            # rule, not a policy of the run's.
            else f"policy not recorded in the checkpoint: it is {run_fold}, which holds no "
            "policy (a --policy plain run), so `trade` applies the plain rule"
        )
    elif record_policy and selection is not None:
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
        split=label,  # "range" for --start/--end, as the report says
        n=doc["n"],
        accuracy=doc["classification"]["accuracy"],
        sharpe=doc["backtest"]["sharpe"],
    )
    return Evaluation(
        doc=doc,
        rows=table,
        training_records=records,
        attention=attention,
        trades=trades,
        prices=(ts_ns[span], close[span]),
    )


def _training_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The run's per-epoch training records (for the report's curves), or none and a note saying
    why. Nothing the evaluation reports comes from them, so a damaged metrics.jsonl (a cut-off
    line, a hand edit) costs the curves only; it stopped every evaluate with an internal error."""
    from jaxtrader.evaluate.report import read_metrics_jsonl

    try:
        records = read_metrics_jsonl(path)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = f"{type(e).__name__}: {e}"
    else:
        if all(isinstance(r, dict) for r in records):
            return records, None
        problem = "a line is not a JSON object"
    return [], f"training metrics {path} cannot be read ({problem}): training curves skipped"


def _walkforward_fold(version_dir: Path, manifest: Any) -> str | None:
    """How to name the checkpoint when it belongs to a walk-forward run (or a study cell, which is
    one), else None. A fold's manifest carries `ensemble` (only walk-forward writes seed
    ensembles; it names the fold), and a run's fold folders sit beside its plan.json, which also
    catches a checkpoint whose manifest predates the field."""
    from jaxtrader.walkforward import PLAN_FILE

    in_run = (version_dir.parent / PLAN_FILE).is_file()
    if manifest.ensemble is None and not in_run:
        return None
    fold = (manifest.ensemble or {}).get("fold")
    which = "a fold" if fold is None else f"fold {fold}"
    run = f"the walk-forward run {version_dir.parent}" if in_run else "a walk-forward run"
    return f"{which} of {run}"


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
    ppy, _ = annualization(interval_s, ts_ns[: int(val_rows[-1]) + 1])  # no candle after val
    return select_policy(val_prob, val_returns, rules, horizon=horizon, periods_per_year=ppy)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
