"""The model registry: `--arch NAME` -> how to build the Flax module from its per-architecture
config (`models/archs.py`), and that config's values as the `ModelConfig` defaults of the arch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from flax import linen as nn

from jaxtrader.config import ModelConfig
from jaxtrader.errors import DeepLearningError
from jaxtrader.models.archs import (
    ARCH_CONFIGS,
    LSTMConfig,
    TransformerConfig,
    arch_config,
)
from jaxtrader.models.lstm import LSTMClassifier
from jaxtrader.models.transformer import TransformerClassifier


def _build_lstm(cfg: ModelConfig) -> nn.Module:
    return LSTMClassifier(**dataclasses.asdict(cast(LSTMConfig, arch_config(cfg))))


def _build_transformer(cfg: ModelConfig) -> nn.Module:
    tcfg = cast(TransformerConfig, arch_config(cfg))
    if tcfg.d_model % tcfg.num_heads:
        raise DeepLearningError(
            f"model.d_model={tcfg.d_model} is not divisible by model.num_heads={tcfg.num_heads}; "
            "pick a head count that divides d_model"
        )
    if tcfg.d_model % 2:
        raise DeepLearningError(f"model.d_model={tcfg.d_model} must be even (sin/cos positions)")
    return TransformerClassifier(**dataclasses.asdict(tcfg))


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its builder and its config (whose values `with_defaults` applies)."""

    name: str
    build: Callable[[ModelConfig], nn.Module]
    config: type[LSTMConfig] | type[TransformerConfig]
    summary: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        """The architecture's ModelConfig values: its config's defaults."""
        return dataclasses.asdict(self.config())


ARCHS: dict[str, ArchSpec] = {
    "lstm": ArchSpec(
        "lstm",
        _build_lstm,
        ARCH_CONFIGS["lstm"],
        "2 x 128 LSTM over [window step ++ features], head on the last hidden state",
    ),
    "transformer": ArchSpec(
        "transformer",
        _build_transformer,
        ARCH_CONFIGS["transformer"],
        "causal pre-LN Transformer (d_model 64, 4 heads, ff 256, 2 layers), head at the last step",
    ),
}


def arch_spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise DeepLearningError(
            f"unknown model.arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}"
        ) from None


def with_defaults(arch: str, **overrides: Any) -> ModelConfig:
    """ModelConfig for `arch`: the registry defaults, then explicit `overrides`."""
    spec = arch_spec(arch)
    return dataclasses.replace(ModelConfig(arch=arch), **{**spec.defaults, **overrides})


def build_model(cfg: ModelConfig) -> nn.Module:
    """The Flax module for `cfg.arch`, configured by `cfg`."""
    return arch_spec(cfg.arch).build(cfg)
