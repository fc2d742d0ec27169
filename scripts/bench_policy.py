"""Decision-policy speed: `policy_positions` (vectorized, jumps between position changes) against
folding `policy_step` over the series (what the trade runner does per candle), the exchange-rule
backtest `simulate`, and one `select_policy` grid, on a 70k-point probability series.

python scripts/bench_policy.py [--n 70000] [--repeats 5]

The series is a persistent AR(1) around 0.5 (model-like: ~0.03 wide), so the plain policy flips
often and a banded one rarely. Prints medians in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from jaxtrader.config import TradeRules
from jaxtrader.decisions import Policy, PolicyState, policy_positions, policy_step
from jaxtrader.evaluate import backtest as bt
from jaxtrader.evaluate.selection import select_policy


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def stepped(policy: Policy, p: np.ndarray) -> np.ndarray:
    state, out = PolicyState(), np.empty(p.size)
    for i, x in enumerate(p):
        state = policy_step(policy, state, float(x))
        out[i] = state.position
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=70_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    z = np.zeros(a.n)
    noise = rng.normal(0, 0.02, a.n)
    for i in range(1, a.n):
        z[i] = 0.7 * z[i - 1] + noise[i]
    p = 0.5 + z
    r = rng.normal(0, 0.006, a.n)
    for name, pol in (
        ("plain 0.5", Policy.plain()),
        ("enter 0.54 exit 0.50 hold 5", Policy(0.54, 0.50, 5)),
    ):
        pos = policy_positions(pol, p)
        assert np.array_equal(pos, stepped(pol, p))
        changes = int(np.count_nonzero(np.diff(pos)))
        vec = median_ms(lambda pol=pol: policy_positions(pol, p), a.repeats)
        step = median_ms(lambda pol=pol: stepped(pol, p), max(1, a.repeats // 2))
        sim = median_ms(lambda pos=pos: bt.simulate(pos, r, 1e-3), a.repeats)
        print(f"{name:30s} changes {changes:6d}  policy_positions {vec:8.1f} ms  "
              f"step loop {step:8.1f} ms ({step / vec:.0f}x)  simulate {sim:8.1f} ms")  # fmt: skip
    val = slice(0, a.n // 7)  # a val block the size of 15% of 70k
    sel = median_ms(
        lambda: select_policy(p[val], r[val], TradeRules(), horizon=5, periods_per_year=8760),
        max(1, a.repeats // 2),
    )
    print(f"select_policy on {a.n // 7} val rows (63 policies): {sel:.0f} ms")


if __name__ == "__main__":
    main()
