"""One fee rule everywhere: evaluate's backtest and a trade replay of the same probabilities, with
the same policy, agree on every equity mark, the fees, the trades and the annualized Sharpe.

The trade side is the real `TradingManager` (real SQLite state, the paper broker, the policy
applied one candle at a time); the model is a scripted probability series, the only fake.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrader.config import RiskConfig, TradeRules
from jaxtrader.data import synth_candles
from jaxtrader.decisions import Policy, policy_positions, sharpe
from jaxtrader.evaluate import backtest as bt
from jaxtrader.features import NUM_FEATURES, min_history
from jaxtrader.scaling import Scaler
from jaxtrader.trading.feeds import Candle
from jaxtrader.trading.manager import StrategyConfig, TradingManager, model_inputs_fn, summarize
from jaxtrader.trading.store import Store

SEQ_LEN = 50
HISTORY = min_history() + SEQ_LEN
M = 120  # traded decisions
CAPITAL = 10_000.0
# Limits that never bind here, so positions are the policy's alone.
NO_LIMITS = RiskConfig(daily_drawdown=0.99, breaker_losses=10**6, model_timeout_ms=5_000.0)


def continuous_market() -> pd.DataFrame:
    """Real-looking candles whose open equals the previous close, so the trade runner's mark at a
    close and the backtest's mark at the next open are the same price."""
    f = synth_candles(rows=HISTORY + M + 1, seed=4).frame.copy()
    f.iloc[1:, f.columns.get_loc("open")] = f["close"].to_numpy()[:-1]
    f["high"] = f[["open", "high", "close"]].max(axis=1)
    f["low"] = f[["open", "low", "close"]].min(axis=1)
    return f


def probabilities(policy: Policy) -> np.ndarray:
    """Persistent P(up) around 0.5; the last decisions are flat so both sides end in cash."""
    rng = np.random.default_rng(5)
    z = np.zeros(M + 1)
    for i in range(1, z.size):
        z[i] = 0.6 * z[i - 1] + rng.normal(0, 0.06)
    p = np.clip(0.5 + z, 0.01, 0.99)
    p[-(policy.min_hold + 2) :] = 0.5 if policy.long_short else 0.01
    return p


class Scripted:
    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.calls = list(probs), 0

    def __call__(self, seq: np.ndarray, feats: np.ndarray) -> np.ndarray:
        p = self.probs[self.calls]
        self.calls += 1
        return np.array([p])


@pytest.mark.parametrize(
    ("policy", "slippage_bps"),
    [
        (Policy(enter=0.55, exit=0.48, min_hold=3), 0.0),
        (Policy(enter=0.53, exit=0.5, min_hold=2, long_short=True), 0.0),
        (Policy(enter=0.52, exit=0.52, min_hold=1, max_position=0.6), 5.0),
    ],
)
def test_trade_replay_and_backtest_agree(
    tmp_path: Path, policy: Policy, slippage_bps: float
) -> None:
    frame = continuous_market()
    p = probabilities(policy)
    rules = TradeRules(fee_bps=10.0, slippage_bps=slippage_bps, long_short=policy.long_short)
    scaler = Scaler(np.zeros(NUM_FEATURES), np.ones(NUM_FEATURES), 5.0)
    cfg = StrategyConfig("s", "SYNTH/USD", 3600.0, CAPITAL, rules, NO_LIMITS, policy=policy)
    m = TradingManager(cfg, Store(tmp_path / "state.db"), Scripted(p),
                       model_inputs_fn(scaler, SEQ_LEN), HISTORY, {"hash": "x"})  # fmt: skip
    candles = [
        Candle(ts, r.open, r.high, r.low, r.close, r.volume)
        for ts, r in zip(frame.index, frame.itertuples(), strict=True)
    ]
    m.warm_up(candles[:HISTORY])
    outs = [m.process(c) for c in candles[HISTORY:]]
    summary = summarize(m.store, "s")
    equity_rows = m.store.rows("equity", "s")
    trade_equity = np.array([r["equity"] for r in equity_rows]) / CAPITAL

    # The backtest of the same decisions: rows are the traded candles except the last (whose
    # decision is never filled).
    rows = np.arange(HISTORY, HISTORY + M)
    returns, _ = bt.period_returns(frame["open"].to_numpy(), frame["close"].to_numpy(), rows)
    positions = policy_positions(policy, p[:M])
    series = bt.simulate(positions, returns, 10.0 / 1e4, slippage_bps / 1e4)

    # The runner applied the same policy one candle at a time.
    np.testing.assert_array_equal([o.desired for o in outs[:M]], positions)
    assert positions[-1] == 0.0 and np.count_nonzero(np.diff(positions)) > 10
    # Row i's equity is marked at open[t_i + 2] = close[t_i + 1], the runner's mark of candle i+1.
    np.testing.assert_allclose(series.equity, trade_equity[1:], rtol=1e-9)
    assert series.equity[-1] == pytest.approx(summary["equity"] / CAPITAL, rel=1e-9)
    assert series.trade_returns.size == summary["trades_closed"]
    closed = [f["trade_pnl"] for f in m.store.rows("fills", "s") if f["trade_pnl"] is not None]
    np.testing.assert_allclose(series.trade_pnl, np.array(closed) / CAPITAL, rtol=1e-9)
    if slippage_bps == 0:
        assert series.fee.sum() == pytest.approx(summary["fees"] / CAPITAL, rel=1e-9)
    # The trade summary's Sharpe is annualized like evaluate's: 8760 periods a year for 1h.
    r = np.diff(np.concatenate([[1.0], trade_equity])) / np.concatenate([[1.0], trade_equity[:-1]])
    assert summary["sharpe"] == pytest.approx(sharpe(r, 8760), rel=1e-12)
    assert not math.isclose(summary["sharpe"], sharpe(r, 6048), rel_tol=1e-3)
