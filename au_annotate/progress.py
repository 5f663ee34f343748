"""Progress hooks: the library reports what it is doing through this interface; the CLI renders it (ui.py).

The default hook does nothing, so the library stays silent and free of any UI dependency.
"""

from __future__ import annotations

from au_annotate.records import RunReport, VideoInfo, VideoJob, VideoResult


class ProgressHook:
    """No-op base class; override what you need. Called from the thread that runs `annotate`."""

    def start_run(self, jobs: tuple[VideoJob, ...]) -> None:
        """Before the first video."""

    def start_video(self, job: VideoJob, info: VideoInfo) -> None:
        """A video was opened (its frame count may be an estimate)."""

    def advance(self, job: VideoJob, frames: int) -> None:
        """`frames` more frames of `job` were processed."""

    def end_video(self, result: VideoResult) -> None:
        """A video is finished (done, failed or no face) and its outputs are written."""

    def message(self, text: str) -> None:
        """A one-line notice (e.g. a truncated video, a video without a face) worth showing to the user."""

    def error(self, text: str) -> None:
        """A one-line error: a video failed (the run goes on). Defaults to `message`."""
        self.message(text)

    def end_run(self, report: RunReport) -> None:
        """After the last video."""
