"""Cross-check of evaluate's backtest against vectorbt (run once by hand; vectorbt is NOT a
dependency of jaxtrader).

Real BTC/USDT 1h open prices, positions from a momentum rule (long-only, and long-short), fee
10 bps, no slippage. Fills at the next open, so both sides see the same price path: the compounded
open-to-open path that `backtest.simulate` uses. vectorbt: `Portfolio.from_orders(close=path,
size=target, size_type="targetpercent", fees=0.001, direction=...)`, with an order only on the
rows where the target changes (NaN elsewhere, as our broker trades only on changes) and a final
order to 0 at the last price (our backtest liquidates there).

    python scripts/compare_vectorbt.py --dump /tmp/vbt.npz --data ../shared/data/binance_btcusdt_1h.csv.gz
    /work/vbtvenv/bin/python scripts/compare_vectorbt.py --check /tmp/vbt.npz   # numpy/pandas/vectorbt only
"""

from __future__ import annotations

import argparse

import numpy as np


def dump(path: str, data: str, n: int) -> None:
    import pandas as pd

    from jaxtrader.evaluate import backtest as bt

    frame = pd.read_csv(data).tail(n + 2)
    open_ = frame["open"].to_numpy(np.float64)
    close = frame["close"].to_numpy(np.float64)
    rows = np.arange(n)
    r, _ = bt.period_returns(open_, close, rows)
    mom = np.sign(close[rows] - close[np.maximum(rows - 5, 0)])
    out = {"returns": r}
    for name, pos in (("long", (mom > 0).astype(np.float64)), ("long_short", mom)):
        s = bt.simulate(pos, r, 1e-3)
        out[f"{name}_pos"] = pos
        out[f"{name}_equity"] = s.equity
        out[f"{name}_fees"] = np.array([s.fee.sum()])
        out[f"{name}_fee_rows"] = s.fee
        out[f"{name}_trades"] = np.array([s.trade_returns.size])
    np.savez(path, **out)
    print(f"wrote {path}: {n} rows")


def check(path: str) -> None:
    import pandas as pd
    import vectorbt as vbt

    d = np.load(path)
    r = d["returns"]
    price = np.concatenate([[1.0], np.cumprod(1.0 + r)])  # entry opens, then the final close
    for name, direction in (("long", "longonly"), ("long_short", "both")):
        pos = d[f"{name}_pos"]
        size = np.full(price.size, np.nan)
        prev = np.concatenate([[0.0], pos[:-1]])
        change = pos != prev
        size[:-1][change] = pos[change]
        size[-1] = 0.0
        pf = vbt.Portfolio.from_orders(
            close=pd.Series(price),
            size=pd.Series(size),
            size_type="targetpercent",
            fees=0.001,
            direction=direction,
            init_cash=1.0,
            freq="1h",
        )
        # vectorbt's value at price[i + 1] is after the order placed there; ours for row i is
        # before it (that order's fee is booked on row i + 1), so subtract the next row's fee.
        value = pf.value().to_numpy()[1:]
        ours = d[f"{name}_equity"].copy()
        ours[:-1] -= d[f"{name}_fee_rows"][1:]
        # Row n-2 is left out: our last row's fee also holds the final liquidation fee, which
        # vectorbt books at the last price (compared as the final value).
        rel = np.max(np.abs(value[:-2] - ours[:-2]) / ours[:-2])
        fees = float(pf.orders.records_readable["Fees"].sum())
        print(
            f"{name:10s} final: vectorbt {value[-1]:.12f}  ours {ours[-1]:.12f}  "
            f"max rel diff rows 0..n-3 {rel:.2e}  fees {fees:.10f} vs {d[f'{name}_fees'][0]:.10f}"
            f"  trades {int(pf.trades.count())} vs {int(d[f'{name}_trades'][0])}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump")
    ap.add_argument("--check")
    ap.add_argument("--data", default="../shared/data/binance_btcusdt_1h.csv.gz")
    ap.add_argument("--n", type=int, default=10_000)
    a = ap.parse_args()
    if a.dump:
        dump(a.dump, a.data, a.n)
    if a.check:
        check(a.check)


if __name__ == "__main__":
    main()
