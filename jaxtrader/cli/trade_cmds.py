"""CLI commands `trade` (run one paper-trading strategy) and `portfolio` (compare strategies):
option parsing and printing; the run itself is `trading.runner.run_trade`."""

from __future__ import annotations

from typing import Any

import click

from jaxtrader.cli.common import (
    RULE_FLAGS,
    CliState,
    HintGlobalOptions,
    checkpoint_options,
    dedupe_option,
    refuse_non_csv,
    refuse_overwriting,
    rules_options,
    rules_overrides,
)
from jaxtrader.config import RISK_FLAGS, is_integer_key


def _strategy_options(fn: Any) -> Any:
    # None = "not given", so --config FILE applies.
    for flag, name, _, text in reversed(RISK_FLAGS):
        kind = int if is_integer_key(f"risk.{name}") else float
        fn = click.option(flag, type=kind, default=None, help=text)(fn)
    return rules_options("trade")(fn)


@click.command("trade", cls=HintGlobalOptions)
@checkpoint_options("trade")
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
    "--start",
    type=str,
    default=None,
    help="Replay start, UTC (default: the test split's). A resumed strategy continues after its "
    "last candle; a --start that would skip candles of the file is refused.",
)
@click.option("--end", type=str, default=None, help="Replay end, UTC (default: the test split's).")
@click.option(
    "--in-sample",
    is_flag=True,
    help="Allow a replay --start inside the checkpoint's training span and purge gap (checks the "
    "mechanics only: the model has seen those candles).",
)
@click.option(
    "--other-market",
    is_flag=True,
    help="Allow a feed of another market than the model's (an out-of-market test).",
)
@dedupe_option
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
    include_partial: bool,
    ckpt_dir: str | None,
    feed_spec: str,
    timeframe: str | None,
    state_path: str,
    strategy_id: str,
    capital: float,
    speed: str,
    start: str | None,
    end: str | None,
    in_sample: bool,
    other_market: bool,
    dedupe: bool | None,
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

    threshold_flag = flags["threshold"]  # refused where the policy in force ignores it
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
        include_partial=include_partial,
        ckpt_dir=ckpt_dir,
        timeframe=timeframe,
        capital=capital,
        speed=speed,
        start=parse_utc(start, "--start"),
        end=parse_utc(end, "--end"),
        new_strategy=new_strategy,
        policy=policy_spec,
        other_market=other_market,
        in_sample=in_sample,
        dedupe=bool(dedupe),
        threshold_flag=threshold_flag,
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
    ("pnl_gross", "pnl_gross", "{:+,.2f}"),
    ("fees", "fees", "{:,.2f}"),
    ("pnl_net", "pnl_net", "{:+,.2f}"),
    ("fallbacks", "fallbacks", "{}"),
    ("clamps", "position_clamps", "{}"),
    ("risk_events", "risk_events", "{}"),
    ("bad_candles", "bad_candles", "{}"),
)


# `portfolio` adds buy-and-hold over each strategy's own candles beside its figures.
_PORTFOLIO_COLUMNS = (
    *_COLUMNS[:8],
    ("b&h return", "bh_return", "{:+.2%}"),
    ("b&h sharpe", "bh_sharpe", "{:.2f}"),
    ("b&h max_dd", "bh_max_drawdown", "{:.2%}"),
    *_COLUMNS[8:],
)


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...] = _COLUMNS) -> str:
    cells = [[h for h, _, _ in columns]]
    for r in rows:
        line = []
        for _, key, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


@click.command("portfolio", cls=HintGlobalOptions)
@click.option("--state", "state_path", type=str, required=True, help="SQLite state file.")
@click.option("--strategy-id", type=str, default=None, help="Only this strategy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.option(
    "--trades",
    "trades_path",
    type=str,
    default=None,
    help="Write the strategies' trades as CSV: entry/exit time and price, side, size, holding "
    "candles, fees, PnL gross and net (an open position marked at the last close).",
)
@click.pass_obj
def portfolio(
    state: CliState,
    state_path: str,
    strategy_id: str | None,
    as_json: bool,
    trades_path: str | None,
) -> None:
    """Show every strategy in a state file side by side: equity, return, Sharpe (annualised by
    the candle interval), max drawdown, trades, fees, fallbacks and risk events, next to
    buy-and-hold over the strategy's own candles (same capital, fee and slippage)."""
    import json
    from pathlib import Path

    from jaxtrader.errors import StateError
    from jaxtrader.trading.manager import summarize
    from jaxtrader.trading.paper_report import (
        buy_and_hold,
        name_pnl_and_risk,
        paper_trades,
        write_paper_trades_csv,
    )
    from jaxtrader.trading.store import Store

    if Path(state_path).is_dir():
        raise StateError(f"state file {state_path} is a folder; pass --state the file in it")
    if not Path(state_path).is_file():
        raise StateError(f"state file {state_path} does not exist; run `jaxtrader trade` first")
    refuse_overwriting({"--trades": trades_path}, {"--state": state_path})
    refuse_non_csv({"--trades": trades_path})
    store = Store(state_path)
    ids = store.strategy_ids()
    if strategy_id is not None:
        if strategy_id not in ids:
            raise StateError(
                f"no strategy '{strategy_id}' in {state_path}; it has: {', '.join(ids) or 'none'}"
            )
        ids = [strategy_id]
    rows, trades, broken = [], [], []
    for sid in ids:
        # One strategy's bad stored data (written by an older jaxtrader, or edited by hand) must
        # not hide the others: it is left out and named in the error at the end.
        try:
            row = name_pnl_and_risk(summarize(store, sid))
            bh = buy_and_hold(store, sid)
            row["buy_and_hold"] = bh
            row.update({f"bh_{k}": (bh or {}).get(k) for k in ("return", "sharpe", "max_drawdown")})
            if trades_path:
                trades += paper_trades(store, sid)
        except (ValueError, KeyError, TypeError) as e:
            broken.append(f"'{sid}' ({type(e).__name__}: {e})")
            continue
        rows.append(row)
    if trades_path:
        write_paper_trades_csv(trades, trades_path)
    store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(_table(rows, _PORTFOLIO_COLUMNS) if rows else f"no strategies in {state_path}")
        for r in rows:
            if r.get("risk_event_kinds"):
                kinds = ", ".join(f"{k}={n}" for k, n in sorted(r["risk_event_kinds"].items()))
                click.echo(f"{r['strategy_id']} risk events: {kinds}")
    if broken:
        raise StateError(
            f"left out {len(broken)} strateg{'y' if len(broken) == 1 else 'ies'} of {state_path} "
            f"whose stored data cannot be read: {'; '.join(broken)}; start "
            f"{'it' if len(broken) == 1 else 'them'} afresh with `jaxtrader trade --new-strategy`"
        )


COMMANDS: list[click.Command] = [trade, portfolio]
