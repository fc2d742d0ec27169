"""Frozen configuration dataclasses, TOML loading with unknown-key checks, and CLI overrides.

Configs are frozen and hashable so they can be closed over in jitted functions and written verbatim
into checkpoint manifests. Precedence: defaults < `--config FILE` < command-line flags.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from jaxtrader.errors import ConfigError
from jaxtrader.models.archs import DEFAULT_ARCH, LSTMConfig, TransformerConfig

GapPolicy = Literal["fill", "drop", "error"]
SEQ_LEN_RANGE = (50, 200)  # window lengths in candles that `dataset.seq_len` may take


@dataclass(frozen=True)
class DataConfig:
    """Where candles come from and how they are cleaned. `path=None` means the embedded market."""

    path: str | None = None
    symbol: str | None = None
    interval: str | None = None
    gaps: GapPolicy = "fill"
    dedupe: bool = False
    synth_rows: int = 20_000
    synth_seed: int = 0


@dataclass(frozen=True)
class DatasetConfig:
    """Labels, splits, scaling and windows."""

    seq_len: int = 100
    horizon: int = 5
    threshold: float = 0.0
    train_frac: float = 0.70
    val_frac: float = 0.15
    scaler_clip: float = 5.0


_TRANSFORMER = TransformerConfig()  # the default arch's values for the fields both archs share


@dataclass(frozen=True)
class ModelConfig:
    """The `[model]` table: `arch` picks the registry entry; the other fields are the union of the
    per-architecture configs (`models/archs.py`, `arch_config` reads one out), defaults from there."""

    arch: str = DEFAULT_ARCH
    dropout: float = _TRANSFORMER.dropout
    num_layers: int = _TRANSFORMER.num_layers
    # LSTM
    hidden: int = LSTMConfig.hidden
    # Transformer
    d_model: int = _TRANSFORMER.d_model
    num_heads: int = _TRANSFORMER.num_heads
    ff_dim: int = _TRANSFORMER.ff_dim
    pos_encoding: Literal["sinusoidal", "learned"] = _TRANSFORMER.pos_encoding
    # How the 86 features join the Transformer's sequence: added to every position, or a token.
    feature_join: Literal["add", "token"] = _TRANSFORMER.feature_join


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping and checkpointing."""

    # Defaults sized so `jaxtrader train --arch transformer` on the embedded 20,000-candle market
    # finishes well inside 5 minutes on a 2-core CPU (docs/decisions.md has the measurements).
    epochs: int = 3
    batch_size: int = 64
    # 512 added ~400 MB of XLA buffers (Transformer attention) to peak RSS; 128 adds ~80 MB.
    eval_batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    patience: int = 2
    class_weights: bool = True
    seed: int = 0
    max_minutes: float | None = None
    ckpt_dir: str = "ckpt"
    max_to_keep: int = 3


@dataclass(frozen=True)
class TradeRules:
    """How P(up) becomes a position and what changing it costs: the one type of these settings,
    used by evaluate's backtest (`EvalSettings`), a trading strategy (`StrategyConfig`) and the
    paper broker. The `[backtest]` TOML table and the --fee-bps/--slippage-bps/--threshold/
    --long-short flags set it; `jaxtrader.decisions` applies it."""

    fee_bps: float = 10.0
    slippage_bps: float = 0.0
    threshold: float = 0.5
    long_short: bool = False

    @property
    def cost_rate(self) -> float:
        """Fee plus slippage per unit of turnover, as a fraction."""
        return (self.fee_bps + self.slippage_bps) / 1e4


@dataclass(frozen=True)
class RiskConfig:
    """Limits of one trading strategy. Fractions are of equity; counts are candles or trades."""

    max_position: float = 1.0
    daily_drawdown: float = 0.05
    breaker_failures: int = 3
    breaker_losses: int = 5
    cooldown: int = 24
    stop_loss: float | None = None
    take_profit: float | None = None
    max_trades_per_day: int | None = None
    model_timeout_ms: float = 500.0


@dataclass(frozen=True)
class AppConfig:
    """The whole effective configuration; one TOML table per field."""

    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backtest: TradeRules = field(default_factory=TradeRules)
    risk: RiskConfig = field(default_factory=RiskConfig)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks (and mildly coerces) a TOML value against a dataclass field annotation."""
    hints = annotation
    origin = typing.get_origin(hints)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hints)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(hints)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if hints is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hints is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hints is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hints is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"unknown key '{where}.{key}' in config; known keys: {', '.join(sorted(known))}"
            )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any]) -> AppConfig:
    """Builds an AppConfig from nested tables, rejecting unknown tables and keys by name."""
    hints = typing.get_type_hints(AppConfig)
    sections = {f.name for f in fields(AppConfig)}
    for key, value in raw.items():
        if key not in sections:
            raise ConfigError(
                f"unknown table '[{key}]' in config; known tables: {', '.join(sorted(sections))}"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' in config must be a table like [{key}]")
    return AppConfig(**{k: _build(hints[k], v, k) for k, v in raw.items()})


def load_config(path: str | Path | None) -> AppConfig:
    """Reads a TOML config file; `None` gives the defaults."""
    if path is None:
        return AppConfig()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; check the --config path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    return from_dict(raw)


def with_overrides(cfg: AppConfig, overrides: Mapping[str, Any]) -> AppConfig:
    """Applies dotted overrides such as {"train.epochs": 3}; `None` values mean "flag not given"."""
    hints = typing.get_type_hints(AppConfig)
    tables: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in hints or key not in {f.name for f in fields(hints[section])}:
            raise ConfigError(f"unknown config key '{dotted}'")
        tables.setdefault(section, {})[key] = value
    updated = {}
    for section, table in tables.items():
        current = getattr(cfg, section)
        sub_hints = typing.get_type_hints(type(current))
        checked = {k: _coerce(v, sub_hints[k], f"{section}.{k}") for k, v in table.items()}
        updated[section] = dataclasses.replace(current, **checked)
    return dataclasses.replace(cfg, **updated)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (for TOML output and manifests); `None` values are kept."""
    return dataclasses.asdict(cfg)


def to_toml(cfg: AppConfig) -> str:
    """Effective config as TOML. TOML has no null, so unset optional values are shown as comments."""
    import tomli_w

    lines: list[str] = []
    for section, table in to_dict(cfg).items():
        present = {k: v for k, v in table.items() if v is not None}
        body = tomli_w.dumps({section: present}).rstrip("\n")
        lines.append(body)
        for k, v in table.items():
            if v is None:
                lines.append(f"# {k} = (unset)")
        lines.append("")
    return "\n".join(lines)
