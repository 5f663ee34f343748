"""CLI commands `annotate` (the main job) and `flow` (one flow picture from two aligned frames)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from au_annotate.settings import DEFAULT_WEIGHTS, SettingsError, build_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch scheduler stopping the job, `kill`) handled like Ctrl-C: the run writes what finished and
    exits 130. Only in the main thread, where Python lets us set handlers; the previous handler comes back after."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _formats(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder; the input layout is mirrored under it.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (CLI wins).")
@click.option("--format", "formats", help="Comma-separated output formats: csv, eaf, json, textgrid, or all. [csv,eaf]")
@click.option("--au-tiers/--no-au-tiers", default=None, help="One ELAN tier per AU.")
@click.option("--report/--no-report", default=None, help="Write report.html for the run.")
@click.option("--weights", help=f"Checkpoint: registry name or path (`au-annotate weights list`). [{DEFAULT_WEIGHTS}]")
@click.option("--au-order", help="AU order of a plain state dict, e.g. seed25 for the seed's checkpoint.")
@click.option("--all-aus", is_flag=True, default=None, help="Report every AU, not only those marked reliable.")
@click.option("--rules", type=click.Path(path_type=Path), help="FACS emotion rule file (TOML). [shipped EMFACS rules]")
@click.option("--device", help="auto, cpu, cuda or cuda:N. [auto]")
@click.option("--batch-size", type=click.IntRange(1), help="Windows per model batch. [256]")
@click.option("--decoder", type=click.Choice(["auto", "decord", "opencv"]), help="Video decoding backend. [auto]")
@click.option("--input-layout", type=click.Choice(["auto", "face", "mosaic"]),
              help="Model input: whole-face flow (seed) or the official HTNet 4-patch mosaic; auto = what the "
                   "checkpoint was trained on. [auto]")
@click.option("--sensitivity", type=click.FloatRange(min=0, min_open=True),
              help="Spotting sensitivity: divides the thresholds (2 = movements half as large are reported; the "
                   "score stays a multiple of the threshold applied). Config: spot.sensitivity. [1.0]")
@click.option("--blinks", type=click.Choice(["report", "label", "keep", "drop"]),
              help="Blinks: report = shown in the HTML report only; label = also written (kind blink); keep = not "
                   "told apart; drop = discarded. Config: spot.blinks. [report]")
@click.option("--gated", type=click.Choice(["drop", "label"]),
              help="Windows explained by head motion, occlusion, lost tracking or lighting: drop = HTML report only "
                   "(with the reason); label = also written, with that quality. Config: spot.gated. [drop]")
@click.option("--range", "ranges", multiple=True, metavar="START-END",
              help="Analyse only this time range of every video (seconds or m:ss; repeat for several). Outputs keep "
                   "the video's own times. [the whole video]")
@click.option("--ranges", "range_table", type=click.Path(path_type=Path),
              help="CSV of ranges per video: columns video, start, end (video as in the outputs' video column, or "
                   "its file name).")
@click.option("--range-tier", metavar="TIER",
              help="Ranges from this tier of the ELAN file next to each video (same name, .eaf).")
@click.option("--tvl1", type=click.Choice(["exact", "fast"]),
              help="TV-L1 flow of the default model's pictures: exact = OpenCV's defaults (~0.35 s a window); fast = "
                   "a 112 px square, 3 scales, 1 warp (~0.035 s; same agreement on 98 real clips, see "
                   "docs/au-model.md). [exact]")
@click.option("--faces", help="Which faces to annotate: all, largest, or N (the N largest). [all]")
@click.option("-j", "--jobs", type=click.IntRange(0), help="Worker processes for videos; 0 = auto (one per two cores). [0]")
@click.option("--engine", type=click.Choice(["local", "ray"]), help="Where per-video work runs. [local]")
@click.option("--ray-address", help="Ray cluster for --engine ray: auto or HOST:PORT. [start a local Ray]")
@click.option("--recursive/--no-recursive", default=None, help="Descend into sub-folders. [recursive]")
@click.option("--overwrite", is_flag=True, default=None,
              help="Recompute every video, even those an earlier run finished with the same settings.")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bars and no summary.")
@click.option("-v", "--verbose", is_flag=True, default=None, help="Tracebacks for failed videos.")
def annotate(inputs: tuple[Path, ...], out_dir: Path, config_file: Path | None, formats: str | None,
             **options: object) -> None:
    """Spot micro-expressions in videos and annotate their Action Units.

    INPUTS are video files and/or folders (searched recursively). Per video, writes <stem>.segments.csv and <stem>.eaf
    under OUTPUT (mirroring the input layout), plus OUTPUT/segments.csv for all videos.

    Exit codes: 0 all videos processed, 1 some videos failed (or a range table row names no input), 2 usage error (bad option, missing input, no videos,
    unwritable output or one another run is writing to, unusable weights or rules), 130 interrupted.
    """
    from rich.console import Console

    from au_annotate.api import AnnotateError, OutputError
    from au_annotate.api import annotate as run_annotate
    from au_annotate.discover import DiscoverError
    from au_annotate.spot import SpotConfig, SpotError
    from au_annotate.ui import LogProgress, RichProgress, print_summary

    t_start = time.monotonic()
    err = Console(stderr=True, highlight=False)
    spot = {k: options.pop(k) for k in ("sensitivity", "blinks", "gated")}
    options["ranges"] = options.get("ranges") or None  # multiple: () when not given
    try:
        settings = build_settings(config_file, formats=_formats(formats), **options)
        given = {k: v for k, v in spot.items() if v is not None}
        if given:  # over the config file's [spot] table, key by key
            settings = settings.replace(spot={**settings.spot, **given})
        SpotConfig.from_any(settings.spot)
    except (SettingsError, SpotError) as e:
        err.print(f"[red]Error:[/] {e}", soft_wrap=True)
        sys.exit(EXIT_USAGE)
    if settings.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
    console = Console(stderr=True)
    try:
        with _terminate_as_interrupt():
            if settings.quiet:
                report = run_annotate(list(inputs), out_dir, settings)
            else:
                # a terminal gets live rich bars; a log file (batch job, cluster) gets a tqdm line every 30 s
                hook = RichProgress(console) if console.is_terminal else LogProgress(sys.stderr)
                with hook:
                    report = run_annotate(list(inputs), out_dir, settings, progress=hook)
    except (DiscoverError, OutputError, AnnotateError) as e:
        err.print(f"[red]Error:[/] {e}", soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print(f"[yellow]Interrupted:[/] the videos that finished are written under {out_dir} (run again to "
                  "finish the rest)", soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)
    if not settings.quiet:
        print_summary(report, Console(), wall_s=time.monotonic() - t_start)
    sys.exit(EXIT_FAILED if report.failed or report.errors else EXIT_OK)


@click.command()
@click.argument("onset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("apex", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--size", default=224, show_default=True, type=click.IntRange(16),
              help="Both frames are resized to SIZExSIZE before Farneback (the seed used 224).")
def flow(onset: Path, apex: Path, output: Path, size: int) -> None:
    """Encoded 28x28 flow picture (seed encoding, RGB PNG) between two already-aligned face frames."""
    import cv2
    import numpy as np

    from au_annotate.flow import flow_picture, save_flow_png

    imgs = []
    for p in (onset, apex):
        data = np.fromfile(str(p), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
        if img is None:
            click.echo(f"Error: {p}: not a readable image", err=True)
            sys.exit(EXIT_USAGE)
        imgs.append(img)
    if imgs[0].shape != imgs[1].shape:
        click.echo(f"Error: {onset} is {imgs[0].shape[1]}x{imgs[0].shape[0]} but {apex} is "
                   f"{imgs[1].shape[1]}x{imgs[1].shape[0]}: aligned frames must have one size", err=True)
        sys.exit(EXIT_USAGE)
    imgs = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA if i.shape[0] > size else cv2.INTER_LINEAR)
            if i.shape != (size, size) else i for i in imgs]
    save_flow_png(output, flow_picture(imgs[0], imgs[1]))


COMMANDS: list[click.Command] = [annotate, flow]
