"""CLI commands for evaluate (filled in by the evaluate work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
