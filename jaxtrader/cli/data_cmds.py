"""CLI commands for data (filled in by the data work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
