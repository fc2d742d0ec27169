"""Models: registry, output shapes, causality by gradient, dropout modes, attention weights."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrader.config import ModelConfig
from jaxtrader.errors import DeepLearningError
from jaxtrader.models import ARCHS, build_model, with_defaults
from jaxtrader.models.archs import ARCH_CONFIGS, ARCH_NAMES, DEFAULT_ARCH, arch_config
from jaxtrader.models.lstm import LSTMClassifier
from jaxtrader.models.transformer import (
    TransformerClassifier,
    attention_weights,
    sinusoidal_positions,
)

B, W, F = 4, 16, 86
TINY = {
    "lstm": with_defaults("lstm", hidden=8, num_layers=2, dropout=0.3),
    "transformer": with_defaults(
        "transformer", d_model=16, num_heads=2, ff_dim=32, num_layers=2, dropout=0.3
    ),
    "transformer-token-learned": with_defaults(
        "transformer",
        d_model=16,
        num_heads=2,
        ff_dim=32,
        num_layers=1,
        dropout=0.3,
        feature_join="token",
        pos_encoding="learned",
    ),
}


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=(B, W, 5)), jnp.float32),
        jnp.asarray(rng.normal(size=(B, F)), jnp.float32),
    )


@functools.cache
def _build(name: str) -> tuple[str, Any, Any]:
    if name == "lstm-layered":  # the reference computation: one nn.RNN per layer
        model: Any = LSTMClassifier(hidden=8, num_layers=2, dropout=0.3, wavefront=False)
    else:
        model = build_model(TINY[name])
    seq, feats = _inputs()
    return name, model, jax.jit(model.init)(jax.random.key(0), seq, feats)


@pytest.fixture(params=["lstm", "transformer"])
def built(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    return _build(request.param)


def test_registry_builds_each_arch_with_its_defaults() -> None:
    assert set(ARCHS) == {"lstm", "transformer"}
    assert isinstance(build_model(with_defaults("lstm")), LSTMClassifier)
    transformer = build_model(with_defaults("transformer"))
    assert isinstance(transformer, TransformerClassifier)
    assert (transformer.d_model, transformer.num_heads, transformer.ff_dim) == (64, 4, 256)
    assert build_model(with_defaults("lstm")).hidden == 128
    assert with_defaults("lstm", hidden=32).hidden == 32


def test_registry_agrees_with_the_light_arch_names_and_configs() -> None:
    """The CLI's --arch choices and ModelConfig's defaults come from models/archs.py (no Flax);
    the registry must list the same architectures, built from the same configs."""
    assert tuple(ARCHS) == ARCH_NAMES and DEFAULT_ARCH in ARCH_NAMES
    assert ModelConfig() == with_defaults(DEFAULT_ARCH)
    for name, spec in ARCHS.items():
        assert spec.config is ARCH_CONFIGS[name]
        assert arch_config(with_defaults(name)) == spec.config()
    code = (
        "import sys; import jaxtrader.models, jaxtrader.models.archs, jaxtrader.config\n"
        "print([m for m in ('jax', 'flax', 'numpy', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_registry_rejects_unknown_arch_and_bad_heads() -> None:
    with pytest.raises(DeepLearningError, match=r"unknown model\.arch 'gru'"):
        build_model(ModelConfig(arch="gru"))
    with pytest.raises(DeepLearningError, match="num_heads=3"):
        build_model(dataclasses.replace(with_defaults("transformer"), num_heads=3))


def test_output_shapes(built: tuple[str, Any, Any]) -> None:
    _, model, variables = built
    seq, feats = _inputs(1)
    logits = model.apply(variables, seq, feats)
    chex.assert_shape(logits, (B, 2))
    chex.assert_tree_all_finite(logits)
    per_pos = model.apply(variables, seq, feats, method="logits_per_position")
    chex.assert_shape(per_pos, (B, W, 2))
    # The classifier's logit is exactly the last position's logit (eval mode).
    np.testing.assert_allclose(per_pos[:, -1], logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer", "transformer-token-learned"])
def test_transformer_last_position_path_equals_the_full_encoder(name: str) -> None:
    # The classifier runs its last block for the last position only; logits and parameter
    # gradients must equal those of the full encoder read at its last position.
    _, model, variables = _build(name)
    seq, feats = _inputs(3)

    def loss(params: Any, method: str) -> jax.Array:
        out = model.apply({"params": params}, seq, feats, method=method)
        logits_Bx2 = out if method == "__call__" else out[:, -1]
        return jnp.sum(jnp.sin(logits_Bx2) * jnp.arange(1.0, 3.0))

    fast, full = (
        jax.value_and_grad(loss)(variables["params"], m)
        for m in ("__call__", "logits_per_position")
    )
    np.testing.assert_allclose(fast[0], full[0], rtol=1e-5)
    chex.assert_trees_all_close(fast[1], full[1], rtol=1e-4, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(fast[1]))


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_lstm_wavefront_equals_one_nn_rnn_per_layer(num_layers: int) -> None:
    # The default wavefront scan must compute exactly what nn.RNN(nn.OptimizedLSTMCell) layers do
    # on the same parameters: logits at every position and the parameter gradients.
    fast = LSTMClassifier(hidden=8, num_layers=num_layers, dropout=0.3)
    ref = LSTMClassifier(hidden=8, num_layers=num_layers, dropout=0.3, wavefront=False)
    seq, feats = _inputs(4)
    variables = jax.jit(ref.init)(jax.random.key(0), seq, feats)
    chex.assert_trees_all_equal_structs(variables, fast.init(jax.random.key(0), seq, feats))
    for method in ("__call__", "logits_per_position"):
        np.testing.assert_allclose(
            fast.apply(variables, seq, feats, method=method),
            ref.apply(variables, seq, feats, method=method),
            rtol=1e-5,
            atol=1e-6,
        )

    def loss(model: LSTMClassifier) -> Any:
        return jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, seq, feats))))(
            variables["params"]
        )

    chex.assert_trees_all_close(loss(fast), loss(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", [*TINY, "lstm-layered"])
def test_logit_at_t_has_zero_gradient_wrt_later_inputs(name: str) -> None:
    _, model, variables = _build(name)
    seq, feats = _inputs(2)

    def logit_up_per_position(seq_BxTx5: jax.Array) -> jax.Array:
        out = model.apply(variables, seq_BxTx5, feats, method="logits_per_position")
        return out[..., 1].sum(axis=0)  # T: sums over the batch (samples are independent)

    jac_TxBxTx5 = np.asarray(jax.jit(jax.jacrev(logit_up_per_position))(seq))
    influence_TxT = np.abs(jac_TxBxTx5).sum(axis=(1, 3))  # [output position t, input position s]
    future = np.triu(np.ones((W, W), bool), k=1)
    assert (influence_TxT[future] == 0.0).all(), f"{name}: a logit depends on a later input"
    # ...and every position does use its own and earlier inputs.
    assert (influence_TxT[~future] > 0.0).all(), f"{name}: a logit ignores a past input"


def test_eval_is_deterministic_and_train_mode_uses_the_dropout_key(
    built: tuple[str, Any, Any],
) -> None:
    _, model, variables = built
    seq, feats = _inputs(3)
    apply = model.apply
    a = apply(variables, seq, feats, deterministic=True)
    b = apply(variables, seq, feats, deterministic=True, rngs={"dropout": jax.random.key(9)})
    np.testing.assert_array_equal(a, b)
    t1 = apply(variables, seq, feats, deterministic=False, rngs={"dropout": jax.random.key(1)})
    t1_again = apply(
        variables, seq, feats, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    t2 = apply(variables, seq, feats, deterministic=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(t1, t1_again)
    assert not np.allclose(t1, t2)
    assert not np.allclose(t1, a)


def test_attention_weights_are_causal_distributions() -> None:
    cfg = TINY["transformer"]
    _, model, variables = _build("transformer")
    assert isinstance(model, TransformerClassifier)
    seq, feats = _inputs(4)
    weights = np.asarray(attention_weights(model, variables, seq, feats))
    chex.assert_shape(weights, (cfg.num_layers, B, cfg.num_heads, W, W))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert (weights[..., np.triu(np.ones((W, W), bool), k=1)] == 0.0).all()
    # The hot path sows nothing.
    _, state = model.apply(variables, seq, feats, mutable=["intermediates"])
    assert not state.get("intermediates")


def test_sinusoidal_positions_are_distinct_and_bounded() -> None:
    table = sinusoidal_positions(50, 16)
    chex.assert_shape(table, (50, 16))
    assert np.abs(table).max() <= 1.0
    np.testing.assert_allclose(table[0, 1::2], 1.0)  # cos(0)
    assert len({row.tobytes() for row in table}) == 50


def test_attention_core_equals_flax_attention_in_values_and_gradients() -> None:
    # The Transformer's attention core (a hand-written backward pass) must equal flax's
    # dot_product_attention in values and gradients: causal, arbitrary and no mask, with and
    # without the seeds' jax.vmap, and for the last block's one query against T keys.
    from flax import linen as nn

    from jaxtrader.models.transformer import attention_core

    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 2, B, W, 2, 4)), jnp.float32) for _ in range(3))
    causal = nn.make_causal_mask(jnp.ones((B, W)))
    arbitrary = rng.random((B, 1, W, W)) < 0.6
    arbitrary[..., 0] = True  # no row fully masked

    def loss(fn: Any, m: Any, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(fn(q, k, v, mask=m)))

    cases = ((q[0], k[0], v[0]), (q[0, 0], k[0, 0], v[0, 0]), (q[0, 0][:, -1:], k[0, 0], v[0, 0]))
    for mask in (causal, jnp.asarray(arbitrary), None):
        for qi, ki, vi in cases:
            m = None if mask is None else mask[..., -qi.shape[-3] :, :]
            results = []
            for f in (attention_core, nn.dot_product_attention):
                grad = jax.value_and_grad(functools.partial(loss, f, m), argnums=(0, 1, 2))
                results.append((jax.vmap(grad) if qi.ndim == 5 else grad)(qi, ki, vi))
            (ours, ours_grads), (ref, ref_grads) = results
            np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
            chex.assert_trees_all_close(ours_grads, ref_grads, rtol=1e-4, atol=1e-5)
    # The last query alone equals the last row of the full attention.
    last = attention_core(q[0, 0][:, -1:], k[0, 0], v[0, 0], mask=causal[..., -1:, :])
    full = nn.dot_product_attention(q[0, 0], k[0, 0], v[0, 0], mask=causal)
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-6)
