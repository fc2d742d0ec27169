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
