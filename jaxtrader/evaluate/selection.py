"""Choosing a decision policy honestly: a small fixed grid scored on the VALIDATION split's net
backtest only, with plain array inputs so evaluate and walk-forward (per fold, on its val block)
call the same function.

The grid (documented in docs/decisions.md):
- enter thresholds `ENTER` (go long when P(up) > enter),
- hysteresis widths `WIDTHS` (exit = enter - width; 0 = no band),
- minimum holds `min_hold_grid(horizon)`: 1 (re-decide every candle), the label horizon, and
  twice the horizon (deduplicated),
so 7 x 3 x 3 = 63 policies at most, after `Policy.flat()`, which never trades. Each is backtested
with the exchange fee rule on the val rows and scored by its net Sharpe; ties (to 1e-9) go to
fewer trades, then to the earlier grid entry (lower enter, narrower band, shorter hold). Standing
aside scores 0 and comes first, so when no policy's net Sharpe on validation is above 0 the choice
is to stand aside: not the least bad losing policy, and not a grid policy that happened never to
trade on validation (it may trade later).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrader.config import TradeRules
from jaxtrader.decisions import Policy, policy_positions, sharpe
from jaxtrader.evaluate import backtest as bt

ENTER = (0.50, 0.52, 0.54, 0.56, 0.58, 0.60, 0.65)
WIDTHS = (0.0, 0.02, 0.05)
TIE = 1e-9


def min_hold_grid(horizon: int) -> tuple[int, ...]:
    h = max(1, int(horizon))
    return tuple(sorted({1, h, 2 * h}))


def policy_grid(horizon: int, long_short: bool = False, max_position: float = 1.0) -> list[Policy]:
    """The candidate policies, in tie-break order: standing aside first."""
    return [Policy.flat(long_short, max_position)] + [
        Policy(
            enter=e,
            exit=round(e - w, 6),
            min_hold=m,
            max_position=max_position,
            long_short=long_short,
        )
        for e in ENTER
        for w in WIDTHS
        for m in min_hold_grid(horizon)
    ]


def score_policy(
    policy: Policy,
    prob_up: np.ndarray,
    asset_returns: np.ndarray,
    rules: TradeRules,
    periods_per_year: float,
) -> dict[str, Any]:
    """Net Sharpe, net return, trades and fee drag of one policy on one block of rows."""
    pos = policy_positions(policy, prob_up)
    fee, slip = bt.rates(rules)
    net = bt.simulate(pos, asset_returns, fee, slip)
    gross = bt.simulate(pos, asset_returns, 0.0)
    net_ret = float(net.equity[-1] - 1.0)
    return {
        **policy.to_dict(),
        "net_sharpe": sharpe(net.strategy_return, periods_per_year),
        "net_return": net_ret,
        "gross_return": float(gross.equity[-1] - 1.0),
        "fee_drag": float(gross.equity[-1] - 1.0) - net_ret,
        "trades": int(net.trade_returns.size),
    }


def select_policy(
    val_prob_up: np.ndarray,
    val_asset_returns: np.ndarray,
    rules: TradeRules,
    *,
    horizon: int,
    periods_per_year: float,
    max_position: float = 1.0,
    grid: list[Policy] | None = None,
) -> tuple[Policy, list[dict[str, Any]]]:
    """The grid policy with the best net Sharpe on the given (validation) rows, and the scored grid.

    `val_asset_returns[i]` is what a position decided at row i earns (`backtest.period_returns`).
    Only these arrays are read, so nothing outside the validation block can influence the choice.
    """
    p = np.asarray(val_prob_up, dtype=np.float64)
    r = np.asarray(val_asset_returns, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1 or p.size < 2:
        raise ValueError(
            f"policy selection needs equal 1-D probabilities and returns (>= 2 rows), got "
            f"{p.shape} and {r.shape}"
        )
    candidates = grid if grid is not None else policy_grid(horizon, rules.long_short, max_position)
    table = [score_policy(c, p, r, rules, periods_per_year) for c in candidates]
    best = min(
        range(len(table)),
        key=lambda i: (-round(table[i]["net_sharpe"] / TIE), table[i]["trades"], i),
    )
    for i, row in enumerate(table):
        row["selected"] = i == best
    return candidates[best], table
