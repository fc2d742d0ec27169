"""The strategy runner core: one closed candle in, one atomic state change out.

`TradingManager` owns a strategy's rolling candle buffer, portfolio, risk state and pending order.
For each closed candle it (1) validates the candle, (2) fills the order decided at the previous close
at this candle's OPEN, (3) appends the candle (filling a gap with flat candles, as the data layer
does), (4) builds the model input with `dataset.model_inputs_of` on the buffer's numpy columns (the
training code path, without pandas) and predicts under a timeout, (5) maps the probability to a
target exposure with the strategy's `Policy`, one candle at a time (`policy_step`, the same rule
as evaluate's `policy_positions`), (6) passes it through the risk
manager, (7) records a new order for the next open, and commits all of it to SQLite in ONE
transaction (`process`: `_settle`, `_decide`, then one `CandleCommit` of typed records from
`trading/records.py`). A restart rebuilds everything from that state.

Neutral fallback: when the model raises, times out or returns a non-probability, or the history is
too short or has a gap at this candle, the desired signal is neutral: the strategy HOLDS its current
position and never adds exposure. Risk exits (stop-loss, take-profit, drawdown, breaker) still act;
consecutive model failures trip the circuit breaker, which closes the position.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from jaxtrader.config import RiskConfig, TradeRules
from jaxtrader.data import OHLCV, candle_problem, fill_gaps, timestamps_ns
from jaxtrader.decisions import (
    Policy,
    PolicyState,
    annualization,
    max_drawdown,
    policy_step,
    sharpe,
)
from jaxtrader.errors import DeadlineExceeded
from jaxtrader.logs import get_logger, log_event
from jaxtrader.scaling import Scaler
from jaxtrader.timeouts import TimeoutRunner
from jaxtrader.trading import risk
from jaxtrader.trading.broker import Order, PaperBroker
from jaxtrader.trading.feeds import Candle, Feed
from jaxtrader.trading.portfolio import Portfolio
from jaxtrader.trading.records import (
    EquitySnapshot,
    FillRecord,
    PositionSnapshot,
    SignalRecord,
    StrategyState,
)
from jaxtrader.trading.store import CandleCommit, CandleRow, Store

_log = get_logger(__name__)

ModelFn = Callable[[np.ndarray, np.ndarray], Any]  # (seq_1xWx5, feats_1xF) -> P(up), shape [1]
# (ts_ns int64[T], ohlcv float64[5, T]) of the rolling buffer -> (seq_1xWx5, feats_1xF)
InputFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# The first call compiles the jitted model; it gets this budget instead of the per-candle timeout
# so compilation never counts as a model failure.
FIRST_CALL_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StrategyConfig:
    """What defines a strategy besides its model; a restart must present the same values."""

    strategy_id: str
    symbol: str
    interval_s: float
    capital: float = 10_000.0
    rules: TradeRules = field(default_factory=TradeRules)
    risk: RiskConfig = field(default_factory=RiskConfig)
    max_gap: int = 48  # candles; a longer gap restarts the rolling buffer
    policy: Policy | None = None  # None = the plain rule of `rules` (threshold, long/short)

    @property
    def active_policy(self) -> Policy:
        if self.policy is not None:
            return self.policy
        return Policy.plain(self.rules.threshold, self.rules.long_short)

    def identity(self) -> dict[str, Any]:
        """What the state file records and compares on restart; the rules' fields stay top-level
        keys ("fee_bps", ...), a plain policy adds no key, and neither does a risk limit added
        later while it has its default (`NEW_RISK_DEFAULTS`), so existing state files keep
        matching (and such a strategy, resumed, gets the limit's default)."""
        d = dataclasses.asdict(self)
        d.pop("strategy_id")
        d.update(d.pop("rules"))
        if d["policy"] is None:
            del d["policy"]
        for key, default in NEW_RISK_DEFAULTS.items():
            if d["risk"].get(key) == default:
                del d["risk"][key]
        return d


# Risk limits added after state files existed, with their defaults (see identity).
NEW_RISK_DEFAULTS: dict[str, Any] = {"max_neutral_hold": RiskConfig.max_neutral_hold}


@dataclass(frozen=True)
class Outcome:
    """What one candle did (also the per-candle log event)."""

    ts: pd.Timestamp
    prob_up: float | None
    desired: float | None  # the signal before risk (None = neutral)
    fallback: str | None
    action: str
    reason: str
    target: float
    order: int | None
    fill_units: float | None
    fill_price: float | None
    equity: float
    latency_ms: float


class CandleBuffer:
    """The rolling history: the last `size` candles as numpy columns, amortised O(1) appends.

    Rows live in arrays of twice the size; when the end is reached, the newest rows move to the
    front. OHLCV is stored column-major ([5, 2 * size]) so `columns()` hands the feature code
    contiguous columns without pandas; `frame()` builds a Candles-style frame for everything else.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ts = np.zeros(2 * size, dtype=np.int64)
        self._v = np.zeros((5, 2 * size), dtype=np.float64)
        self._filled = np.zeros(2 * size, dtype=bool)
        self._start = self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def clear(self) -> None:
        self._start = self._end

    def append(self, ts_ns: int, ohlcv: tuple[float, ...], filled: bool) -> None:
        if self._end == self._ts.size:
            keep = min(len(self), self.size - 1)
            src = slice(self._end - keep, self._end)
            self._ts[:keep], self._v[:, :keep] = self._ts[src], self._v[:, src]
            self._filled[:keep] = self._filled[src]
            self._start, self._end = 0, keep
        self._ts[self._end] = ts_ns
        self._v[:, self._end] = ohlcv
        self._filled[self._end] = filled
        self._end += 1
        self._start = max(self._start, self._end - self.size)

    def last_ts(self) -> int:
        return int(self._ts[self._end - 1])

    def last_ohlcv(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self._v[:, self._end - 1])

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (open times int64[T] in UTC ns, OHLCV float64[5, T] C-ordered): each row a
        contiguous column, what `dataset.model_inputs_of` takes (the `filled` flag is kept here
        but not passed on: the feature pipeline does not read it)."""
        sl = slice(self._start, self._end)
        return self._ts[sl].copy(), self._v[:, sl].copy()

    def frame(self) -> pd.DataFrame:
        """A copy as a Candles-style frame: UTC `timestamp` index and OHLCV float64 columns."""
        ts_ns, ohlcv_5xT = self.columns()
        index = pd.DatetimeIndex(ts_ns.view("M8[ns]"), name="timestamp", tz="UTC")
        return pd.DataFrame(ohlcv_5xT.T, index=index, columns=list(OHLCV))


def model_inputs_fn(scaler: Scaler, seq_len: int) -> InputFn:
    """The input builder for a checkpoint: `dataset.model_inputs_of`, the training code path.

    Features are computed on the buffer's last `max(min_history(), seq_len)` candles only: the last
    row of those equals the full-history value within 1e-7 (`features.MIN_HISTORY`), and every
    candle more costs time on each decision.
    """
    from jaxtrader.dataset import model_inputs_of
    from jaxtrader.features import min_history

    rows = max(min_history(), seq_len)

    def inputs(ts_ns: np.ndarray, ohlcv_5xT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return model_inputs_of(ohlcv_5xT[:, -rows:], ts_ns[-rows:], scaler, seq_len)

    return inputs


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


class TradingManager:
    """Runs one strategy against one state file. Create, `warm_up` if fresh, then `process`."""

    def __init__(
        self,
        cfg: StrategyConfig,
        store: Store,
        model: ModelFn,
        inputs: InputFn,
        history: int,
        model_meta: dict[str, Any],
        *,
        fresh: bool = False,
        runner: TimeoutRunner | None = None,
    ) -> None:
        self.cfg = cfg
        self.sid = cfg.strategy_id
        self.store = store
        self.model = model
        self.inputs = inputs
        self.history = history
        self.broker = PaperBroker(cfg.rules)
        self.policy = cfg.active_policy
        self.runner = runner or TimeoutRunner()
        self.step_ns = round(cfg.interval_s * 1e9)
        self._model_called = False
        store.claim(self.sid)  # before register: --new-strategy must not wipe a running strategy
        try:
            self.started_fresh = store.register(self.sid, cfg.identity(), model_meta, fresh=fresh)
        except BaseException:
            store.release(self.sid)  # a refused start leaves no claim behind
            raise
        self.buffer = CandleBuffer(history)
        loaded = store.load_state(self.sid)
        self.warmed = loaded is not None
        self._restore(*(loaded or (None, StrategyState(Portfolio(cash=cfg.capital)))))
        for r in store.history(self.sid, history):
            self.buffer.append(pd.Timestamp(r.ts).value, _ohlcv(r), r.filled)

    # -- state ---------------------------------------------------------------------------------

    def _restore(self, last_ts: str | None, s: StrategyState) -> None:
        self.last_ts = None if last_ts is None else pd.Timestamp(last_ts)
        self.pf = s.portfolio
        self.rs = s.risk
        self.pending = s.pending
        self.target = s.target
        self.next_order_id = s.next_order_id
        self.last_close = s.last_close
        self.counts = dict(s.counts)
        self.policy_state = (
            s.policy_state
            if s.policy_state is not None
            else PolicyState(int(np.sign(self.target)), self.policy.min_hold)
            if self.target
            else PolicyState()
        )

    def _state(self) -> StrategyState:
        return StrategyState(
            portfolio=self.pf,
            risk=self.rs,
            pending=self.pending,
            target=self.target,
            next_order_id=self.next_order_id,
            last_close=self.last_close,
            counts=dict(self.counts),
            policy_state=self.policy_state,
        )

    @property
    def resume_after(self) -> pd.Timestamp | None:
        """The feed position to continue from: the newest processed or buffered candle."""
        if self.buffer:
            newest = pd.Timestamp(self.buffer.last_ts(), unit="ns", tz="UTC")
            return newest if self.last_ts is None else max(newest, self.last_ts)
        return self.last_ts

    def warm_up(self, candles: list[Candle]) -> int:
        """Fills the rolling buffer with history that is never traded (only when starting fresh)."""
        if self.warmed:
            return 0
        rows: list[CandleRow] = []
        for c in candles:
            if self._reject(c) is None:  # bad history is dropped quietly; gaps are filled
                rows += self._append(c)[0]
                self.last_close = c.close
        self.store.commit_warmup(self.sid, self._state(), rows[-self.history :])
        self.warmed = True
        return len(rows)

    # -- one candle ----------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _reject(self, c: Candle) -> str | None:
        problem = candle_problem(c.ts, c.open, c.high, c.low, c.close, c.volume)
        if problem is not None:
            return problem
        newest = self.buffer.last_ts() if self.buffer else None
        if self.last_ts is not None:
            newest = max(newest or 0, self.last_ts.value)
        if newest is not None:
            if c.ts.value == newest:
                return "duplicate of the last candle"
            if c.ts.value < newest:
                return f"out of order (older than {pd.Timestamp(newest, unit='ns', tz='UTC')})"
            if (c.ts.value - newest) % self.step_ns:
                return f"off the {self.cfg.interval_s:g} s candle grid"
        return None

    def process(self, c: Candle) -> Outcome | None:
        """Processes one closed candle; None when the candle was rejected (event recorded).

        Three steps: settle the order decided at the previous close at this open, decide the
        target at this close, commit everything to the state file in one transaction.
        """
        why = self._reject(c)
        if why is not None:
            self._count("skipped")
            ts = c.ts.isoformat() if isinstance(c.ts, pd.Timestamp) else str(c.ts)
            self.store.add_event(self.sid, ts, "feed", "bad_candle", why)
            log_event(_log, "bad_candle", logging.WARNING, strategy=self.sid, ts=ts, reason=why)
            return None
        t0 = time.perf_counter()
        events: list[tuple[str, str, str]] = []
        settled, fill = self._settle(c, events)
        new_rows, gap = self._append(c)
        equity = self.pf.equity(c.close)
        signal, new_order = self._decide(c, gap, equity, events)
        signal = dataclasses.replace(signal, latency_ms=(time.perf_counter() - t0) * 1e3)
        self.last_ts, self.last_close = c.ts, c.close
        self._count("candles")
        self.store.commit_candle(
            self.sid,
            CandleCommit(
                ts=_iso(c.ts),
                state=self._state(),
                candles=new_rows,
                signal=signal,
                position=PositionSnapshot.of(self.pf),
                equity=EquitySnapshot(c.close, equity, self.pf.unrealized(c.close)),
                new_order=new_order,
                fill=fill,
                settled=settled,
                events=events,
            ),
        )
        return Outcome(
            ts=c.ts,
            prob_up=signal.prob_up,
            desired=signal.desired,
            fallback=signal.fallback,
            action=signal.action,
            reason=signal.reason,
            target=signal.target,
            order=None if new_order is None else new_order.order_id,
            fill_units=None if fill is None else fill.units,
            fill_price=None if fill is None else fill.price,
            equity=equity,
            latency_ms=signal.latency_ms,
        )

    def _settle(
        self, c: Candle, events: list[tuple[str, str, str]]
    ) -> tuple[tuple[int, str] | None, FillRecord | None]:
        """Rolls the risk day, then fills the order decided at the previous close at this open."""
        equity_before = (
            self.pf.cash if math.isnan(self.last_close) else self.pf.equity(self.last_close)
        )
        self.rs, ev = risk.start_candle(self.rs, c.ts, equity_before)
        events += [("risk", e.kind, e.reason) for e in ev]
        if self.pending is None:
            return None, None
        fill = self.broker.fill(self.pf, self.pending, c.ts, c.open)
        settled = (self.pending.order_id, "filled" if fill is not None else "nothing_to_do")
        self.pending = None
        if fill is None:
            return settled, None
        self.pf = fill.result.portfolio
        pnl = fill.result.closed_trade_pnl
        if pnl is not None:
            self.rs, ev = risk.on_trade_closed(self.cfg.risk, self.rs, pnl)
            events += [("risk", e.kind, e.reason) for e in ev]
        record = FillRecord(
            fill.order_id, fill.units, fill.price, fill.fee, fill.result.realized, pnl
        )
        return settled, record

    def _decide(
        self, c: Candle, gap: bool, equity: float, events: list[tuple[str, str, str]]
    ) -> tuple[SignalRecord, Order | None]:
        """P(up) (or a neutral fallback) -> desired exposure -> risk -> target, and the order for
        the next open when the target changes. The signal's latency is filled in by `process`."""
        prob, fallback, model_events = self._predict(gap)
        events += model_events
        if fallback is not None:
            self._count(f"fallback_{fallback.split(':')[0]}")
            events.append(("model", "fallback", fallback))
        # No usable probability: the policy holds (and counts the candle); the signal is neutral.
        self.policy_state = policy_step(self.policy, self.policy_state, prob)
        desired = None
        if prob is not None:
            desired = float(self.policy_state.position * self.policy.max_position)
        decision, self.rs, ev = risk.decide(
            self.cfg.risk,
            self.rs,
            desired=desired,
            current=self.target,
            equity=equity,
            close=c.close,
            units=self.pf.units,
            avg_entry=self.pf.avg_entry,
        )
        events += [("risk", e.kind, e.reason) for e in ev]
        new_order = None
        if decision.target != self.target:
            if decision.action == "clamp":  # an event when it shapes an order, not every candle
                events.append(("risk", "clamp", f"desired {desired} clamped to {decision.target}"))
            new_order = self.pending = Order(
                self.next_order_id, c.ts, decision.target, decision.reason
            )
            self.next_order_id += 1
            self.target = decision.target
            self.rs = risk.count_order(self.rs)
        signal = SignalRecord(
            prob, desired, fallback, decision.action, decision.reason, decision.target, 0.0
        )
        return signal, new_order

    def _append(self, c: Candle) -> tuple[list[CandleRow], bool]:
        """Adds the candle to the buffer; gaps up to `max_gap` candles are filled with flat
        candles at the previous close (the data layer's policy), longer ones restart the buffer."""
        rows: list[CandleRow] = []
        missing = (c.ts.value - self.buffer.last_ts()) // self.step_ns - 1 if self.buffer else 0
        if missing > self.cfg.max_gap:
            self.buffer.clear()
        elif missing > 0:
            last = self.buffer.last_ohlcv()
            ts_ns, vals, _ = fill_gaps(
                np.array([self.buffer.last_ts(), c.ts.value], dtype=np.int64),
                {k: np.array([last[i], getattr(c, k)]) for i, k in enumerate(OHLCV)},
                np.array([0, missing + 1]),
                self.step_ns,
            )
            for j in range(1, len(ts_ns) - 1):
                o, h, lo, cl, v = (float(vals[k][j]) for k in OHLCV)
                ts = _iso(pd.Timestamp(int(ts_ns[j]), unit="ns", tz="UTC"))
                row = CandleRow(ts, o, h, lo, cl, v, filled=True)
                self.buffer.append(int(ts_ns[j]), (o, h, lo, cl, v), True)
                rows.append(row)
        self.buffer.append(c.ts.value, _ohlcv(c), False)
        rows.append(CandleRow(_iso(c.ts), c.open, c.high, c.low, c.close, c.volume))
        return rows, missing > 0

    def _predict(self, gap: bool) -> tuple[float | None, str | None, list[tuple[str, str, str]]]:
        """P(up) or the reason for a neutral signal. Model failures feed the circuit breaker."""
        if gap:
            return None, "gap: missing candles before this one", []
        if len(self.buffer) < self.history:
            return None, f"short_history: {len(self.buffer)} of {self.history} candles", []
        failure = None
        prob = None
        try:
            seq, feats = self.inputs(*self.buffer.columns())
            first = not self._model_called
            budget = FIRST_CALL_TIMEOUT_S if first else self.cfg.risk.model_timeout_ms / 1e3
            out = self.runner.call(lambda: self.model(seq, feats), budget, "model prediction")
            self._model_called = True
            p = float(np.asarray(out, dtype=np.float64).reshape(-1)[0])
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                failure = f"nan: model returned {p}"
            else:
                prob = p
        except DeadlineExceeded as e:
            failure = f"timeout: {e}"
        except Exception as e:
            failure = f"model_error: {type(e).__name__}: {e}"
        self.rs, ev = risk.on_model_result(
            self.cfg.risk, self.rs, failed=failure is not None, why=(failure or "").split(":")[0]
        )
        return prob, failure, [("risk", e.kind, e.reason) for e in ev]

    # -- loop ----------------------------------------------------------------------------------

    def run(
        self,
        feed: Feed,
        stop: threading.Event | None = None,
        on_outcome: Callable[[Outcome | None], None] | None = None,
    ) -> dict[str, Any]:
        if not self.warmed:
            self.warm_up(feed.warmup(self.history, None))
        for c in feed.candles(self.resume_after):
            out = self.process(c)
            if on_outcome is not None:
                on_outcome(out)
            if stop is not None and stop.is_set():
                break
        return summarize(self.store, self.sid)

    def close(self) -> None:
        self.runner.close()
        self.store.release(self.sid)


def _ohlcv(c: Any) -> tuple[float, float, float, float, float]:
    return (float(c.open), float(c.high), float(c.low), float(c.close), float(c.volume))


def summarize(store: Store, sid: str) -> dict[str, Any]:
    """One strategy's figures from its state file: equity, return, Sharpe, drawdown, activity."""
    info = store.strategy(sid)
    if info is None:
        return {"strategy_id": sid, "candles": 0}
    cfg = info["config"]
    capital = float(cfg["capital"])
    eq = store.rows("equity", sid)
    equity = np.array([r["equity"] for r in eq], dtype=np.float64)
    fills = store.rows("fills", sid)
    signals = store.rows("signals", sid)
    counts = store.event_counts(sid)
    loaded = store.load_state(sid)
    state = loaded[1] if loaded else None
    returns = np.diff(np.concatenate([[capital], equity])) / np.concatenate(
        [[capital], equity[:-1]]
    )
    # Through data.timestamps_ns: `.asi8` of parsed ISO strings is in microseconds on pandas 3.
    ts_ns = timestamps_ns([r["ts"] for r in eq]) if eq else np.zeros(0, np.int64)
    ppy, _ = annualization(float(cfg["interval_s"]), ts_ns)  # the same basis as evaluate
    closed = [f["trade_pnl"] for f in fills if f["trade_pnl"] is not None]
    # Clamps stay here (`paper_report.name_pnl_and_risk` counts them apart); a lifted halt is not
    # an event at all (`risk.NOT_EVENTS`).
    skip = {"fallback", "bad_candle", *risk.NOT_EVENTS}
    risk_kinds = {k: n for k, n in counts.items() if k not in skip}
    pf = state.portfolio if state else Portfolio(cash=capital)
    return {
        "strategy_id": sid,
        "checkpoint": info["model"].get("checkpoint"),
        "arch": info["model"].get("arch"),
        "candles": int(equity.size),
        "first": eq[0]["ts"] if eq else None,
        "last": eq[-1]["ts"] if eq else None,
        "capital": capital,
        "equity": float(equity[-1]) if equity.size else capital,
        "return": float(equity[-1] / capital - 1.0) if equity.size else 0.0,
        "sharpe": sharpe(returns, ppy) if equity.size else 0.0,
        "max_drawdown": max_drawdown(equity, start=capital) if equity.size else 0.0,
        "fills": len(fills),
        "trades_closed": len(closed),
        "win_rate": float(np.mean(np.array(closed) > 0)) if closed else None,
        "fees": pf.fees,
        "realized_pnl": pf.realized_pnl,
        "position_units": pf.units,
        "fallbacks": sum(1 for s in signals if s["fallback"] is not None),
        "bad_candles": counts.get("bad_candle", 0),
        "risk_events": sum(risk_kinds.values()),
        "risk_event_kinds": risk_kinds,
        "pending_order": state.pending.to_dict() if state and state.pending else None,
        "latency_ms_p50": float(np.percentile([s["latency_ms"] for s in signals], 50))
        if signals
        else None,
        "latency_ms_p99": float(np.percentile([s["latency_ms"] for s in signals], 99))
        if signals
        else None,
    }
