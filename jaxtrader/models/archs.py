"""The architectures' names and hyper-parameters, in one module that imports nothing heavy: the CLI
validates `--arch` from `ARCH_NAMES` and `config.ModelConfig` takes its defaults from the
per-architecture configs without importing JAX or Flax.

`LSTMConfig` and `TransformerConfig` are what `models/lstm.py` and `models/transformer.py` are
built from; the flat `[model]` TOML table (`ModelConfig`) is their union plus `arch`, and
`arch_config` reads one architecture's config out of it. The registry (`models/registry.py`,
`ARCHS`) must list exactly `ARCH_NAMES` (tests/test_models.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from jaxtrader.config import ModelConfig


@dataclass(frozen=True)
class LSTMConfig:
    """The stacked LSTM (`LSTMClassifier`): `num_layers` x `hidden` cells, dropout between them."""

    hidden: int = 128
    num_layers: int = 2
    dropout: float = 0.1
    # `train`'s default batch shards (`train.data_shards`). Not a model field: each shard's
    # gradient runs on its own host device, and one LSTM's ~20 small ops per time step keep only
    # ~1.6 of 2 cores busy through XLA's thread pool; 2 shards ran its step 1.3x faster (Intel
    # Xeon, docs/decisions.md "One LSTM's batch in two shards").
    data_shards: ClassVar[int] = 2


@dataclass(frozen=True)
class TransformerConfig:
    """The causal pre-LN Transformer (`TransformerClassifier`)."""

    d_model: int = 64
    num_heads: int = 4
    ff_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    pos_encoding: Literal["sinusoidal", "learned"] = "sinusoidal"
    # How the 86 features join the sequence: added to every position, or a token.
    feature_join: Literal["add", "token"] = "add"
    # One Transformer already keeps both cores busy: 2 shards ran its step no faster.
    data_shards: ClassVar[int] = 1


ArchConfig = LSTMConfig | TransformerConfig
ARCH_CONFIGS: dict[str, type[LSTMConfig] | type[TransformerConfig]] = {
    "lstm": LSTMConfig,
    "transformer": TransformerConfig,
}
ARCH_NAMES: tuple[str, ...] = tuple(ARCH_CONFIGS)
DEFAULT_ARCH = "transformer"


def arch_config(cfg: ModelConfig) -> ArchConfig:
    """`cfg.arch`'s own config, read from the flat `[model]` table (KeyError for an unknown arch)."""
    cls = ARCH_CONFIGS[cfg.arch]
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})
