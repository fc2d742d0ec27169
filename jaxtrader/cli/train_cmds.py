"""CLI commands for training and listing model versions."""

from __future__ import annotations

import click

from jaxtrader.cli.common import CliState, data_options, data_overrides


@click.command("train")
@click.option("--arch", type=click.Choice(["lstm", "transformer"]), required=True)
@data_options
@click.pass_obj
def train(state: CliState, arch: str, **data_flags: object) -> None:
    """Train a model on candles (default: the embedded synthetic market)."""
    state.config({"model.arch": arch, **data_overrides(**data_flags)})  # type: ignore[arg-type]
    click.echo(
        "training lands next: the data layer and CLI are in place, `jaxtrader train` is being "
        "built (see issue 4). Try `jaxtrader data info` meanwhile."
    )


COMMANDS: list[click.Command] = [train]
