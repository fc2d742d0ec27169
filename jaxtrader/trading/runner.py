"""One paper-trading run (the body of `jaxtrader trade`): load the predictor, check the interval,
build the feed and the strategy, handle stop signals, run the manager to the end of the feed.

Logs `trade_start`, one `candle` event per processed candle, `trade_stopped` and `trade_summary`,
and shows a progress bar; returns the strategy's summary for the caller to print.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jaxtrader.decisions import Policy, check_settings, describe_policy, stands_aside
from jaxtrader.errors import ConfigError, DataError, StateError
from jaxtrader.models.archs import ARCH_NAMES

if TYPE_CHECKING:
    import pandas as pd

    from jaxtrader.config import AppConfig
    from jaxtrader.trading.feeds import Feed, ReplayFeed
    from jaxtrader.trading.manager import Outcome
    from jaxtrader.trading.store import Store


def parse_utc(value: str | None, flag: str) -> pd.Timestamp | None:
    """A date/time as a UTC timestamp (naive values are UTC); ConfigError naming `flag`."""
    import pandas as pd

    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{flag} {value!r} is not a date/time; use e.g. 2024-01-01T00:00"
        ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class TradeJob:
    """What a trade run needs besides the AppConfig (its `backtest` rules and `risk` limits)."""

    feed: str  # replay:PATH or ccxt:EXCHANGE
    state_path: str
    strategy_id: str
    checkpoint: str | None = None
    arch: str | None = None
    symbol: str | None = None
    version: str = "best"
    include_partial: bool = False
    ckpt_dir: str | None = None
    timeframe: str | None = None
    capital: float = 10_000.0
    speed: str = "max"
    start: pd.Timestamp | None = None  # replay bounds; None = the checkpoint's test split
    end: pd.Timestamp | None = None
    new_strategy: bool = False
    policy: str = "checkpoint"  # checkpoint (the manifest's, else plain) | plain | a TOML file
    other_market: bool = False  # allow candles of another market than the model's
    in_sample: bool = False  # allow a replay --start inside the training span
    dedupe: bool = False  # keep the last of duplicate timestamps in a replay file
    # --threshold as typed (None: not given): refused where the policy in force ignores it.
    threshold_flag: float | None = None


TRADE_POLICY_CHOICES = "checkpoint, plain"  # trade's --policy values besides a TOML file


def trade_policy(
    spec: str, manifest: Any, rules: Any, threshold_flag: float | None = None
) -> Policy | None:
    """The decision policy of a trade run; None = the plain rule of `rules`. The manifest's policy
    takes the run's --long-short (a long-only choice applied long-short is the user's call).

    `threshold_flag` is --threshold as typed: it sets only the plain rule, so with a recorded or
    TOML policy in force it would be ignored without a word; ConfigError instead."""
    if spec == "plain":
        return None
    if spec == "auto":
        # evaluate's value: read as a file name it said "cannot read policy file auto".
        raise ConfigError(
            "--policy auto is evaluate's: `jaxtrader evaluate --policy auto` chooses a policy on "
            "the val split and records it in the checkpoint, which trade applies with --policy "
            "checkpoint (the default); pass --policy checkpoint, plain or a TOML file"
        )
    if spec == "checkpoint":
        recorded = getattr(manifest, "policy", None)
        if not recorded:
            return None
        policy = Policy.from_dict(recorded["rule"], where="the checkpoint manifest's policy")
        source = "the policy recorded in the checkpoint by `evaluate --policy auto`"
    else:
        policy = Policy.from_toml(spec, choices=TRADE_POLICY_CHOICES)
        source = f"--policy {spec}"
    if threshold_flag is not None:
        raise ConfigError(
            f"--threshold {threshold_flag:g} has no effect under {source} "
            f"({describe_policy(policy.to_dict())}); pass --policy "
            "plain to trade long above --threshold, or drop --threshold"
        )
    return dataclasses.replace(policy, long_short=rules.long_short)


def policy_in_force(spec: str, manifest: Any, policy: Policy) -> str:
    """The rule a trade run applies and where it comes from, in words (for `trade_start`)."""
    rule = describe_policy(policy.to_dict()) + (", long-short" if policy.long_short else "")
    if spec == "plain":
        where = "--policy plain"
    elif spec != "checkpoint":
        where = f"--policy {spec}"
    elif getattr(manifest, "policy", None):
        where = "recorded in the checkpoint by `evaluate --policy auto`"
    else:
        where = "the plain rule: the checkpoint records no policy"
    return f"{rule} ({where})"


def market_of(job: TradeJob, kind: str, target: str, trained: str | None) -> str:
    """The market the feed delivers: a replayed file's own BASE/QUOTE name when it has one (as
    `evaluate --data` reads it), else --symbol, else the model's. DataError for a market other
    than the model's unless `job.other_market`."""
    from jaxtrader.data import infer_symbol

    named = infer_symbol(target) if kind == "replay" else ""
    # Names without BASE/QUOTE (e.g. "candles.csv") say nothing of the market.
    fallback = named if kind == "replay" else "BTC/USDT"
    market = named if "/" in named else (job.symbol or trained or fallback)
    if trained and "/" in trained and "/" in market and market != trained and not job.other_market:
        source = f"{target} holds" if "/" in named else "--symbol asks for"
        raise DataError(
            f"the model was trained on {trained} but {source} {market}; pass --other-market to "
            f"trade it out of market, or a {trained} feed"
        )
    return market


def check_in_sample(manifest: Any, interval: pd.Timedelta, start: pd.Timestamp) -> None:
    """DataError when a replay starting at `start` reaches back into the training span: its first
    candle must be purged from the last training point as evaluate's --start is (t - t_train >=
    horizon + seq_len, `splits.purge_gap`)."""
    from jaxtrader.splits import purge_gap

    train_end = parse_utc(manifest.splits["train"]["end"], "the manifest's training end")
    assert train_end is not None
    allowed = train_end + (purge_gap(manifest.horizon, manifest.seq_len) + 1) * interval
    if start < allowed:
        raise DataError(
            f"--start {start.isoformat()} overlaps the training span (training labels reach "
            f"{(train_end + manifest.horizon * interval).isoformat()}, purged to "
            f"{allowed.isoformat()}); use --start {allowed.isoformat()} or later, or pass "
            "--in-sample to replay candles the model was trained on (the results are not "
            "out-of-sample)"
        )


def _empty_range(start: pd.Timestamp, end: pd.Timestamp, job: TradeJob) -> str:
    """Why a replay from `start` to `end` is empty, naming the bound that came from the test
    split: "replay range is empty: start ... is after end ..." left a user who typed only --start
    to guess where that end came from."""
    s, e = start.isoformat(), end.isoformat()
    if job.start is not None and job.end is not None:
        return f"--start {s} is after --end {e}; pass a --start before --end"
    if job.start is not None:
        return (
            f"--start {s} is after the replay's end {e} (the test split's; no --end given); pass "
            "--end too, or an earlier --start"
        )
    return (
        f"--end {e} is before the replay's start {s} (the test split's; no --start given); pass "
        "--start too, or a later --end"
    )


def check_resume_start(
    store: Store, sid: str, feed: ReplayFeed, start: pd.Timestamp, given: bool = True
) -> None:
    """StateError when resuming `sid` from a replay start after the candle it last reached would
    skip candles of the file: its equity history would get a hole that Sharpe spans as if the
    candles were consecutive. `given`: the start is --start's, else the test split's default. An
    earlier start is harmless (no candle runs twice)."""
    import pandas as pd

    # As `TradingManager.resume_after`: the newest processed or warm-up candle.
    reached = [pd.Timestamp(r.ts) for r in store.history(sid, 1)]
    loaded = store.load_state(sid)
    if loaded is not None and loaded[0] is not None:
        reached.append(pd.Timestamp(loaded[0]))
    if not reached:
        return
    last = max(reached)
    index = feed.frame.index
    between = index[(index > last) & (index < start)]
    if len(between):
        what = (
            f"--start {start.isoformat()}"
            if given
            else f"the replay start {start.isoformat()} (the test split's; no --start given)"
        )
        raise StateError(
            f"strategy '{sid}' in {store.path} has run up to the candle of {last.isoformat()}: "
            f"{what} would skip the {len(between)} candle(s) in between and leave a hole in its "
            f"history; pass --start {between[0].isoformat()} to continue after it, or use a new "
            "--strategy-id"
        )


def run_trade(cfg: AppConfig, job: TradeJob) -> dict[str, Any]:
    """Paper-trades `job` until the feed ends or SIGINT/SIGTERM; returns the strategy summary.

    The first signal finishes the current candle and stops; a second acts at once (the default
    handler), which is safe too since each candle commits atomically.
    """
    from jaxtrader.checkpoint import checkpoint_root, read_manifest
    from jaxtrader.data import format_interval, infer_symbol, parse_interval
    from jaxtrader.features import min_history
    from jaxtrader.inference import Predictor, version_dir_to_load
    from jaxtrader.logs import get_logger, log_event, log_format, notice, progress_bar
    from jaxtrader.runtime import enable_compilation_cache, freeze_long_lived_objects
    from jaxtrader.trading.feeds import CcxtFeed, ReplayFeed
    from jaxtrader.trading.manager import StrategyConfig, TradingManager, model_inputs_fn
    from jaxtrader.trading.paper_report import name_pnl_and_risk
    from jaxtrader.trading.risk import check_limits
    from jaxtrader.trading.store import Store, stable_hash

    if job.checkpoint is None and job.arch is None:
        raise ConfigError(f"trade needs --checkpoint PATH or --arch {'|'.join(ARCH_NAMES)}")
    kind, _, target = job.feed.partition(":")
    if kind not in ("replay", "ccxt") or not target:
        raise ConfigError(
            f"--feed {job.feed!r} is not replay:PATH or ccxt:EXCHANGE (e.g. ccxt:binance)"
        )
    log = get_logger("trade")
    # Everything a user can get wrong is checked before the model loads and the state file opens.
    if not (math.isfinite(job.capital) and job.capital > 0):
        raise ConfigError(f"--capital must be a positive amount, got {job.capital}")
    if not job.strategy_id.strip() or job.strategy_id != job.strategy_id.strip():
        # `portfolio` lists ids and `--strategy-id` selects them: a blank or padded one is a typo.
        raise ConfigError(
            f"--strategy-id {job.strategy_id!r} must be a non-blank name without surrounding "
            "spaces, e.g. lstm-v1"
        )
    check_settings(
        threshold=cfg.backtest.threshold,
        long_short=cfg.backtest.long_short,
        fee_bps=cfg.backtest.fee_bps,
        slippage_bps=cfg.backtest.slippage_bps,
    )
    check_limits(cfg.risk)
    if job.dedupe and kind != "replay":
        raise ConfigError(
            f"--dedupe applies to a replay:PATH feed's file, not to --feed {job.feed}; drop it"
        )
    # With models of several markets, a replayed file names the one to trade.
    fallback_symbol = infer_symbol(target) if kind == "replay" else None
    # A bad policy file, or a --threshold the policy in force ignores, fails before the model
    # loads (the recorded policy is read from the manifest alone).
    # Which version to load: the same lookup for the policy check and for the model.
    lookup: dict[str, Any] = {
        "ckpt_dir": checkpoint_root(job.ckpt_dir, cfg),
        "symbol": job.symbol,
        "arch": job.arch,
        "version": job.version,
        "checkpoint": job.checkpoint,
        "include_partial": job.include_partial,
        "fallback_symbol": fallback_symbol,
    }
    if job.policy not in ("checkpoint", "plain"):
        trade_policy(job.policy, None, cfg.backtest, job.threshold_flag)
    elif job.policy == "checkpoint" and job.threshold_flag is not None:
        manifest_now = read_manifest(version_dir_to_load(**lookup))
        trade_policy(job.policy, manifest_now, cfg.backtest, job.threshold_flag)
    enable_compilation_cache()  # a restarted strategy reuses the compiled model programs
    predictor = Predictor.load(**lookup)
    manifest = predictor.manifest
    trained_interval = manifest.candle_interval()
    interval = trained_interval if job.timeframe is None else parse_interval(job.timeframe)
    if interval != trained_interval:
        raise ConfigError(
            f"--timeframe {format_interval(interval)} differs from the checkpoint's "
            f"{format_interval(trained_interval)} candles ({predictor.version_dir}); the model "
            "only understands the interval it was trained on"
        )
    market = market_of(job, kind, target, manifest.data.get("symbol"))
    stop = threading.Event()
    feed: Feed
    if kind == "replay":
        # Each bound not given comes from the checkpoint's test split.
        test = manifest.splits["test"]
        start_ts = job.start if job.start is not None else parse_utc(test["start"], "test start")
        end_ts = job.end if job.end is not None else parse_utc(test["end"], "test end")
        assert start_ts is not None and end_ts is not None
        if start_ts > end_ts:
            raise ConfigError(_empty_range(start_ts, end_ts, job))
        if not job.in_sample:
            check_in_sample(manifest, interval, start_ts)
        feed = ReplayFeed(
            target,
            interval=format_interval(interval),
            symbol=market,
            start=start_ts,
            end=end_ts,
            speed=job.speed,
            stop=stop,
            dedupe=job.dedupe,
        )
    else:
        feed = CcxtFeed(target, market, interval, stop=stop)
    scfg = StrategyConfig(
        strategy_id=job.strategy_id,
        symbol=feed.symbol,
        interval_s=interval.total_seconds(),
        capital=job.capital,
        rules=cfg.backtest,
        risk=cfg.risk,
        policy=trade_policy(job.policy, manifest, cfg.backtest, job.threshold_flag),
    )
    meta = {
        "hash": stable_hash(manifest.model_dict()),  # a re-chosen policy keeps the model
        "checkpoint": str(predictor.version_dir),
        "arch": manifest.arch,
        "version": manifest.version,
        "step": predictor.step,
        "feed": f"{kind}:{target}",  # named when a resume is refused for another market
    }
    store = Store(job.state_path)
    if isinstance(feed, ReplayFeed) and not job.new_strategy:
        try:
            check_resume_start(store, job.strategy_id, feed, feed.start, job.start is not None)
        except StateError:
            store.close()
            raise
    manager = TradingManager(
        scfg,
        store,
        predictor.predict_proba,
        model_inputs_fn(predictor.scaler, predictor.seq_len),
        min_history() + predictor.seq_len,
        meta,
        fresh=job.new_strategy,
    )
    sid = job.strategy_id
    resumed = not manager.started_fresh and manager.last_ts is not None
    policy_text = policy_in_force(job.policy, manifest, scfg.active_policy)
    resumed_after = manager.last_ts.isoformat() if manager.last_ts is not None and resumed else None
    log_event(log, "trade_start", strategy=sid, checkpoint=meta["checkpoint"],
              arch=manifest.arch, feed=f"{kind}:{target}", state=job.state_path,
              resumed_after=resumed_after, policy=policy_text)  # fmt: skip
    if stands_aside(scfg.active_policy.to_dict()):
        # A run that never trades, with nothing said why, looked like a broken strategy (the
        # README's own synthetic-market walk-through ends there: no policy beats it on val).
        why = (
            "evaluate found no policy with a positive net Sharpe on the val split"
            if job.policy == "checkpoint"
            else f"--policy {job.policy} never enters"
        )
        notice(
            "policy_stands_aside",
            f"note: strategy '{sid}' stands aside ({why}): it records signals and places no "
            "orders; to trade anyway use --policy plain or a policy file, with another "
            "--strategy-id or --new-strategy",
            strategy=sid,
        )

    def on_signal(signum: int, frame: Any) -> None:
        # No logging here: writing to stderr from a handler that interrupted another stderr write
        # raises "reentrant call"; the stop is logged after the loop.
        received.append(signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, old[signal.Signals(signum)])

    received: list[str] = []
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    freeze_long_lived_objects()
    total = feed.remaining(manager.resume_after) if isinstance(feed, ReplayFeed) else None
    json_logs = log_format() == "json"
    bar = progress_bar(total=total, desc=f"trade {sid}")
    # Text logs without a terminal (nohup, systemd, a pipe) get no bar: a progress line instead,
    # every candle of a live feed (one an interval) and every PROGRESS_EVERY of a replay.
    progress_lines = bool(getattr(bar, "disable", False)) and not json_logs
    every = 1 if total is None else PROGRESS_EVERY
    seen = [0]

    def on_outcome(out: Outcome | None) -> None:
        bar.update(1)
        seen[0] += 1
        if out is None:
            return
        if progress_lines and (seen[0] % every == 0 or seen[0] == total):
            log_event(log, "trade_progress", strategy=sid, candles=seen[0], of=total,
                      ts=out.ts.isoformat(), prob_up=out.prob_up, target=out.target,
                      equity=round(out.equity, 2))  # fmt: skip
        log_event(log, "candle", logging.INFO if json_logs else logging.DEBUG, strategy=sid,
                  ts=out.ts.isoformat(), prob_up=out.prob_up, signal=out.desired,
                  fallback=out.fallback, risk=out.action, reason=out.reason, target=out.target,
                  order=out.order, fill_units=out.fill_units, fill_price=out.fill_price,
                  equity=out.equity, latency_ms=round(out.latency_ms, 3))  # fmt: skip
        bar.set_postfix(ts=out.ts.strftime("%Y-%m-%d %H:%M"), p=_fmt(out.prob_up),
                        pos=out.target, equity=f"{out.equity:,.2f}", refresh=False)  # fmt: skip

    try:
        summary = name_pnl_and_risk(manager.run(feed, stop=stop, on_outcome=on_outcome))
    finally:
        bar.close()
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.close()
    if stop.is_set():
        log_event(log, "trade_stopped", strategy=sid, signal=",".join(received),
                  last=summary.get("last"))  # fmt: skip
    log_event(log, "trade_summary", **{k: v for k, v in summary.items() if k != "pending_order"})
    return summary


PROGRESS_EVERY = 1000  # replayed candles between `trade_progress` lines without a terminal


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
