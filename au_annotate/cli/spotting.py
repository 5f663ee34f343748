"""CLI commands (spotting): `evaluate-spotting`, the MEGC protocol on our segment CSVs against a ground-truth CSV."""

from __future__ import annotations

from pathlib import Path

import click

from au_annotate.megc import MegcError, evaluate, read_ground_truth, read_predictions, write_report


@click.command("evaluate-spotting")
@click.option("--gt", "gt_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ground-truth CSV: video, onset_frame, apex_frame, offset_frame, kind (columns renamable below).")
@click.option("--pred", "pred_path", required=True, type=click.Path(path_type=Path),
              help="Our outputs: a folder (segments.csv, else every *.segments.csv) or one segments CSV.")
@click.option("--kind", type=click.Choice(["all", "micro", "macro"]), default="all", show_default=True,
              help="Which rows of the table to show (scoring is always per kind, MEGC style).")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.5,
              show_default=True, help="IoU needed for a match (MEGC: 0.5).")
@click.option("--video-key", type=click.Choice(["auto", "path", "stem"]), default="auto", show_default=True,
              help="Match videos by exact relative path, by file stem, or auto (path if any name matches, else stem).")
@click.option("--only-gt-videos", is_flag=True,
              help="Ignore predictions for videos absent from the ground truth (default: they count as false positives).")
@click.option("--gt-video-col", default="video", show_default=True)
@click.option("--gt-onset-col", default="onset_frame", show_default=True)
@click.option("--gt-apex-col", default="apex_frame", show_default=True)
@click.option("--gt-offset-col", default="offset_frame", show_default=True)
@click.option("--gt-kind-col", default="kind", show_default=True,
              help="Values containing micro/macro, e.g. SAMM-LV's 'Micro - 1/2'.")
@click.option("--gt-sep", default=None, help="Ground-truth delimiter (default: sniffed among , ; tab).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate, to derive micro/macro from durations when the ground truth has no kind column.")
@click.option("--per-video", is_flag=True, help="Also print one row per video.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full evaluation (counts, per video, matches) as JSON.")
def evaluate_spotting(gt_path: Path, pred_path: Path, kind: str, iou_threshold: float, video_key: str,
                      only_gt_videos: bool, gt_video_col: str, gt_onset_col: str, gt_apex_col: str,
                      gt_offset_col: str, gt_kind_col: str, gt_sep: str | None, fps: float | None, per_video: bool,
                      output: Path | None) -> None:
    """Score spotted windows with the MEGC protocol: IoU >= 0.5 (inclusive frames), one TP per ground truth,
    counts pooled over videos, micro and macro separately plus overall."""
    from rich.console import Console
    from rich.table import Table

    try:
        gt = read_ground_truth(gt_path, video_col=gt_video_col, onset_col=gt_onset_col, apex_col=gt_apex_col,
                               offset_col=gt_offset_col, kind_col=gt_kind_col, sep=gt_sep, fps=fps)
        pred = read_predictions(pred_path)
        score = evaluate(gt, pred, threshold=iou_threshold, video_key=video_key, only_gt_videos=only_gt_videos)
    except MegcError as exc:
        raise click.ClickException(str(exc)) from exc
    console = Console()
    table = Table(title=f"MEGC spotting (IoU >= {iou_threshold:g}, pooled over {len(score.per_video)} videos)")
    for col in ("kind", "GT", "pred", "TP", "FP", "FN", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    rows = [(k, score.by_kind[k]) for k in ("micro", "macro") if kind in ("all", k)]
    if kind == "all":
        rows.append(("overall", score.overall))
    for name, c in rows:
        table.add_row(name, str(c.n_gt), str(c.n_pred), str(c.tp), str(c.fp), str(c.fn), f"{c.precision:.3f}",
                      f"{c.recall:.3f}", f"{c.f1:.3f}", style="bold" if name == "overall" else None)
    console.print(table)
    if per_video:
        vt = Table(title="per video")
        for col in ("video", "kind", "GT", "pred", "TP", "F1"):
            vt.add_column(col, justify="left" if col in ("video", "kind") else "right")
        for v, kinds in sorted(score.per_video.items()):
            for k, c in kinds.items():
                if kind in ("all", k) and (c.n_gt or c.n_pred):
                    vt.add_row(v, k, str(c.n_gt), str(c.n_pred), str(c.tp), f"{c.f1:.3f}")
        console.print(vt)
    for note in score.notes:
        console.print(f"[dim]note: {note}[/dim]")
    if output is not None:
        try:
            write_report(score, output)
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from exc
        console.print(f"report: {output}")


COMMANDS: list[click.Command] = [evaluate_spotting]
