"""The causal Transformer classifier: pre-LayerNorm encoder over the window, head at the last step.

The window steps and the 86 engineered features have separate embeddings. By default
(`feature_join="add"`) the feature embedding is added to every position's embedding, the same
information the LSTM gets by concatenating the features to every step. `feature_join="token"`
instead prepends one conditioning token built from the features; the causal mask lets every position
attend to it, and it is dropped before the head. Both only use information available at the
prediction point (the features are those of the window's last candle).

The classifier reads only the last position, so the LAST block computes its query, attention
row, feed-forward and LayerNorms for that one position (`last_only`); keys and values still cover
the whole window. The result is identical to running every position (a test checks it against
`logits_per_position`) and the last block costs ~1/T of its attention and feed-forward work: this
is what puts the train step ahead of the PyTorch reference, which computes all T outputs.

The attention itself (`attention_core`) has a hand-written backward pass: the autodiff one of the
masked softmax was the most expensive part of a train step on XLA CPU.

Attention weights are sown into the `intermediates` collection only when `sow_attention=True`
(see `attention_weights`), so the training path never materialises them.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxtrader.models.archs import TransformerConfig


def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
    """The fixed sin/cos position table of "Attention is all you need", length x d_model."""
    pos_Tx1 = np.arange(length, dtype=np.float32)[:, None]
    rates = np.exp(-np.log(10_000.0) * np.arange(0, d_model, 2, dtype=np.float32) / d_model)
    table = np.zeros((length, d_model), np.float32)
    table[:, 0::2] = np.sin(pos_Tx1 * rates)
    table[:, 1::2] = np.cos(pos_Tx1 * rates[: d_model // 2])
    return table


class LearnedPositions(nn.Module):
    """A trained position table; its length is the window length W seen at initialisation."""

    d_model: int

    @nn.compact
    def __call__(self, length: int) -> jax.Array:
        table: jax.Array = self.param("table", nn.initializers.normal(0.02), (length, self.d_model))
        return table


def _heads_first(x: jax.Array) -> jax.Array:
    """...xTxHxd <-> ...xHxTxd: every batch axis (seeds, batch, heads) then leads the matmuls."""
    return jnp.swapaxes(x, -3, -2)


def _attention_forward(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    q_HxQxd = _heads_first(query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype))
    k_HxTxd, v_HxTxd = _heads_first(key), _heads_first(value)
    scores_HxQxT = q_HxQxd @ jnp.swapaxes(k_HxTxd, -1, -2)
    if mask is not None:
        # An additive bias rather than a select: XLA fuses the add into the matmul's output.
        floor = jnp.finfo(scores_HxQxT.dtype).min
        scores_HxQxT = scores_HxQxT + jnp.where(mask, 0.0, floor).astype(scores_HxQxT.dtype)
    weights_HxQxT = jax.nn.softmax(scores_HxQxT, axis=-1)
    out_HxQxd = weights_HxQxT @ v_HxTxd
    return _heads_first(out_HxQxd), (q_HxQxd, k_HxTxd, v_HxTxd, out_HxQxd, weights_HxQxT)


@jax.custom_vjp
def attention_core(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """`nn.dot_product_attention` (no attention dropout, no bias), ...xQxHxd -> ...xQxHxd, with a
    hand-written backward pass. The same result to float rounding (tests/test_models.py).

    Why: on XLA CPU the autodiff backward of the first block's attention (the only block that
    attends from every position) was the most expensive part of a train step: it differentiates
    the masked softmax through its select, max and division over B x H x T x T, and contracts the
    transposed weights in a slow batched dot. Here the backward is the three-matmul form
    dS = P * (dP - rowsum(dO * O)) (the one FlashAttention uses), and the heads move next to the
    batch so every batch axis leads the matmuls (also under the seeds' `jax.vmap`). Measured on the
    AVX2 machine: attention forward + backward 25.6 -> 18.7 ms (B = 64, T = 100, 4 heads of 16).
    """
    return _attention_forward(query, key, value, mask)[0]


def _attention_bwd(
    residuals: tuple[jax.Array, ...], d_out: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, None]:
    q_HxQxd, k_HxTxd, v_HxTxd, out_HxQxd, weights_HxQxT = residuals
    dout_HxQxd = _heads_first(d_out)
    dv_HxTxd = jnp.swapaxes(weights_HxQxT, -1, -2) @ dout_HxQxd
    dweights_HxQxT = dout_HxQxd @ jnp.swapaxes(v_HxTxd, -1, -2)
    # Softmax backward: rowsum(P * dP) equals rowsum(dO * O), a Q x d product instead of Q x T.
    rowdot_HxQx1 = jnp.sum(dout_HxQxd * out_HxQxd, axis=-1, keepdims=True)
    dscores_HxQxT = weights_HxQxT * (dweights_HxQxT - rowdot_HxQx1)
    scale = jnp.asarray(q_HxQxd.shape[-1] ** -0.5, q_HxQxd.dtype)
    dq_HxQxd = (dscores_HxQxT @ k_HxTxd) * scale
    dk_HxTxd = jnp.swapaxes(dscores_HxQxT, -1, -2) @ q_HxQxd  # q is already scaled
    return _heads_first(dq_HxQxd), _heads_first(dk_HxTxd), _heads_first(dv_HxTxd), None


attention_core.defvjp(_attention_forward, _attention_bwd)


class EncoderBlock(nn.Module):
    """Pre-LN block: x + Drop(MHA(LN x)), then x + Drop(FF(LN x)). No dropout on attention weights:
    it would draw B*H*T*T random bits per layer, the most expensive part of dropout on CPU."""

    d_model: int
    num_heads: int
    ff_dim: int
    dropout: float

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: jax.Array,
        deterministic: bool,
        sow_attention: bool,
        last_only: bool = False,
    ) -> jax.Array:
        """BxTxD -> BxTxD, or Bx1xD (the last position only) when `last_only`."""
        drop = nn.Dropout(self.dropout)
        kv_BxTxD = nn.LayerNorm(name="ln_attn")(x_BxTxD)
        q_BxQxD = kv_BxTxD
        if last_only:
            # Keys and values need every position; the query, the residual and everything after
            # it only the last one (LayerNorm, attention and feed-forward act per position).
            q_BxQxD, x_BxTxD, mask = kv_BxTxD[:, -1:], x_BxTxD[:, -1:], mask[..., -1:, :]
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=self.d_model,
            # Sowing weights (visualisation, off the hot path) needs flax's own attention.
            attention_fn=nn.dot_product_attention if sow_attention else attention_core,
            name="attn",
        )(q_BxQxD, kv_BxTxD, mask=mask, deterministic=True, sow_weights=sow_attention)
        x_BxTxD = x_BxTxD + drop(y, deterministic=deterministic)
        y = nn.LayerNorm(name="ln_ff")(x_BxTxD)
        y = nn.Dense(self.ff_dim, name="ff_in")(y)
        y = nn.gelu(y)
        y = nn.Dense(self.d_model, name="ff_out")(y)
        return x_BxTxD + drop(y, deterministic=deterministic)


class TransformerClassifier(nn.Module):
    """Embeddings + positions, `num_layers` causal pre-LN blocks, final LayerNorm, 2-logit head."""

    d_model: int = TransformerConfig.d_model
    num_heads: int = TransformerConfig.num_heads
    ff_dim: int = TransformerConfig.ff_dim
    num_layers: int = TransformerConfig.num_layers
    dropout: float = TransformerConfig.dropout
    pos_encoding: Literal["sinusoidal", "learned"] = TransformerConfig.pos_encoding
    feature_join: Literal["add", "token"] = TransformerConfig.feature_join

    def setup(self) -> None:
        self.seq_embed = nn.Dense(self.d_model, name="seq_embed")
        self.feat_embed = nn.Dense(self.d_model, name="feat_embed")
        self.blocks = [
            EncoderBlock(self.d_model, self.num_heads, self.ff_dim, self.dropout, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        if self.pos_encoding == "learned":
            self.pos_embed = LearnedPositions(self.d_model, name="pos_embed")
        self.ln_final = nn.LayerNorm(name="ln_final")
        self.drop = nn.Dropout(self.dropout)
        self.head = nn.Dense(2, name="head")

    def _positions(self, length: int) -> jax.Array:
        if self.pos_encoding == "learned":
            return self.pos_embed(length)
        return jnp.asarray(sinusoidal_positions(length, self.d_model))

    def encode(
        self,
        seq_BxTx5: jax.Array,
        feats_BxF: jax.Array,
        deterministic: bool = True,
        sow_attention: bool = False,
        last_only: bool = False,
    ) -> jax.Array:
        """Encoded window, BxTxD: position t depends only on steps <= t (and the features).

        With `last_only`, the last block returns the last position only (Bx1xD)."""
        x_BxTxD = self.seq_embed(seq_BxTx5)
        f_BxD = self.feat_embed(feats_BxF)
        if self.feature_join == "token":
            x_BxTxD = jnp.concatenate([f_BxD[:, None, :], x_BxTxD], axis=1)
        else:
            x_BxTxD = x_BxTxD + f_BxD[:, None, :]
        batch, length = x_BxTxD.shape[:2]
        x_BxTxD = x_BxTxD + self._positions(length)[None]
        x_BxTxD = self.drop(x_BxTxD, deterministic=deterministic)
        mask_Bx1xTxT = nn.make_causal_mask(jnp.ones((batch, length), jnp.int32))
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x_BxTxD = block(x_BxTxD, mask_Bx1xTxT, deterministic, sow_attention, last)
        x_BxTxD = self.ln_final(x_BxTxD)
        if self.feature_join == "token" and not last_only:
            x_BxTxD = x_BxTxD[:, 1:]
        return x_BxTxD

    def __call__(
        self,
        seq_BxTx5: jax.Array,
        feats_BxF: jax.Array,
        deterministic: bool = True,
        sow_attention: bool = False,
    ) -> jax.Array:
        # Sown attention weights are for visualisation: keep every query row there.
        x_BxTxD = self.encode(
            seq_BxTx5, feats_BxF, deterministic, sow_attention, last_only=not sow_attention
        )
        return self.head(self.drop(x_BxTxD[:, -1], deterministic=deterministic))

    def logits_per_position(
        self, seq_BxTx5: jax.Array, feats_BxF: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """Logits as if each position were the prediction point, BxTx2 (used to test causality)."""
        return self.head(self.encode(seq_BxTx5, feats_BxF, deterministic))


def attention_weights(
    model: TransformerClassifier, variables: Any, seq_BxTx5: jax.Array, feats_BxF: jax.Array
) -> jax.Array:
    """Attention weights of every block, LxBxHxTxT (T includes the token with feature_join="token").

    Off the hot path: a separate eager apply that sows the weights, for visualisation only.
    """
    _, state = model.apply(variables, seq_BxTx5, feats_BxF, True, True, mutable=["intermediates"])
    inter = state["intermediates"]
    weights = [inter[f"block_{i}"]["attn"]["attention_weights"][0] for i in range(model.num_layers)]
    return jnp.stack(weights)
