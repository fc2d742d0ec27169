"""Inference latency: batch-1 `Predictor.predict_proba` p50/p99 and `Predictor.load` time, per arch.

python scripts/bench_inference.py [--iters 2000] [--loads 5] [--candles 300]
                                  [--arch lstm --arch transformer] [--ckpt-dir DIR]

Each arch uses its default config (registry defaults, W=100, 86 features). Without --ckpt-dir the
script writes a checkpoint of a freshly initialised model (real Orbax save + manifest, no training:
latency does not depend on the weights) to a temporary directory and loads it back with
`Predictor.load`, exactly as evaluate and trade do. With --ckpt-dir it loads the best version of
each arch found there. The last lines are the per-candle trading decision latency (features +
model + risk, issue 6) from scripts/bench_trading.py's `bench_decision`, over --candles candles.

Add a benchmark by writing `def bench_<name>(ctx: Context) -> list[Timing]` and appending it to
BENCHES; `ctx` holds the loaded predictors and the default candles (for per-candle decision
latency: features + model + risk).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """One benchmark line: milliseconds per call."""

    name: str
    p50_ms: float
    p99_ms: float
    n: int

    def line(self) -> str:
        return (
            f"{self.name:<46} p50 {self.p50_ms:8.3f} ms   p99 {self.p99_ms:8.3f} ms   (n={self.n})"
        )


def time_calls(name: str, fn: Callable[[], Any], iters: int, warmup: int = 20) -> Timing:
    """Calls `fn` `warmup` times untimed, then `iters` times timed; percentiles of the latter."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - start
    ms = samples * 1000
    return Timing(name, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), iters)


@dataclass
class Context:
    """What the benchmarks share: options, the default candles and one Predictor per arch."""

    iters: int
    loads: int
    candles: Any
    version_dirs: dict[str, Path]
    tmp: Path
    decision_candles: int = 300
    predictors: dict[str, Any] = field(default_factory=dict)


def write_untrained_checkpoint(root: Path, arch: str, candles: Any) -> Path:
    """A real version directory (Orbax step + manifest) for the arch's default, untrained model."""
    import jax

    from jaxtrader import checkpoint as ckpt
    from jaxtrader.config import AppConfig
    from jaxtrader.dataset import build_dataset
    from jaxtrader.models import build_model, with_defaults
    from jaxtrader.train import create_train_state

    cfg = dataclasses.replace(AppConfig(), model=with_defaults(arch))
    dataset = build_dataset(candles, cfg.dataset)
    sample = next(dataset.eval_batches("train", cfg.train.batch_size))
    state = create_train_state(build_model(cfg.model), cfg.train, jax.random.key(0), sample, 100)
    version, vdir = ckpt.new_version_dir(root, candles.symbol, arch)
    manager = ckpt.make_manager(vdir)
    ckpt.save_step(manager, 1, state, {"epoch": 1, "val_loss": 0.0})
    manager.wait_until_finished()
    manager.close()
    manifest = ckpt.build_manifest(
        cfg=cfg,
        version=version,
        candles=candles,
        dataset=dataset,
        metrics={"untrained": True},
        best_step=1,
        metrics_path=ckpt.METRICS_FILE,
    )
    ckpt.write_manifest(vdir, manifest)
    return vdir


def checkpoints_for(
    archs: list[str], ckpt_dir: str | None, tmp: Path, candles: Any
) -> dict[str, Path]:
    """Per arch: the best version under `ckpt_dir`, else an untrained default written to `tmp`."""
    from jaxtrader.checkpoint import resolve_version

    if ckpt_dir:
        return {a: resolve_version(ckpt_dir, None, a, "best") for a in archs}
    return {a: write_untrained_checkpoint(tmp, a, candles) for a in archs}


def bench_load(ctx: Context) -> list[Timing]:
    """Predictor.load: first load in this process (includes the batch-1 compile), then repeats."""
    from jaxtrader.inference import Predictor

    out = []
    for arch, vdir in ctx.version_dirs.items():
        start = time.perf_counter()
        ctx.predictors[arch] = Predictor.load(checkpoint=vdir)
        first = (time.perf_counter() - start) * 1000
        out.append(Timing(f"{arch}: Predictor.load, first in process", first, first, 1))
        repeats = []
        for _ in range(ctx.loads):
            start = time.perf_counter()
            Predictor.load(checkpoint=vdir)
            repeats.append((time.perf_counter() - start) * 1000)
        med = statistics.median(repeats)
        out.append(Timing(f"{arch}: Predictor.load, repeated", med, max(repeats), ctx.loads))
    return out


def bench_predict(ctx: Context) -> list[Timing]:
    """Batch-1 jitted predict_proba on a real window from the default candles."""
    from jaxtrader.dataset import model_inputs

    out = []
    for arch, predictor in ctx.predictors.items():
        seq, feats = model_inputs(ctx.candles.frame, predictor.scaler, predictor.seq_len)
        out.append(
            time_calls(
                f"{arch}: predict_proba batch 1",
                lambda p=predictor, s=seq, f=feats: p.predict_proba(s, f),
                ctx.iters,
            )
        )
    return out


def bench_decision(ctx: Context) -> list[Timing]:
    """Per-candle decision latency through the real TradingManager (scripts/bench_trading.py)."""
    from bench_trading import bench_decision as decision

    out = []
    for arch, vdir in ctx.version_dirs.items():
        out += decision(vdir, ctx.candles, ctx.decision_candles, ctx.tmp / f"{arch}.db")
    return out


# Run in order: bench_load fills ctx.predictors for the ones after it.
BENCHES: list[Callable[[Context], list[Timing]]] = [bench_load, bench_predict, bench_decision]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--candles", type=int, default=300, help="decision latency candles")
    parser.add_argument("--arch", action="append", default=None)
    parser.add_argument("--ckpt-dir", type=str, default=None)
    args = parser.parse_args()

    from jaxtrader.data import synth_candles
    from jaxtrader.models import ARCHS
    from jaxtrader.runtime import enable_compilation_cache

    enable_compilation_cache()
    archs = args.arch or sorted(ARCHS)
    candles = synth_candles()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = checkpoints_for(archs, args.ckpt_dir, Path(tmp), candles)
        ctx = Context(
            iters=args.iters,
            loads=args.loads,
            candles=candles,
            version_dirs=dirs,
            tmp=Path(tmp),
            decision_candles=args.candles,
        )
        for bench in BENCHES:
            for timing in bench(ctx):
                print(timing.line(), flush=True)


if __name__ == "__main__":
    main()
