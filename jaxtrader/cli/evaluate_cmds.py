"""CLI command `evaluate`: score a checkpoint against baselines, with significance and a backtest."""

from __future__ import annotations

from typing import Any

import click

from jaxtrader.cli.common import (
    CliState,
    HintGlobalOptions,
    checkpoint_options,
    dedupe_option,
    policy_options,
    refuse_non_csv,
    refuse_overwriting,
    refuse_policy_conflicts,
    rules_options,
    rules_overrides,
)


@click.command("evaluate", cls=HintGlobalOptions)
@click.option(
    "--split",
    type=click.Choice(["val", "test"]),
    default=None,
    help="The checkpoint's validation or test split [test].",
)
@click.option(
    "--start",
    type=str,
    default=None,
    help="Evaluate the candles from this UTC time instead of a split (any span after the "
    "training span and its purge gap; default: the first allowed).",
)
@click.option(
    "--end",
    type=str,
    default=None,
    help="Last candle of the --start span, UTC (default: the data's last).",
)
@checkpoint_options("evaluate")
@click.option(
    "--data",
    "data_path",
    type=str,
    default=None,
    help="Candle file (default: the data recorded in the checkpoint's manifest). With models "
    "of several symbols under --ckpt-dir, its symbol picks the model unless --symbol is given.",
)
@click.option(
    "--other-market",
    is_flag=True,
    help="Allow --data of another market than the model's (an out-of-market test, labelled "
    "as such in the report).",
)
@dedupe_option
@rules_options("evaluate")
@policy_options
@click.option(
    "--record-policy/--no-record-policy",
    default=True,
    show_default=True,
    help="With --policy auto, store the chosen policy in the checkpoint manifest (trade uses it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option(
    "--predictions",
    # A directory is refused here, before the evaluation, not when the file is written.
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one CSV row per evaluated candle (recomputes every reported number).",
)
@click.option(
    "--trades",
    "trades_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the backtest's trades as CSV: entry/exit time and price, side, size, holding "
    "candles, fees, PnL gross and net (in units of the starting equity).",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write report.json, report.md and PNG plots here (a folder holding such files that "
    "evaluate did not write is refused).",
)
@click.option(
    "--seed",
    # The baselines' scikit-learn and LightGBM seeds take 0 .. 2**32 - 1; past it the evaluation
    # failed after the model had run, with an internal error.
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    show_default=True,
    help="Seed of the random baseline and the bootstrap.",
)
@click.pass_obj
def evaluate(
    state: CliState,
    split: str | None,
    start: str | None,
    end: str | None,
    arch: str | None,
    symbol: str | None,
    version: str,
    include_partial: bool,
    ckpt_dir: str | None,
    checkpoint: str | None,
    data_path: str | None,
    other_market: bool,
    dedupe: bool | None,
    as_json: bool,
    predictions: str | None,
    trades_path: str | None,
    report_dir: str | None,
    seed: int,
    policy_spec: str,
    enter: float | None,
    exit_: float | None,
    min_hold: int | None,
    record_policy: bool,
    **rule_flags: Any,
) -> None:
    """Evaluate a trained model honestly: metrics, baselines, significance, calibration, backtest.

    Signals are decided at a candle's close and filled at the next open, net of fees; the Sharpe
    ratio is annualized from the candle interval. Every number is recomputable from --predictions.
    The decision policy is chosen on the validation split only (--policy auto), never on test.
    """
    import json

    from jaxtrader.checkpoint import checkpoint_root
    from jaxtrader.decisions import PolicyRequest, describe_policy
    from jaxtrader.errors import ConfigError
    from jaxtrader.evaluate.report import format_table, refuse_foreign_report_dir, write_report
    from jaxtrader.evaluate.run import evaluate_checkpoint, evaluation_inputs
    from jaxtrader.evaluate.summary import write_csv
    from jaxtrader.evaluate.trades import totals as trade_totals
    from jaxtrader.evaluate.trades import write_trades_csv
    from jaxtrader.logs import jsonable
    from jaxtrader.runtime import enable_compilation_cache
    from jaxtrader.trading.runner import parse_utc

    if split is not None and (start is not None or end is not None):
        raise ConfigError("use either --split or --start/--end, not both")
    cfg = state.config(rules_overrides(**rule_flags))
    outputs = {"--predictions": predictions, "--trades": trades_path, "--report-dir": report_dir}
    refuse_overwriting(
        outputs,
        {
            "--data": data_path,
            "--checkpoint": checkpoint,
            "--policy": policy_spec,
            "--config": state.config_path,
        },
    )
    if report_dir:
        # Its fixed names (report.md, the plots) must not replace a user's files; evaluate's own
        # earlier report there is rewritten.
        refuse_foreign_report_dir(report_dir)
    refuse_policy_conflicts(policy_spec, enter, exit_, min_hold)
    root = checkpoint_root(ckpt_dir, cfg)
    if any(outputs.values()):
        # Without --data and --checkpoint the inputs are the picked version and the candle file
        # its manifest names: an output naming either would destroy what is being evaluated.
        version_dir, data_file = evaluation_inputs(
            ckpt_dir=root,
            symbol=symbol,
            arch=arch,
            version=version,
            checkpoint=checkpoint,
            include_partial=include_partial,
            data_path=data_path,
        )
        refuse_overwriting(
            outputs,
            {
                "the checkpoint": str(version_dir),
                "the checkpoint's data file": None if data_path else data_file,
            },
        )
    refuse_non_csv({"--predictions": predictions, "--trades": trades_path})
    request = PolicyRequest(policy_spec, enter, exit_, min_hold)
    # Bad policy settings fail here, before the model is loaded (the real horizon comes later).
    request.resolve(threshold=cfg.backtest.threshold, long_short=cfg.backtest.long_short, horizon=1)
    enable_compilation_cache()  # the predictor's programs compile once per machine, not per run
    result = evaluate_checkpoint(
        split=split or "test",
        start=parse_utc(start, "--start"),
        end=parse_utc(end, "--end"),
        backtest=cfg.backtest,
        ckpt_dir=root,
        symbol=symbol,
        arch=arch,
        version=version,
        checkpoint=checkpoint,
        data_path=data_path,
        other_market=other_market,
        include_partial=include_partial,
        seed=seed,
        with_attention=report_dir is not None,
        policy=request,
        record_policy=record_policy,
        dedupe=bool(dedupe),
    )
    threshold = rule_flags["threshold"]
    if threshold is not None and result.doc["policy"]["source"].startswith("auto"):
        # The flag's help reads like the strategy's rule; under another policy it only sets the
        # plain comparison, which the user must be told rather than find out.
        chosen = result.doc["policy"]["selected"]
        result.doc["notes"].append(
            f"--threshold {threshold:g} sets the plain rule reported beside the strategy; the "
            f"strategy is the auto policy chosen on the val split ({describe_policy(chosen)}); "
            "pass --policy plain to trade at the threshold"
        )
    if predictions:
        write_csv(result.rows, predictions)
        result.doc["predictions_csv"] = predictions
    if trades_path:
        write_trades_csv(result.trades, trades_path)
        result.doc["trades_export"] = {"path": trades_path, **trade_totals(result.trades)}
    if report_dir:
        write_report(
            report_dir,
            result.doc,
            result.rows,
            training_records=result.training_records,
            attention=result.attention,
            trades=result.trades,
            prices=result.prices,
        )
        result.doc["report_dir"] = report_dir
    if as_json:
        click.echo(json.dumps(jsonable(result.doc)))
    else:
        click.echo(format_table(result.doc))


COMMANDS: list[click.Command] = [evaluate]
