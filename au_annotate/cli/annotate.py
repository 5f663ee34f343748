"""CLI commands (annotate)."""

import click

COMMANDS: list[click.Command] = []
