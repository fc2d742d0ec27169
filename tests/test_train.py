"""Training core: jitted steps, masked evaluation, the fit loop's stops, NaN handling, determinism.

The data is synthetic in memory (a planted rule), served through the same batch contract as
jaxtrader.dataset.Dataset; tiny models keep the compile time small. All fits share one TrainConfig
optimizer setting so they reuse one compiled train step per architecture (the schedule's length is
an array in the state, so it may differ).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrader import train
from jaxtrader.config import TrainConfig
from jaxtrader.errors import ConfigError, DeepLearningError
from jaxtrader.models import build_model, with_defaults

W, F, BATCH = 16, 86, 32
STEPS_TOTAL = 400
CFG = TrainConfig(
    epochs=6,
    batch_size=BATCH,
    eval_batch_size=128,
    learning_rate=1e-2,
    weight_decay=1e-4,
    warmup_steps=0,
    patience=50,
    seed=0,
)
TINY = {
    "lstm": with_defaults("lstm", hidden=16, num_layers=2, dropout=0.1),
    "transformer": with_defaults(
        "transformer", d_model=16, num_heads=2, ff_dim=32, num_layers=2, dropout=0.1
    ),
}


def planted(n: int, seed: int, noise_labels: bool = False) -> dict[str, np.ndarray]:
    """Random windows whose label is the sign of the window's last close step (a planted rule)."""
    rng = np.random.default_rng(seed)
    seq = rng.normal(size=(n, W, 5)).astype(np.float32)
    feats = rng.normal(size=(n, F)).astype(np.float32)
    label = (seq[:, -1, 3] > 0).astype(np.int32)
    if noise_labels:
        label = rng.integers(0, 2, n).astype(np.int32)
    return {"seq": seq, "feats": feats, "label": label}


class ArrayDataset:
    """In-memory splits behind the Dataset batch contract (fixed shapes, masked eval padding)."""

    def __init__(self, **splits: dict[str, np.ndarray]) -> None:
        self.splits = splits

    def batches(
        self, split: str, batch_size: int, key: jax.Array | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        data = self.splits[split]
        n = len(data["label"])
        order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
        for start in range(0, n - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            yield {k: v[rows] for k, v in data.items()}

    def labels(self, split: str) -> np.ndarray:
        return self.splits[split]["label"]

    def num_batches(self, split: str, batch_size: int) -> int:
        return len(self.splits[split]["label"]) // batch_size

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        data = self.splits[split]
        n = len(data["label"])
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size)
            mask = rows < n
            batch = {k: v[np.minimum(rows, n - 1)] for k, v in data.items()}
            batch["label"] = np.where(mask, batch["label"], 1)  # padding must not count
            yield {**batch, "mask": mask}


# Every train step in this module goes through this counted jit: across all the fits below (fresh
# states, different epochs/patience/time limits, both architectures) it may trace once per arch.
COUNTED_STEP = jax.jit(chex.assert_max_traces(train._train_step, n=len(TINY)), donate_argnums=0)


@pytest.fixture(autouse=True)
def _count_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "train_step", COUNTED_STEP)


def _state(arch: str, cfg: TrainConfig = CFG, seed: int = 0) -> train.TrainState:
    model = build_model(TINY[arch])
    return train.create_train_state(model, cfg, jax.random.key(seed), planted(2, 0), STEPS_TOTAL)


@pytest.fixture(scope="module")
def planted_data() -> ArrayDataset:
    return ArrayDataset(train=planted(2048, 1), val=planted(300, 2))


def _host(tree: object) -> object:
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def test_class_weights_balance_the_labels() -> None:
    np.testing.assert_allclose(train.class_weights_from_counts(np.array([30, 10])), [2 / 3, 2.0])
    with pytest.raises(DeepLearningError, match=r"label counts \[0, 12\]"):
        train.class_weights_from_counts(np.array([0, 12]))


def test_one_step_changes_every_parameter_and_traces_once() -> None:
    counted = train.train_step
    state = _state("lstm")
    before = _host(state.params)
    data = planted(3 * BATCH, 5)
    for i in range(3):
        batch = {k: v[i * BATCH : (i + 1) * BATCH] for k, v in data.items()}
        state, metrics = counted(state, batch, jax.random.key(0))
        if i == 0:
            changed = jax.tree.map(
                lambda a, b: bool((a != np.asarray(b)).any()), before, state.params
            )
            assert all(jax.tree.leaves(changed)), f"parameters left unchanged: {changed}"
    assert int(state.step) == 3
    assert np.isfinite(float(metrics["loss"]))
    # A second, equal state reuses the same compiled program.
    state2 = _state("lstm", seed=1)
    counted(state2, batch, jax.random.key(0))  # COUNTED_STEP raises on a second LSTM trace


def test_eval_step_ignores_padding_rows() -> None:
    state = _state("lstm")
    data = planted(40, 6)
    full = ArrayDataset(val=data)
    result = train.evaluate(state, full, "val", 128)  # one batch: 40 real rows + 88 padding
    assert result["count"] == 40
    logits = state.apply_fn({"params": state.params}, data["seq"], data["feats"])
    expected_acc = float(np.mean(np.argmax(np.asarray(logits), -1) == data["label"]))
    assert result["accuracy"] == pytest.approx(expected_acc)
    up = data["label"].mean()
    assert result["majority_rate"] == pytest.approx(max(up, 1 - up))


@pytest.mark.parametrize("arch", list(TINY))
def test_overfits_a_tiny_fixed_batch(arch: str) -> None:
    state = _state(arch)
    rng = np.random.default_rng(7)
    batch = {
        "seq": rng.normal(size=(BATCH, W, 5)).astype(np.float32),
        "feats": rng.normal(size=(BATCH, F)).astype(np.float32),
        "label": rng.integers(0, 2, BATCH).astype(np.int32),  # random: only memorising works
    }
    for _ in range(150):
        state, _ = train.train_step(state, batch, jax.random.key(0))
    acc = train.evaluate(state, ArrayDataset(val=batch), "val", 128)["accuracy"]
    assert acc >= 0.97, f"{arch} memorised only {acc:.2%} of 32 examples"


@pytest.mark.parametrize("arch", list(TINY))
def test_learns_a_planted_rule(arch: str, planted_data: ArrayDataset, tmp_path: Path) -> None:
    epochs_seen: list[int] = []
    result = train.fit(
        _state(arch),
        planted_data,
        CFG,
        jax.random.key(0),
        on_epoch=lambda epoch, state, metrics: epochs_seen.append(epoch),
        metrics_path=tmp_path / "metrics.jsonl",
    )
    hist = result.history
    assert result.stopped_reason == "max_epochs"
    assert epochs_seen == list(range(1, CFG.epochs + 1))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert result.best_val_loss < hist[0]["val_loss"]
    assert result.best_val_acc > 0.90, f"{arch}: val accuracy {result.best_val_acc:.3f}"
    assert abs(result.val_majority_rate - 0.5) < 0.1  # the rule is balanced: no majority shortcut
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, CFG.epochs + 1))
    keys = {"train_loss", "train_acc", "val_loss", "val_acc", "val_majority_rate", "lr"}
    assert keys | {"steps_per_s", "seconds"} <= set(lines[0])
    assert lines[0]["lr"] > lines[-1]["lr"]  # cosine decay
    # The returned state holds the best epoch's parameters.
    again = train.evaluate(result.state, planted_data, "val", 128)
    assert again["loss"] == pytest.approx(result.best_val_loss, rel=1e-5)


def test_early_stopping_restores_the_best_epoch() -> None:
    noise = ArrayDataset(train=planted(256, 3, noise_labels=True), val=planted(256, 4, True))
    cfg = dataclasses.replace(CFG, epochs=30, patience=2)
    result = train.fit(_state("lstm", cfg), noise, cfg, jax.random.key(0))
    val_losses = [h["val_loss"] for h in result.history]
    assert result.stopped_reason == "early_stopping"
    assert result.epochs_run < cfg.epochs
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.epochs_run == result.best_epoch + cfg.patience
    again = train.evaluate(result.state, noise, "val", 128)
    assert again["loss"] == pytest.approx(result.best_val_loss, rel=1e-5)


def test_time_limit_stops_after_the_current_step(planted_data: ArrayDataset) -> None:
    cfg = dataclasses.replace(CFG, max_minutes=1e-9)
    seen: list[dict[str, float]] = []
    result = train.fit(
        _state("lstm", cfg),
        planted_data,
        cfg,
        jax.random.key(0),
        on_epoch=lambda e, s, m: seen.append(m),
    )
    assert result.stopped_reason == "time_limit"
    assert result.epochs_run == 1 and result.history[0]["steps"] == 1
    assert int(result.state.step) == 1
    assert len(seen) == 1 and np.isfinite(seen[0]["val_loss"])  # the caller can still save


def _fit_lstm(
    data: ArrayDataset,
    on_epoch: Callable[[int, train.TrainState, dict[str, float]], None],
    should_stop: Callable[[], bool],
) -> train.FitResult:
    return train.fit(_state("lstm"), data, CFG, jax.random.key(0), on_epoch, None, should_stop)


def test_should_stop_ends_mid_epoch_and_still_validates(planted_data: ArrayDataset) -> None:
    calls = {"n": 0}

    def stop_after_5_steps() -> bool:  # polled once after every step
        calls["n"] += 1
        return calls["n"] >= 5

    seen: list[dict[str, float]] = []
    result = _fit_lstm(planted_data, lambda e, s, m: seen.append(m), stop_after_5_steps)
    assert result.stopped_reason == "interrupted"
    assert result.epochs_run == 1 and result.steps == int(result.state.step) == 5
    assert result.history[0]["steps"] == result.history[0]["global_step"] == 5
    assert len(seen) == 1 and np.isfinite(seen[0]["val_loss"])
    assert result.best_epoch == 1 and result.best_val_loss == seen[0]["val_loss"]


def test_should_stop_between_epochs_keeps_the_whole_epoch(planted_data: ArrayDataset) -> None:
    epochs_done: list[int] = []
    result = _fit_lstm(
        planted_data,
        lambda e, s, m: epochs_done.append(e),
        lambda: len(epochs_done) >= 2,  # becomes true during epoch 2's save
    )
    n = planted_data.num_batches("train", BATCH)
    assert result.stopped_reason == "interrupted" and epochs_done == [1, 2]
    assert [h["steps"] for h in result.history] == [n, n] and result.steps == 2 * n


def test_after_first_step_runs_once_when_the_first_result_is_in(
    planted_data: ArrayDataset,
) -> None:
    """The train CLI returns the compiler's freed memory there (training_run); once per fit."""
    polls: list[int] = []
    calls: list[tuple[int, int]] = []  # (stop polls so far, epochs done so far)
    epochs_done: list[int] = []

    def poll() -> bool:  # polled once after every step is dispatched
        polls.append(1)
        return False

    result = train.fit(
        _state("lstm"),
        planted_data,
        dataclasses.replace(CFG, epochs=2, patience=5),
        jax.random.key(0),
        lambda e, s, m: epochs_done.append(e),
        None,
        poll,
        after_first_step=lambda: calls.append((len(polls), len(epochs_done))),
    )
    assert result.epochs_run == 2 and result.steps > 2
    # Step 1's metrics are fetched after step 2 is dispatched, i.e. after the first poll.
    assert calls == [(1, 0)]


class PoisonedDataset(ArrayDataset):
    """Training batch number `bad` (1-based) carries a NaN."""

    def __init__(self, bad: int, **splits: dict[str, np.ndarray]) -> None:
        super().__init__(**splits)
        self.bad = bad

    def batches(
        self, split: str, batch_size: int, key: jax.Array | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        for i, batch in enumerate(super().batches(split, batch_size, key), start=1):
            if i == self.bad:
                batch = {**batch, "seq": batch["seq"].copy()}
                batch["seq"][0, 0, 0] = np.nan
            yield batch


def test_nan_loss_raises_naming_step_and_epoch() -> None:
    data = PoisonedDataset(3, train=planted(256, 1), val=planted(64, 2))
    with pytest.raises(DeepLearningError, match=r"loss became nan at step 3 \(epoch 1\)"):
        train.fit(_state("lstm"), data, CFG, jax.random.key(0))


def test_same_seed_same_metrics_other_seed_differs() -> None:
    data = ArrayDataset(train=planted(256, 1), val=planted(128, 2))
    cfg = dataclasses.replace(CFG, epochs=2)
    runs = [train.fit(_state("lstm", cfg), data, cfg, jax.random.key(s)) for s in (0, 0, 1)]
    fields = ("train_loss", "val_loss", "val_acc")
    first, second, other = ([[h[f] for f in fields] for h in r.history] for r in runs)
    np.testing.assert_allclose(first, second, rtol=1e-6)
    assert not np.allclose(first, other)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = dataclasses.replace(CFG, warmup_steps=10, learning_rate=1e-3)
    _, schedule = train.make_optimizer(cfg)
    lrs = np.array([float(schedule(jnp.asarray(s), jnp.asarray(100))) for s in (0, 5, 10, 50, 100)])
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3)
    assert lrs[2] > lrs[3] > lrs[4] == pytest.approx(5e-5)


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (10, 7), (10, 100), (500, 1234), (3, 54321)])
def test_lr_schedule_is_optax_warmup_cosine_to_the_bit(warmup: int, total: int) -> None:
    # The horizon is an array here; optax's schedule (which the optimizer used before) takes it as
    # a constant. Both jitted, as the train step runs them.
    _, schedule = train.make_optimizer(dataclasses.replace(CFG, warmup_steps=warmup))
    t = max(total, 2)
    w = min(warmup, t // 2)
    reference = optax.warmup_cosine_decay_schedule(
        0.0, CFG.learning_rate, w, t, CFG.learning_rate * 0.05
    )
    steps = jnp.arange(t + 3, dtype=jnp.int32)
    ours = jax.jit(jax.vmap(schedule, in_axes=(0, None)))(steps, jnp.asarray(total, jnp.int32))
    chex.assert_trees_all_equal(ours, jax.jit(jax.vmap(reference))(steps))


def test_update_is_optax_adamw_to_the_bit() -> None:
    cfg = dataclasses.replace(CFG, warmup_steps=2, grad_clip=0.5)
    state = train.create_train_state(
        build_model(TINY["lstm"]), cfg, jax.random.key(0), planted(2, 0), 20
    )
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            optax.warmup_cosine_decay_schedule(
                0.0, cfg.learning_rate, 2, 20, cfg.learning_rate * 0.05
            ),
            weight_decay=cfg.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )

    @jax.jit
    def reference(params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    ours = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    params, opt_state = state.params, tx.init(state.params)
    keys = jax.random.split(jax.random.key(1), 4)
    for key in keys:  # warmup, peak, decay
        leaves, treedef = jax.tree.flatten(params)
        grads = jax.tree.unflatten(
            treedef,
            [
                jax.random.normal(k, x.shape)
                for k, x in zip(jax.random.split(key, len(leaves)), leaves, strict=True)
            ],
        )
        params, opt_state = reference(params, opt_state, grads)
        state = ours(state, grads)
    chex.assert_trees_all_equal(state.params, params)
    assert int(state.step) == len(keys)


def test_runs_of_any_length_share_one_compiled_step() -> None:
    # A walk-forward fold has more training windows than the last: before the horizon was an array,
    # each fold traced and compiled (and kept) its own step.
    step = jax.jit(chex.assert_max_traces(train._train_step, n=1))
    cfg = dataclasses.replace(CFG, warmup_steps=1)
    batch = planted(BATCH, 3)
    lrs = []
    for steps_total in (4, 400, 5000):
        state = train.create_train_state(
            build_model(TINY["transformer"]), cfg, jax.random.key(0), batch, steps_total
        )
        for _ in range(3):
            state, metrics = step(state, batch, jax.random.key(1))
        lrs.append(float(metrics["lr"]))
    # The third step's rate is further down the cosine the shorter the run.
    assert lrs[0] < lrs[1] < lrs[2] < cfg.learning_rate


def _steps(step: Any, state: train.TrainState, n: int, key: int = 7) -> train.TrainState:
    data = planted(n * BATCH, 11)
    for i in range(n):
        batch = {k: v[i * BATCH : (i + 1) * BATCH] for k, v in data.items()}
        state, _ = step(state, batch, jax.random.key(key))
    return state


@pytest.mark.parametrize("shards", [2, 4])
def test_batch_shards_without_dropout_equal_the_whole_batch(shards: int) -> None:
    # Shards only change which dropout key a row draws from: without dropout, the sum of the shards'
    # loss-sum gradients over the total weight is the whole batch's gradient.
    model = build_model(dataclasses.replace(TINY["lstm"], dropout=0.0))
    cfg = dataclasses.replace(CFG, class_weights=False)
    init = train.create_train_state(model, cfg, jax.random.key(0), planted(2, 0), STEPS_TOTAL)
    init = init.replace(class_weights=jnp.asarray([0.7, 1.4], jnp.float32))  # weights matter
    whole = _steps(train._train_step, init, 3)
    sharded = _steps(train.sharded_train_step(shards, 1), init, 3)
    chex.assert_trees_all_close(sharded.params, whole.params, rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_close(sharded.opt_state, whole.opt_state, rtol=2e-5, atol=1e-6)


def test_batch_shards_draw_their_own_dropout_and_trace_once() -> None:
    def two_shards(state: Any, batch: Any, key: jax.Array) -> Any:
        return train._sharded_train_step(state, batch, key, shards=2, devices=1)

    counted = jax.jit(chex.assert_max_traces(two_shards, n=1), donate_argnums=0)
    init = _host(_state("lstm"))
    sharded = _steps(counted, jax.tree.map(jnp.asarray, init), 3)
    whole = _steps(train._train_step, jax.tree.map(jnp.asarray, init), 3)
    # With dropout the shards' keys give other masks, so other parameters (not a no-op split).
    differs = jax.tree.map(
        lambda a, b: bool((np.asarray(a) != np.asarray(b)).any()), sharded.params, whole.params
    )
    assert all(jax.tree.leaves(differs))
    assert train.sharded_train_step(1, 1) is train.train_step


TWO_DEVICES = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from test_train import CFG, planted, _state, _steps
from jaxtrader import train
assert len(jax.local_devices()) == 2, jax.local_devices()
init = jax.tree.map(np.asarray, _state("lstm"))  # dropout 0.1
one = _steps(train.sharded_train_step(2, 1), jax.tree.map(jnp.asarray, init), 3)
two = _steps(train.sharded_train_step(2, 2), train.place_for_data(init, 2, split=False), 3)
devices = {d.id for leaf in jax.tree.leaves(two.params) for d in leaf.devices()}
diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)))
batch = planted(128, 4)
batch["mask"] = np.arange(128) < 100
e1 = train.eval_step(one, batch)
e2 = train.sharded_eval_step(2)(train.place_for_data(one, 2, split=False),
                                 train.place_for_data(batch, 2, split=True))
print(json.dumps({"devices": sorted(devices), "max_diff": diff,
                  "eval": [[float(e1[k]), float(e2[k])] for k in sorted(e1)]}))
"""


def test_two_devices_train_the_numbers_of_one(tmp_path: Path) -> None:
    # A real process with 2 host devices (as `jaxtrader train` makes them): the shards' gradients
    # run on their own devices and are psummed, and must equal the same shards run in sequence.
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == [0, 1]  # the state stayed replicated on both
    assert out["max_diff"] < 1e-5, out
    for whole, split in out["eval"]:
        assert split == pytest.approx(whole, rel=1e-5), out["eval"]


def test_fit_with_shards_trains_and_refuses_a_batch_they_do_not_divide(
    planted_data: ArrayDataset,
) -> None:
    # One device here: the 2-device fit runs in test_train_cli's real `jaxtrader train` process.
    cfg = dataclasses.replace(CFG, epochs=3, data_shards=2)
    result = train.fit(_state("lstm"), planted_data, cfg, jax.random.key(3))
    assert result.best_val_acc > 0.9  # the planted rule is learned through the shards too
    with pytest.raises(ConfigError, match=r"must be a multiple of train\.data_shards=3"):
        train.fit(
            _state("lstm"), planted_data, dataclasses.replace(cfg, data_shards=3), jax.random.key(3)
        )


def test_one_shard_is_the_train_step_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cached, it kept the first caller's (test-patched, trace-counting) step for every later fit
    # in the process: test_seeds then failed its own trace count in CI.
    first, first_eval = train.sharded_train_step(1, 1), train.sharded_eval_step(1)
    other, other_eval = jax.jit(train._train_step), jax.jit(train._eval_step)
    monkeypatch.setattr(train, "train_step", other)
    monkeypatch.setattr(train, "eval_step", other_eval)
    assert train.sharded_train_step(1, 1) is other and other is not first
    assert train.sharded_eval_step(1) is other_eval and other_eval is not first_eval
