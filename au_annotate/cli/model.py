"""CLI commands (model)."""

import click

COMMANDS: list[click.Command] = []
