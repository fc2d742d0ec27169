"""The models: `--arch NAME` -> a Flax module configured by its per-architecture config.

Every model is called as `model.apply(variables, seq_BxTx5, feats_BxF, deterministic=...,
rngs={"dropout": key}) -> logits_Bx2` and offers `logits_per_position(...) -> logits_BxTx2` (the
logit each position would give as the prediction point), which the causality tests use.

Importing this package is light (names and configs, `models/archs.py`); the registry
(`models/registry.py`: `ARCHS`, `build_model`, `with_defaults`), which imports Flax, loads on first
use of one of its names, so the CLI can check `--arch` without JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jaxtrader.models.archs import (
    ARCH_NAMES,
    DEFAULT_ARCH,
    ArchConfig,
    LSTMConfig,
    TransformerConfig,
    arch_config,
)

if TYPE_CHECKING:
    from jaxtrader.models.registry import ARCHS, ArchSpec, arch_spec, build_model, with_defaults

_REGISTRY_NAMES = frozenset({"ARCHS", "ArchSpec", "arch_spec", "build_model", "with_defaults"})


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from jaxtrader.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "DEFAULT_ARCH",
    "ArchConfig",
    "ArchSpec",
    "LSTMConfig",
    "TransformerConfig",
    "arch_config",
    "arch_spec",
    "build_model",
    "with_defaults",
]
