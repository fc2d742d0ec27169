"""TensorBoard event files of a training run: one scalar per metric per epoch, written into the
run's version directory so `tensorboard --logdir ckpt` shows every run, named by its
`<SYMBOL>/<arch>/v<N>` path (and into each walk-forward fold directory, one curve per seed, so
`tensorboard --logdir runs` shows the folds).

The writer is tensorboardX (the optional extra `jaxtrader[tensorboard]`): it needs only numpy and
protobuf, not TensorFlow or the TensorBoard server. Without it training logs one line and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxtrader.logs import get_logger, log_event

# record key (fit's epoch record) -> TensorBoard tag; grouped so train and val share a chart.
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_majority_rate": "accuracy/val_majority",
    "lr": "optim/learning_rate",
    "steps_per_s": "speed/steps_per_s",
}


class EpochWriter:
    """Writes each epoch record's scalars at step = epoch; a no-op when tensorboardX is absent."""

    def __init__(self, logdir: str | Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            self._writer: Any = None
            log_event(
                get_logger("train"),
                "tensorboard_skipped",
                reason="tensorboardX is not installed; pip install 'jaxtrader[tensorboard]'",
            )
            return
        self._writer = SummaryWriter(logdir=str(logdir))

    @property
    def active(self) -> bool:
        return self._writer is not None

    def add(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        epoch = int(record["epoch"])
        for key, tag in SCALARS.items():
            value = record.get(key)
            if isinstance(value, int | float):
                self._writer.add_scalar(tag, float(value), epoch)
            elif isinstance(value, list) and value and all(isinstance(v, float) for v in value):
                # Per-seed values (a walk-forward fold's K seeds): one curve per seed.
                for seed, v in enumerate(value):
                    self._writer.add_scalar(f"{tag}/seed{seed}", v, epoch)
        self._writer.flush()  # visible in a running TensorBoard while training goes on

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
