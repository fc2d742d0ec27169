"""K seeds of one model trained together: train states stacked on a leading seed axis, one step.

A seed ensemble is a `train.TrainState` whose array leaves (params, optimizer moments, step,
class weights) carry a leading axis of size K; the static fields (apply_fn, optimizer, schedule) are
shared, so the K models compile into ONE program: `seeds_train_step` is `jax.vmap` of the pure
`train._train_step` (the same loss and update as a single model), jitted once.

Seed s uses `seed_key(run_key, s) = fold_in(run_key, s)`, split exactly as `jaxtrader train`
splits its run key: (init key, fit key), and the fit key as `train.fit` splits it (shuffle key,
dropout key). Each seed therefore draws its own initial parameters, dropout masks and batch order,
and seed s trained here equals a `train.fit` run of the same model started from
`create_train_state(..., init_key_s)` with `fit_key_s` (tests/test_seeds.py checks it).

When the process has several host devices (`runtime.use_seed_devices`, which `walkforward` and
`study` call), the seed axis of the state, the batches and the keys is sharded over them
(`seed_sharding`): the seeds never communicate, so each device runs its share of the same program
on its own core, and trains the same numbers as on one device to float rounding
(tests/test_runtime.py).

Early stopping is per seed: each keeps its own best parameters by its own validation loss and stops
after `patience` epochs without improvement; a stopped seed's updates are masked (its slot still
computes, its state no longer changes) until every seed has stopped or the epochs run out.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxtrader import runtime, train
from jaxtrader.config import TrainConfig
from jaxtrader.errors import DeepLearningError
from jaxtrader.inference import up_probability
from jaxtrader.logs import get_logger, log_event
from jaxtrader.timeouts import Deadline

logger = get_logger(__name__)

Batch = dict[str, np.ndarray]


def seed_key(run_key: jax.Array, seed: int) -> jax.Array:
    """The key of seed `seed` in a run keyed `run_key`."""
    return jax.random.fold_in(run_key, seed)


def seed_init_fit_keys(run_key: jax.Array, k: int) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per seed (init key, fit key), split as `jaxtrader train` splits its run key."""
    pairs = [jax.random.split(seed_key(run_key, s)) for s in range(k)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def stack_trees(trees: Sequence[Any]) -> Any:
    """Stacks equal-structure pytrees (e.g. train states) on a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_tree(tree: Any, s: int) -> Any:
    """Seed `s` of a stacked pytree."""
    return jax.tree.map(lambda x: x[s], tree)


def seed_device_count(k: int) -> int:
    """How many of this process's devices K seeds are split over (`runtime.seed_device_count`)."""
    return runtime.seed_device_count(k, cores=len(jax.local_devices()))


def seed_sharding(k: int) -> jax.sharding.Sharding | None:
    """The seed axis split over `seed_device_count(k)` devices, or None for one device."""
    n = seed_device_count(k)
    if n == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:n]), ("seeds",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))


def place_seeds(tree: Any, k: int) -> Any:
    """`tree` on the devices, its leading seed axis (size K) split by `seed_sharding(k)`."""
    return jax.device_put(tree, seed_sharding(k))


def num_seeds(state: train.TrainState) -> int:
    return int(jnp.shape(state.step)[0])


def create_seed_states(
    model: nn.Module,
    cfg: TrainConfig,
    init_keys: Sequence[jax.Array],
    sample_batch: train.Batch,
    steps_total: int,
) -> train.TrainState:
    """K train states (one per init key) stacked on a leading seed axis (`place_seeds`).

    Each is built by `train.create_train_state`, so seed s starts exactly where a single run with
    the same init key starts.
    """
    if not init_keys:
        raise DeepLearningError("need at least one seed; use --seeds 1 or more")
    states = stack_trees(
        [train.create_train_state(model, cfg, k, sample_batch, steps_total) for k in init_keys]
    )
    return place_seeds(states, len(init_keys))


def _leading_mask(mask_K: jax.Array, x: jax.Array) -> jax.Array:
    return mask_K.reshape((-1,) + (1,) * (x.ndim - 1))


def _seeds_train_step(
    states: train.TrainState, batch_K: train.Batch, keys_K: jax.Array, active_K: jax.Array
) -> tuple[train.TrainState, train.Metrics]:
    """One optimizer step of every seed; seeds with active_K False keep their state unchanged."""
    new, metrics = jax.vmap(train._train_step)(states, batch_K, keys_K)
    kept = jax.tree.map(lambda n, o: jnp.where(_leading_mask(active_K, n), n, o), new, states)
    return kept, metrics


def _seeds_eval_step(
    states: train.TrainState, batch: train.Batch
) -> tuple[train.Metrics, jax.Array]:
    """`train._eval_step` of every seed on one shared batch (each sum becomes f32[K]), and every
    seed's P(up) of every row of the batch, f32[K, B]."""

    def one(state: train.TrainState, batch: train.Batch) -> tuple[train.Metrics, jax.Array]:
        sums, logits_Bx2 = train.eval_with_logits(state, batch)
        return sums, up_probability(logits_Bx2)

    return jax.vmap(one, in_axes=(0, None))(states, batch)


# Jitted once at module level like train.train_step: equal models/optimizers reuse one program.
seeds_train_step = jax.jit(_seeds_train_step, donate_argnums=0)
seeds_eval_step = jax.jit(_seeds_eval_step)


def evaluate_seeds(
    states: train.TrainState, dataset: train.BatchSource, split: str, batch_size: int
) -> dict[str, np.ndarray]:
    """Per seed: masked loss, accuracy (float64[K]), the split's majority rate and count, and
    `prob_up` (float32[K, N]: each seed's P(up) of the split's N rows, in row order)."""
    pending, masks = [], []
    for batch in dataset.eval_batches(split, batch_size):
        pending.append(seeds_eval_step(states, batch))
        masks.append(np.asarray(batch["mask"], bool))
    totals: dict[str, np.ndarray] = {}
    probs: list[np.ndarray] = []
    for mask_B, (m, p_KxB) in zip(masks, jax.device_get(pending), strict=True):
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, dtype=np.float64)
        probs.append(np.asarray(p_KxB, np.float32)[:, mask_B])
    count = float(totals["count"][0]) if totals else 0.0
    if count == 0:
        raise DeepLearningError(f"the {split} split has no labeled windows; use more data")
    up_rate = float(totals["up"][0]) / count
    return {
        "loss": totals["loss_sum"] / totals["weight_sum"],
        "accuracy": totals["correct"] / count,
        "majority_rate": np.asarray(max(up_rate, 1.0 - up_rate)),
        "count": np.asarray(count),
        "prob_up": np.concatenate(probs, axis=1),
    }


def _stacked_batches(dataset: train.BatchSource, batch_size: int, keys: Sequence[jax.Array]) -> Any:
    """Per step, the K seeds' own next training batches stacked into one f32[K, B, ...] dict,
    placed as the seeds are (`place_seeds`)."""
    for per_seed in zip(*(dataset.batches("train", batch_size, k) for k in keys), strict=True):
        stacked = {name: np.stack([b[name] for b in per_seed]) for name in per_seed[0]}
        yield place_seeds(stacked, len(keys))


@dataclass
class SeedsFitResult:
    """What `fit_seeds` did: the stacked state holding each seed's best params, per-seed records."""

    state: train.TrainState
    best_epochs: list[int]
    best_val_losses: list[float]
    best_val_accs: list[float]
    val_majority_rate: float
    # Each seed's P(up) of the val rows under the returned params, from the validation pass that
    # chose them (so no second forward pass over val is needed), float32[K, N].
    val_prob_up_KxN: np.ndarray
    stopped_reason: train.StopReason
    seed_stopped_epochs: list[int]
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    samples: int = 0  # training examples processed, summed over seeds (active slots only)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.train_seconds, 1e-9)


def _host_copy(tree: Any) -> Any:
    # A host copy: the device buffers are donated to the next train step.
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def fit_seeds(
    states: train.TrainState,
    dataset: train.BatchSource,
    cfg: TrainConfig,
    fit_keys: Sequence[jax.Array],
    *,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> SeedsFitResult:
    """Trains K stacked seeds per `cfg` with per-seed early stopping; deterministic given the keys.

    `fit_keys[s]` plays the role of `train.fit`'s key for seed s. `on_step(steps_done, mean train
    loss of the active seeds)` runs after each step's metrics arrive (one step late, so the host
    prepares the next batch while the device computes); `on_epoch(record)` after each validation.
    The wall-clock limit (`cfg.max_minutes`) and `should_stop()` stop every seed after the current
    step; the partial epoch is validated. Raises DeepLearningError on a non-finite loss.
    """
    k = num_seeds(states)
    if len(fit_keys) != k:
        raise ValueError(f"{len(fit_keys)} fit keys for {k} seeds")
    deadline = Deadline(None if cfg.max_minutes is None else cfg.max_minutes * 60.0)

    def stop_reason() -> train.StopReason | None:
        if should_stop is not None and should_stop():
            return "interrupted"
        if deadline.expired():
            return "time_limit"
        return None

    split_keys = [jax.random.split(key) for key in fit_keys]
    shuffle_keys = [sk[0] for sk in split_keys]
    dropout_K = place_seeds(jnp.stack([sk[1] for sk in split_keys]), k)
    counts = train.label_counts(dataset, "train")
    if cfg.class_weights:
        weights = np.asarray(train.class_weights_from_counts(counts))
        states = states.replace(class_weights=place_seeds(np.tile(weights, (k, 1)), k))
    n_steps = train.steps_per_epoch(dataset, cfg.batch_size)
    log_event(
        logger,
        "fit_seeds_start",
        seeds=k,
        devices=seed_device_count(k),
        train_windows=int(counts.sum()),
        steps_per_epoch=n_steps,
        epochs=cfg.epochs,
    )
    active = np.ones(k, dtype=bool)
    best_loss = np.full(k, math.inf)
    best_acc = np.full(k, math.nan)
    best_epoch = np.zeros(k, dtype=np.int64)
    stopped_epoch = np.zeros(k, dtype=np.int64)
    bad_epochs = np.zeros(k, dtype=np.int64)
    best_params: Any = None
    best_val_prob: np.ndarray | None = None
    last_val_prob = np.zeros((k, 0), np.float32)
    history: list[dict[str, Any]] = []
    stopped: train.StopReason = "max_epochs"
    majority = math.nan
    step, samples, heap_trims, mapped_loops = 0, 0, 0, 0
    t_fit = time.perf_counter()
    train_seconds = 0.0

    def take(step_no: int, dev_metrics: train.Metrics, active_now: np.ndarray) -> float:
        loss_K = np.asarray(jax.device_get(dev_metrics["loss"]), dtype=np.float64)
        bad = active_now & ~np.isfinite(loss_K)
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            raise DeepLearningError(
                f"training loss of seed {s} became {loss_K[s]} at step {step_no}; lower "
                "train.learning_rate or train.grad_clip, or check the input data for NaN/inf"
            )
        loss = float(loss_K[active_now].mean())
        if on_step is not None:
            on_step(step_no, loss)
        return loss

    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        active_dev = place_seeds(active, k)
        epoch_keys = [jax.random.fold_in(sk, epoch) for sk in shuffle_keys]
        pending: tuple[int, train.Metrics] | None = None
        losses: list[float] = []
        done = 0
        with contextlib.ExitStack() as stack:
            heap: runtime.LoopHeap | None = None
            for batch_K in _stacked_batches(dataset, cfg.batch_size, epoch_keys):
                step += 1
                done += 1
                states, metrics = seeds_train_step(states, batch_K, dropout_K, active_dev)
                if pending is not None:
                    losses.append(take(*pending, active))
                pending = (step, metrics)
                if heap is None:
                    # Entered once the first step's call has returned (compiled): entering
                    # returns the compiler's freed memory before the second step is dispatched,
                    # and the loop's heap rules apply from there (runtime.LoopHeap). Entered
                    # before the compile, mmap off would keep the compiler's memory (+0.35 GB
                    # peak RSS, BTC 1h LSTM).
                    heap = stack.enter_context(runtime.reuse_in_train_loop())
                else:
                    heap.after_step()
                if (reason := stop_reason()) is not None:
                    stopped = reason
                    break
            if pending is not None:
                losses.append(take(*pending, active))
            if heap is not None:
                heap_trims += heap.trims
                mapped_loops += heap.mapped
        samples += done * cfg.batch_size * int(active.sum())
        train_seconds += time.perf_counter() - t_epoch
        val = evaluate_seeds(states, dataset, "val", cfg.eval_batch_size)
        majority = float(val["majority_rate"])
        last_val_prob = val["prob_up"]
        improved = active & (val["loss"] < best_loss)
        if improved.any():
            current = _host_copy(states.params)
            if best_params is None:
                best_params, best_val_prob = current, val["prob_up"]
            else:
                best_params, best_val_prob = jax.tree.map(
                    lambda b, c, m=improved: np.where(_leading_mask(m, c), c, b),
                    (best_params, best_val_prob),
                    (current, val["prob_up"]),
                )
        best_loss = np.where(improved, val["loss"], best_loss)
        best_acc = np.where(improved, val["accuracy"], best_acc)
        best_epoch = np.where(improved, epoch, best_epoch)
        bad_epochs = np.where(improved, 0, np.where(active, bad_epochs + 1, bad_epochs))
        stopped_epoch = np.where(active, epoch, stopped_epoch)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else math.nan,
            "val_loss": val["loss"].tolist(),
            "val_acc": val["accuracy"].tolist(),
            "val_majority_rate": majority,
            "active": active.tolist(),
            "best_epoch": best_epoch.tolist(),
            "steps": done,
            "global_step": step,
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(record)
        log_event(logger, "seeds_epoch", **record)
        if on_epoch is not None:
            on_epoch(dict(record))
        if stopped != "max_epochs":  # stopped mid-epoch
            break
        active = active & (bad_epochs < cfg.patience)
        if (reason := stop_reason()) is not None:
            stopped = reason
            break
        if not active.any():
            stopped = "early_stopping"
            break

    if best_params is not None:
        states = states.replace(params=place_seeds(best_params, k))
    seconds = time.perf_counter() - t_fit
    log_event(
        logger,
        "fit_seeds_end",
        stopped_reason=stopped,
        best_epochs=best_epoch.tolist(),
        best_val_losses=best_loss.tolist(),
        epochs_run=len(history),
        seconds=round(seconds, 2),
        heap_trims=heap_trims,
        loops_mapping_step_blocks=mapped_loops,  # runtime.LoopHeap: past its memory budget
    )
    return SeedsFitResult(
        state=states,
        best_epochs=[int(e) for e in best_epoch],
        best_val_losses=[float(x) for x in best_loss],
        best_val_accs=[float(x) for x in best_acc],
        val_majority_rate=majority,
        # Without any improvement the last params stay, and so do the last pass's predictions.
        val_prob_up_KxN=last_val_prob if best_val_prob is None else best_val_prob,
        stopped_reason=stopped,
        seed_stopped_epochs=[int(e) for e in stopped_epoch],
        history=history,
        epochs_run=len(history),
        steps=step,
        seconds=seconds,
        train_seconds=train_seconds,
        samples=samples,
    )
