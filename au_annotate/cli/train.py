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
        click.option("--refit/--no-refit", default=None,
                     help="Refit on all training samples after the inner folds (default), or ship the inner-fold "
                          "models as the ensemble."),
        click.option("--emotion-weight", type=click.FloatRange(min=0), default=None,
                     help="Weight of the 3-class emotion loss (data with emotion labels). Default 1."),
        click.option("--blend-logreg", type=click.FloatRange(0, 1), default=None, metavar="W",
                     help="Blend each AU's probability with the pixel logistic regression's: (1 - W) HTNet + W "
                          "regression, thresholds on the blend. Default 0 (HTNet alone)."),
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
    from au_annotate.training.data import DatasetError, load_any

    try:
        ds = load_any(data)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    sources = ds.identity.get("sources")
    console.print(
        f"[bold]{ds.identity['name']}[/]: {len(ds)} samples, {ds.identity['n_subjects']} subjects, "
        f"{len(ds.au_names)} AUs, encoding {ds.encoding}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sources.items())})" if sources else "")
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
    """Per-AU rows: HTNet metrics, then the F1 of both baselines; macro rows last."""
    from au_annotate.training.evaluate import METHODS
    from au_annotate.training.reliability import FREQUENT

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


def _split_table(report: Any, aus: tuple[str, ...] = ("AU04", "AU07", "AU12")) -> Table:
    """Per split, the key AUs (or every AU with >= 8 held-out positives): HTNet beside both baselines."""
    t = Table(title=f"{report.protocol}: held-out metrics (thresholds and epochs fixed inside training folds)")
    t.caption = "AP = all-positive baseline; LR = logistic regression on pixels"
    for col in ("split", "AU", "pos", "P", "R", "F1", "UAR", "AUC", "F1 AP", "F1 LR", "AUC LR"):
        t.add_column(col, justify="left" if col in ("split", "AU") else "right", no_wrap=True)
    for r in report.rows:
        if r["au"] in aus or r["positives"] >= 8:
            t.add_row(r["split"], r["au"], str(r["positives"]), *(_f(r[k]) for k in (
                "precision", "recall", "f1", "uar", "auc", "f1_allpos", "f1_lr", "auc_lr")))
    return t


def _write_report(report: object, output: Path | None, console: Console) -> None:
    """Write an evaluation report's files into OUTPUT (when given) and say where; an unwritable folder is one line."""
    if output is None:
        return
    try:
        paths = report.write(output)  # type: ignore[attr-defined]
    except OSError as exc:
        raise click.ClickException(f"{output}: cannot write the report ({exc.strerror or exc})") from exc
    console.print("wrote " + ", ".join(str(p) for p in paths))


def _evaluate_splits(ds: AUDataset, cfg: TrainConfig, protocol: str, jobs: int, output: Path | None,
                     console: Console) -> None:
    """LOSO / LODO with both baselines on the same splits; metrics.csv (+ emotion_metrics.csv) in OUTPUT."""
    from au_annotate.training.crossdata import evaluate_splits
    from au_annotate.training.evaluate import EvaluationError

    try:
        with _progress(console) as prog:
            task = prog.add_task(f"{protocol} splits", total=None)
            report = evaluate_splits(ds, cfg, protocol, jobs, progress=_updater(console, prog, task, "splits done"))
    except EvaluationError as exc:
        raise click.UsageError(str(exc)) from exc
    console.print(_split_table(report))
    for r in report.emotion_rows:
        console.print(f"emotion {r['split']}: UF1 {r['uf1']:.4f}, UAR {r['uar']:.4f} (n {r['n']})", highlight=False)
    console.print(f"({report.seconds:.0f} s)")
    _write_report(report, output, console)


@click.command("evaluate")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with samm.csv + flows/*.png (SAMM, seed encoding) or index.csv + flows/ (MEGC composite).")
@click.option("--protocol", type=click.Choice(["loso", "lodo", "group-kfold"]), default="loso", show_default=True,
              help="loso: leave one subject out over every subject; lodo: train on SAMM test on CASME II and the "
                   "reverse; group-kfold: the older per-method report (metrics.csv: method, au, ...).")
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
    from au_annotate.training.reliability import RELIABILITY

    console = _console()
    cfg = _recipe(config_path, **overrides)
    ds = _load(data, console)
    console.print(f"recipe: {json.dumps(cfg.to_dict())}")
    if protocol in ("loso", "lodo"):
        _evaluate_splits(ds, cfg, protocol, jobs, output, console)
        return
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
    console.print(f"reliable rule: {RELIABILITY.describe()}", highlight=False)
    _write_report(report, output, console)


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with samm.csv + flows/*.png, or the MEGC composite (index.csv).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write, e.g. weights/htnet-samm.pt.")
@click.option("--eval-report", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="metrics.json of `evaluate` with the same recipe (repeat: the LOSO and the LODO one): stored in the "
                   "checkpoint, sets the reliable AUs.")
@_recipe_options
def train_cmd(data: Path, output: Path, eval_report: tuple[Path, ...], config_path: Path | None,
              **overrides: Any) -> None:
    """Train HTNet on every sample and write a checkpoint (thresholds by inner group-k-fold on the training data)."""
    from au_annotate.training.data import DatasetError
    from au_annotate.training.reliability import RELIABILITY
    from au_annotate.training.train import TrainConfigError, train_checkpoint

    console = _console()
    cfg = _recipe(config_path, **overrides)
    ds = _load(data, console)
    report = None
    loaded = []
    for path in eval_report:
        try:
            loaded.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: not a readable metrics.json ({exc})") from exc
    if len(loaded) == 1:
        report = loaded[0]
    elif loaded:
        from au_annotate.training.crossdata import merge_reports
        from au_annotate.training.evaluate import EvaluationError

        try:
            report = merge_reports(loaded)
        except EvaluationError as exc:
            raise click.ClickException(str(exc)) from exc
    console.print(f"recipe: {json.dumps(cfg.to_dict())}")
    if report is None:
        console.print(f"[yellow]note[/]: no --eval-report: reliable = {RELIABILITY.describe_without_metrics()}; "
                      "the checkpoint stores no metrics")
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
    if report is not None:
        from au_annotate.training.reliability import KAPPA_RULE

        rule = KAPPA_RULE if "rows" in report else RELIABILITY
        console.print(f"reliable rule: {rule.describe()}", highlight=False)
    console.print(f"wrote {output} (sha256 {sha}, {output.stat().st_size / 1e6:.2f} MB)")


@click.command("reproduce-flow")
@click.option("--frames", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Frames folder: labels.csv + <clip>/img<N>.jpg (e.g. ../shared/datasets/casme2-frames).")
@click.option("--composite", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The MEGC composite folder whose flows/ holds the published pictures of the same clips.")
@click.option("--weights", default=None, help="Also compare a model's outputs on both pictures (name or path).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write agreement.json and both pictures per clip here.")
def reproduce_cmd(frames: Path, composite: Path, weights: str | None, output: Path | None) -> None:
    """Recompute the composite's HTNet flow pictures from raw frames through the product's face/align/flow stages."""
    from au_annotate.training.reproduce import CHANNELS, ReproduceError, probability_agreement, reproduce
    from au_annotate.weights import WeightsError, load_weights

    console = _console()
    try:
        reps = reproduce(frames, composite)
    except ReproduceError as exc:
        raise click.ClickException(str(exc)) from exc
    t = Table(title="product's pictures vs the composite's (per channel: Pearson r / MAE in grey levels)")
    for col in ("clip", *(f"{c} r" for c in CHANNELS), *(f"{c} MAE" for c in CHANNELS)):
        t.add_column(col, justify="left" if col == "clip" else "right")
    for r in reps:
        t.add_row(r.clip, *(f"{v:.3f}" for v in r.corr), *(f"{v:.1f}" for v in r.mae))
    console.print(t)
    result: dict[str, Any] = {"clips": {r.clip: {"corr": dict(zip(CHANNELS, r.corr, strict=True)),
                                                 "mae": dict(zip(CHANNELS, r.mae, strict=True))} for r in reps}}
    if weights is not None:
        try:
            loaded = load_weights(weights)
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from exc
        agreement = probability_agreement(loaded, reps)
        result["model"] = {"name": loaded.name, "sha256": loaded.sha256, **agreement}
        for clip, e in agreement["clips"].items():
            console.print(f"{clip}: max |dp| {e['max_abs_diff']:.3f}; emotion {e.get('emotion')}; "
                          f"{'agrees' if e['agrees'] else 'DISAGREES'}", highlight=False)
            console.print("  published " + " ".join(f"{k} {v:.2f}" for k, v in e["published"].items()), highlight=False)
            console.print("  ours      " + " ".join(f"{k} {v:.2f}" for k, v in e["ours"].items()), highlight=False)
        console.print(f"usable on the product's own pictures: {agreement['usable']} ({agreement['rule']})",
                      highlight=False)
    if output is not None:
        from au_annotate.flow import save_flow_png

        output.mkdir(parents=True, exist_ok=True)
        for r in reps:
            save_flow_png(output / f"{r.clip}.ours.png", r.ours)
        (output / "agreement.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {output}")


COMMANDS: list[click.Command] = [train_cmd, evaluate_cmd, reproduce_cmd]
