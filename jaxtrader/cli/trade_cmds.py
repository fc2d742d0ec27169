"""CLI commands `trade` (run one paper-trading strategy) and `portfolio` (compare strategies):
option parsing and printing; the run itself is `trading.runner.run_trade`."""

from __future__ import annotations

from typing import Any

import click

from jaxtrader.cli.common import (
    RULE_FLAGS,
    CliState,
    checkpoint_options,
    rules_options,
    rules_overrides,
)

# (flag, type, help): config-backed risk flags; None = "not given" so --config FILE applies.
_STRATEGY_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--max-position", float, "Max |position| as a fraction of equity [1.0]."),
    ("--daily-drawdown", float,
     "Close and halt entries for the UTC day after this loss from the day's start [0.05]."),
    ("--breaker-failures", int, "Consecutive model failures that trip the circuit breaker [3]."),
    ("--breaker-losses", int, "Consecutive losing trades that trip the circuit breaker [5]."),
    ("--cooldown", int, "Candles without entries after the breaker trips [24]."),
    ("--stop-loss", float, "Exit at this loss from the average entry, as a fraction [off]."),
    ("--take-profit", float, "Exit at this gain from the average entry, as a fraction [off]."),
    ("--max-trades-per-day", int, "Orders per UTC day that add exposure [off]."),
    ("--model-timeout-ms", float, "Per-candle model budget; slower is a neutral signal [500]."),
)  # fmt: skip


def _strategy_options(fn: Any) -> Any:
    for flag, kind, text in reversed(_STRATEGY_FLAGS):
        fn = click.option(flag, type=kind, default=None, help=text)(fn)
    return rules_options(fn)


@click.command("trade")
@checkpoint_options
@click.option(
    "--feed",
    "feed_spec",
    type=str,
    required=True,
    help="replay:PATH (a candle file, played in order) or ccxt:EXCHANGE (live closed candles; "
    "needs pip install 'jaxtrader[live]').",
)
@click.option(
    "--timeframe", type=str, default=None, help="Candle interval (default: the checkpoint's)."
)
@click.option("--state", "state_path", type=str, required=True, help="SQLite state file.")
@click.option("--strategy-id", type=str, required=True, help="Name of this strategy in the file.")
@click.option("--capital", type=float, default=10_000.0, show_default=True, help="Starting cash.")
@click.option(
    "--speed",
    type=click.Choice(["max", "realtime"]),
    default="max",
    show_default=True,
    help="Replay pace: as fast as possible, or one candle per interval.",
)
@_strategy_options
@click.option(
    "--start", type=str, default=None, help="Replay start, UTC (default: the test split's)."
)
@click.option("--end", type=str, default=None, help="Replay end, UTC (default: the test split's).")
@click.option(
    "--policy",
    "policy_spec",
    type=str,
    default="checkpoint",
    show_default=True,
    help="checkpoint: the policy recorded in the manifest by `evaluate --policy auto` (the "
    "plain rule when none is); plain: long above --threshold every candle; or a TOML file.",
)
@click.option(
    "--new-strategy",
    is_flag=True,
    help="Discard this strategy id's stored state and start afresh.",
)
@click.pass_obj
def trade(
    state: CliState,
    checkpoint: str | None,
    arch: str | None,
    symbol: str | None,
    version: str,
    ckpt_dir: str | None,
    feed_spec: str,
    timeframe: str | None,
    state_path: str,
    strategy_id: str,
    capital: float,
    speed: str,
    start: str | None,
    end: str | None,
    new_strategy: bool,
    policy_spec: str,
    **flags: Any,
) -> None:
    """Paper-trade a checkpoint with its own portfolio, risk limits and resumable SQLite state.

    PAPER TRADING ONLY: orders are simulated (filled at the next candle's open with fee and
    slippage); real order placement is out of scope. Run the same command again to resume after
    the last processed candle. Risk flags are fractions of equity or counts of candles/trades.
    """
    from jaxtrader.trading.runner import TradeJob, parse_utc, run_trade

    rules = rules_overrides(**{k: flags.pop(k) for k in RULE_FLAGS})
    cfg = state.config({**rules, **{f"risk.{k}": v for k, v in flags.items()}})
    job = TradeJob(
        feed=feed_spec,
        state_path=state_path,
        strategy_id=strategy_id,
        checkpoint=checkpoint,
        arch=arch,
        symbol=symbol,
        version=version,
        ckpt_dir=ckpt_dir,
        timeframe=timeframe,
        capital=capital,
        speed=speed,
        start=parse_utc(start, "--start"),
        end=parse_utc(end, "--end"),
        new_strategy=new_strategy,
        policy=policy_spec,
    )
    summary = run_trade(cfg, job)
    if state.log_format == "json":
        import json

        click.echo(json.dumps(summary, default=str))  # stdout: the result; stderr: the events
    else:
        click.echo(_table([summary]))


_COLUMNS = (
    ("strategy", "strategy_id", "{}"),
    ("arch", "arch", "{}"),
    ("candles", "candles", "{}"),
    ("last", "last", "{}"),
    ("equity", "equity", "{:,.2f}"),
    ("return", "return", "{:+.2%}"),
    ("sharpe", "sharpe", "{:.2f}"),
    ("max_dd", "max_drawdown", "{:.2%}"),
    ("fills", "fills", "{}"),
    ("trades", "trades_closed", "{}"),
    ("fees", "fees", "{:,.2f}"),
    ("fallbacks", "fallbacks", "{}"),
    ("risk_events", "risk_events", "{}"),
    ("bad_candles", "bad_candles", "{}"),
)


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for h, _, _ in _COLUMNS]]
    for r in rows:
        line = []
        for _, key, fmt in _COLUMNS:
            v = r.get(key)
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


@click.command("portfolio")
@click.option("--state", "state_path", type=str, required=True, help="SQLite state file.")
@click.option("--strategy-id", type=str, default=None, help="Only this strategy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.pass_obj
def portfolio(state: CliState, state_path: str, strategy_id: str | None, as_json: bool) -> None:
    """Show every strategy in a state file side by side: equity, return, Sharpe (annualised by
    the candle interval), max drawdown, trades, fees, fallbacks and risk events."""
    import json
    from pathlib import Path

    from jaxtrader.errors import RiskError
    from jaxtrader.trading.manager import summarize
    from jaxtrader.trading.store import Store

    if not Path(state_path).is_file():
        raise RiskError(f"state file {state_path} does not exist; run `jaxtrader trade` first")
    store = Store(state_path)
    ids = store.strategy_ids()
    if strategy_id is not None:
        if strategy_id not in ids:
            raise RiskError(
                f"no strategy '{strategy_id}' in {state_path}; it has: {', '.join(ids) or 'none'}"
            )
        ids = [strategy_id]
    rows = [summarize(store, sid) for sid in ids]
    store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(_table(rows) if rows else f"no strategies in {state_path}")
        for r in rows:
            if r.get("risk_event_kinds"):
                kinds = ", ".join(f"{k}={n}" for k, n in sorted(r["risk_event_kinds"].items()))
                click.echo(f"{r['strategy_id']} risk events: {kinds}")


COMMANDS: list[click.Command] = [trade, portfolio]
