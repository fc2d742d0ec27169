"""Timings of jaxtrader.features: the full BTC 1h file and the trading runner's rolling buffer.

python scripts/bench_features.py [--repeats 7] [--calls 500]

Wall time and process CPU time are both printed: the development machine is shared, and CPU
time is the steadier figure when other jobs compete for the two cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxtrader.data import load_candles, synth_candles
from jaxtrader.features import MIN_HISTORY, NUM_FEATURES, WARMUP, compute_features

BTC_1H = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_btcusdt_1h.csv.gz"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="full-file runs")
    parser.add_argument("--calls", type=int, default=500, help="rolling-buffer calls per size")
    args = parser.parse_args()

    if BTC_1H.exists():
        candles = load_candles(BTC_1H)
    else:
        print(f"{BTC_1H} not found: using the synthetic market (72,569 rows)")
        candles = synth_candles(rows=72_569, seed=0)
    frame = candles.frame
    compute_features(frame.iloc[:1_000])  # first-call costs (imports) out of the timings

    runs = [timed(lambda: compute_features(frame)) for _ in range(args.repeats)]
    wall, cpu = [w for w, _ in runs], [c for _, c in runs]
    print(f"{NUM_FEATURES} features, WARMUP {WARMUP}, MIN_HISTORY {MIN_HISTORY}")
    print(f"\nfull file: {candles.source} ({len(frame):,} rows), {args.repeats} runs")
    print(f"{'':14}{'median':>10}{'min':>10}")
    print(f"{'wall s':14}{statistics.median(wall):>10.3f}{min(wall):>10.3f}")
    print(f"{'cpu s':14}{statistics.median(cpu):>10.3f}{min(cpu):>10.3f}")

    # The runner calls compute_features on the latest `size` candles after every new candle.
    print(f"\nrolling buffer: {args.calls} calls per size, consecutive windows")
    print(f"{'rows':>8}{'wall p50 ms':>13}{'wall p99 ms':>13}{'cpu p50 ms':>12}{'cpu p99 ms':>12}")
    for size in (MIN_HISTORY, MIN_HISTORY + 100, 1_000, 2_000):
        ends = range(len(frame) - args.calls, len(frame))
        times = np.array(
            [timed(lambda e=e, n=size: compute_features(frame.iloc[e - n : e])) for e in ends]
        )
        w_ms, c_ms = 1e3 * times[:, 0], 1e3 * times[:, 1]
        print(
            f"{size:>8}{np.median(w_ms):>13.2f}{np.quantile(w_ms, 0.99):>13.2f}"
            f"{np.median(c_ms):>12.2f}{np.quantile(c_ms, 0.99):>12.2f}"
        )


if __name__ == "__main__":
    main()
