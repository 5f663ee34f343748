"""CLI commands (train)."""

import click

COMMANDS: list[click.Command] = []
