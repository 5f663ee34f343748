"""Terminal rendering with rich: progress bars while a run works and the summary table at the end.

The only module besides the CLI that imports rich; the library reports through ProgressHook and never prints.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from au_annotate.progress import ProgressHook
from au_annotate.records import RunReport, VideoInfo, VideoJob, VideoResult


class RichProgress(ProgressHook):
    """Two bars: videos finished, and frames processed over all started videos (with frames/s and ETA).

    Frame counts of videos arrive as they start, so the frames bar stays right with parallel workers."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._videos: TaskID | None = None
        self._frames: TaskID | None = None
        self._total_frames = 0
        self._n_videos = 0
        self._started = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_run(self, jobs: tuple[VideoJob, ...]) -> None:
        self._n_videos = len(jobs)
        self._videos = self.progress.add_task("videos", total=len(jobs), rate="")
        self._frames = self.progress.add_task("frames", total=None, rate="")

    def start_video(self, job: VideoJob, info: VideoInfo) -> None:
        self._started += 1
        self._total_frames += max(0, info.n_frames)
        if self._frames is not None:
            # until every video has started, extrapolate the total from the videos seen so far (for the ETA)
            estimate = self._total_frames * self._n_videos / max(1, self._started)
            self.progress.update(self._frames, total=int(estimate) or None)

    def advance(self, job: VideoJob, frames: int) -> None:
        if self._frames is None:
            return
        self.progress.advance(self._frames, frames)
        task = next(t for t in self.progress.tasks if t.id == self._frames)
        if task.speed:
            self.progress.update(self._frames, rate=f"{task.speed:,.0f} fps")

    def end_video(self, result: VideoResult) -> None:
        if self._videos is not None:
            self.progress.advance(self._videos, 1)

    def message(self, text: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.progress.console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


class LogProgress(ProgressHook):
    """Progress for logs (stderr not a terminal: batch jobs, clusters): one tqdm-formatted line at most every 30 s and
    one per finished video, each ending in a newline (no carriage-return redraws in log files)."""

    def __init__(self, file: TextIO, mininterval: float = 30.0) -> None:
        from tqdm import tqdm

        self._meter = tqdm.format_meter
        self._file = file
        self._mininterval = mininterval
        self._n_videos = self._started = self._done = self._total = self._frames = 0
        self._t0 = self._last = time.monotonic()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _line(self) -> None:
        now = time.monotonic()
        self._last = now
        if self._done >= self._n_videos:
            total = self._frames or None
        else:  # until every video has started, extrapolate from the videos seen so far
            total = int(self._total * self._n_videos / max(1, self._started)) or None
        text = self._meter(self._frames, total, now - self._t0, prefix=f"{self._done}/{self._n_videos} videos",
                           unit="frame", unit_scale=True, ascii=True)
        print(text, file=self._file, flush=True)

    def start_run(self, jobs: tuple[VideoJob, ...]) -> None:
        self._n_videos = len(jobs)

    def start_video(self, job: VideoJob, info: VideoInfo) -> None:
        self._started += 1
        self._total += max(0, info.n_frames)

    def advance(self, job: VideoJob, frames: int) -> None:
        self._frames += frames
        if time.monotonic() - self._last >= self._mininterval:
            self._line()

    def end_video(self, result: VideoResult) -> None:
        self._done += 1
        self._line()

    def message(self, text: str) -> None:
        print(f"warning: {text}", file=self._file, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self._file, flush=True)


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _top(counts: Counter[str], n: int) -> str:
    """'AU12×3 AU4×1': the most frequent active AUs."""
    return " ".join(f"AU{a}×{k}" for a, k in counts.most_common(n)) or "-"


def _duration(r: VideoResult) -> float | None:
    """Seconds of the video that were annotated: what was decoded (a truncated file stops early), else the
    container's duration; None when nothing is known (a failed video)."""
    if r.decoded_s > 0:
        return r.decoded_s
    if r.status == "failed":
        return None
    return r.info.duration_s if r.info else None


def print_summary(report: RunReport, console: Console, *, top_aus: int = 3, wall_s: float | None = None) -> None:
    """Per-video rows, totals, failures with reasons, where the outputs went and the time taken (`wall_s`: the
    command's wall time, when the caller measured it; else the run's own)."""
    table = Table(title="au-annotate summary", show_footer=True, header_style="bold")
    table.add_column("video", footer="total", overflow="fold")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("faces", justify="right")
    table.add_column("micro", justify="right")
    table.add_column("macro", justify="right")
    table.add_column("top AUs", no_wrap=True, overflow="ellipsis")
    total_dur = 0.0
    n_micro = n_macro = 0
    all_aus: Counter[str] = Counter()
    for r in report.results:
        dur = _duration(r)
        total_dur += dur or 0.0
        micro = sum(1 for s in r.segments if s.kind == "micro" and getattr(s, "quality", "ok") == "ok")
        macro = sum(1 for s in r.segments if s.kind == "macro" and getattr(s, "quality", "ok") == "ok")
        n_micro += micro
        n_macro += macro
        aus: Counter[str] = Counter(a for s in r.segments for a in s.aus.split("+") if a)
        all_aus.update(aus)
        style = {"done": "green", "failed": "red", "no_face": "yellow", "skipped": "cyan"}.get(r.status, "white")
        table.add_row(
            escape(r.job.rel.as_posix()), f"[{style}]{r.status}[/]", _fmt_duration(dur) if dur is not None else "-",
            str(r.faces) if r.info else "-", str(micro), str(macro), _top(aus, top_aus),
        )
    table.columns[2].footer = _fmt_duration(total_dur)
    table.columns[4].footer = str(n_micro)
    table.columns[5].footer = str(n_macro)
    table.columns[6].footer = _top(all_aus, top_aus)
    console.print(table)
    problems = [r for r in report.results if r.error]
    for r in problems:
        label = "[red]failed:[/]" if r.status == "failed" else f"[yellow]{r.status.replace('_', ' ')}:[/]"
        console.print(f"{label} {escape(r.error or '')}", highlight=False, soft_wrap=True)
    for line in report.errors:  # input problems of no single video (a range table row naming no input)
        console.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    for r in report.results:  # why a video's spotting is not to be trusted (also in the manifest and the report)
        for line in r.warnings:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    done = sum(1 for r in report.results if r.status == "done")
    reused = sum(1 for r in report.results if r.status == "skipped")
    console.print(
        f"{done}/{len(report.results)} videos annotated"
        + (f" ({reused} up to date from an earlier run)" if reused else "")
        + f", {n_micro + n_macro} segments, "
        f"{len(report.failed)} failed, {sum(len(r.warnings) for r in report.results)} warnings, "
        f"{len(report.skipped_files)} non-video files skipped, "
        f"in {_fmt_duration(report.elapsed_s if wall_s is None else wall_s)}. Outputs: {escape(str(Path(report.out_dir)))}",
        highlight=False,
    )
