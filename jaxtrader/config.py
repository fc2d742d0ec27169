"""Frozen configuration dataclasses, TOML loading with unknown-key checks, and CLI overrides.

Configs are frozen and hashable so they can be closed over in jitted functions and written verbatim
into checkpoint manifests. Precedence: defaults < `--config FILE` < command-line flags.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from jaxtrader.errors import ConfigError
from jaxtrader.models.archs import (
    ARCH_CONFIGS,
    ARCH_NAMES,
    DEFAULT_ARCH,
    LSTMConfig,
    TransformerConfig,
)

GapPolicy = Literal["fill", "drop", "error"]
SEQ_LEN_RANGE = (50, 200)  # window lengths in candles that `dataset.seq_len` may take


@dataclass(frozen=True)
class Range:
    """The values one numeric config key may take. `RANGES` is the one table both the config
    file's check (`check_values`) and the flags' click types (`cli.common.ranged`) read, so a
    value a flag refuses is refused in a config file too."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):  # TOML's nan and inf pass every comparison below or break it
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a number"
        if self.lo is not None and self.hi is not None:
            if integer and not (self.lo_open or self.hi_open):
                return f"{kind} in {self.lo:g}..{self.hi:g}"
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{kind} in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"
        return kind


_POSITIVE = Range(lo=0, lo_open=True)
_NON_NEGATIVE = Range(lo=0)
_AT_LEAST_ONE = Range(lo=1)
_FRACTION = Range(lo=0, hi=1, lo_open=True, hi_open=True)  # strictly between 0 and 1
_RATE = Range(lo=0, hi=1, hi_open=True)  # 0 allowed, 1 not (dropout, label threshold)
_BPS = Range(lo=0, hi=10_000, hi_open=True)  # decisions.check_settings' fee/slippage bounds

# Dotted key -> allowed values. Optional keys (None = off) are checked only when set.
RANGES: dict[str, Range] = {
    "data.synth_rows": _AT_LEAST_ONE,
    "dataset.seq_len": Range(lo=SEQ_LEN_RANGE[0], hi=SEQ_LEN_RANGE[1]),
    "dataset.horizon": _AT_LEAST_ONE,
    "dataset.threshold": _RATE,
    "dataset.train_frac": _FRACTION,
    "dataset.val_frac": _FRACTION,
    "dataset.scaler_clip": _POSITIVE,
    "model.dropout": _RATE,
    "model.num_layers": _AT_LEAST_ONE,
    "model.hidden": _AT_LEAST_ONE,
    "model.d_model": Range(lo=2),  # even, for the sin/cos positions (checked with num_heads)
    "model.num_heads": _AT_LEAST_ONE,
    "model.ff_dim": _AT_LEAST_ONE,
    "train.epochs": _AT_LEAST_ONE,
    "train.batch_size": _AT_LEAST_ONE,
    "train.eval_batch_size": _AT_LEAST_ONE,
    "train.data_shards": _AT_LEAST_ONE,
    "train.learning_rate": _POSITIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.warmup_steps": _NON_NEGATIVE,
    "train.grad_clip": _POSITIVE,
    "train.patience": _AT_LEAST_ONE,
    "train.max_minutes": _POSITIVE,
    "train.max_to_keep": _AT_LEAST_ONE,
    "backtest.fee_bps": _BPS,
    "backtest.slippage_bps": _BPS,
    "backtest.threshold": _FRACTION,
    "risk.max_position": Range(lo=0, hi=1, lo_open=True),  # a fraction of equity: no leverage
    "risk.daily_drawdown": Range(lo=0, hi=1, lo_open=True),
    "risk.breaker_failures": _AT_LEAST_ONE,
    "risk.breaker_losses": _AT_LEAST_ONE,
    "risk.cooldown": _NON_NEGATIVE,
    "risk.stop_loss": _FRACTION,  # at 1 or more a long's stop could never fire
    "risk.take_profit": _POSITIVE,
    "risk.max_trades_per_day": _AT_LEAST_ONE,
    "risk.max_neutral_hold": _NON_NEGATIVE,
    "risk.model_timeout_ms": _POSITIVE,
}


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
    # Each batch's gradient as the sum of this many shards, each with its own dropout key, spread
    # over the host devices (`train.sharded_train_step`); unset: the architecture's default
    # (`data_shards(cfg)`). The trained numbers depend on it, never on the machine's cores.
    data_shards: int | None = None


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
    # A day of 1h candles: after a long feed gap the model has no signal for its whole history
    # (min_history() + seq_len: 553 candles by default), and holding through that is about 23
    # days of unmanaged exposure.
    max_neutral_hold: int = 24
    model_timeout_ms: float = 500.0


# `trade`'s flag for each RiskConfig field, in --help order: (flag, field, what a value must be,
# help). trade builds its options from it and `risk.check_limits` names the flag and the rule in
# its refusals; the bounds themselves are RANGES'.
RISK_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--max-position", "max_position", "in (0, 1] (a fraction of equity; no leverage)",
     "Max |position| as a fraction of equity [1.0]."),
    ("--daily-drawdown", "daily_drawdown", "in (0, 1] (a fraction of the day's equity)",
     "Close and halt entries for the UTC day after this loss from the day's start [0.05]."),
    ("--breaker-failures", "breaker_failures", "at least 1",
     "Consecutive model failures that trip the circuit breaker [3]."),
    ("--breaker-losses", "breaker_losses", "at least 1",
     "Consecutive losing trades that trip the circuit breaker [5]."),
    ("--cooldown", "cooldown", "0 or more candles",
     "Candles without entries after the breaker trips [24]."),
    ("--stop-loss", "stop_loss", "in (0, 1) (a fraction of the entry price; leave it out for off)",
     "Exit at this loss from the average entry, as a fraction [off]."),
    ("--take-profit", "take_profit",
     "a positive fraction of the entry price (leave it out for off)",
     "Exit at this gain from the average entry, as a fraction [off]."),
    ("--max-trades-per-day", "max_trades_per_day", "at least 1 (leave it out for off)",
     "Orders per UTC day, exits included; once reached, only orders that reduce the position pass [off]."),
    ("--max-neutral-hold", "max_neutral_hold", "0 (off) or more candles",
     "Close a position after this many candles in a row without a model signal [24; 0: off]."),
    ("--model-timeout-ms", "model_timeout_ms", "a positive number of milliseconds",
     "Per-candle model budget; slower is a neutral signal [500]."),
)  # fmt: skip


@dataclass(frozen=True)
class AppConfig:
    """The whole effective configuration; one TOML table per field."""

    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backtest: TradeRules = field(default_factory=TradeRules)
    risk: RiskConfig = field(default_factory=RiskConfig)


def is_integer_key(dotted: str) -> bool:
    """Whether config key `dotted` (e.g. "train.epochs") holds an integer rather than a float."""
    section, _, key = dotted.partition(".")
    hint = typing.get_type_hints(typing.get_type_hints(AppConfig)[section])[key]
    return hint is int or int in typing.get_args(hint)


def _check_range(dotted: str, value: Any, source: str | None) -> None:
    allowed = RANGES.get(dotted)
    if allowed is None or value is None or value in allowed:
        return
    where, fix = (f" in config file {source}", "; change it in that file") if source else ("", "")
    raise ConfigError(
        f"{dotted}={value!r}{where} is out of range: it must be "
        f"{allowed.describe(is_integer_key(dotted))}{fix}"
    )


def check_values(cfg: AppConfig, source: str | None = None) -> None:
    """ConfigError for the first value outside `RANGES`, or values that contradict each other, so
    a bad config stops before anything is loaded or written. `source` names the config file."""
    for section in fields(cfg):
        table = getattr(cfg, section.name)
        for f in fields(table):
            _check_range(f"{section.name}.{f.name}", getattr(table, f.name), source)
    where = f" (config file {source})" if source else ""
    d, m = cfg.dataset, cfg.model
    if m.arch not in ARCH_NAMES:
        raise ConfigError(
            f"model.arch={m.arch!r}{where} is not a registered architecture; choose one of "
            f"{', '.join(sorted(ARCH_NAMES))}"
        )
    if d.train_frac + d.val_frac >= 1.0:
        raise ConfigError(
            f"dataset.train_frac + dataset.val_frac = {d.train_frac + d.val_frac:g} leaves no "
            f"test data{where}; keep the sum below 1"
        )
    check_data_shards(cfg, where)
    # The Transformer's values, checked whatever model.arch is: a study or a later --arch flag
    # may build a Transformer from the same file.
    if m.d_model % m.num_heads or m.d_model % 2:
        raise ConfigError(
            f"model.d_model={m.d_model} must be even and divisible by model.num_heads="
            f"{m.num_heads}{where}; pick an even d_model and a head count that divides it"
        )


def check_data_shards(cfg: AppConfig | TrainConfig, where: str = "") -> None:
    """ConfigError unless an explicit `train.data_shards` divides `train.batch_size` (`train` checks
    the merged file and flags with this too: either can set one of the two; `train.fit` checks the
    TrainConfig it is handed)."""
    t = cfg.train if isinstance(cfg, AppConfig) else cfg
    shards = t.data_shards
    if shards is not None and t.batch_size % shards:
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be a multiple of train.data_shards="
            f"{shards}{where} (each batch is split into that many equal shards); pick a batch size "
            "divisible by it (--batch-size), or set train.data_shards = 1 (--data-shards 1)"
        )


def data_shards(cfg: AppConfig) -> int:
    """How many shards `train` splits each batch into: `train.data_shards`, or when it is unset the
    architecture's own default (`LSTMConfig.data_shards`, `TransformerConfig.data_shards`) when
    it divides the batch size, else 1 (an explicit value that does not divide it is refused by
    `check_values`)."""
    if cfg.train.data_shards is not None:
        return cfg.train.data_shards
    default = ARCH_CONFIGS[cfg.model.arch].data_shards
    return default if cfg.train.batch_size % default == 0 else 1


def _shown(value: Any) -> str:
    """`value` as the TOML file spells it (`true`, not Python's `True`) where the two differ."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return repr(value)


def _toml_kind(value: Any) -> str:
    """The TOML type of a parsed value, in the words of the TOML spec."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _allowed(annotation: Any, dotted: str) -> str:
    """What key `dotted` of type `annotation` may hold, in the words of the range errors."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_allowed(a, dotted) for a in arms)
    if typing.get_origin(annotation) is Literal:
        return f"one of {', '.join(map(repr, typing.get_args(annotation)))}"
    if annotation is bool:
        return "true or false"
    if annotation is int or annotation is float:
        allowed = RANGES.get(dotted, Range())
        return allowed.describe(annotation is int)
    if annotation is str:
        return "a string"
    return getattr(annotation, "__name__", str(annotation))


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` has the type `annotation` asks for. bool is an int subclass in Python but
    not in TOML, so `true` is refused where a number is asked for; an integer is a fine float."""
    if isinstance(value, bool) or annotation is bool:
        return isinstance(value, bool) and annotation is bool
    if annotation is int:
        return isinstance(value, int)
    if annotation is float:
        return isinstance(value, int | float)
    if annotation is str or typing.get_origin(annotation) is Literal:
        return isinstance(value, str)
    return True


def _coerce(value: Any, annotation: Any, dotted: str, source: str | None = None) -> Any:
    """Checks (and mildly coerces) a TOML value against a dataclass field annotation. A wrong type
    is a ConfigError in the form of `_check_range`'s: the key, the value, where it came from
    (`source`, e.g. "config file c.toml"; None for flags) and what the key may hold."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and (
        type(None) in args
    )
    if value is None and optional:
        return None
    arms = [a for a in args if a is not type(None)] if optional else [annotation]
    arm = next((a for a in arms if _fits(value, a)), None)
    if arm is not None and typing.get_origin(arm) is Literal and value not in typing.get_args(arm):
        problem = "is not one of the choices"
    elif arm is None:
        problem = f"is {_toml_kind(value)}"
    else:
        return float(value) if arm is float else value
    where, fix = (f" in {source}", "; change it in that file") if source else ("", "")
    # TOML has no null: an optional key is unset by leaving it out of the file.
    unset = " (or leave the key out)" if optional and source else ""
    raise ConfigError(
        f"{dotted}={_shown(value)}{where} {problem}: it must be "
        f"{_allowed(annotation, dotted)}{unset}{fix}"
    )


def _build(cls: type, table: Mapping[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in table.items():
        if key in known:
            continue
        # `[train.extra]` arrives as one more entry of [train]: it is a table, not a key.
        if isinstance(value, Mapping):
            raise ConfigError(
                f"unknown table '[{where}.{key}]' in {source}; [{where}] holds keys only: "
                f"{', '.join(sorted(known))}"
            )
        raise ConfigError(
            f"unknown key '{where}.{key}' in {source}; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}", source) for k, v in table.items()}
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any], source: str = "config") -> AppConfig:
    """Builds an AppConfig from nested tables, rejecting unknown tables and keys by name (values
    are not range-checked: manifests of older runs are read with this too; see `check_values`).
    `source` names where the tables came from in messages."""
    hints = typing.get_type_hints(AppConfig)
    sections = sorted(f.name for f in fields(AppConfig))
    for key, value in raw.items():
        if key in sections and not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' in {source} must be a table like [{key}]")
        if not isinstance(value, Mapping):
            owners = [s for s in sections if key in {f.name for f in fields(hints[s])}]
            hint = f"put it under [{owners[0]}]" if owners else "put it under its table"
            raise ConfigError(
                f"'{key}' in {source} is a key outside any table; {hint} (tables: "
                f"{', '.join(f'[{s}]' for s in sections)})"
            )
        if key not in sections:
            # A decision policy is not part of the config: it is its own file.
            elsewhere = (
                " (a decision policy is a file of its own, given as --policy FILE)"
                if key == "policy"
                else ""
            )
            raise ConfigError(
                f"unknown table '[{key}]' in {source}; known tables: {', '.join(sections)}"
                f"{elsewhere}"
            )
    return AppConfig(**{k: _build(hints[k], v, k, source) for k, v in raw.items()})


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
    cfg = from_dict(raw, f"config file {p}")
    check_values(cfg, str(p))
    return cfg


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
