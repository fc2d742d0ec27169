"""The stacked LSTM classifier: raw window steps joined with the engineered features, 2 logits.

Each timestep's input is the raw candle step concatenated with the 86 features of the prediction
point (broadcast over time), through `nn.RNN(nn.OptimizedLSTMCell)` layers with dropout between them
(outside the scan). `precompute_input=True` is the measured alternative: every layer's input-to-gate
projection computed for the whole window in one matmul outside the scan (and the constant features'
projection once per sample), so the scan only carries `h @ W_h`. On this 2-core CPU it was not
faster (CPU ms/step 490 vs 484 at batch 64, 1166 vs 808 at batch 128: the B x T x 4H gate tensor
the scan has to transpose and carry through the backward pass costs more than the matmuls it
saves), so the plain cell is the default; scripts/bench_train.py --variants compares the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import initializers

Carry = tuple[jax.Array, jax.Array]


class ProjectedLSTMCell(nn.RNNCellBase):
    """An LSTM cell whose input already is the gate pre-activation `x_t @ W_x + b` (4 * features)."""

    features: int

    @nn.compact
    def __call__(self, carry: Carry, gates_x_Bx4H: jax.Array) -> tuple[Carry, jax.Array]:
        c, h = carry
        gates = gates_x_Bx4H + nn.Dense(
            4 * self.features,
            use_bias=False,
            kernel_init=initializers.orthogonal(),
            name="recurrent",
        )(h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Carry:
        shape = (*input_shape[:-1], self.features)
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        return 1


class LSTMClassifier(nn.Module):
    """`num_layers` LSTMs of width `hidden`, dropout between layers, head on the last hidden state."""

    hidden: int = 128
    num_layers: int = 2
    dropout: float = 0.1
    precompute_input: bool = False
    unroll: int = 1

    def setup(self) -> None:
        if self.precompute_input:
            # Layer 0 splits its input projection into the window part and the feature part.
            self.seq_proj = nn.Dense(4 * self.hidden, name="seq_proj")
            self.feat_proj = nn.Dense(4 * self.hidden, use_bias=False, name="feat_proj")
            self.layer_proj = [
                nn.Dense(4 * self.hidden, name=f"proj_{i}") for i in range(1, self.num_layers)
            ]
            self.rnns = [
                nn.RNN(ProjectedLSTMCell(self.hidden), unroll=self.unroll, name=f"rnn_{i}")
                for i in range(self.num_layers)
            ]
        else:
            self.rnns = [
                nn.RNN(nn.OptimizedLSTMCell(self.hidden), unroll=self.unroll, name=f"rnn_{i}")
                for i in range(self.num_layers)
            ]
        self.drop = nn.Dropout(self.dropout)
        self.head = nn.Dense(2, name="head")

    def hidden_states(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """The top layer's hidden state at every timestep, BxTxH (causal by construction)."""
        if self.precompute_input:
            gates_BxTx4H = self.seq_proj(seq_BxTx5) + self.feat_proj(feats_BxF)[:, None, :]
            h_BxTxH: jax.Array = self.rnns[0](gates_BxTx4H)  # type: ignore[assignment]
            for proj, rnn in zip(self.layer_proj, self.rnns[1:], strict=True):
                h_BxTxH = rnn(proj(self.drop(h_BxTxH, deterministic=deterministic)))  # type: ignore[assignment]
            return h_BxTxH
        steps = seq_BxTx5.shape[1]
        feats_BxTxF = jnp.broadcast_to(
            feats_BxF[:, None, :], (feats_BxF.shape[0], steps, feats_BxF.shape[-1])
        )
        x_BxTxH = jnp.concatenate([seq_BxTx5, feats_BxTxF], axis=-1)
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x_BxTxH = self.drop(x_BxTxH, deterministic=deterministic)
            x_BxTxH = rnn(x_BxTxH)  # type: ignore[assignment]
        return x_BxTxH

    def __call__(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        h_BxTxH = self.hidden_states(seq_BxTx5, feats_BxF, deterministic)
        last_BxH = self.drop(h_BxTxH[:, -1], deterministic=deterministic)
        return self.head(last_BxH)

    def logits_per_position(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """Logits as if each position were the prediction point, BxTx2 (used to test causality)."""
        return self.head(self.hidden_states(seq_BxTx5, feats_BxF, deterministic))
