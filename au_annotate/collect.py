"""Running the videos of a plan: engine outcomes, put back in input order -> model batches over all videos ->
segments -> outputs -> manifest entry and progress, video by video.

Outcomes are consumed in input order so that batches, and therefore results, are the same whatever the number of
workers. Flow samples wait for a full model batch, or at most FLUSH_EVERY_S; on an interrupt `drain()` runs the model
on whatever is finished (also videos that finished ahead of an earlier one still running) and writes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from au_annotate.engines import Outcome
from au_annotate.manifest import Manifest
from au_annotate.plan import RunPlan
from au_annotate.progress import ProgressHook
from au_annotate.quality import video_warnings
from au_annotate.records import VideoJob, VideoResult
from au_annotate.segments import below_min_score, build_segments
from au_annotate.work import VideoFailure, VideoWork
from au_annotate.writers import write_video_outputs

log = logging.getLogger("au_annotate")

FLUSH_EVERY_S = 30.0  # bounds what a killed run can lose: finished videos wait at most this long for a model batch


class Collector:
    """Turns the outcomes of `jobs` into written VideoResults (`results`), recording each in the manifest."""

    def __init__(self, plan: RunPlan, manifest: Manifest, hook: ProgressHook, jobs: Sequence[VideoJob],
                 keys: dict[VideoJob, str | None]) -> None:
        self.plan, self.manifest, self.hook, self.keys = plan, manifest, hook, keys
        self.results: dict[VideoJob, VideoResult] = {}
        self.model_s = 0.0
        self._order = {job: i for i, job in enumerate(jobs)}
        self._waiting: dict[int, VideoWork | VideoFailure] = {}  # finished ahead of an earlier video
        self._next = 0
        self._pending: list[VideoWork] = []  # waiting for a model batch
        self._last_flush = time.monotonic()

    def run(self, outcomes: Iterable[Outcome]) -> None:
        """Consume every outcome (in input order), then run the model on what is left."""
        for job, outcome in outcomes:
            self._waiting[self._order[job]] = outcome
            while self._next in self._waiting:
                self._consume(self._waiting.pop(self._next))
                self._next += 1
        self.flush()

    def drain(self) -> None:
        """After an interrupt: write every video that finished, in input order, skipping those still running."""
        for i in sorted(self._waiting):
            self._consume(self._waiting.pop(i))
        self.flush()

    def _consume(self, outcome: VideoWork | VideoFailure) -> None:
        if isinstance(outcome, VideoFailure):
            self._failed(outcome)
            return
        self._pending.append(outcome)
        full = sum(len(w.samples) for w in self._pending) >= self.plan.settings.batch_size
        if full or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def _failed(self, failure: VideoFailure) -> None:
        if self.plan.settings.verbose and failure.detail:
            log.error("%s", failure.detail)
        (self.hook.error if failure.status == "failed" else self.hook.message)(failure.error)
        res = VideoResult(job=failure.job, status=failure.status, error=failure.error,  # type: ignore[arg-type]
                          elapsed_s=failure.elapsed_s, frames=failure.frames, info=failure.info)
        res = replace(res, warnings=video_warnings(res))
        self._finish(self._write(res) if failure.status == "no_face" else res)

    def flush(self) -> None:
        """Run the model on the flow samples of all pending videos at once, then write those videos. (Results do not
        depend on batch composition: infer.py runs fixed-shape batches.)"""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        pictures = [s.image for w in self._pending for s in w.samples]
        probs = self._predict(np.stack(pictures)) if pictures else np.zeros((0, 0), np.float32)
        start = 0
        while self._pending:
            work = self._pending.pop(0)  # popped one by one: an interrupt mid-way never writes a video twice
            n = len(work.samples)
            segs = build_segments(work, probs[start : start + n], self.plan.model) if n else ()
            start += n
            cut = below_min_score(work, self.plan.model)  # a study's cut-off: shown in the report with that reason
            unreported = tuple(sorted(work.unreported + cut, key=lambda w: (w.onset, w.apex))) if cut else work.unreported
            res = VideoResult(
                job=work.job, status="done", info=work.info, segments=segs, frames=work.frames,
                frames_with_face=work.frames_with_face, faces=work.faces, elapsed_s=work.elapsed_s,
                signal=work.signal, unreported=unreported, decoded_s=work.decoded_s,
                stage_s=work.times.as_dict(), floors=work.floors, face_frames=work.face_frames)
            self._finish(self._write(replace(res, warnings=work.notes + video_warnings(res))))

    def _predict(self, pictures: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.plan.model.runner.predict(pictures)
        finally:
            self.model_s += time.perf_counter() - t0

    def _write(self, res: VideoResult) -> VideoResult:
        try:
            written = write_video_outputs(res, self.plan.ctx, self.plan.settings.formats)
        except OSError as e:
            failed = VideoResult(job=res.job, status="failed", info=res.info,
                                 error=f"{res.job.path}: cannot write outputs: {e.strerror or e}",
                                 frames=res.frames, elapsed_s=res.elapsed_s)
            self.hook.error(failed.error or "")
            return failed
        return replace(res, outputs=written)

    def _finish(self, res: VideoResult) -> None:
        self.results[res.job] = res
        key = self.keys.get(res.job) if res.status in ("done", "no_face") else None
        self.manifest.record(res, key)
        for warning in res.warnings:
            self.hook.message(warning)
        self.hook.end_video(res)
