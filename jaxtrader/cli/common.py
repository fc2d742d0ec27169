"""Shared CLI plumbing: the context object and effective config; the option groups reused by
commands (data, checkpoint, rules, training knobs, batch/window, executor with `prepare_executor`,
policy with `refuse_policy_conflicts`); `ranged` (a flag's bounds from `config.RANGES`);
`HintGlobalOptions`; and the output-path refusals (`refuse_overwriting`, `refuse_inputs_inside`,
`refuse_non_csv`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from jaxtrader.config import RANGES, AppConfig, is_integer_key
from jaxtrader.logs import notice
from jaxtrader.models.archs import ARCH_NAMES

F = TypeVar("F", bound=Callable[..., Any])

# The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130


class HintGlobalOptions(click.Command):
    """A command that, given one of the group's own options (--config, --log-format, ...) after
    its name, says where it goes instead of click's bare "No such option"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            root = ctx.find_root()
            if root is ctx or e.option_name not in {
                name for p in root.command.params for name in getattr(p, "opts", ())
            }:
                raise
            raise click.NoSuchOption(
                e.option_name,
                f"{e.message} Global options such as {e.option_name} go before the command: "
                f"{root.info_name or 'jaxtrader'} {e.option_name} ... {_below_root(ctx)} ...",
                ctx=ctx,
            ) from None


def _below_root(ctx: click.Context) -> str:
    """The command's path under the root group: "train", "data info"."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


class HintGlobalOptionsGroup(click.Group):
    """A command group whose subcommands are `HintGlobalOptions` (data info, models list, ...)."""

    command_class = HintGlobalOptions


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without NaN and infinity, which compare False against every bound and
    would pass it (a config file's `Range` already refuses them)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def ranged(key: str) -> click.ParamType:
    """The click type of a flag that sets config `key`: its bounds come from `config.RANGES`,
    the table `load_config` checks config files against, so the flag and the file agree."""
    r = RANGES[key]
    if is_integer_key(key):
        lo = None if r.lo is None else int(r.lo)
        hi = None if r.hi is None else int(r.hi)
        return click.IntRange(lo, hi, min_open=r.lo_open, max_open=r.hi_open)
    return FiniteFloatRange(r.lo, r.hi, min_open=r.lo_open, max_open=r.hi_open)


def config_default(key: str) -> Any:
    """The built-in default of dotted config key `key` (for --help texts)."""
    section, _, name = key.partition(".")
    return getattr(getattr(AppConfig(), section), name)


def _stacked(fn: F, options: list[Callable[[Any], Any]]) -> F:
    """Applies click options so they list in `options` order in --help."""
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class CliState:
    config_path: str | None
    log_format: str
    debug: bool

    def config(self, overrides: Mapping[str, Any] | None = None) -> AppConfig:
        """Defaults < --config FILE < flags (flags left at None do not override)."""
        from jaxtrader.config import load_config, with_overrides

        return with_overrides(load_config(self.config_path), overrides or {})


# --dedupe, one option for `data_options`, evaluate and trade: the data layer's duplicate-
# timestamp error names this flag, so each command that reads candle files must have it.
dedupe_option = click.option(
    "--dedupe", is_flag=True, default=None, help="Keep the last of duplicate timestamps."
)


def data_options(fn: F) -> F:
    """--data/--symbol/--interval/--gaps/--dedupe, mapped onto the `data.*` config keys."""
    options = [
        click.option(
            "--data",
            "data_path",
            type=str,
            default=None,
            help="Candle file (CSV, CSV.GZ, Parquet, Binance kline CSV, freqtrade JSON). "
            "Default: the embedded synthetic market.",
        ),
        click.option("--symbol", type=str, default=None, help="Market symbol, e.g. BTC/USDT."),
        click.option("--interval", type=str, default=None, help="Candle interval, e.g. 1h, 5m."),
        click.option(
            "--gaps",
            type=click.Choice(["fill", "drop", "error"]),
            default=None,
            help="Missing candles: fill (flagged), drop, or error. Default: fill.",
        ),
        dedupe_option,
    ]
    return _stacked(fn, options)


def data_overrides(
    data_path: str | None,
    symbol: str | None,
    interval: str | None,
    gaps: str | None,
    dedupe: bool | None,
) -> dict[str, Any]:
    return {
        "data.path": data_path,
        "data.symbol": symbol,
        "data.interval": interval,
        "data.gaps": gaps,
        "data.dedupe": dedupe or None,
    }


# --symbol as each command reads it: evaluate only picks the model with it, trade also trades it
# (one shared text told evaluate's users about a ccxt market evaluate never reads).
_SYMBOL_HELP = {
    "evaluate": "Market whose model to pick, e.g. BTC/USDT (needed when --ckpt-dir holds models "
    "of several markets and --data does not name one).",
    "trade": "Market symbol, e.g. BTC/USDT: picks the model (needed when --ckpt-dir holds models "
    "of several markets and the replay file does not name one), and the market a ccxt: feed "
    "trades (default: the model's).",
}


def checkpoint_options(command: str) -> Callable[[F], F]:
    """--checkpoint/--arch/--symbol/--version/--include-partial/--ckpt-dir: how `command`
    (evaluate or trade) picks a version."""

    def decorate(fn: F) -> F:
        options = [
            click.option(
                "--checkpoint",
                type=str,
                default=None,
                help="A version directory (ckpt/<SYMBOL>/<arch>/v<N>) to use instead of "
                "searching with the options below (an --arch or --version number that contradicts "
                "it is refused).",
            ),
            click.option(
                "--arch",
                type=click.Choice(ARCH_NAMES),
                default=None,
                help="Architecture to pick (default: any).",
            ),
            click.option("--symbol", type=str, default=None, help=_SYMBOL_HELP[command]),
            click.option(
                "--version",
                type=str,
                default="best",
                show_default=True,
                help="best (lowest val loss among runs that finished), latest, or a version "
                "number.",
            ),
            click.option(
                "--include-partial",
                is_flag=True,
                default=False,
                help="Let --version best also pick runs stopped early by Ctrl-C or --max-minutes.",
            ),
            click.option(
                "--ckpt-dir",
                type=str,
                default=None,
                help="Checkpoint root (default: train.ckpt_dir).",
            ),
        ]
        return _stacked(fn, options)

    return decorate


# The keyword names `rules_options` adds to a command, in `rules_overrides`' order.
RULE_FLAGS = ("fee_bps", "slippage_bps", "threshold", "long_short")


# --threshold as each command applies it: evaluate reports the plain rule beside any other
# policy, trade refuses it under one (`trading.runner.trade_policy`).
_THRESHOLD_HELP = {
    "evaluate": "The plain rule: long when P(up) > this [0.5]. The strategy under --policy "
    "plain; beside another policy, the rule it is compared with.",
    "trade": "The plain rule: long when P(up) > this [0.5]. Traded under --policy plain, or "
    "under --policy checkpoint when the checkpoint records no policy (refused where a policy "
    "is in force).",
}


def rules_options(command: str) -> Callable[[F], F]:
    """--fee-bps/--slippage-bps/--threshold/--long-short: the `backtest.*` keys (`TradeRules`),
    shared by evaluate and trade (`command`, for --threshold's help). None = "not given", so
    --config FILE applies."""

    def decorate(fn: F) -> F:
        options = [
            click.option("--fee-bps", type=float, default=None, help="Fee per fill in bps [10]."),
            click.option(
                "--slippage-bps",
                type=float,
                default=None,
                help="Slippage per fill in bps, against the trader [0].",
            ),
            click.option("--threshold", type=float, default=None, help=_THRESHOLD_HELP[command]),
            click.option(
                "--long-short",
                is_flag=True,
                default=None,
                help="Also go short: below 1 - threshold under the plain rule, below 1 - enter "
                "under a policy.",
            ),
        ]
        return _stacked(fn, options)

    return decorate


def rules_overrides(
    fee_bps: float | None,
    slippage_bps: float | None,
    threshold: float | None,
    long_short: bool | None,
) -> dict[str, Any]:
    return {
        "backtest.fee_bps": fee_bps,
        "backtest.slippage_bps": slippage_bps,
        "backtest.threshold": threshold,
        "backtest.long_short": long_short or None,  # an absent flag keeps the config value
    }


def check_arch(arch: str) -> None:
    """Validates against the architecture names (`models/archs.py`), which import no Flax."""
    from jaxtrader.errors import ConfigError

    if arch not in ARCH_NAMES:
        raise ConfigError(
            f"--arch {arch!r} is not a registered architecture; choose one of "
            f"{', '.join(sorted(ARCH_NAMES))}"
        )


def train_knob_options(fn: F) -> F:
    """--lr/--weight-decay/--patience/--dropout/--threshold: the common training knobs, shared by
    `train` and `config show` (so the effective config of a command line can be printed)."""
    return knob_options()(fn)


# (flag, config key, help before the key and its default): the common training knobs.
_KNOBS = (
    ("--lr", "train.learning_rate", "Peak learning rate"),
    ("--weight-decay", "train.weight_decay", "AdamW weight decay"),
    ("--patience", "train.patience", "Early stopping: epochs without a better val loss"),
    ("--dropout", "model.dropout", "Dropout rate"),
    (
        "--threshold",
        "dataset.threshold",
        "Label threshold: 'up' means close[t+h] > close[t] * (1 + threshold)",
    ),
)


def knob_options(defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """`train_knob_options` for a command with its own defaults for some keys (walkforward's
    `WF_DEFAULTS`), so its --help shows the value that command uses."""

    def decorate(fn: F) -> F:
        options = [
            click.option(
                flag,
                type=ranged(key),
                default=None,
                help=f"{text} ({key}) [{(defaults or {}).get(key, config_default(key)):g}].",
            )
            for flag, key, text in _KNOBS
        ]
        return _stacked(fn, options)

    return decorate


def train_knob_overrides(
    lr: float | None,
    weight_decay: float | None,
    patience: int | None,
    dropout: float | None,
    threshold: float | None,
) -> dict[str, Any]:
    return {
        "train.learning_rate": lr,
        "train.weight_decay": weight_decay,
        "train.patience": patience,
        "model.dropout": dropout,
        "dataset.threshold": threshold,
    }


def executor_options(fn: F) -> F:
    """--executor/--ray-address: where walk-forward folds run (`jaxtrader.executors`)."""
    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="Run the folds in this process, or one Ray task per fold "
            "(pip install 'jaxtrader[ray]'). Outputs are written by this process either way.",
        ),
        click.option(
            "--ray-address",
            type=str,
            default=None,
            metavar="auto|HOST:PORT",
            help="Ray cluster for --executor ray (`ray start --head`); default: start Ray here.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def note_unused_data_shards(cfg: AppConfig, command: str) -> None:
    """A note when a config sets train.data_shards for a seed command, which does not use it."""
    shards = cfg.train.data_shards
    if shards is not None and shards > 1:
        notice(
            "config_note",
            f"note: train.data_shards={shards} applies to `train` only; {command} splits its K "
            "seeds over the cores instead, each seed with its whole batch",
        )


def prepare_executor(executor: str, seeds: int) -> None:
    """Before JAX starts: with the local executor, the K seeds split over the cores and their heap
    settings (`runtime.prepare_seed_training`); Ray fold workers run one XLA thread each
    (`executors.worker_env`). A malformed $JAXTRADER_MALLOC stops either here, as one line. A
    local run that stays on glibc because tcmalloc is missing says so, once, on stderr."""
    from jaxtrader.runtime import malloc_choice, prepare_seed_training, tcmalloc_advice

    if executor == "local":
        prepare_seed_training(seeds)  # checks $JAXTRADER_MALLOC too
        if (advice := tcmalloc_advice()) is not None:
            notice("allocator_advice", advice)
    else:
        malloc_choice()


def policy_options(fn: F) -> F:
    """--policy auto|plain|FILE.toml and --enter/--exit/--min-hold: how P(up) becomes a position."""
    options = [
        click.option(
            "--policy",
            "policy_spec",
            type=str,
            default="auto",
            show_default=True,
            help="auto: the grid policy with the best net Sharpe on the VALIDATION split; plain: "
            "long above --threshold, re-decided every candle; or a TOML file with enter, exit, "
            "min_hold, max_position.",
        ),
        click.option("--enter", type=float, default=None, help="Manual policy: enter above this."),
        click.option(
            "--exit", "exit_", type=float, default=None, help="Manual policy: leave at or below."
        ),
        click.option(
            "--min-hold",
            type=click.IntRange(min=1),
            default=None,
            help="Manual policy: decisions a position is held at least [label horizon].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def refuse_policy_conflicts(
    policy_spec: str, enter: float | None, exit_: float | None, min_hold: int | None
) -> None:
    """ConfigError when --policy auto or plain is given together with --enter/--exit/--min-hold.
    Those flags make a manual rule (from --threshold and the label horizon where unset), which
    replaced the named policy without a word: auto's choice on the val split, or plain's one
    threshold re-decided every candle. With a TOML file they override its values, as documented.
    Only a --policy typed by the user conflicts: auto is also the default, and the flags alone
    are how a manual rule is asked for."""
    from click.core import ParameterSource

    from jaxtrader.errors import ConfigError

    given = [
        f"{flag} {value:g}"
        for flag, value in (("--enter", enter), ("--exit", exit_), ("--min-hold", min_hold))
        if value is not None
    ]
    source = click.get_current_context().get_parameter_source("policy_spec")
    if not given or policy_spec not in ("auto", "plain") or source is ParameterSource.DEFAULT:
        return
    what = (
        "chooses enter/exit/min-hold on the validation split"
        if policy_spec == "auto"
        else "is long above --threshold, re-decided every candle"
    )
    instead = "let auto choose" if policy_spec == "auto" else "use the plain rule"
    raise ConfigError(
        f"--policy {policy_spec} {what}, which contradicts {' '.join(given)}; drop --policy "
        f"{policy_spec} to use the manual rule, or drop {' and '.join(g.split()[0] for g in given)} "
        f"to {instead}"
    )


def batch_window_options(fn: F) -> F:
    """--batch-size/--seq-len/--horizon: the batch and window shape, shared by `train` and
    `walkforward` (`study` reuses walkforward's option objects)."""
    options = [
        click.option(
            "--batch-size",
            type=ranged("train.batch_size"),
            default=None,
            help="Training batch size.",
        ),
        click.option(
            "--seq-len", type=ranged("dataset.seq_len"), default=None, help="Window length W."
        ),
        click.option(
            "--horizon",
            type=ranged("dataset.horizon"),
            default=None,
            help="Label horizon in candles.",
        ),
    ]
    return _stacked(fn, options)


def echo(message: str, *, err: bool, event: str, **fields: Any) -> None:
    """`click.echo`, except that a line for stderr under `--log-format json` is a JSON record
    (`logs.notice`): stdout keeps the command's result, stderr stays parseable."""
    if err:
        notice(event, message, logging.INFO, **fields)
    else:
        click.echo(message)


def refuse_non_csv(outputs: Mapping[str, str | None]) -> None:
    """ConfigError for a CSV output flag whose name does not end in .csv or .csv.gz: the file was
    written as CSV text anyway (a .parquet that no Parquet reader opens). Called after
    `refuse_overwriting`, whose message says more when both apply."""
    from jaxtrader.errors import ConfigError

    for flag, value in outputs.items():
        if value is not None and not value.lower().endswith((".csv", ".csv.gz")):
            raise ConfigError(
                f"{flag} {value}: the file is a CSV; name it .csv (or .csv.gz, compressed)"
            )


def refuse_inputs_inside(
    out_flag: str, out: str | None, inputs: Sequence[tuple[str, str | None]], command: str
) -> None:
    """ConfigError when an input file lies in the run directory `out` that `command` writes its
    fixed file names into (predictions.csv, report.json, plan.json, fold_*/): `walkforward
    --data runs/x/predictions.csv --out runs/x` would overwrite the candles it reads."""
    from pathlib import Path

    from jaxtrader.errors import ConfigError

    if out is None:
        return
    folder = Path(out).expanduser().resolve()
    for in_flag, given in inputs:
        if given is not None and folder in Path(given).expanduser().resolve().parents:
            raise ConfigError(
                f"{in_flag} {given} lies inside {out_flag} {out}, which {command} writes into; "
                f"pass another {out_flag}, or move the file out of it"
            )


def refuse_overwriting(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None]) -> None:
    """ConfigError, before any work, when an output flag names what an input reads (the same
    file, or a path inside an input folder such as a checkpoint version) or what another output
    flag names: writing it would destroy a state file, a manifest or the candles, with exit 0.
    An input is keyed by its flag, or by a description when the command found it itself (the
    version --arch picked, the data file its manifest names)."""
    from pathlib import Path

    from jaxtrader.errors import ConfigError

    def real(p: str) -> Path:
        return Path(p).expanduser().resolve()

    taken: dict[Path, str] = {}
    for flag, out in outputs.items():
        if out is None:
            continue
        o = real(out)
        for in_flag, given in inputs.items():
            if given is not None and (o == real(given) or real(given) in o.parents):
                raise ConfigError(
                    f"{flag} {out} would overwrite what {in_flag} {given} holds; write it "
                    "somewhere else"
                )
        if o in taken:
            raise ConfigError(f"{taken[o]} and {flag} both name {out}; give each its own path")
        taken[o] = flag
