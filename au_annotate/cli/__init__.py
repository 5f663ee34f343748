"""Command-line interface: a thin click layer over the library (the library never imports click or rich).

Each area keeps its commands in its own module and exports them as COMMANDS; this group collects them.
"""

from __future__ import annotations

import click

from au_annotate._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="au-annotate")
def main() -> None:
    """Find micro-expressions in face videos and annotate their FACS Action Units."""


def _register() -> None:
    from au_annotate.cli import annotate, model, review, spotting, train

    for module in (annotate, model, train, spotting, review):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
