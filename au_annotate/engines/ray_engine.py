"""Ray engine: the per-video CPU pipeline as Ray tasks on a cluster (or a local Ray instance), for bulk datasets.

Each video is one Ray task running `pipeline.run_video` (decode -> face -> spot -> flow) on a worker; the task returns
the video's flow samples (about 2.3 KB per window, plus its spotting signal) to the driver through the object store.
The driver keeps what the local engine does: it batches the samples of all videos through the one model runner,
writes every output and the manifest, so outputs, layout and resume are the same whatever the engine.

- Inputs travel as paths: workers open the videos themselves, so the input folders must be on storage every node sees
  under the same path (NFS, a cluster file system, or a single machine).
- A task whose worker process dies (killed, out of memory, node lost) is retried by Ray up to `max_retries` times; a
  video that still fails, or a task that raises, becomes a failed video and the run goes on.
- Progress: workers send (video started, frames so far) to a small progress actor; the driver drains it and feeds the
  usual ProgressHook. Counts are cumulative per attempt, so a retried video does not count its frames twice.

Inference stays on the driver (docs/architecture.md): the model is small (under 1 M parameters) and a video yields a few windows
per minute, so the model is a tiny share of the work; one runner on the driver fills full batches from all videos and uses
the driver's GPU when it has one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
import ray.exceptions

from au_annotate.engines.base import EngineError, Outcome
from au_annotate.errors import one_line
from au_annotate.pipeline import run_video
from au_annotate.progress import ProgressHook
from au_annotate.records import VideoInfo, VideoJob
from au_annotate.settings import Settings
from au_annotate.work import VideoFailure, VideoWork

VideoFn = Callable[..., "VideoWork | VideoFailure"]

PROGRESS_EVERY_S = 0.5  # a worker reports its frame count at most this often
DEFAULT_MAX_RETRIES = 3  # Ray retries of a task whose worker process died
CPUS_PER_VIDEO = 2  # a video's decode, face and spotting threads keep ~1.7 cores busy (local engine: cores/2 jobs)


def task_cpus(nodes: Sequence[dict[str, Any]]) -> int:
    """CPUs each video task reserves: CPUS_PER_VIDEO, or fewer when no alive node has that many (a task that asks
    for more than any node has would wait forever)."""
    biggest = max((float(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive", True)), default=0.0)
    return max(1, min(CPUS_PER_VIDEO, int(biggest)))


@ray.remote(num_cpus=0)
class _ProgressLog:
    """Collects progress events from the tasks until the driver drains them (a small actor, no CPU reserved)."""

    def __init__(self) -> None:
        self._events: list[tuple[int, str, object]] = []

    def put(self, event: tuple[int, str, object]) -> None:
        self._events.append(event)

    def drain(self) -> list[tuple[int, str, object]]:
        out, self._events = self._events, []
        return out


def _video_task(index: int, job: VideoJob, settings: Settings, progress: Any, video_fn: VideoFn
                ) -> VideoWork | VideoFailure:
    """Body of one Ray task: run one video and report (start, cumulative frames) to the progress actor."""
    import cv2

    # the task reserves task_cpus() CPUs (2 where nodes have them), which a video's own threads (decode, face, spot)
    # already keep ~1.7 busy: OpenCV's thread pool on top would only oversubscribe the node (process_video also turns
    # it off per video)
    cv2.setNumThreads(1)
    count = 0
    last = time.monotonic()

    def on_start(info: VideoInfo) -> None:
        progress.put.remote((index, "start", info))

    def on_frames(n: int) -> None:
        nonlocal count, last
        count += n
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            progress.put.remote((index, "frames", count))

    outcome = video_fn(job, settings, on_start=on_start, on_frames=on_frames)
    if count:
        progress.put.remote((index, "frames", count))
    return outcome


def _one_line(e: BaseException) -> str:
    """A task's error in one line: Ray wraps the task's own exception (its `cause`) and puts the cause's text last."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    return one_line(err, with_type=True, last=isinstance(err, ray.exceptions.RayError))


class RayEngine:
    """Run each video as a Ray task; connect to `address` (None/"auto": a running cluster or a new local instance)."""

    def __init__(self, address: str | None = None, jobs: int = 0, *, max_retries: int = DEFAULT_MAX_RETRIES,
                 video_fn: VideoFn = run_video) -> None:
        self.address = None if address in (None, "", "auto") else address
        self.jobs = max(0, int(jobs or 0))  # 0: as many tasks at once as the cluster's CPUs hold (task_cpus each)
        self.max_retries = max(0, int(max_retries))
        self.video_fn = video_fn  # the per-video function (pipeline.run_video); replaceable for tests and plugins
        self._owned = False
        self._cpus = 1  # per task; set from the cluster when a run starts
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            except Exception as e:  # ConnectionError, RuntimeError, ValueError... from a bad or unreachable address
                where = self.address or "a local instance"
                raise EngineError(f"--engine ray: cannot connect to Ray at {where}: {_one_line(e)}") from None
            self._owned = True

    def _limit(self) -> int:
        """Tasks kept in flight: --jobs when given, else as many as the cluster's CPUs hold (re-read: clusters grow and
        shrink)."""
        if self.jobs:
            return self.jobs
        try:
            return max(1, int(ray.cluster_resources().get("CPU", 1)) // self._cpus)
        except Exception:  # pragma: no cover - GCS briefly unreachable
            return 1

    def run(self, jobs: Sequence[VideoJob], settings: Settings, hook: ProgressHook) -> Iterator[Outcome]:
        """Yield (job, VideoWork | VideoFailure) for every job as its task completes (any order)."""
        try:
            yield from self._run(list(jobs), settings, hook)
        finally:
            if self._owned:
                ray.shutdown()
                self._owned = False

    def _run(self, jobs: list[VideoJob], settings: Settings, hook: ProgressHook) -> Iterator[Outcome]:
        if not jobs:
            return
        try:
            self._cpus = task_cpus(ray.nodes())
        except Exception:  # pragma: no cover - GCS briefly unreachable: the safe choice
            self._cpus = 1
        task = ray.remote(num_cpus=self._cpus, max_retries=self.max_retries, retry_exceptions=False)(_video_task)
        progress = _ProgressLog.remote()
        settings_ref = ray.put(settings)
        fn_ref = ray.put(self.video_fn)
        started: set[int] = set()
        reported = [0] * len(jobs)  # frames already passed to the hook, per video (never goes down on a retry)
        in_flight: dict[ray.ObjectRef, int] = {}
        next_i = 0

        def handle(events: list[tuple[int, str, object]]) -> None:
            for i, kind, value in events:
                if kind == "start":
                    if i not in started:
                        started.add(i)
                        hook.start_video(jobs[i], value)  # type: ignore[arg-type]
                elif kind == "frames" and int(value) > reported[i]:  # type: ignore[call-overload]
                    hook.advance(jobs[i], int(value) - reported[i])  # type: ignore[call-overload]
                    reported[i] = int(value)  # type: ignore[call-overload]

        try:
            while next_i < len(jobs) or in_flight:
                limit = self._limit()
                while next_i < len(jobs) and len(in_flight) < limit:
                    # workers may run elsewhere: send an absolute path (inputs must be on shared storage)
                    job = jobs[next_i]
                    remote_job = dataclasses.replace(job, path=job.path.resolve())
                    in_flight[task.remote(next_i, remote_job, settings_ref, progress, fn_ref)] = next_i
                    next_i += 1
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.25)
                handle(ray.get(progress.drain.remote()))
                for ref in done:
                    i = in_flight.pop(ref)
                    job = jobs[i]
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as e:  # task raised, or its worker kept dying
                        outcome = VideoFailure(job, "failed", f"{job.path}: Ray task failed: {_one_line(e)}")
                    outcome = dataclasses.replace(outcome, job=job)  # the driver's own job object (input order)
                    if isinstance(outcome, VideoWork):
                        if i not in started:
                            started.add(i)
                            hook.start_video(job, outcome.info)
                        handle([(i, "frames", outcome.frames)])
                    yield job, outcome
        except BaseException:
            for ref in in_flight:
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                ray.kill(progress)
