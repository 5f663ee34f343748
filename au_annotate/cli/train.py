"""CLI commands for the AU model's training data: `train` (write a checkpoint) and `evaluate` (LOSO / group-k-fold)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # the training stack (torch, sklearn) is imported by the commands, not by `au-annotate --help`
    from au_annotate.training.data import AUDataset
    from au_annotate.training.evaluate import EvalReport
    from au_annotate.training.train import TrainConfig

# Defaults quoted in the help texts; tests/test_training.py checks they equal TrainConfig's.
HELP_DEFAULTS = {"epochs": 100, "lr": 0.001, "seed": 0}


def _recipe_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The recipe options shared by train and evaluate (each overrides --config, which overrides the defaults)."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TOML recipe (keys of TrainConfig; [model] table for HTNet options)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help=f"Default {HELP_DEFAULTS['epochs']}."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help=f"Adam learning rate. Default {HELP_DEFAULTS['lr']}."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=None),
        click.option("--batch-size", type=click.IntRange(min=1), default=None),
        click.option("--seed", type=int, default=None, help=f"Default {HELP_DEFAULTS['seed']}."),
        click.option("--pos-weight", default=None, metavar="none|balanced|X",
                     help="BCE positive weight per AU: none, balanced (neg/pos, capped) or a number."),
        click.option("--label-smoothing", type=click.FloatRange(0, 0.5, max_open=True), default=None),
        click.option("--flip/--no-flip", default=None, help="Horizontal flip augmentation with the flow hue mirrored."),
        click.option("--translate", type=click.IntRange(0, 6), default=None, help="Random shifts up to N pixels."),
        click.option("--ensemble", type=click.IntRange(min=1), default=None, help="Seeds averaged (evaluate only)."),
        click.option("--inner-folds", type=click.IntRange(min=2), default=None,
                     help="Inner group-k-fold used to choose thresholds on training subjects."),
        click.option("--dim", type=click.IntRange(min=1), default=None, help="HTNet width (seed 64)."),
        click.option("--heads", type=click.IntRange(min=1), default=None, help="Attention heads (seed 4)."),
        click.option("--depth", "block_repeats", type=click.IntRange(min=1), default=None,
                     help="Transformer blocks per level (seed 2)."),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _recipe(config_path: Path | None, **overrides: Any) -> TrainConfig:
    """CLI > config file > defaults."""
    from au_annotate.training.train import TrainConfig, TrainConfigError, load_train_config, with_overrides

    try:
        base = load_train_config(config_path) if config_path is not None else TrainConfig()
        return with_overrides(base, **overrides)
    except TrainConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _console() -> Console:
    """Rich console; at least 100 columns wide when not a terminal (logs, CI) so tables are not squeezed."""
    console = Console()
    if not console.is_terminal and console.width < 100:
        console = Console(width=100)
    return console


def _load(data: Path, console: Console) -> AUDataset:
    from au_annotate.training.data import DatasetError, load_dataset

    try:
        ds = load_dataset(data)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(
        f"[bold]{ds.identity['name']}[/]: {len(ds)} samples, {ds.identity['n_subjects']} subjects, "
        f"{len(ds.au_names)} AUs"
    )
    for name in ds.missing:
        console.print(f"[yellow]note[/]: table row without a flow picture, skipped: {name}")
    return ds


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    )


def _updater(console: Console, prog: Progress, task: Any, what: str, every: int = 1) -> Callable[[int, int], None]:
    """Progress callback: the rich bar on a terminal, plus a plain line every `every` steps in logs."""
    start = time.perf_counter()

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)
        if not console.is_terminal and (done % every == 0 or done == total):
            console.print(f"{what} {done}/{total} ({time.perf_counter() - start:.0f} s)", highlight=False)

    return update


def _f(v: float) -> str:
    return "-" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}"


def _table(report: EvalReport) -> Table:
    from au_annotate.training.evaluate import FREQUENT, METHODS

    """Per-AU rows: HTNet metrics, then the F1 of both baselines; macro rows last."""
    t = Table(title=f"{report.protocol} ({report.n_folds} folds), pooled held-out predictions")
    t.caption = "pos = positives; AP = all-positive baseline; LR = logistic regression on pixels; rel = reliable"
    for col in ("AU", "pos", "P", "R", "F1", "UAR", "AUC", "F1 AP", "F1 LR", "AUC LR", "rel"):
        t.add_column(col, justify="left" if col == "AU" else "right", no_wrap=True)
    for h, a, lr in zip(*(report.tables[m] for m in METHODS), strict=True):
        t.add_row(
            h["au"], str(h["support"]), _f(h["precision"]), _f(h["recall"]), _f(h["f1"]), _f(h["uar"]), _f(h["auc"]),
            _f(a["f1"]), _f(lr["f1"]), _f(lr["auc"]), "yes" if h["au"] in report.reliable else "",
        )
    for key, label in (("all", "macro"), ("frequent", f"macro pos>={FREQUENT}")):
        h, a, lr = (report.macros[m][key] for m in METHODS)
        t.add_row(
            label, str(h["n_aus"]), _f(h["precision"]), _f(h["recall"]), _f(h["f1"]), _f(h["uar"]),
            _f(h["auc"]), _f(a["f1"]), _f(lr["f1"]), _f(lr["auc"]), "", style="bold",
        )
    return t


@click.command("evaluate")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with samm.csv and flows/*.png.")
@click.option("--protocol", type=click.Choice(["loso", "group-kfold"]), default="loso", show_default=True)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Folds for group-kfold.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for metrics.csv, metrics.json, predictions.csv.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Folds run in this many processes (identical results).")
@_recipe_options
def evaluate_cmd(data: Path, protocol: str, folds: int, output: Path | None, jobs: int, config_path: Path | None,
                 **overrides: Any) -> None:
    """Cross-validate HTNet by subject, with all-positive and logistic-regression baselines on the same folds.

    Thresholds are chosen per AU inside each training fold (inner group-k-fold), never on the held-out subject.
    """
    from au_annotate.training.evaluate import EvaluationError, evaluate

    console = _console()
    cfg = _recipe(config_path, **overrides)
    ds = _load(data, console)
    console.print(f"recipe: {json.dumps(cfg.to_dict())}")
    try:
        with _progress(console) as prog:
            task = prog.add_task(f"{protocol} folds", total=None)
            report = evaluate(ds, cfg, protocol, folds, jobs,
                              progress=_updater(console, prog, task, "folds done"))
    except EvaluationError as exc:
        raise click.UsageError(str(exc)) from exc
    console.print(_table(report))
    for au, res in report.targets.items():
        console.print(f"target {au}: F1 {res['f1']:.2f} (all-positive {res['all_positive_f1']:.2f}, "
                      f"logreg {res['logreg_f1']:.2f}) -> {'met' if res['met'] else 'NOT met'}")
    console.print(f"reliable AUs: {', '.join(report.reliable) or 'none'}   ({report.seconds:.0f} s)")
    if output is not None:
        try:
            paths = report.write(output)
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write the report ({exc.strerror or exc})") from exc
        console.print("wrote " + ", ".join(str(p) for p in paths))


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with samm.csv and flows/*.png.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write, e.g. weights/htnet-samm.pt.")
@click.option("--eval-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="metrics.json of `evaluate` with the same recipe: stored in the checkpoint, sets the reliable AUs.")
@_recipe_options
def train_cmd(data: Path, output: Path, eval_report: Path | None, config_path: Path | None, **overrides: Any) -> None:
    """Train HTNet on every sample and write a checkpoint (thresholds by inner group-k-fold on the training data)."""
    from au_annotate.training.data import DatasetError
    from au_annotate.training.evaluate import FREQUENT
    from au_annotate.training.train import TrainConfigError, train_checkpoint

    console = _console()
    cfg = _recipe(config_path, **overrides)
    ds = _load(data, console)
    report = None
    if eval_report is not None:
        try:
            report = json.loads(eval_report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{eval_report}: not a readable metrics.json ({exc})") from exc
    console.print(f"recipe: {json.dumps(cfg.to_dict())}")
    if report is None:
        console.print(f"[yellow]note[/]: no --eval-report: AUs with >= {FREQUENT} positives are marked reliable without "
                      "cross-validated evidence, and the checkpoint stores no metrics")
    try:
        with _progress(console) as prog:
            task = prog.add_task("epochs (inner folds + final)", total=None)
            sha, fit, reliable = train_checkpoint(
                ds, cfg, output, eval_report=report, progress=_updater(console, prog, task, "epochs", every=50)
            )
    except (TrainConfigError, DatasetError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write the checkpoint ({exc.strerror or exc})") from exc
    t = Table(title="thresholds (inner CV on the training subjects)")
    for col in ("AU", "positives", "threshold", "reliable"):
        t.add_column(col)
    for au, pos, thr, rel in zip(ds.au_names, ds.labels.sum(0), fit.thresholds, reliable, strict=True):
        t.add_row(au, str(int(pos)), f"{thr:.3f}", "yes" if rel else "")
    console.print(t)
    console.print(f"wrote {output} (sha256 {sha}, {output.stat().st_size / 1e6:.2f} MB)")


COMMANDS: list[click.Command] = [train_cmd, evaluate_cmd]
