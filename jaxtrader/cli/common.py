"""Shared CLI plumbing: the context object, effective config, and option groups reused by commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from jaxtrader.config import AppConfig

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CliState:
    config_path: str | None
    log_format: str
    debug: bool

    def config(self, overrides: Mapping[str, Any] | None = None) -> AppConfig:
        """Defaults < --config FILE < flags (flags left at None do not override)."""
        from jaxtrader.config import load_config, with_overrides

        return with_overrides(load_config(self.config_path), overrides or {})


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
        click.option(
            "--dedupe", is_flag=True, default=None, help="Keep the last of duplicate timestamps."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


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


def checkpoint_options(fn: F) -> F:
    """--checkpoint/--arch/--symbol/--version/--ckpt-dir: how evaluate and trade pick a version."""
    options = [
        click.option(
            "--checkpoint",
            type=str,
            default=None,
            help="A version directory (ckpt/<SYMBOL>/<arch>/v<N>); overrides the options below.",
        ),
        click.option(
            "--arch",
            type=click.Choice(["lstm", "transformer"]),
            default=None,
            help="Architecture to pick (default: any).",
        ),
        click.option(
            "--symbol",
            type=str,
            default=None,
            help="Market symbol, e.g. BTC/USDT (picks the checkpoint; also the ccxt market for trade).",
        ),
        click.option(
            "--version",
            type=str,
            default="best",
            show_default=True,
            help="best (lowest val loss), latest, or a version number.",
        ),
        click.option(
            "--ckpt-dir", type=str, default=None, help="Checkpoint root (default: train.ckpt_dir)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


# The keyword names `rules_options` adds to a command, in `rules_overrides`' order.
RULE_FLAGS = ("fee_bps", "slippage_bps", "threshold", "long_short")


def rules_options(fn: F) -> F:
    """--fee-bps/--slippage-bps/--threshold/--long-short: the `backtest.*` keys (`TradeRules`),
    shared by evaluate and trade. None = "not given", so --config FILE applies."""
    options = [
        click.option("--fee-bps", type=float, default=None, help="Fee per fill in bps [10]."),
        click.option(
            "--slippage-bps",
            type=float,
            default=None,
            help="Slippage per fill in bps, against the trader [0].",
        ),
        click.option(
            "--threshold", type=float, default=None, help="Go long when P(up) > this [0.5]."
        ),
        click.option(
            "--long-short",
            is_flag=True,
            default=None,
            help="Also short when P(up) < 1 - threshold.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


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
