"""CLI commands of the coder review loop: `review-import`, `agreement`, `calibrate`, `finetune` (docs/review.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from au_annotate.review.importer import REVIEWED_NAME, ReviewError, read_reviewed, table_sha256

if TYPE_CHECKING:
    import pandas as pd


def _num(v: object, fmt: str = "{:.3f}") -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return fmt.format(v) if isinstance(v, float) else str(v)


def _err(message: str) -> None:
    click.echo(f"Error: {message}", err=True)


def _reviewed(path: Path) -> pd.DataFrame:
    """The review table, or a click error naming the file."""
    try:
        return read_reviewed(path)
    except ReviewError as e:
        raise click.ClickException(str(e)) from None


@click.command("review-import")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for reviewed.csv.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The annotate output folder the EAFs came from. [the folder with manifest.json at or above each EAF]")
@click.option("--coder", help="Coder name for files whose review tier has no ANNOTATOR. [the EAF's folder name]")
def review_import(inputs: tuple[Path, ...], out_dir: Path, run_dir: Path | None, coder: str | None) -> None:
    """Read reviewed .eaf files (files or folders) into OUTPUT/reviewed.csv, one row per window and coder.

    Each unusable file (malformed, not ours, video missing from the run) or coder code that does not parse is one
    line on stderr; the rest is imported. Exit 1 when something was left out, 2 when nothing could be imported or
    an EAF was made by another run (model or result-changing settings) than the one it is read against: then one line
    per such EAF and nothing is written."""
    from au_annotate.review.importer import import_reviews, write_reviewed

    result = import_reviews(list(inputs), run=run_dir, coder=coder)
    if result.refused:  # matched to another run's windows the review would be wrong: write nothing at all
        for line in result.refused:
            _err(line + " (nothing written)")
        sys.exit(2)
    for line in result.problems:
        _err(line)
    if not result.files:
        _err("no reviewed EAF could be imported")
        sys.exit(2)
    path = write_reviewed(result, out_dir)
    df = result.table
    counts = df["decision"].value_counts().to_dict()
    click.echo(f"{result.files} EAF files, {len(df)} windows ("
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f") -> {path}")
    sys.exit(1 if result.problems else 0)


@click.command()
@click.argument("reviewed", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where agreement.csv / .json / .html go. [the folder of reviewed.csv]")
def agreement(reviewed: Path, out_dir: Path | None) -> None:
    """Tool-vs-coder agreement of a review (REVIEWED = reviewed.csv or its folder): spotting precision and recall,
    onset/offset error, per-AU F1 and Cohen's kappa, and coder-vs-coder kappa where two coders reviewed a video."""
    from rich.console import Console
    from rich.table import Table

    from au_annotate.fileio import atomic_open
    from au_annotate.review.agreement import compute_agreement
    from au_annotate.writers.report import write_agreement_page

    df = _reviewed(reviewed)
    ag = compute_agreement(df)
    out = out_dir or (reviewed if reviewed.is_dir() else reviewed.parent)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if Console().is_terminal else 140)
    t = Table(title="spotting (tool windows reviewed by the coder)")
    cols = ("kind", "tool_windows", "reviewed", "confirmed", "corrected", "rejected", "added", "precision", "recall",
            "onset_mae_ms", "offset_mae_ms")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="left" if c == "kind" else "right")
    for r in ag.spotting:
        t.add_row(*[_num(r[c], "{:.1f}" if c.endswith("_ms") else "{:.3f}") for c in cols])
    console.print(t)
    if ag.aus:
        t = Table(title="AUs: tool vs coder (confirmed + corrected windows)")
        for c in ("au", "windows", "tp", "fp", "fn", "precision", "recall", "f1", "kappa"):
            t.add_column(c, justify="left" if c == "au" else "right")
        for r in ag.aus:
            t.add_row(*[_num(r[c]) for c in ("au", "windows", "tp", "fp", "fn", "precision", "recall", "f1", "kappa")])
        console.print(t)
    if ag.coders:
        t = Table(title="coder vs coder (same windows), beside tool vs each coder")
        for c in ("subject", "coder_a", "coder_b", "windows", "kappa_coders", "kappa_tool_a", "kappa_tool_b"):
            t.add_column(c.replace("_", " "), justify="right" if c.startswith(("kappa", "windows")) else "left")
        for r in ag.coders:
            t.add_row(*[_num(r[c]) for c in ("subject", "coder_a", "coder_b", "windows", "kappa_coders",
                                              "kappa_tool_a", "kappa_tool_b")])
        console.print(t)
    for note in ag.notes:
        console.print(f"[dim]note: {note}[/dim]")
    ag.tidy().to_csv(out / "agreement.csv", index=False, float_format="%.6f")
    with atomic_open(out / "agreement.json", "w", encoding="utf-8") as fh:
        json.dump(ag.as_dict(), fh, indent=1)
    write_agreement_page(ag, out / "agreement.html", source=str(reviewed))
    console.print(f"written: {out / 'agreement.csv'}, agreement.json, agreement.html")


@click.command()
@click.argument("reviewed", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Study settings TOML to write (use with annotate --config).")
@click.option("--precision", "target", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.8,
              show_default=True, help="Spotting precision the cut-off must reach on the review.")
def calibrate(reviewed: Path, output: Path, target: float) -> None:
    """Fit per-study settings to a review: per window kind the lowest spotting-score cut-off reaching --precision
    (with the recall it keeps), and per-AU thresholds (best F1 against the coder). Every figure is printed with the
    windows it rests on; a kind needs 20 reviewed windows (5 real), an AU 5 coder positives and 5 negatives.

    Exit 0: OUTPUT written (kinds and AUs that could not be fitted are named in it and here); 1: nothing written (no
    review table, or too few reviewed windows to fit anything; one line says which); 2: bad option or path."""
    from au_annotate.review.calibrate import CalibrationError, write_study
    from au_annotate.review.calibrate import calibrate as fit
    from au_annotate.writers.base import utc_now

    df = _reviewed(reviewed)
    try:
        cal = fit(df, target)
    except CalibrationError as e:
        raise click.ClickException(str(e)) from None
    table = reviewed / REVIEWED_NAME if reviewed.is_dir() else reviewed
    prov = {"review_table": str(table), "review_sha256": table_sha256(table), "created": utc_now(),
            "windows": len(df), "videos": int(df["video"].nunique()), "coders": sorted(set(df["coder"])),
            "model_sha256": sorted(set(df["model_sha256"]) - {""})}
    try:
        write_study(cal, prov, output)  # atomic: a failed write leaves no partial file
    except OSError as e:
        raise click.ClickException(f"{output}: cannot be written ({e.strerror or e}): nothing written") from None
    for c in cal.spotting:
        click.echo(c.summary(target))
    for a in cal.aus:
        click.echo(a.summary())
    for n in cal.notes:
        click.echo(f"note: {n}", err=True)
    click.echo(f"written: {output} (annotate --config {output})")


@click.command()
@click.argument("reviewed", type=click.Path(exists=True, path_type=Path))
@click.option("--videos", "videos_dir", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The input root the run annotated (the review's video paths are relative to it).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (only when the held-out review does not get worse), e.g. weights/study.pt.")
@click.option("--weights", help="Base checkpoint: registry name or path. [the shipped default]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The run's settings TOML (face tracking settings must match the annotate run).")
@click.option("--mode", type=click.Choice(["auto", "head", "full"]), default="auto", show_default=True,
              help="head: frozen backbone, new head; full: every weight; auto: both, the better kept.")
@click.option("--base-data", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Base training data (SAMM-style flow pictures) mixed into the full fine-tune.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--holdout", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.34,
              show_default=True, help="Share of reviewed videos held out for the check (at least one).")
@click.option("--seed", type=int, default=0, show_default=True)
def finetune(reviewed: Path, videos_dir: Path, output: Path, weights: str | None, config_file: Path | None,
             mode: str, base_data: Path | None, epochs: int, holdout: float, seed: int) -> None:
    """Fine-tune the AU model on the coder-confirmed windows of a review and keep it only if held-out videos of the
    review do not get worse (exit 1 when it is not kept)."""
    from au_annotate.review.finetune import FinetuneConfig, FinetuneError
    from au_annotate.review.finetune import finetune as run
    from au_annotate.settings import SettingsError, build_settings
    from au_annotate.weights import WeightsError
    from au_annotate.writers.base import utc_now

    df = _reviewed(reviewed)
    table = reviewed / REVIEWED_NAME if reviewed.is_dir() else reviewed
    try:
        settings = build_settings(config_file)
    except SettingsError as e:
        raise click.ClickException(str(e)) from None
    cfg = FinetuneConfig(epochs=epochs, holdout=holdout, seed=seed,
                         modes=("head", "full") if mode == "auto" else (mode,))
    prov = {"review_table": str(table), "review_sha256": table_sha256(table), "created": utc_now(),
            "coders": sorted(set(df["coder"]))}
    try:
        res = run(df, videos_dir, output, weights=weights, settings=settings, cfg=cfg, base_data=base_data,
                  provenance=prov, progress=lambda m: click.echo(m, err=True))
    except (FinetuneError, WeightsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for p in res.problems:
        _err(p)
    click.echo(f"train: {res.train_windows} windows ({len(res.train_videos)} videos); held out: "
               f"{res.held_out_windows} windows ({', '.join(res.held_out_videos)})")
    click.echo(f"  base: held-out F1 {_num(res.base['f1'])}, log-loss {_num(res.base['log_loss'])}")
    for m, s in res.candidates.items():
        click.echo(f"  {m}: held-out F1 {_num(s['f1'])}, log-loss {_num(s['log_loss'])}")
    click.echo(("kept: " if res.kept else "not kept: ") + res.reason
               + (f" -> {res.path} (model card {res.path.with_suffix('.md')})" if res.path else ""))
    sys.exit(0 if res.kept else 1)


COMMANDS: list[click.Command] = [review_import, agreement, calibrate, finetune]
