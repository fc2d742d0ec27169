"""Per-candle trading latency: the decision (features + model + risk) and the whole candle (plus
the SQLite commit; wall and process CPU time), p50/p99 per arch, through the real
`TradingManager` and `Predictor`. CPU time is the robust figure on a shared machine.

python scripts/bench_trading.py [--candles 500] [--arch lstm --arch transformer] [--ckpt-dir DIR]

Reuses scripts/bench_inference.py: without --ckpt-dir it benchmarks freshly initialised default
models saved as real checkpoints (latency does not depend on the weights); with --ckpt-dir the best
version of each arch found there. Candles: the embedded synthetic market, 1h.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import Timing, checkpoints_for


def bench_decision(version_dir: Path, candles: object, n: int, db: Path) -> list[Timing]:
    """Replays `n` candles after a full warm-up; returns decision and whole-candle timings."""
    from jaxtrader.features import min_history
    from jaxtrader.inference import Predictor
    from jaxtrader.trading.feeds import Candle
    from jaxtrader.trading.manager import StrategyConfig, TradingManager, model_inputs_fn
    from jaxtrader.trading.store import Store

    predictor = Predictor.load(checkpoint=version_dir)
    frame = candles.frame  # type: ignore[attr-defined]
    history = min_history() + predictor.seq_len  # as `jaxtrader trade` sizes the buffer
    feature_rows = max(min_history(), predictor.seq_len)  # what model_inputs_fn computes on
    cfg = StrategyConfig(
        strategy_id=predictor.arch,
        symbol=candles.symbol,  # type: ignore[attr-defined]
        interval_s=candles.interval.total_seconds(),  # type: ignore[attr-defined]
    )
    parts: dict[str, list[float]] = {"inputs": [], "model": []}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args)
            parts[name].append((time.perf_counter() - start) * 1000)
            return out

        return call

    manager = TradingManager(
        cfg,
        Store(db),
        timed("model", predictor.predict_proba),
        timed("inputs", model_inputs_fn(predictor.scaler, predictor.seq_len)),
        history,
        {"hash": str(version_dir), "checkpoint": str(version_dir)},
    )
    rows = [
        Candle(ts, r.open, r.high, r.low, r.close, r.volume)
        for ts, r in zip(frame.index, frame.itertuples(), strict=True)
    ][: history + n + 20]
    manager.warm_up(rows[:history])
    decision, whole, cpu = [], [], []
    for i, c in enumerate(rows[history:]):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = manager.process(c)
        elapsed = (time.perf_counter() - start) * 1000
        elapsed_cpu = (time.process_time() - start_cpu) * 1000
        if i < 20 or out is None:
            continue  # the first calls include one-off compilation and cache warm-up
        decision.append(out.latency_ms)
        whole.append(elapsed)
        cpu.append(elapsed_cpu)
    manager.close()
    arch = predictor.arch
    inputs_ms, model_ms = parts["inputs"][20:], parts["model"][20:]
    return [
        Timing(
            f"{arch}: model inputs ({feature_rows} of {history} candles)",
            *_pct(inputs_ms),
            len(inputs_ms),
        ),
        Timing(f"{arch}: predict_proba (in the timeout thread)", *_pct(model_ms), len(model_ms)),
        Timing(f"{arch}: trade decision (features+model+risk)", *_pct(decision), len(decision)),
        Timing(f"{arch}: trade candle incl. SQLite commit", *_pct(whole), len(whole)),
        Timing(f"{arch}: trade candle, process CPU time", *_pct(cpu), len(cpu)),
    ]


def _pct(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candles", type=int, default=500)
    parser.add_argument("--arch", action="append", default=None)
    parser.add_argument("--ckpt-dir", type=str, default=None)
    args = parser.parse_args()

    from jaxtrader.data import synth_candles
    from jaxtrader.models import ARCHS
    from jaxtrader.runtime import enable_compilation_cache

    enable_compilation_cache()
    candles = synth_candles()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = checkpoints_for(args.arch or sorted(ARCHS), args.ckpt_dir, Path(tmp), candles)
        for arch, vdir in dirs.items():
            for timing in bench_decision(vdir, candles, args.candles, Path(tmp) / f"{arch}.db"):
                print(timing.line(), flush=True)


if __name__ == "__main__":
    main()
