"""K seeds in one compiled step: equal to K single-seed `train.fit` runs, per-seed early stopping.

The data is a real `Dataset` on a small synthetic market (no signal, so validation loss rises
soon and early stopping happens within a few epochs); the model is a tiny LSTM with dropout on,
so the per-seed dropout and shuffle keys matter.
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxtrader import seeds, train
from jaxtrader.config import DatasetConfig, TrainConfig
from jaxtrader.data import synth_candles
from jaxtrader.dataset import Dataset, build_dataset
from jaxtrader.inference import seed_proba_up
from jaxtrader.models import build_model, with_defaults

K = 3
DCFG = DatasetConfig(seq_len=50, horizon=2)
CFG = TrainConfig(
    epochs=4,
    batch_size=32,
    eval_batch_size=128,
    learning_rate=3e-3,
    warmup_steps=0,
    patience=1,
    seed=0,
)
STEPS_TOTAL = 400  # the schedule's horizon; any horizon shares one compiled step (train.TrainState)
MODEL = with_defaults("lstm", hidden=8, num_layers=1, dropout=0.2)

# Every multi-seed step in this module goes through this counted jit: it may trace once.
COUNTED = jax.jit(chex.assert_max_traces(seeds._seeds_train_step, n=1), donate_argnums=0)


@pytest.fixture(autouse=True)
def _count_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeds, "seeds_train_step", COUNTED)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return build_dataset(synth_candles(rows=1_400, seed=5), DCFG)


def _multi(data: Dataset, cfg: TrainConfig, run_seed: int) -> tuple[seeds.SeedsFitResult, list]:
    init_keys, fit_keys = seeds.seed_init_fit_keys(jax.random.key(run_seed), K)
    sample = next(data.eval_batches("train", cfg.batch_size))
    states = seeds.create_seed_states(build_model(MODEL), cfg, init_keys, sample, STEPS_TOTAL)
    return seeds.fit_seeds(states, data, cfg, fit_keys), init_keys


def test_k_seeds_in_one_step_equal_k_single_fits(data: Dataset) -> None:
    multi, _ = _multi(data, CFG, run_seed=0)
    init_keys, fit_keys = seeds.seed_init_fit_keys(jax.random.key(0), K)
    sample = next(data.eval_batches("train", CFG.batch_size))
    for s in range(K):
        single_state = train.create_train_state(
            build_model(MODEL), CFG, init_keys[s], sample, STEPS_TOTAL
        )
        single = train.fit(single_state, data, CFG, fit_keys[s])
        # Same best epoch (per-seed early stopping decides like fit) and the same parameters.
        assert multi.best_epochs[s] == single.best_epoch
        assert multi.seed_stopped_epochs[s] == single.epochs_run
        assert multi.best_val_losses[s] == pytest.approx(single.best_val_loss, rel=1e-5)
        chex.assert_trees_all_close(
            seeds.unstack_tree(multi.state.params, s), single.state.params, atol=1e-5, rtol=1e-4
        )
    # The seeds really differ (own init, dropout and batch order).
    p = jax.tree.leaves(multi.state.params)[0]
    assert not np.allclose(np.asarray(p[0]), np.asarray(p[1]))


def test_per_seed_early_stopping_keeps_each_seeds_best_epoch(data: Dataset) -> None:
    import dataclasses

    cfg = dataclasses.replace(CFG, epochs=6)
    result, _ = _multi(data, cfg, run_seed=3)  # a second state: reuses the compiled step
    for s in range(K):
        # Seed s's own val losses over the epochs it was active; its best is their argmin.
        seen = [h["val_loss"][s] for h in result.history if h["active"][s]]
        assert result.best_epochs[s] == int(np.argmin(seen)) + 1
        assert result.seed_stopped_epochs[s] == len(seen)
        # Stopped after `patience` epochs without improvement (or at the last epoch).
        assert len(seen) == min(result.best_epochs[s] + cfg.patience, cfg.epochs)
        # After it stopped, its updates were masked: its val loss no longer moves.
        after = [h["val_loss"][s] for h in result.history[len(seen) :]]
        assert after == [seen[-1]] * len(after)
    assert len(set(result.seed_stopped_epochs)) > 1, "pick data where the seeds stop apart"
    # The restored params are each seed's best: their val loss is the recorded best.
    again = seeds.evaluate_seeds(result.state, data, "val", cfg.eval_batch_size)
    np.testing.assert_allclose(again["loss"], result.best_val_losses, rtol=1e-5)
    assert result.samples > 0 and result.samples_per_s > 0
    # The val predictions kept from each seed's best epoch (earlier than its last for the seeds
    # that stopped early) are what its restored params predict: walkforward selects its policy
    # on them instead of predicting val again.
    model = build_model(MODEL)
    predicted = np.concatenate(
        [
            np.asarray(seed_proba_up(model, result.state.params, b["seq"], b["feats"]))[
                :, b["mask"]
            ]
            for b in data.eval_batches("val", cfg.eval_batch_size)
        ],
        axis=1,
    )
    chex.assert_shape(result.val_prob_up_KxN, (K, data.size("val")))
    np.testing.assert_allclose(result.val_prob_up_KxN, predicted, atol=1e-6)
    np.testing.assert_allclose(again["prob_up"], predicted, atol=1e-6)
