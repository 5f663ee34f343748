"""CLI commands (spotting)."""

import click

COMMANDS: list[click.Command] = []
