"""The model registry: `--arch NAME` -> how to build the module and its default config overrides.

Every model is called as `model.apply(variables, seq_BxTx5, feats_BxF, deterministic=...,
rngs={"dropout": key}) -> logits_Bx2` and offers `logits_per_position(...) -> logits_BxTx2` (the
logit each position would give as the prediction point), which the causality tests use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flax import linen as nn

from jaxtrader.config import ModelConfig
from jaxtrader.errors import DeepLearningError
from jaxtrader.models.lstm import LSTMClassifier
from jaxtrader.models.transformer import TransformerClassifier


def _build_lstm(cfg: ModelConfig) -> nn.Module:
    return LSTMClassifier(hidden=cfg.hidden, num_layers=cfg.num_layers, dropout=cfg.dropout)


def _build_transformer(cfg: ModelConfig) -> nn.Module:
    if cfg.d_model % cfg.num_heads:
        raise DeepLearningError(
            f"model.d_model={cfg.d_model} is not divisible by model.num_heads={cfg.num_heads}; "
            "pick a head count that divides d_model"
        )
    if cfg.d_model % 2:
        raise DeepLearningError(f"model.d_model={cfg.d_model} must be even (sin/cos positions)")
    return TransformerClassifier(
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        ff_dim=cfg.ff_dim,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
        pos_encoding=cfg.pos_encoding,
        feature_join=cfg.feature_join,
    )


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its builder and the ModelConfig values it defaults to (`with_defaults`)."""

    name: str
    build: Callable[[ModelConfig], nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


ARCHS: dict[str, ArchSpec] = {
    "lstm": ArchSpec(
        "lstm",
        _build_lstm,
        {"hidden": 128, "num_layers": 2, "dropout": 0.1},
        "2 x 128 LSTM over [window step ++ features], head on the last hidden state",
    ),
    "transformer": ArchSpec(
        "transformer",
        _build_transformer,
        {"d_model": 64, "num_heads": 4, "ff_dim": 256, "num_layers": 2, "dropout": 0.1},
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


__all__ = ["ARCHS", "ArchSpec", "arch_spec", "build_model", "with_defaults"]
