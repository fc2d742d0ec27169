"""Dataset build time, added RSS, and batch-gather speed (medians).

    python scripts/bench_dataset.py [--data ../shared/data/binance_btcusdt_1h.csv.gz] [--repeats 3]

Prints: load time, feature time, build time (features included), VmRSS added by the build, and the
median CPU microseconds to gather one batch with `np.take` on an index grid (what
`windows.gather_windows` does) against a fancy index and `sliding_window_view` + `take`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import numpy as np

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_btcusdt_1h.csv.gz"


def vm_kb(field: str) -> int:
    """A /proc/self/status memory field (VmRSS: now, VmHWM: peak) in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def gather_sliding(raw_Tx5: np.ndarray, rows_B: np.ndarray, seq_len: int) -> np.ndarray:
    """The alternative: a strided [T-W+1, 5, W] view, `take` the windows, then move W forward."""
    view = np.lib.stride_tricks.sliding_window_view(raw_Tx5, seq_len, axis=0)
    seq = np.take(view, rows_B - seq_len + 1, axis=0).transpose(0, 2, 1).copy()
    seq[..., :4] -= raw_Tx5[rows_B, 3][:, None, None]
    vol = seq[..., 4]
    vol -= vol.mean(axis=1, keepdims=True)
    std = vol.std(axis=1, keepdims=True)
    np.divide(vol, std, out=vol, where=std > 1e-6)
    return seq


def gather_fancy(raw_Tx5: np.ndarray, rows_B: np.ndarray, seq_len: int) -> np.ndarray:
    """`gather_windows` with a fancy index instead of np.take (the variant it replaced)."""
    grid = rows_B[:, None] + np.arange(1 - seq_len, 1)[None, :]
    seq = raw_Tx5[grid]
    seq[..., :4] -= raw_Tx5[rows_B, 3][:, None, None]
    vol = seq[..., 4]
    vol -= vol.mean(axis=1, keepdims=True)
    std = vol.std(axis=1, keepdims=True)
    np.divide(vol, std, out=vol, where=std > 1e-6)
    return seq


def median_us(fn, repeats: int = 200, clock=time.perf_counter) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from jaxtrader.config import DatasetConfig
    from jaxtrader.data import load_candles
    from jaxtrader.dataset import build_dataset
    from jaxtrader.features import compute_features
    from jaxtrader.windows import gather_windows

    t0 = time.perf_counter()
    candles = load_candles(args.data)
    print(f"load: {time.perf_counter() - t0:.2f} s, {len(candles.frame)} rows")
    compute_features(candles.frame.iloc[:1000])  # first-call costs (imports) out of the timings

    # Memory first, before any full-size temporaries have raised the process peak.
    gc.collect()
    rss0, hwm0 = vm_kb("VmRSS"), vm_kb("VmHWM")
    data = build_dataset(candles, DatasetConfig())
    peak = (vm_kb("VmHWM") - max(rss0, hwm0)) / 1024
    held = (vm_kb("VmRSS") - rss0) / 1024
    print(
        f"build RSS: +{held:.0f} MB held by the Dataset, peak +{peak:.0f} MB above the "
        f"pre-build peak (arrays: raw {data.raw_Tx5.nbytes / 2**20:.1f} MB, features "
        f"{data.feats_TxF.nbytes / 2**20:.1f} MB)"
    )
    del data

    feat_s, build_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compute_features(candles.frame)
        feat_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_dataset(candles, DatasetConfig())
        build_s.append(time.perf_counter() - t0)
    print(f"compute_features median: {statistics.median(feat_s):.2f} s")
    print(f"build_dataset median (features included): {statistics.median(build_s):.2f} s")

    data = build_dataset(candles, DatasetConfig())
    rng = np.random.default_rng(0)
    train = data.rows("train")
    for bs in (64, 512):
        rows = rng.choice(train, bs, replace=False)
        a = gather_windows(data.raw_Tx5, rows, data.seq_len)
        assert np.allclose(a, gather_sliding(data.raw_Tx5, rows, data.seq_len), atol=1e-5)
        assert np.allclose(a, gather_fancy(data.raw_Tx5, rows, data.seq_len), atol=1e-5)
        # CPU time, not wall time: the 2 cores are shared and wall medians swing 3x under load.
        cpu = time.process_time
        variants = {
            "gather_windows (np.take)": gather_windows,
            "fancy index": gather_fancy,
            "sliding_window_view+take": gather_sliding,
        }
        timings = {
            name: median_us(
                lambda fn=fn, rows=rows: fn(data.raw_Tx5, rows, data.seq_len), clock=cpu
            )
            for name, fn in variants.items()
        }
        full = median_us(lambda rows=rows: data.gather(rows), clock=cpu)
        shown = ", ".join(f"{name} {us:.0f} us" for name, us in timings.items())
        print(f"batch {bs} (CPU time): {shown}, full batch dict {full:.0f} us")
    from jaxtrader.dataset import model_inputs
    from jaxtrader.features import WARMUP

    for buffer in (WARMUP + 1, 1_000):
        tail = candles.frame.iloc[-buffer:]
        live = median_us(lambda tail=tail: model_inputs(tail, data.scaler, data.seq_len), 30)
        print(f"model_inputs on a {buffer}-candle buffer: {live / 1000:.1f} ms")
    t0 = time.perf_counter()
    n = sum(1 for _ in data.batches("train", 64, key=0))
    print(f"one train epoch of batches ({n} x 64): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
