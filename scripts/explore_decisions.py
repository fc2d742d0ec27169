"""Short training runs on real candles behind docs/decisions.md (validation split only, never test).

Each run trains `--epochs` epochs of `--steps` shuffled training batches (a random subsample of the
training windows per epoch, to fit the time available) and reports the best validation loss and
accuracy next to the validation majority rate. Features are computed once and reused across runs.

    python scripts/explore_decisions.py --data ../shared/data/binance_btcusdt_1h.csv.gz \\
        --out /tmp/decisions.jsonl --runs base w50 w200 h1 h24 token small reg drop0 lstm
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

RUNS: dict[str, dict[str, Any]] = {
    "base": {},
    "w50": {"dataset.seq_len": 50},
    "w200": {"dataset.seq_len": 200},
    "h1": {"dataset.horizon": 1},
    "h24": {"dataset.horizon": 24},
    "token": {"model.feature_join": "token"},
    "small": {"model.d_model": 32, "model.ff_dim": 128},
    "reg": {"model.dropout": 0.3, "train.weight_decay": 1e-2},
    "drop0": {"model.dropout": 0.0},
    "lstm": {"model.arch": "lstm"},
}


class Subsample:
    """A Dataset whose training epochs are the first `steps` batches of each shuffled pass."""

    def __init__(self, dataset: Any, steps: int) -> None:
        self.dataset, self.steps = dataset, steps

    def batches(self, split: str, batch_size: int, key: Any = None) -> Iterator[Any]:
        return itertools.islice(self.dataset.batches(split, batch_size, key), self.steps)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Any]:
        return self.dataset.eval_batches(split, batch_size)  # type: ignore[no-any-return]

    def labels(self, split: str) -> Any:
        return self.dataset.labels(split)

    def num_batches(self, split: str, batch_size: int) -> int:
        return min(self.dataset.num_batches(split, batch_size), self.steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="JSONL file, one line per run (appended)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import jax

    from jaxtrader.config import AppConfig, DataConfig, with_overrides
    from jaxtrader.data import load_market
    from jaxtrader.dataset import build_dataset
    from jaxtrader.features import compute_features
    from jaxtrader.models import build_model, with_defaults
    from jaxtrader.runtime import enable_compilation_cache
    from jaxtrader.train import create_train_state, fit

    enable_compilation_cache()
    candles = load_market(DataConfig(path=a.data))
    feats = compute_features(candles.frame)
    for name in a.runs:
        t0 = time.perf_counter()
        base = dataclasses.replace(AppConfig(), data=DataConfig(path=a.data))
        overrides = {
            "train.epochs": a.epochs,
            "train.batch_size": a.batch_size,
            "train.patience": a.epochs,
            "train.seed": a.seed,
            **RUNS[name],
        }
        arch = overrides.get("model.arch", "transformer")
        cfg = with_overrides(base, overrides)
        model_overrides = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != "arch"}
        mcfg = with_defaults(arch, **{**model_overrides, **_arch_defaults(arch, RUNS[name])})
        dataset = Subsample(build_dataset(candles, cfg.dataset, features=feats), a.steps)
        model = build_model(mcfg)
        init_key, fit_key = jax.random.split(jax.random.key(cfg.train.seed))
        sample = next(dataset.eval_batches("train", cfg.train.batch_size))
        state = create_train_state(model, cfg.train, init_key, sample, a.steps * cfg.train.epochs)
        result = fit(state, dataset, cfg.train, fit_key)
        row = {
            "run": name,
            "overrides": RUNS[name],
            "arch": arch,
            "seq_len": cfg.dataset.seq_len,
            "horizon": cfg.dataset.horizon,
            "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 5),
            "best_val_acc": round(result.best_val_acc, 4),
            "val_majority_rate": round(result.val_majority_rate, 4),
            "train_windows_seen": a.steps * a.batch_size * result.epochs_run,
            "val_windows": dataset.dataset.size("val"),
            "history": [
                {k: round(v, 4) for k, v in h.items() if k in ("train_loss", "val_loss", "val_acc")}
                for h in result.history
            ],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _arch_defaults(arch: str, run: dict[str, Any]) -> dict[str, Any]:
    """Keep the registry's per-arch defaults unless the run overrides a model field."""
    from jaxtrader.models import ARCHS

    explicit = {k.split(".", 1)[1]: v for k, v in run.items() if k.startswith("model.")}
    explicit.pop("arch", None)
    return {**ARCHS[arch].defaults, **explicit}


if __name__ == "__main__":
    main()
