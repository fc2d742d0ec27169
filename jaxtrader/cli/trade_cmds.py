"""CLI commands for trade (filled in by the trade work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
