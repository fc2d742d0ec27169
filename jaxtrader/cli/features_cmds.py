"""CLI commands for features (filled in by the features work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
