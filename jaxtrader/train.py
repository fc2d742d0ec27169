"""The training core: train state and optimizer, pure jitted train/eval steps, and the fit loop.

`train_step` and `eval_step` are pure functions jitted once at module level (the model and the
optimizer live in the state's static fields, so a new model traces once, then never again).
`fit` owns the epoch loop: shuffled training windows, validation every epoch, early stopping on
validation loss, best parameters restored, a wall-clock limit and a caller's stop request (both
checked after every step, so a partial epoch is still validated and handed to `on_epoch`), NaN
detection, progress bars (or, without a terminal, a `train_progress` event every few steps), one
structured event and one JSONL line per epoch. Checkpointing stays with the caller (`on_epoch`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state

from jaxtrader.config import TrainConfig, check_data_shards
from jaxtrader.errors import DeepLearningError
from jaxtrader.logs import get_logger, log_event, progress_bar
from jaxtrader.timeouts import Deadline

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]
StopReason = Literal["early_stopping", "max_epochs", "time_limit", "interrupted"]
PROGRESS_EVERY = 10  # steps between progress-bar refreshes and `train_progress` events

logger = get_logger(__name__)


class BatchSource(Protocol):
    """What `fit` needs from a dataset (jaxtrader.dataset.Dataset satisfies it)."""

    def batches(
        self, split: str, batch_size: int, key: jax.Array | None = None
    ) -> Iterator[dict[str, np.ndarray]]: ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]: ...

    def labels(self, split: str) -> np.ndarray: ...

    def num_batches(self, split: str, batch_size: int) -> int: ...


LRSchedule = Callable[[Any, jax.Array], jax.Array]  # (step, steps_total) -> learning rate


class TrainState(train_state.TrainState):  # type: ignore[misc]
    """Flax TrainState plus the loss's class weights and the learning-rate schedule.

    The schedule's horizon `steps_total` is an array in the state, not a constant of the optimizer:
    runs of different lengths (every walk-forward fold has more training windows than the last)
    then share ONE compiled train step. As a constant, each fold traced, compiled and kept its own
    train and eval programs (the BTC 1h walk-forward's heap grew ~60 MB per fold, docs/decisions.md).
    """

    class_weights: (
        jax.Array
    )  # f32[2], multiplies each example's cross-entropy by its label's weight
    steps_total: jax.Array  # i32[], the length of the warmup + cosine schedule
    lr_schedule: LRSchedule = struct.field(pytree_node=False)

    def learning_rate(self) -> jax.Array:
        """The learning rate of the next update."""
        return self.lr_schedule(self.step, self.steps_total)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """`optax.adamw`'s update, its last stage (times -learning rate) done here, where the
        horizon is in reach: `tx` is the clipping, Adam's scaling and the decoupled weight decay."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        step_size = -1 * self.learning_rate()
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return self.replace(  # type: ignore[no-any-return]
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            opt_state=opt_state,
            **kwargs,
        )


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, LRSchedule]:
    """Global-norm clipping + AdamW (no decay on biases and LayerNorm) without the learning rate,
    and the warmup + cosine schedule that `TrainState.apply_gradients` scales the update by."""
    return (
        _optimizer(cfg.weight_decay, cfg.grad_clip),
        _lr_schedule(cfg.learning_rate, cfg.warmup_steps),
    )


# Both cached on the values that matter: they are static parts of the train state, so equal
# settings must give the same objects for a second state to reuse the compiled step.
@functools.lru_cache(maxsize=16)
def _optimizer(weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
    # optax.adamw's stages but its last, scale_by_learning_rate.
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.scale_by_adam(),
        optax.add_decayed_weights(
            weight_decay, mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        ),
    )


@functools.lru_cache(maxsize=16)
def _lr_schedule(lr: float, warmup_steps: int) -> LRSchedule:
    end_value, exponent = lr * 0.05, 1.0
    alpha = 0.0 if lr == 0.0 else end_value / lr

    def schedule(step: Any, steps_total: jax.Array) -> jax.Array:
        # optax.warmup_cosine_decay_schedule(0, lr, warmup, total, lr * 0.05) op for op as XLA
        # compiles it (a division by a constant becomes a product with its reciprocal), so the
        # floats are the same (tests/test_train.py), with the horizon an array.
        total = jnp.maximum(steps_total, 2)
        warmup = jnp.minimum(warmup_steps, total // 2)
        frac = 1 - jnp.clip(step, 0, warmup) / jnp.maximum(warmup, 1)
        warm = (0.0 - lr) * (frac**1) + lr
        decay_steps = (total - warmup).astype(jnp.float32)
        count = jnp.minimum(step - warmup, decay_steps)
        cosine_decay = 0.5 * (1 + jnp.cos(jnp.pi * count * (1.0 / decay_steps)))
        decayed = lr * ((1 - alpha) * cosine_decay**exponent + alpha)
        return jnp.where(step < warmup, warm, decayed)

    return schedule


@functools.lru_cache(maxsize=16)
def _apply_fn(model: nn.Module) -> Callable[..., Any]:
    """One `apply` object per (equal) model: bound methods compare unequal each time they are
    created, which would make a second train state retrace the jitted steps."""
    return model.apply


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module) -> Callable[..., Any]:
    """`jax.jit(model.init)` once per (equal) model, so a second state does not recompile init."""
    return jax.jit(model.init)


def create_train_state(
    model: nn.Module, cfg: TrainConfig, key: jax.Array, sample_batch: Batch, steps_total: int
) -> TrainState:
    """Initialises parameters from one sample and builds the optimizer for `steps_total` steps."""
    seq = jnp.asarray(sample_batch["seq"][:1])
    feats = jnp.asarray(sample_batch["feats"][:1])
    variables = _jitted_init(model)(key, seq, feats)
    tx, schedule = make_optimizer(cfg)
    return TrainState.create(  # type: ignore[no-any-return]
        apply_fn=_apply_fn(model),
        params=variables["params"],
        tx=tx,
        class_weights=jnp.ones((2,), jnp.float32),
        steps_total=jnp.asarray(int(steps_total), jnp.int32),
        lr_schedule=schedule,
    )


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """Balanced weights N / (2 * n_c): a label seen half the time gets weight 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if (counts <= 0).any():
        raise DeepLearningError(
            f"the training split has label counts {counts.astype(int).tolist()} (down, up); "
            "both classes are needed: use more data or a different dataset.threshold"
        )
    return (counts.sum() / (2.0 * counts)).astype(np.float32)


def _weighted_ce(
    logits_Bx2: jax.Array, labels_B: jax.Array, class_weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example cross-entropy times its class weight, and the weights."""
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_Bx2, labels_B)
    w_B = class_weights[labels_B]
    return ce_B * w_B, w_B


def _training_terms(
    state: TrainState, params: Any, batch: Batch, labels_B: jax.Array, dropout_key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode logits (dropout on) of `batch`, its weighted cross-entropy terms, weights."""
    logits_Bx2 = state.apply_fn(
        {"params": params},
        batch["seq"],
        batch["feats"],
        deterministic=False,
        rngs={"dropout": dropout_key},
    )
    wce_B, w_B = _weighted_ce(logits_Bx2, labels_B, state.class_weights)
    return logits_Bx2, wce_B, w_B


def _train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    labels_B = batch["label"].astype(jnp.int32)
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, jax.Array]:
        logits_Bx2, wce_B, w_B = _training_terms(state, params, batch, labels_B, dropout_key)
        return wce_B.sum() / w_B.sum(), logits_Bx2

    (loss, logits_Bx2), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits_Bx2, -1) == labels_B),
        "lr": jnp.asarray(state.learning_rate(), jnp.float32),
    }
    return state.apply_gradients(grads=grads), metrics


def _eval_step(state: TrainState, batch: Batch) -> Metrics:
    return eval_with_logits(state, batch)[0]


def eval_with_logits(state: TrainState, batch: Batch) -> tuple[Metrics, jax.Array]:
    """`_eval_step`'s masked sums and the logits (Bx2) they came from, so that a caller that also
    needs the predictions (`seeds.evaluate_seeds`) runs the forward pass once."""
    labels_B = batch["label"].astype(jnp.int32)
    mask_B = batch["mask"] if "mask" in batch else jnp.ones(labels_B.shape, bool)
    logits_Bx2 = state.apply_fn({"params": state.params}, batch["seq"], batch["feats"])
    # Padding rows may carry any label; clamp so the weight lookup stays in range, then mask out.
    safe_labels_B = jnp.clip(labels_B, 0, 1)
    wce_B, w_B = _weighted_ce(logits_Bx2, safe_labels_B, state.class_weights)
    m = mask_B.astype(jnp.float32)
    sums = {
        "loss_sum": jnp.sum(wce_B * m),
        "weight_sum": jnp.sum(w_B * m),
        "correct": jnp.sum((jnp.argmax(logits_Bx2, -1) == labels_B) * m),
        "count": jnp.sum(m),
        "up": jnp.sum((labels_B == 1) * m),
    }
    return sums, logits_Bx2


# Jitted once here: every call with the same model/optimizer and batch shapes reuses one program.
# The state is donated so XLA updates parameters and optimizer moments in place.
train_step = jax.jit(_train_step, donate_argnums=0)
eval_step = jax.jit(_eval_step)

DATA_AXIS = "data"  # the mesh axis batch shards are spread over


def _shard_sums(
    state: TrainState, batch: Batch, dropout_key: jax.Array
) -> tuple[Any, dict[str, jax.Array]]:
    """One shard's gradient of its weighted loss SUM, and its loss, weight and correct sums."""
    labels_B = batch["label"].astype(jnp.int32)

    def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits_Bx2, wce_B, w_B = _training_terms(state, params, batch, labels_B, dropout_key)
        correct = jnp.sum(jnp.argmax(logits_Bx2, -1) == labels_B).astype(jnp.float32)
        return wce_B.sum(), {"weight": w_B.sum(), "correct": correct}

    (loss_sum, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, {"loss": loss_sum, **sums}


def _sharded_train_step(
    state: TrainState, batch: Batch, key: jax.Array, *, shards: int, devices: int
) -> tuple[TrainState, Metrics]:
    """`_train_step` with the batch cut into `shards` equal row blocks, shard s drawing dropout
    from `fold_in(step key, s)`: the gradient is the sum of the shards' loss-sum gradients over
    the sum of their weights, which is the whole batch's weighted mean loss. Runs on one device
    (the shards in sequence) or inside `shard_map` over `devices` (shards // devices each, then
    one `psum`): either way the same numbers to float rounding, so a model trained on 2 cores
    equals one trained on 1."""
    per_device = shards // devices
    first = jax.lax.axis_index(DATA_AXIS) * per_device if devices > 1 else 0
    step_key = jax.random.fold_in(key, state.step)
    rows = batch["label"].shape[0] // per_device
    grads: Any = None
    sums: dict[str, jax.Array] = {}
    for j in range(per_device):
        piece = jax.tree.map(lambda x, j=j: x[j * rows : (j + 1) * rows], batch)
        g, s = _shard_sums(state, piece, jax.random.fold_in(step_key, first + j))
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        sums = s if not sums else {k: sums[k] + s[k] for k in sums}
    if devices > 1:
        grads, sums = jax.lax.psum((grads, sums), DATA_AXIS)
    metrics = {
        "loss": sums["loss"] / sums["weight"],
        "accuracy": sums["correct"] / (rows * shards),
        "lr": jnp.asarray(state.learning_rate(), jnp.float32),
    }
    grads = jax.tree.map(lambda g: g / sums["weight"], grads)
    return state.apply_gradients(grads=grads), metrics


@functools.cache
def data_mesh(devices: int) -> jax.sharding.Mesh:
    """The first `devices` host devices as a one-axis mesh (`DATA_AXIS`)."""
    return jax.sharding.Mesh(np.array(jax.local_devices()[:devices]), (DATA_AXIS,))


@functools.cache
def _data_sharding(devices: int, split: bool) -> jax.sharding.NamedSharding:
    P = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(data_mesh(devices), P(DATA_AXIS) if split else P())


def data_devices(shards: int) -> int:
    """How many of this process's devices `shards` batch shards run on (`runtime.use_data_devices`
    made them): the largest divisor of `shards` that is at most the device count."""
    from jaxtrader.runtime import seed_device_count

    return seed_device_count(shards, cores=len(jax.local_devices()))


def sharded_train_step(shards: int, devices: int) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted train step for `shards` batch shards on `devices` devices (1 shard: `train_step`,
    looked up at each call, never cached: tests swap it for a trace-counting one). With `devices`
    > 1 the state and key go in replicated and the batch split by rows (`place_for_data`)."""
    return train_step if shards == 1 else _jitted_shards(shards, devices)


@functools.cache
def _jitted_shards(shards: int, devices: int) -> Callable[..., tuple[TrainState, Metrics]]:
    fn = functools.partial(_sharded_train_step, shards=shards, devices=devices)
    if devices == 1:
        return jax.jit(fn, donate_argnums=0)
    P = jax.sharding.PartitionSpec
    mapped = jax.shard_map(
        fn,
        mesh=data_mesh(devices),
        in_specs=(P(), P(DATA_AXIS), P()),
        out_specs=(P(), P()),
        check_vma=False,  # the state comes out equal on every device: the psum made it so
    )
    return jax.jit(mapped, donate_argnums=0)


def sharded_eval_step(devices: int) -> Callable[[TrainState, Batch], Metrics]:
    """`eval_step` with the batch's rows split over `devices` devices and the sums psummed (one
    device: `eval_step` itself, looked up at each call)."""
    return eval_step if devices == 1 else _jitted_eval_over(devices)


@functools.cache
def _jitted_eval_over(devices: int) -> Callable[[TrainState, Batch], Metrics]:
    P = jax.sharding.PartitionSpec

    def local(state: TrainState, batch: Batch) -> Metrics:
        return jax.lax.psum(_eval_step(state, batch), DATA_AXIS)

    mapped = jax.shard_map(
        local,
        mesh=data_mesh(devices),
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=P(),
        check_vma=False,
    )
    return jax.jit(mapped)


def place_for_data(tree: Any, devices: int, *, split: bool) -> Any:
    """`tree` on the data mesh: rows split over the devices (`split`) or replicated."""
    if devices == 1:
        return tree
    return jax.device_put(tree, _data_sharding(devices, split))


def on_one_device(tree: Any, devices: int) -> Any:
    """`tree` moved off the data mesh onto the first device (as is when `devices` is 1)."""
    return tree if devices == 1 else jax.device_put(tree, jax.local_devices()[0])


def evaluate(
    state: TrainState, dataset: BatchSource, split: str, batch_size: int, devices: int = 1
) -> dict[str, float]:
    """Masked loss, accuracy and majority-class rate of `split` (padding rows never count).
    `devices` > 1: each batch's rows split over the data mesh (`state` replicated on it), when
    the batch size allows."""
    if batch_size % devices:
        state, devices = on_one_device(state, devices), 1
    step = sharded_eval_step(devices)
    totals: dict[str, float] = {}
    pending: list[Metrics] = []
    for batch in dataset.eval_batches(split, batch_size):
        pending.append(step(state, place_for_data(batch, devices, split=True)))
    for m in jax.device_get(pending):
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.get("count", 0.0)
    if count == 0:
        raise DeepLearningError(f"the {split} split has no labeled windows; use more data")
    up_rate = totals["up"] / count
    return {
        "loss": totals["loss_sum"] / totals["weight_sum"],
        "accuracy": totals["correct"] / count,
        "majority_rate": max(up_rate, 1.0 - up_rate),
        "count": count,
    }


def label_counts(dataset: BatchSource, split: str) -> np.ndarray:
    """(down, up) counts of the labeled prediction points of `split`."""
    labels = np.asarray(dataset.labels(split)).astype(np.int64)
    return np.bincount(labels[labels >= 0], minlength=2)[:2]


def steps_per_epoch(dataset: BatchSource, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is dropped to keep shapes fixed)."""
    return max(dataset.num_batches("train", batch_size), 1)


@dataclass
class FitResult:
    """What `fit` did: the state with the best parameters restored, and the per-epoch history."""

    state: TrainState
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    val_majority_rate: float
    stopped_reason: StopReason
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0


@dataclass
class _EpochMeter:
    """Running train metrics of one epoch, the NaN check, and the progress bar's postfix."""

    epoch: int
    total: int
    bar: Any
    start: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    acc_sum: float = 0.0
    steps: int = 0
    lr: float = math.nan

    def add(self, step: int, dev_metrics: Metrics) -> None:
        m = jax.device_get(dev_metrics)
        loss = float(m["loss"])
        if not math.isfinite(loss):
            raise DeepLearningError(
                f"training loss became {loss} at step {step} (epoch {self.epoch}); lower "
                "train.learning_rate or train.grad_clip, or check the input data for NaN/inf"
            )
        self.loss_sum += loss
        self.acc_sum += float(m["accuracy"])
        self.lr = float(m["lr"])
        self.steps += 1
        self.bar.update(1)
        if self.steps == 1 or self.steps % PROGRESS_EVERY == 0 or self.steps == self.total:
            rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
            loss_avg, acc_avg = self.loss_sum / self.steps, self.acc_sum / self.steps
            if getattr(self.bar, "disable", False):
                # No bar (JSON logs or no terminal): the same figures as machine-readable lines.
                log_event(
                    logger,
                    "train_progress",
                    epoch=self.epoch,
                    epoch_step=self.steps,
                    epoch_steps=self.total,
                    step=step,
                    loss=loss_avg,
                    accuracy=acc_avg,
                    lr=self.lr,
                    steps_per_s=round(rate, 2),
                )
            else:
                self.bar.set_postfix(
                    loss=f"{loss_avg:.4f}",
                    acc=f"{acc_avg:.3f}",
                    lr=f"{self.lr:.2e}",
                    steps_s=f"{rate:.1f}",
                )


def fit(
    state: TrainState,
    dataset: BatchSource,
    cfg: TrainConfig,
    key: jax.Array,
    on_epoch: Callable[[int, TrainState, dict[str, float]], None] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    after_first_step: Callable[[], None] | None = None,
) -> FitResult:
    """Trains `state` on `dataset` per `cfg`; deterministic given `key` (shuffles and dropout).

    Epochs are 1-based. `on_epoch(epoch, state, metrics)` runs after each validation (the state is
    the current one, not the best). `should_stop()` is polled after every step and after each
    epoch, like the wall-clock limit: once it returns True the current (possibly partial) epoch is
    validated and passed to `on_epoch`, and fit returns with stopped_reason "interrupted".
    `after_first_step()` runs once, when the first step's result has arrived (the train step is
    compiled by then). Raises DeepLearningError on a non-finite loss.
    """
    deadline = Deadline(None if cfg.max_minutes is None else cfg.max_minutes * 60.0)

    def stop_reason() -> StopReason | None:
        if should_stop is not None and should_stop():
            return "interrupted"
        if deadline.expired():
            return "time_limit"
        return None

    shuffle_key, dropout_key = jax.random.split(key)
    counts = label_counts(dataset, "train")
    if cfg.class_weights:
        state = state.replace(class_weights=jnp.asarray(class_weights_from_counts(counts)))
    n_steps = steps_per_epoch(dataset, cfg.batch_size)
    check_data_shards(cfg)
    shards = cfg.data_shards or 1
    devices = data_devices(shards)
    step_fn = sharded_train_step(shards, devices)
    state = place_for_data(state, devices, split=False)
    dropout_key = place_for_data(dropout_key, devices, split=False)
    log_event(
        logger,
        "fit_start",
        train_windows=int(counts.sum()),
        train_up_rate=float(counts[1] / max(counts.sum(), 1)),
        steps_per_epoch=n_steps,
        epochs=cfg.epochs,
        class_weights=np.asarray(state.class_weights).round(4).tolist(),
        data_shards=shards,
        devices=devices,
    )
    sink = None
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        sink = open(metrics_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"loss": math.inf, "epoch": 0, "acc": math.nan, "params": None}
    stopped: StopReason = "max_epochs"
    bad_epochs, step = 0, int(state.step)
    first_step_done = False
    majority = math.nan
    t_fit = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            meter = _EpochMeter(
                epoch, n_steps, progress_bar(n_steps, f"epoch {epoch}/{cfg.epochs}")
            )
            meter.lr = float(state.learning_rate())
            pending: tuple[int, Metrics] | None = None

            epoch_key = jax.random.fold_in(shuffle_key, epoch)
            for batch in dataset.batches("train", cfg.batch_size, epoch_key):
                step += 1
                state, metrics = step_fn(
                    state, place_for_data(batch, devices, split=True), dropout_key
                )
                # Fetch the previous step's metrics only now, so the host prepares the next
                # batch while the device still computes this one; the NaN check stays exact.
                if pending is not None:
                    meter.add(*pending)
                    if not first_step_done:
                        first_step_done = True
                        if after_first_step is not None:
                            after_first_step()
                pending = (step, metrics)
                if (reason := stop_reason()) is not None:
                    stopped = reason
                    break
            if pending is not None:
                meter.add(*pending)
            meter.bar.close()
            train_seconds = time.perf_counter() - t_epoch
            val = evaluate(state, dataset, "val", cfg.eval_batch_size, devices)
            majority = val["majority_rate"]
            n_done = meter.steps
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": meter.loss_sum / max(n_done, 1),
                "train_acc": meter.acc_sum / max(n_done, 1),
                "val_loss": val["loss"],
                "val_acc": val["accuracy"],
                "val_majority_rate": val["majority_rate"],
                "lr": meter.lr,
                "steps_per_s": n_done / max(train_seconds, 1e-9),
                "seconds": time.perf_counter() - t_epoch,
                "steps": n_done,
                "global_step": step,
            }
            improved = val["loss"] < best["loss"]
            if improved:
                best.update(
                    loss=val["loss"],
                    epoch=epoch,
                    acc=val["accuracy"],
                    # A host copy: the device buffers are donated to the next train step.
                    params=jax.tree.map(lambda x: np.array(x, copy=True), state.params),
                )
                bad_epochs = 0
            else:
                bad_epochs += 1
            record["best_epoch"] = best["epoch"]
            history.append(record)
            log_event(logger, "epoch", **record)
            if sink is not None:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
            if on_epoch is not None:
                # On one device, as from an unsharded fit: a checkpoint saved from a state
                # spread over 2 devices would not restore in a process that has one.
                on_epoch(epoch, on_one_device(state, devices), dict(record))
            if stopped != "max_epochs":  # stopped mid-epoch
                break
            if (reason := stop_reason()) is not None:
                stopped = reason
                break
            if bad_epochs >= cfg.patience:
                stopped = "early_stopping"
                break
    finally:
        if sink is not None:
            sink.close()

    state = on_one_device(state, devices)  # for the caller, as from an unsharded fit
    if best["params"] is not None:
        state = state.replace(params=jax.device_put(best["params"]))
    seconds = time.perf_counter() - t_fit
    log_event(
        logger,
        "fit_end",
        stopped_reason=stopped,
        best_epoch=best["epoch"],
        best_val_loss=best["loss"],
        best_val_acc=best["acc"],
        val_majority_rate=majority,
        epochs_run=len(history),
        seconds=round(seconds, 2),
    )
    return FitResult(
        state=state,
        best_epoch=best["epoch"],
        best_val_loss=float(best["loss"]),
        best_val_acc=float(best["acc"]),
        val_majority_rate=float(majority),
        stopped_reason=stopped,
        history=history,
        epochs_run=len(history),
        steps=step,
        seconds=seconds,
    )
