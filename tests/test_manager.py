"""TradingManager: hand-checked accounting, no look-ahead, fallbacks, bad candles, resume.

The SIGKILL-and-resume test with real subprocesses and a real checkpoint is in test_trade_cli.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import RiskConfig, TradeRules
from jaxtrader.data import synth_candles
from jaxtrader.dataset import model_inputs
from jaxtrader.features import NUM_FEATURES, min_history
from jaxtrader.scaling import Scaler
from jaxtrader.trading.feeds import Candle
from jaxtrader.trading.manager import (
    CandleBuffer,
    StrategyConfig,
    TradingManager,
    model_inputs_fn,
    summarize,
)
from jaxtrader.trading.store import Store

SEQ_LEN = 50
HISTORY = min_history() + SEQ_LEN
SCALER = Scaler(np.zeros(NUM_FEATURES), np.ones(NUM_FEATURES), 5.0)
META = {"hash": "test-model", "checkpoint": "inline", "arch": "scripted"}
ROWS = HISTORY + 40


inputs = model_inputs_fn(SCALER, SEQ_LEN)


def input_model(seq: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Deterministic in its input (so a resumed run sees the same probabilities)."""
    return np.array([1.0 / (1.0 + math.exp(-float(feats[0, :10].sum())))])


class Scripted:
    """Returns the scripted probabilities in order (or raises / sleeps for the special values)."""

    def __init__(self, probs: list[Any]) -> None:
        self.probs = list(probs)
        self.calls = 0

    def __call__(self, seq: np.ndarray, feats: np.ndarray) -> np.ndarray:
        assert seq.shape == (1, SEQ_LEN, 5) and feats.shape == (1, NUM_FEATURES)
        p = self.probs[self.calls] if self.calls < len(self.probs) else 0.5
        self.calls += 1
        if p == "raise":
            raise RuntimeError("model blew up")
        if p == "sleep":
            time.sleep(0.3)
            return np.array([0.9])
        return np.array([p])


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return synth_candles(rows=ROWS, seed=1).frame


def candles_of(frame: pd.DataFrame) -> list[Candle]:
    return [
        Candle(ts, r.open, r.high, r.low, r.close, r.volume)
        for ts, r in zip(frame.index, frame.itertuples(), strict=True)
    ]


def make(
    tmp_path: Path,
    model: Callable[[np.ndarray, np.ndarray], Any],
    *,
    sid: str = "s",
    db: str = "state.db",
    **cfg: Any,
) -> TradingManager:
    risk = cfg.pop("risk", RiskConfig(model_timeout_ms=100.0))
    rule_names = {f.name for f in dataclasses.fields(TradeRules)}
    rules = TradeRules(**{k: cfg.pop(k) for k in list(cfg) if k in rule_names})
    scfg = StrategyConfig(strategy_id=sid, symbol="SYNTH/USD", interval_s=3600.0, rules=rules,
                          risk=risk, **cfg)  # fmt: skip
    return TradingManager(scfg, Store(tmp_path / db), model, inputs, HISTORY, META)


def run_on(m: TradingManager, frame: pd.DataFrame) -> list[Any]:
    c = candles_of(frame)
    m.warm_up(c[:HISTORY])
    return [m.process(x) for x in c[HISTORY:]]


def test_accounting_matches_a_hand_calculation(tmp_path: Path, market: pd.DataFrame) -> None:
    # long, long, flat, long, flat: two round trips, orders at closes 0, 2, 3, 4.
    m = make(tmp_path, Scripted([0.7, 0.8, 0.2, 0.9, 0.1]), capital=1000.0, fee_bps=10.0,
             slippage_bps=20.0)  # fmt: skip
    frame = market.iloc[: HISTORY + 6]
    out = run_on(m, frame)
    o = frame["open"].to_numpy()[HISTORY:]
    c = frame["close"].to_numpy()[HISTORY:]
    fee, slip = 0.001, 0.002
    # Candle 1 open: buy with all equity, fee included.
    p1 = o[1] * (1 + slip)
    u1 = 1000.0 / (p1 * (1 + fee))
    assert out[1].fill_price == pytest.approx(p1) and out[1].fill_units == pytest.approx(u1)
    assert out[1].equity == pytest.approx(u1 * c[1])  # cash is exactly 0
    assert out[2].fill_units is None  # still long: no order
    # Candle 3 open: sell everything (decided at close 2).
    p3 = o[3] * (1 - slip)
    cash3 = u1 * p3 * (1 - fee)
    assert out[3].fill_units == pytest.approx(-u1)
    assert out[3].equity == pytest.approx(cash3)
    # Candle 4 open: buy again; candle 5 open: sell.
    p4 = o[4] * (1 + slip)
    u4 = cash3 / (p4 * (1 + fee))
    p5 = o[5] * (1 - slip)
    final = u4 * p5 * (1 - fee)
    assert out[5].equity == pytest.approx(final)
    s = summarize(m.store, "s")
    fees = u1 * p1 * fee + u1 * p3 * fee + u4 * p4 * fee + u4 * p5 * fee
    assert s["fees"] == pytest.approx(fees)
    assert s["realized_pnl"] == pytest.approx(u1 * (p3 - p1) + u4 * (p5 - p4))
    assert s["equity"] == pytest.approx(final)
    assert s["return"] == pytest.approx(final / 1000.0 - 1.0)
    assert (s["fills"], s["trades_closed"], s["fallbacks"]) == (4, 2, 0)
    fills = m.store.rows("fills", "s")
    # Every fill is at the open of the candle after the decision.
    orders = {r["order_id"]: r for r in m.store.rows("orders", "s")}
    for f in fills:
        decided = pd.Timestamp(orders[f["order_id"]]["decided_ts"])
        assert pd.Timestamp(f["ts"]) == decided + pd.Timedelta(1, unit="h")
        assert orders[f["order_id"]]["status"] == "filled"


def test_decisions_do_not_see_the_future(tmp_path: Path, market: pd.DataFrame) -> None:
    frame = market.iloc[: HISTORY + 12]
    a = run_on(make(tmp_path, input_model, db="a.db"), frame)
    future = frame.copy()
    k = 6  # change every candle after the 6th traded one
    future.iloc[HISTORY + k + 1 :, :4] *= 1.5
    b = run_on(make(tmp_path, input_model, db="b.db"), future)
    for x, y in zip(a[: k + 1], b[: k + 1], strict=True):
        assert (x.prob_up, x.target, x.order) == (y.prob_up, y.target, y.order)
        assert x.equity == y.equity
    assert any(x.prob_up != y.prob_up for x, y in zip(a[k + 1 :], b[k + 1 :], strict=True))


def test_model_failures_fall_back_to_neutral_and_trip_the_breaker(
    tmp_path: Path, market: pd.DataFrame
) -> None:
    risk = RiskConfig(breaker_failures=3, cooldown=2, model_timeout_ms=100.0)
    model = Scripted([0.9, "raise", float("nan"), "sleep", 0.9, 0.9, 0.9])
    out = run_on(make(tmp_path, model, risk=risk), market.iloc[: HISTORY + 7])
    assert out[0].target == 1.0 and out[0].order == 1
    kinds = [o.fallback.split(":")[0] if o.fallback else None for o in out]
    assert kinds[:4] == [None, "model_error", "nan", "timeout"]
    assert [o.action for o in out[1:3]] == ["hold", "hold"]  # neutral holds the position
    assert (out[3].action, out[3].reason, out[3].target) == ("exit", "circuit_breaker", 0.0)
    assert [o.action for o in out[4:6]] == ["block", "block"]  # cooldown of 2 candles
    assert (out[6].action, out[6].target) == ("allow", 1.0)
    events = m_events(tmp_path)
    assert events.get("circuit_breaker") == 1 and events.get("fallback") == 3


def m_events(tmp_path: Path, db: str = "state.db", sid: str = "s") -> dict[str, int]:
    return Store(tmp_path / db).event_counts(sid)


def test_bad_candles_are_skipped_and_gaps_filled(tmp_path: Path, market: pd.DataFrame) -> None:
    m = make(tmp_path, input_model)
    c = candles_of(market.iloc[: HISTORY + 8])
    m.warm_up(c[:HISTORY])
    good = c[HISTORY:]
    bad = [
        dataclasses.replace(good[0], close=math.nan),
        dataclasses.replace(good[0], high=good[0].low * 0.5),
        dataclasses.replace(good[0], open=-1.0),
    ]
    assert all(m.process(x) is None for x in bad)
    assert m.process(good[0]) is not None
    assert m.process(good[0]) is None  # duplicate
    assert m.process(good[1]) is not None
    assert m.process(good[0]) is None  # out of order
    assert (
        m.process(dataclasses.replace(good[2], ts=good[2].ts + pd.Timedelta(7, unit="min"))) is None
    )
    gapped = m.process(good[5])  # good[2..4] missing
    assert gapped is not None and gapped.fallback is not None and gapped.fallback.startswith("gap")
    after = m.process(good[6])
    assert after is not None and after.fallback is None and after.prob_up is not None
    rows = m.store.history("s", 5)
    assert [r.filled for r in rows] == [True, True, True, False, False]
    assert [r.close for r in rows[:3]] == [good[1].close] * 3  # flat at the previous close
    assert [r.volume for r in rows[:3]] == [0.0] * 3
    counts = m.store.event_counts("s")
    assert counts["bad_candle"] == 6  # 3 invalid, duplicate, out of order, off-grid


def test_in_process_resume_equals_uninterrupted(tmp_path: Path, market: pd.DataFrame) -> None:
    frame = market.iloc[: HISTORY + 20]
    full = run_on(make(tmp_path, input_model, db="full.db"), frame)
    c = candles_of(frame)
    first = make(tmp_path, input_model, db="part.db")
    first.warm_up(c[:HISTORY])
    for x in c[HISTORY : HISTORY + 9]:
        first.process(x)
    first.store.close()
    second = make(tmp_path, input_model, db="part.db")
    assert second.warmed and second.last_ts == c[HISTORY + 8].ts
    assert second.resume_after == c[HISTORY + 8].ts
    rest = [second.process(x) for x in c[HISTORY + 9 :]]
    assert [r.equity for r in rest] == [r.equity for r in full[9:]]
    a = Store(tmp_path / "full.db").rows("fills", "s")
    b = Store(tmp_path / "part.db").rows("fills", "s")
    assert [(f["ts"], f["units"], f["price"]) for f in a] == [
        (f["ts"], f["units"], f["price"]) for f in b
    ]


def test_drawdown_halt_of_one_strategy_does_not_block_another(
    tmp_path: Path, market: pd.DataFrame
) -> None:
    # Flipping long/flat every candle burns about 0.2% of equity in fees per round trip.
    frame = market.iloc[: HISTORY + 12]
    flip = [0.9, 0.1] * 10
    tight = make(tmp_path, Scripted(flip), sid="tight", risk=RiskConfig(daily_drawdown=0.003))
    loose = make(tmp_path, Scripted(flip), sid="loose", risk=RiskConfig(daily_drawdown=0.5))
    a = run_on(tight, frame)
    b = run_on(loose, frame)
    halted = [i for i, o in enumerate(a) if o.reason == "daily_drawdown"]
    assert halted, [o.equity for o in a]
    day = a[halted[0]].ts.date()
    assert all(o.target == 0.0 for o in a[halted[0] :] if o.ts.date() == day)
    assert all(o.reason != "daily_drawdown" for o in b)
    assert [o.target for o in b] == [1.0, 0.0] * 6  # the loose one keeps trading
    store = Store(tmp_path / "state.db")
    assert store.event_counts("tight")["daily_drawdown"] >= 1
    assert "daily_drawdown" not in store.event_counts("loose")
    assert len(store.rows("fills", "loose")) > len(store.rows("fills", "tight"))


def test_candle_buffer_keeps_the_last_n_across_wraparound() -> None:
    buf = CandleBuffer(3)
    for i in range(10):
        buf.append(i * 3_600_000_000_000, (i, i + 1, i - 1, i + 0.5, 10.0 * i), i % 2 == 0)
        assert len(buf) == min(i + 1, 3)
    frame = buf.frame()
    assert list(frame["open"]) == [7.0, 8.0, 9.0]
    assert list(frame["volume"]) == [70.0, 80.0, 90.0]
    assert frame.index[-1] == pd.Timestamp("1970-01-01T09:00Z") and str(frame.index.tz) == "UTC"
    frame.iloc[0, 0] = -1.0  # the frame is a copy: the buffer is untouched
    assert buf.frame()["open"].iloc[0] == 7.0
    buf.clear()
    assert len(buf) == 0


def test_candle_buffer_columns_are_contiguous_copies_of_the_frame() -> None:
    buf = CandleBuffer(4)
    for i in range(9):
        buf.append(i * 3_600_000_000_000, (i, i + 1, i - 1, i + 0.5, 10.0 * i), False)
    ts_ns, ohlcv_5xT = buf.columns()
    frame = buf.frame()
    np.testing.assert_array_equal(ts_ns, frame.index.asi8)
    np.testing.assert_array_equal(ohlcv_5xT, frame[["open", "high", "low", "close", "volume"]].T)
    assert ohlcv_5xT.flags.c_contiguous and ohlcv_5xT.dtype == np.float64
    ohlcv_5xT[0, 0] = ts_ns[0] = -1  # copies: the buffer is untouched
    assert buf.columns()[1][0, 0] == 5.0 and buf.columns()[0][0] == 5 * 3_600_000_000_000


def test_live_inputs_equal_the_training_inputs(market: pd.DataFrame) -> None:
    """The runner's inputs (buffer -> model_inputs_fn) against the training dataset's rows: the
    window is bit-identical; the scaled features, computed on the last MIN_HISTORY candles instead
    of the whole history, agree to float32 rounding (test_features bounds the unscaled ones)."""
    from jaxtrader.config import DatasetConfig
    from jaxtrader.dataset import build_dataset

    frame = synth_candles(rows=HISTORY + 1500, seed=3).frame
    data = build_dataset(frame, DatasetConfig(seq_len=SEQ_LEN))
    live = model_inputs_fn(data.scaler, SEQ_LEN)
    buf = CandleBuffer(HISTORY)
    worst = 0.0
    checked = 0
    for t, r in enumerate(frame.itertuples()):
        buf.append(frame.index[t].value, (r.open, r.high, r.low, r.close, r.volume), False)
        if t < HISTORY - 1 or not data.valid_T[t] or t % 4:
            continue
        seq, feats = live(*buf.columns())
        batch = data.gather(np.array([t]))
        np.testing.assert_array_equal(seq, batch["seq"])
        worst = max(worst, float(np.abs(feats - batch["feats"]).max()))
        checked += 1
    assert checked >= 250
    assert worst <= 1e-6, worst  # measured 2.4e-7: one float32 step at values of 2 to 4
    # The frame path on a whole prefix is the training path exactly (see also test_dataset).
    t = HISTORY + 100
    np.testing.assert_array_equal(
        model_inputs(frame.iloc[: t + 1], data.scaler, SEQ_LEN)[1],
        data.gather(np.array([t]))["feats"],
    )


def test_warm_up_fills_gaps_like_live_candles(tmp_path: Path, market: pd.DataFrame) -> None:
    m = make(tmp_path, input_model)
    c = candles_of(market.iloc[:HISTORY])
    assert m.warm_up(c[:10] + c[12:]) == HISTORY  # 2 of them gap-filled
    frame = m.buffer.frame()
    assert len(frame) == HISTORY and frame.index.is_monotonic_increasing
    assert (np.diff(frame.index.asi8) == 3_600 * 10**9).all()
    rows = m.store.history("s", HISTORY)
    assert [r.filled for r in rows[10:12]] == [True, True]
    assert rows[10].close == rows[11].open == c[9].close


def test_live_ccxt_path_with_a_fake_exchange(tmp_path: Path, market: pd.DataFrame) -> None:
    """run() on a CcxtFeed: warm-up from the exchange, closed candles only, a bad row skipped."""
    import threading

    from jaxtrader.trading.feeds import CcxtFeed

    frame = market.iloc[: HISTORY + 6]
    ms = (frame.index.asi8 // 1_000_000).tolist()
    rows = [[t, *r] for t, r in zip(ms, frame[["open", "high", "low", "close", "volume"]]
                                     .to_numpy().tolist(), strict=True)]  # fmt: skip
    rows[HISTORY + 2][4] = None  # a broken close from the exchange
    clock = [ms[HISTORY] / 1000 + 60]  # candle HISTORY is forming

    class Exchange:
        rateLimit = 100

        def fetch_ohlcv(self, symbol: str, tf: str, since: int, limit: int) -> list[Any]:
            return [r for r in rows if since <= r[0] <= clock[0] * 1000][:limit]

    stop = threading.Event()

    def sleep(seconds: float) -> bool:
        clock[0] += seconds
        if clock[0] * 1000 > ms[-1] + 3_600_000 * 2:
            stop.set()
        return stop.is_set()

    feed = CcxtFeed("fake", "SYNTH/USD", pd.Timedelta(1, unit="h"), exchange=Exchange(),
                    clock=lambda: clock[0], sleep=sleep, stop=stop)  # fmt: skip
    m = make(tmp_path, input_model)
    summary = m.run(feed, stop=stop)
    stored = m.store.rows("candles", "s")
    assert pd.Timestamp(stored[0]["ts"]) == frame.index[0]  # the whole warm-up, paged
    assert sum(not r["processed"] for r in stored) == HISTORY + 1  # + the gap-filled one
    processed = [pd.Timestamp(s["ts"]) for s in m.store.rows("signals", "s")]
    assert processed == [frame.index[HISTORY + i] for i in (0, 1, 3, 4, 5)]
    assert summary["bad_candles"] == 1 and summary["candles"] == 5
    gap = m.store.rows("signals", "s")[2]
    assert gap["fallback"].startswith("gap")  # the skipped candle is a gap for the model


def test_identity_keeps_the_rules_as_top_level_keys() -> None:
    # Existing state files store the identity flat; a nested "rules" would refuse every restart.
    scfg = StrategyConfig("s", "SYNTH/USD", 3600.0, rules=TradeRules(fee_bps=7.0, long_short=True))
    ident = scfg.identity()
    assert "rules" not in ident
    assert ident["fee_bps"] == 7.0 and ident["long_short"] is True
    assert ident["slippage_bps"] == 0.0 and ident["threshold"] == 0.5


def test_a_risk_limit_added_later_keeps_old_state_files_matching() -> None:
    """State files written before --max-neutral-hold existed have no such key: at its default
    the identity leaves it out (so they resume and get the default); set, it is a change."""
    from jaxtrader.config import RiskConfig

    ident = StrategyConfig("s", "SYNTH/USD", 3600.0).identity()
    assert "max_neutral_hold" not in ident["risk"] and ident["risk"]["cooldown"] == 24
    off = StrategyConfig("s", "SYNTH/USD", 3600.0, risk=RiskConfig(max_neutral_hold=0))
    assert off.identity()["risk"]["max_neutral_hold"] == 0


def test_a_long_gap_closes_the_position_after_max_neutral_hold(tmp_path: Path) -> None:
    """The audit's replay: a 60-candle gap restarts the buffer, the model has no signal for its
    whole history, and the long opened before the gap was held through all of it."""
    f = synth_candles(rows=HISTORY + 120, seed=1).frame
    frame = pd.concat([f.iloc[: HISTORY + 3], f.iloc[HISTORY + 63 : HISTORY + 75]])
    m = make(tmp_path, Scripted([0.9] * 200),
             risk=RiskConfig(model_timeout_ms=100.0, max_neutral_hold=5))  # fmt: skip
    out = run_on(m, frame)
    assert out[1].fill_units and out[1].fill_units > 0  # long before the gap
    after = out[3:]
    assert after[0].fallback.startswith("gap") and all(
        o.fallback.startswith("short_history") for o in after[1:]
    )
    assert [o.action for o in after[:6]] == ["hold"] * 4 + ["exit", "hold"]
    assert after[4].reason == "max_neutral_hold" and after[4].target == 0.0
    assert after[5].fill_units == pytest.approx(-out[1].fill_units)  # sold at the next open
    assert m.pf.units == 0.0
    kinds = [(e["ts"], e["kind"]) for e in m.store.rows("risk_events", "s")]
    assert (after[4].ts.isoformat(), "max_neutral_hold") in kinds


def test_a_lifted_halt_is_not_counted_as_a_risk_event(tmp_path: Path, market: pd.DataFrame) -> None:
    """Every daily-drawdown halt was counted twice, once more when the new UTC day
    lifted it (`halt_lifted`)."""
    from jaxtrader.trading.paper_report import name_pnl_and_risk

    flip = [0.9, 0.1] * 30  # fees halt the strategy each day; each midnight lifts the halt
    m = make(tmp_path, Scripted(flip), sid="tight", risk=RiskConfig(daily_drawdown=0.003))
    run_on(m, market)
    events = m.store.rows("risk_events", "tight")
    kinds = [e["kind"] for e in events if e["category"] == "risk"]
    assert kinds.count("halt_lifted") >= 1 and kinds.count("daily_drawdown") >= 2
    real = [k for k in kinds if k not in ("halt_lifted", "clamp")]
    for s in (summarize(m.store, "tight"), name_pnl_and_risk(summarize(m.store, "tight"))):
        assert s["risk_events"] == len(real)
        assert "halt_lifted" not in s["risk_event_kinds"]
        assert s["risk_event_kinds"]["daily_drawdown"] == kinds.count("daily_drawdown")
