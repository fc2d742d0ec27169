"""Median timings of the data layer: loading the real BTC 1h file and generating the synthetic market.

python scripts/bench_data.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from jaxtrader.data import load_candles, synth_candles

BTC_1H = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_btcusdt_1h.csv.gz"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    synth = median_seconds(lambda: synth_candles(rows=20_000, seed=0), args.repeats)
    print(f"synth_candles 20,000 rows: median {synth * 1000:.0f} ms")
    if BTC_1H.exists():
        load = median_seconds(lambda: load_candles(BTC_1H), args.repeats)
        print(f"load_candles {BTC_1H.name} (72,569 rows, gap fill): median {load * 1000:.0f} ms")
    else:
        print(f"skipped load_candles: {BTC_1H} not found")


if __name__ == "__main__":
    main()
