"""CLI commands for the AU model: `predict` (probabilities for flow pictures) and `weights list|fetch`.

Library imports happen inside the commands, so `au-annotate --help` does not pay for importing torch."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click


def _fail(exc: Exception) -> click.ClickException:
    """A library error as click's one-line `Error: ...` with exit code 1."""
    return click.ClickException(str(exc))


@click.command("predict")
@click.argument("flow_png", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--weights", "weights", default=None, metavar="NAME|PATH",
              help="Registry name (htnet-megc, htnet-samm, seed) or checkpoint path. Default: the shipped htnet-megc.")
@click.option("--au-order", default=None, metavar="ORDER",
              help="AU output order of a plain state dict: seed25 (the seed checkpoint) or a comma-separated AU list.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--all-aus", is_flag=True, help="The `aus` column uses every AU, not only the reliable ones.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write (default: stdout).")
def predict(
    flow_png: tuple[Path, ...], weights: str | None, au_order: str | None, device: str, batch_size: int, all_aus: bool,
    output: Path | None,
) -> None:
    """Per-AU probabilities for precomputed 28x28 flow pictures (PNG, the seed encoding), as CSV.

    Columns: file, one probability per AU in the model's output order, then `aus` (the active FACS code from the
    checkpoint's per-AU thresholds). A file that cannot be read is reported on stderr; the others are still predicted
    and the exit code is 1.
    """
    import numpy as np

    from au_annotate.aus import AUDecoder, emotion_softmax
    from au_annotate.fileio import atomic_open
    from au_annotate.flow import load_flow_png
    from au_annotate.infer import BatchRunner, InferenceError
    from au_annotate.weights import WeightsError, load_weights

    try:
        loaded = load_weights(weights, au_order=au_order)
        runner = BatchRunner(loaded, device=device, batch_size=batch_size)
    except (WeightsError, InferenceError) as exc:
        raise _fail(exc) from exc
    size = loaded.config.image_size
    names: list[str] = []
    pictures: list[np.ndarray] = []
    failed = 0
    for path in flow_png:
        try:
            img = load_flow_png(path)
            if img.shape[:2] != (size, size):
                raise ValueError(f"{path}: expected a {size}x{size} flow picture, got {img.shape[1]}x{img.shape[0]}")
        except (OSError, ValueError) as exc:
            click.echo(f"Error: {exc}" if str(path) in str(exc) else f"Error: {path}: {exc}", err=True)
            failed += 1
            continue
        names.append(str(path))
        pictures.append(img)
    try:
        probs = runner.predict(np.stack(pictures) if pictures else np.zeros((0, size, size, 3), np.uint8))
    except InferenceError as exc:
        raise _fail(exc) from exc
    decoder = AUDecoder.from_model(loaded.au_names, loaded.thresholds, loaded.reliable, all_aus=all_aus,
                                   calibrated=loaded.calibrated)
    k = loaded.n_aus
    _, _, codes = decoder.decode(probs[:, :k])
    header = ["file", *loaded.au_names, "aus"]
    rows = [[name, *(f"{p:.6f}" for p in row[:k]), code] for name, row, code in zip(names, probs, codes, strict=True)]
    if not loaded.emotion_classes:
        click.echo(f"note: {loaded.name} has no emotion head (an older checkpoint): no emotion_model column", err=True)
    else:  # the model's own 3-class emotion (softmax of its emotion outputs)
        emo = emotion_softmax(probs[:, k:])
        header += ["emotion_model", "emotion_model_p"]
        for row, e in zip(rows, emo, strict=True):
            row += [loaded.emotion_classes[int(e.argmax())], f"{float(e.max()):.6f}"]
    if output is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    else:
        try:
            with atomic_open(output) as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from exc
        click.echo(f"{len(rows)} prediction(s) written to {output}", err=True)
    if failed:
        click.echo(f"{failed} of {len(flow_png)} file(s) could not be read", err=True)
        sys.exit(1)


@click.group("weights")
def weights() -> None:
    """Known model checkpoints: list them, fetch one (the only network access, only when asked)."""


@weights.command("list", short_help="Known checkpoints: present locally? pinned checksum ok? path.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="User cache to look in (default: $AU_ANNOTATE_CACHE or ~/.cache/au-annotate).")
def weights_list(cache_dir: Path | None) -> None:
    """Registry checkpoints: name, local presence, checksum state (with the pinned sha256 prefix), path, description."""
    from au_annotate.weights import DEFAULT_WEIGHTS, list_weights

    rows = list_weights(cache=cache_dir)
    table = [("name", "local", "sha256", "path", "description")]
    for row in rows:
        table.append((
            row.entry.name + (" (default)" if row.entry.name == DEFAULT_WEIGHTS else ""),
            "yes" if row.path is not None else "no",
            row.checksum if row.entry.sha256 is None else f"{row.checksum} (pinned {row.entry.sha256[:12]})",
            str(row.path) if row.path is not None else "-",
            row.entry.description,
        ))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@weights.command("fetch", short_help="Download a known checkpoint into the user cache, sha256-verified.")
@click.argument("name")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to store it (default: $AU_ANNOTATE_CACHE or ~/.cache/au-annotate).")
def weights_fetch(name: str, cache_dir: Path | None) -> None:
    """Download a registry checkpoint (e.g. `seed`) into the user cache, verifying its sha256."""
    from au_annotate.weights import WeightsError, fetch

    try:
        path = fetch(name, cache_dir=cache_dir)
    except WeightsError as exc:
        raise _fail(exc) from exc
    click.echo(str(path))


COMMANDS: list[click.Command] = [predict, weights]
