"""CLI commands `trade` (run one paper-trading strategy) and `portfolio` (compare strategies)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from jaxtrader.cli.common import (
    RULE_FLAGS,
    CliState,
    checkpoint_options,
    rules_options,
    rules_overrides,
)

if TYPE_CHECKING:
    import pandas as pd

    from jaxtrader.trading.feeds import Feed
    from jaxtrader.trading.manager import Outcome


def _timestamp(value: str | None, flag: str) -> pd.Timestamp | None:
    import pandas as pd

    from jaxtrader.errors import ConfigError

    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{flag} {value!r} is not a date/time; use e.g. 2024-01-01T00:00"
        ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


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
    fn = rules_options(fn)
    for flag, kind, text in reversed(_STRATEGY_FLAGS):
        fn = click.option(flag, type=kind, default=None, help=text)(fn)
    return fn


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
    **flags: Any,
) -> None:
    """Paper-trade a checkpoint with its own portfolio, risk limits and resumable SQLite state.

    PAPER TRADING ONLY: orders are simulated (filled at the next candle's open with fee and
    slippage); real order placement is out of scope. Run the same command again to resume after
    the last processed candle. Risk flags are fractions of equity or counts of candles/trades.
    """
    import gc
    import signal
    import threading

    import pandas as pd

    from jaxtrader.data import format_interval, parse_interval
    from jaxtrader.errors import ConfigError
    from jaxtrader.features import min_history
    from jaxtrader.inference import Predictor
    from jaxtrader.logs import get_logger, log_event, log_format, progress_bar
    from jaxtrader.trading.feeds import CcxtFeed, ReplayFeed
    from jaxtrader.trading.manager import StrategyConfig, TradingManager, model_inputs_fn
    from jaxtrader.trading.store import Store, stable_hash
    from jaxtrader.train import enable_compilation_cache

    if checkpoint is None and arch is None:
        raise ConfigError("trade needs --checkpoint PATH or --arch lstm|transformer")
    kind, _, target = feed_spec.partition(":")
    if kind not in ("replay", "ccxt") or not target:
        raise ConfigError(
            f"--feed {feed_spec!r} is not replay:PATH or ccxt:EXCHANGE (e.g. ccxt:binance)"
        )
    rules = rules_overrides(**{k: flags.pop(k) for k in RULE_FLAGS})
    overrides = {**rules, **{f"risk.{k}": v for k, v in flags.items()}}
    cfg = state.config(overrides)

    log = get_logger("trade")
    if capital <= 0:
        raise ConfigError(f"--capital must be positive, got {capital}")
    start_ts, end_ts = _timestamp(start, "--start"), _timestamp(end, "--end")
    enable_compilation_cache()  # a restarted strategy reuses the compiled model programs
    predictor = Predictor.load(
        ckpt_dir=ckpt_dir or cfg.train.ckpt_dir,
        symbol=symbol,
        arch=arch,
        version=version,
        checkpoint=checkpoint,
    )
    manifest = predictor.manifest
    trained_interval = pd.Timedelta(manifest.data["interval"])  # stored as str(Timedelta)
    interval = trained_interval if timeframe is None else parse_interval(timeframe)
    if interval != trained_interval:
        raise ConfigError(
            f"--timeframe {format_interval(interval)} differs from the checkpoint's "
            f"{format_interval(trained_interval)} candles ({predictor.version_dir}); the model "
            "only understands the interval it was trained on"
        )
    market = symbol or manifest.data.get("symbol") or "BTC/USDT"
    stop = threading.Event()
    feed: Feed
    if kind == "replay":
        # Each bound not given comes from the checkpoint's test split.
        test = manifest.splits["test"]
        if start_ts is None:
            start_ts = _timestamp(test["start"], "test start")
        if end_ts is None:
            end_ts = _timestamp(test["end"], "test end")
        feed = ReplayFeed(
            target,
            interval=format_interval(interval),
            symbol=symbol or manifest.data.get("symbol"),
            start=start_ts,
            end=end_ts,
            speed=speed,
            stop=stop,
        )
    else:
        feed = CcxtFeed(target, market, interval, stop=stop)
    scfg = StrategyConfig(
        strategy_id=strategy_id,
        symbol=feed.symbol,
        interval_s=interval.total_seconds(),
        capital=capital,
        rules=cfg.backtest,
        risk=cfg.risk,
    )
    meta = {
        "hash": stable_hash(manifest.to_dict()),
        "checkpoint": str(predictor.version_dir),
        "arch": manifest.arch,
        "version": manifest.version,
        "step": predictor.step,
    }
    store = Store(state_path)
    manager = TradingManager(
        scfg,
        store,
        predictor.predict_proba,
        model_inputs_fn(predictor.scaler, predictor.seq_len),
        min_history() + predictor.seq_len,
        meta,
        fresh=new_strategy,
    )
    resumed = not manager.started_fresh and manager.last_ts is not None
    log_event(log, "trade_start", strategy=strategy_id, checkpoint=meta["checkpoint"],
              arch=manifest.arch, feed=f"{kind}:{target}", state=state_path,
              resumed_after=None if not resumed else manager.last_ts.isoformat())  # type: ignore[union-attr]  # fmt: skip

    def on_signal(signum: int, frame: Any) -> None:
        # Finish the current candle, then stop. A second signal acts at once (the default
        # handler): that is safe too, since each candle commits atomically.
        # No logging here: writing to stderr from a handler that interrupted another stderr write
        # raises "reentrant call"; the stop is logged after the loop.
        received.append(signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, old[signal.Signals(signum)])

    received: list[str] = []
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # A full collection over the long-lived objects JAX, Flax and the model leave took ~315 ms in
    # a trade process (measured), most of the 500 ms model budget: keep them out of collections.
    gc.collect()
    gc.freeze()
    total = feed.remaining(manager.resume_after) if isinstance(feed, ReplayFeed) else None
    json_logs = log_format() == "json"
    bar = progress_bar(total=total, desc=f"trade {strategy_id}")

    def on_outcome(out: Outcome | None) -> None:
        bar.update(1)
        if out is None:
            return
        log_event(log, "candle", 20 if json_logs else 10, strategy=strategy_id,
                  ts=out.ts.isoformat(), prob_up=out.prob_up, signal=out.desired,
                  fallback=out.fallback, risk=out.action, reason=out.reason, target=out.target,
                  order=out.order, fill_units=out.fill_units, fill_price=out.fill_price,
                  equity=out.equity, latency_ms=round(out.latency_ms, 3))  # fmt: skip
        bar.set_postfix(ts=out.ts.strftime("%Y-%m-%d %H:%M"), p=_fmt(out.prob_up),
                        pos=out.target, equity=f"{out.equity:,.2f}", refresh=False)  # fmt: skip

    try:
        summary = manager.run(feed, stop=stop, on_outcome=on_outcome)
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.close()
    if stop.is_set():
        log_event(log, "trade_stopped", strategy=strategy_id, signal=",".join(received),
                  last=summary.get("last"))  # fmt: skip
    log_event(log, "trade_summary", **{k: v for k, v in summary.items() if k != "pending_order"})
    if state.log_format == "json":
        import json

        click.echo(json.dumps(summary, default=str))  # stdout: the result; stderr: the events
    else:
        click.echo(_table([summary]))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


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
