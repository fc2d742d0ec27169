"""The stacked LSTM classifier: raw window steps joined with the engineered features, 2 logits.

Each timestep's input is the raw candle step concatenated with the 86 features of the prediction
point (broadcast over time), through `nn.RNN(nn.OptimizedLSTMCell)` layers with dropout between them,
and a head on the last hidden state. Those modules define the parameters (and checkpoints) and are
the reference computation (`wavefront=False`).

The default computation (`wavefront=True`) runs the same cells on the same parameters as ONE scan
over T + L - 1 steps in which layer l works on time t - l ("wavefront", as cuDNN does): the layers'
matmuls in a step are independent, so XLA can run them on both cores, and there are half as many
sequential loop steps (for L = 2) in the forward and the backward pass. The features' share of the
first layer's input projection is constant over time, so it is computed once per sequence instead
of once per step. Logits and gradients equal the reference to float tolerance (tests check both);
only the dropout masks between layers are drawn differently (same distribution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxtrader.models.archs import LSTMConfig

Carry = tuple[jax.Array, jax.Array]  # (c_BxH, h_BxH)
Weights = tuple[jax.Array, jax.Array, jax.Array]  # input Ix4H, recurrent Hx4H, bias 4H


def cell_weights(cell_params: Mapping[str, Any]) -> Weights:
    """`nn.OptimizedLSTMCell`'s per-gate parameters as one input kernel, recurrent kernel and bias,
    in the cell's gate order (i, f, g, o)."""
    gates = "ifgo"
    return (
        jnp.concatenate([cell_params[f"i{g}"]["kernel"] for g in gates], axis=-1),
        jnp.concatenate([cell_params[f"h{g}"]["kernel"] for g in gates], axis=-1),
        jnp.concatenate([cell_params[f"h{g}"]["bias"] for g in gates], axis=-1),
    )


def lstm_cell(
    w_cat: jax.Array, bias: jax.Array, carry: Carry, x_BxI: jax.Array, extra_Bx4H: jax.Array | None
) -> Carry:
    """One `nn.OptimizedLSTMCell` step with the input and recurrent kernels stacked, (I+H)x4H: one
    matmul of [x, h] instead of two (train step 184 -> 148 ms, measured); `extra_Bx4H` is an
    input-projection term computed outside the scan."""
    c, h = carry
    z = jnp.concatenate([x_BxI, h], axis=-1) @ w_cat + bias
    if extra_Bx4H is not None:
        z = z + extra_Bx4H
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def wavefront_lstm(
    weights: Sequence[Weights],
    x_TxBxI: jax.Array,
    extra_Bx4H: jax.Array | None,
    keep_masks: Sequence[jax.Array | None],
    all_steps: bool,
) -> jax.Array:
    """The top layer's hidden states (TxBxH, or the last one BxH) of a stacked LSTM, layer l at time
    t - l in step t. `keep_masks[l - 1]` (TxBxH, already scaled by 1/keep) multiplies layer l's
    input, i.e. dropout between layers. Needs T >= L. A prologue and an epilogue run the partial
    wavefronts, so no step computes anything that is thrown away."""
    n_layers, steps = len(weights), x_TxBxI.shape[0]
    hidden = weights[0][1].shape[0]
    stacked = [(jnp.concatenate([w_in, w_rec], axis=0), bias) for w_in, w_rec, bias in weights]
    zeros = jnp.zeros((x_TxBxI.shape[1], hidden), x_TxBxI.dtype)
    carries: list[Carry] = [(zeros, zeros)] * n_layers

    def advance(
        carries: list[Carry], layers: range, x_BxI: jax.Array, keeps: Sequence[jax.Array | None]
    ) -> list[Carry]:
        # Every active layer reads its input from the carries of the previous step.
        new = list(carries)
        for layer in layers:
            if layer == 0:
                new[0] = lstm_cell(*stacked[0], carries[0], x_BxI, extra_Bx4H)
            else:
                inp = carries[layer - 1][1]
                keep = keeps[layer - 1]
                new[layer] = lstm_cell(
                    *stacked[layer], carries[layer], inp if keep is None else inp * keep, None
                )
        return new

    def keeps_at(step: int, layers: range) -> list[jax.Array | None]:
        # Layer l at step t works on time t - l.
        return [
            None if k is None or lyr not in layers else k[step - lyr]
            for lyr, k in enumerate(keep_masks, 1)
        ]

    for step in range(n_layers - 1):  # prologue: layers 0..step
        layers = range(step + 1)
        carries = advance(carries, layers, x_TxBxI[step], keeps_at(step, layers))

    first = n_layers - 1

    def body(carries: list[Carry], xs: tuple[Any, ...]) -> tuple[list[Carry], jax.Array]:
        x_BxI, keeps = xs
        carries = advance(carries, range(n_layers), x_BxI, keeps)
        return carries, carries[-1][1]

    keeps_xs = [
        None if k is None else k[first - lyr : steps - lyr] for lyr, k in enumerate(keep_masks, 1)
    ]
    carries, h_top_SxBxH = jax.lax.scan(body, carries, (x_TxBxI[first:], keeps_xs))
    tail = []
    for step in range(steps, steps + n_layers - 1):  # epilogue: layers step-T+1..L-1
        layers = range(step - steps + 1, n_layers)
        carries = advance(carries, layers, x_TxBxI[0], keeps_at(step, layers))
        tail.append(carries[-1][1])
    if not all_steps:
        return carries[-1][1]
    return jnp.concatenate([h_top_SxBxH, *(t[None] for t in tail)], axis=0)


class LSTMClassifier(nn.Module):
    """`num_layers` LSTMs of width `hidden`, dropout between layers, head on the last hidden state."""

    hidden: int = LSTMConfig.hidden
    num_layers: int = LSTMConfig.num_layers
    dropout: float = LSTMConfig.dropout
    wavefront: bool = True

    def setup(self) -> None:
        self.rnns = [
            nn.RNN(nn.OptimizedLSTMCell(self.hidden), name=f"rnn_{i}")
            for i in range(self.num_layers)
        ]
        self.drop = nn.Dropout(self.dropout)
        self.head = nn.Dense(2, name="head")

    def _layered(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool
    ) -> jax.Array:
        """The reference: one `nn.RNN` per layer over [step ++ features], BxTxH."""
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

    def _wavefront(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool, all_steps: bool
    ) -> jax.Array:
        params = self.variables["params"]
        weights = [cell_weights(params[f"rnn_{i}"]["cell"]) for i in range(self.num_layers)]
        n_seq = seq_BxTx5.shape[-1]
        w_in0, w_rec0, bias0 = weights[0]
        # [step ++ features] @ W == step @ W[:5] + features @ W[5:]; the second term is per sequence.
        extra_Bx4H = feats_BxF @ w_in0[n_seq:]
        weights[0] = (w_in0[:n_seq], w_rec0, bias0)
        batch, steps = seq_BxTx5.shape[:2]
        keeps: list[jax.Array | None] = [None] * (self.num_layers - 1)
        if not deterministic and self.dropout > 0.0:
            keep_p = 1.0 - self.dropout
            rng = self.make_rng("dropout")
            keeps = [
                jax.random.bernoulli(k, keep_p, (steps, batch, self.hidden)) / keep_p
                for k in jax.random.split(rng, self.num_layers - 1)
            ]
        h = wavefront_lstm(weights, jnp.swapaxes(seq_BxTx5, 0, 1), extra_Bx4H, keeps, all_steps)
        return jnp.swapaxes(h, 0, 1) if all_steps else h

    def _top(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool, all_steps: bool
    ) -> jax.Array:
        """The top layer's hidden states, BxTxH (all_steps) or BxH (the last step)."""
        fast = (
            self.wavefront and not self.is_initializing() and seq_BxTx5.shape[1] >= self.num_layers
        )
        if fast:
            return self._wavefront(seq_BxTx5, feats_BxF, deterministic, all_steps)
        h_BxTxH = self._layered(seq_BxTx5, feats_BxF, deterministic)
        return h_BxTxH if all_steps else h_BxTxH[:, -1]

    def hidden_states(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """The top layer's hidden state at every timestep, BxTxH (causal by construction)."""
        return self._top(seq_BxTx5, feats_BxF, deterministic, all_steps=True)

    def __call__(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        last_BxH = self._top(seq_BxTx5, feats_BxF, deterministic, all_steps=False)
        return self.head(self.drop(last_BxH, deterministic=deterministic))

    def logits_per_position(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """Logits as if each position were the prediction point, BxTx2 (used to test causality)."""
        return self.head(self.hidden_states(seq_BxTx5, feats_BxF, deterministic))
