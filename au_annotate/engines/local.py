"""Local engine: videos one after another in this process, or in `jobs` worker processes at once.

Workers are started with the `spawn` method (safe with torch and OpenCV threads) and report progress through a queue,
so the one progress bar stays right with parallel workers. Each worker keeps its own MTCNN for all its videos.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from au_annotate.engines.base import Outcome
from au_annotate.pipeline import run_video
from au_annotate.progress import ProgressHook
from au_annotate.records import VideoInfo, VideoJob
from au_annotate.settings import Settings
from au_annotate.work import VideoFailure


def default_jobs() -> int:
    """A sensible number of worker processes: one per two cores. One video already keeps about 1.7 cores busy (its
    decode, face and spotting threads); measured on 2 cores: --jobs 2 ran 1.00x --jobs 1 (409 vs 411 frames/s)."""
    return max(1, (os.cpu_count() or 1) // 2)


_EVENTS: queue.Queue | None = None


def _init_worker(events: queue.Queue) -> None:
    global _EVENTS
    _EVENTS = events
    try:
        import cv2

        cv2.setNumThreads(1)  # processes give the parallelism; avoid oversubscribing the cores
    except Exception:  # pragma: no cover
        pass


def _worker(job: VideoJob, settings: Settings):  # noqa: ANN202 - returns an Outcome's second half
    events = _EVENTS

    def start(info: VideoInfo) -> None:
        if events is not None:
            events.put(("start", job, info))

    def frames(n: int) -> None:
        if events is not None:
            events.put(("frames", job, n))

    return run_video(job, settings, on_start=start, on_frames=frames)


class LocalEngine:
    """Run videos here (jobs=1) or in a pool of `jobs` spawned worker processes."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs))

    def run(self, jobs: Sequence[VideoJob], settings: Settings, hook: ProgressHook) -> Iterator[Outcome]:
        if self.jobs == 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, run_video(job, settings, on_start=lambda info, j=job: hook.start_video(j, info),
                                     on_frames=lambda n, j=job: hook.advance(j, n))
            return
        ctx = mp.get_context("spawn")
        events: queue.Queue = ctx.Manager().Queue()
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(events,)) as pool:
            futures: dict[Future, VideoJob] = {pool.submit(_worker, job, settings): job for job in jobs}
            try:
                while futures:
                    done, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
                    self._drain(events, hook)
                    for fut in done:
                        job = futures.pop(fut)
                        try:
                            outcome = fut.result()
                        except Exception as e:  # a worker died (killed, out of memory): that video fails, not the run
                            outcome = VideoFailure(job, "failed", f"{job.path}: worker process failed: {e}")
                        yield job, outcome
                self._drain(events, hook)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise

    @staticmethod
    def _drain(events: queue.Queue, hook: ProgressHook) -> None:
        while True:
            try:
                kind, job, value = events.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                hook.start_video(job, value)
            else:
                hook.advance(job, value)
