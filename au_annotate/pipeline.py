"""One video, one pass: decode -> face -> spot -> flow -> flow samples (`VideoRun`, the recipe top to bottom).

Frames stream through three threads joined by bounded queues: decoding, face tracking, and (here) spotting + flow, so
the stages overlap on several cores (OpenCV releases the GIL); OpenCV's own thread pool is turned off meanwhile, since
these threads and the worker processes already use the cores (FFmpeg's decoder still runs its own threads). The decode
and face threads run at a lower priority (HELPER_NICE): the spotter is the slowest stage, and they catch up whenever it
waits for them. Nothing holds the whole video: each face's spotter keeps the aligned faces and timestamps of its last
`max_latency_frames` frames in its ring (the only one), so when it closes a window the onset and apex crops are still
at hand (`Spotter.face_pair`).
Everything here is NumPy/OpenCV on the CPU (no torch), so it can run in worker processes; the model runs later, in one
batch runner for all videos (collect.py / infer.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from au_annotate.decode import (
    DecodeError,
    StallError,
    VideoStream,
    abandon_native_stderr,
    forget_abandoned_thread,
    open_video,
    prefetch,
)
from au_annotate.errors import one_line
from au_annotate.face import FaceDetector, FaceTracker, parse_faces
from au_annotate.flow import picture_for
from au_annotate.quality import SHORT_VIDEO_S
from au_annotate.ranges import RangeError, usable_ranges
from au_annotate.records import AlignedFace, DetectionFloor, FlowSample, VideoInfo, VideoJob, Window
from au_annotate.settings import Settings
from au_annotate.spot import SpotConfig, Spotter, make_spotter
from au_annotate.strips import MAX_NEAR_MISSES, MAX_STRIPS_PER_VIDEO, make_strip
from au_annotate.work import StageTimes, VideoFailure, VideoWork

THUMB_SIZE = 96  # apex thumbnails kept per window for the HTML report (9 KB each)
# The decode and face threads run ahead of the spotter (the slowest stage) through bounded queues; a lower priority
# for them lets the spotter have a core when all are runnable (measured: ~15 % more frames/s on 2 cores).
HELPER_NICE = 5
FACE_STALL_EXTRA_S = 30.0  # the face stage's stall timeout is the decoder's plus this (a backstop: decode reports first)


class NoFaceError(RuntimeError):
    """The video decoded, but no face was found in any frame."""

    def __init__(self, message: str, frames: int = 0, info: VideoInfo | None = None) -> None:
        super().__init__(message)
        self.frames = frames
        self.info = info


_COLUMNS = {"micro": 1, "macro": 2, "floor": 3}


class _Signals:
    """The spotting signals of one face (the report's timeline), as rows of frame index, micro value, macro value and
    detection floor (% of the eye distance)."""

    def __init__(self) -> None:
        self._rows = array("f")

    def __call__(self, detector: str, index: int, value: float) -> None:
        """The spotter's on_signal hook: one sample of the micro or the macro detector, or of the floor."""
        row = [float(index), math.nan, math.nan, math.nan]
        row[_COLUMNS[detector]] = float(value)
        self._rows.extend(row)

    def array(self) -> np.ndarray:
        """(N, 4) float32 sorted by frame index (NaN where a column took no sample)."""
        if not len(self._rows):
            return np.zeros((0, 4), np.float32)
        sig = np.frombuffer(self._rows, dtype=np.float32).reshape(-1, 4).copy()
        return sig[np.argsort(sig[:, 0], kind="stable")]


_NEXT_RANGE = object()  # the face stage's marker between two ranges

SpotterFactory = Callable[[str, float, Callable[[str, int, float], None] | None], Spotter]
"""spotter_factory(face_id, fps, on_signal) -> the Spotter of one face track (VideoRun's default: the settings' one)."""


class VideoRun:
    """One video, one pass: decode -> face -> spot -> flow. `run()` returns its VideoWork (no model here).

    The steps, in the order a frame meets them: `_tracked` (the face thread: decoded frame -> aligned faces),
    `_on_frame` (each face into its spotter), `_emit` (a closed window -> flow sample from the onset and apex crops the
    spotter's ring still holds), `_finish` (flush the spotters, check the video had frames and a face)."""

    def __init__(self, job: VideoJob, settings: Settings, *, detector: FaceDetector | None = None,
                 on_start: Callable[[VideoInfo], None] | None = None,
                 on_frames: Callable[[int], None] | None = None,
                 spotter_factory: SpotterFactory | None = None) -> None:
        self.job, self.settings, self.detector = job, settings, detector
        self.spotter_factory = spotter_factory or (
            lambda face_id, fps, on_signal: make_spotter(settings.spotter, fps, settings.spot, on_signal=on_signal,
                                                         near_misses=settings.report))
        self.on_start, self.on_frames = on_start, on_frames
        self.times = StageTimes()
        self.samples: list[FlowSample] = []
        self.unreported: list[Window] = []
        self.floors: dict[str, DetectionFloor] = {}  # per face id: how small a movement its spotter could see
        self.signals = _Signals()  # the report's timeline follows face0 (the largest face at first detection)
        self.tracks: dict[str, Spotter] = {}  # per face id: its own spotter (which keeps that face's recent crops)
        spot = SpotConfig.from_any(settings.spot)  # the one source of the spotting defaults
        self.keep_blinks = spot.blinks == "label"
        self.keep_gated = spot.gated == "label"  # windows whose quality is not "ok"
        self.pictures = settings.report  # frame strips and previews of every window, for the HTML report (strips.py)
        self.strips_made = 0
        self.near: dict[str, list[tuple[float, int, int, Window]]] = {}  # per face: the strongest below-threshold peaks
        self.face_frames: dict[str, int] = {}  # frames each face id was tracked in
        self.ranges: tuple[tuple[float, float], ...] = ()  # the job's ranges that apply to this video (none: all of it)
        self.notes: list[str] = []  # ranges clipped or left out, one line each (the video's warnings)
        self.face_ids: set[str] = set()  # every face id any range's tracker gave
        self.span_first: float | None = None  # time of the first frame of the range being read
        self.decoded_s = 0.0  # seconds of video decoded over the ranges
        self.frames = self.with_face = self._pending_frames = 0
        self.last_pts = 0.0
        self.last_index = -1  # index of the latest frame fed to the spotters
        self.fps = 30.0
        self.tracker: FaceTracker | None = None

    def run(self) -> VideoWork:
        """Decode, track and spot every frame (of the job's ranges), then return the flow samples. Raises DecodeError
        for unreadable video (or unusable ranges) and NoFaceError when no frame had a face."""
        if self.job.range_error:
            raise DecodeError(self.job.range_error)
        with _single_threaded_opencv(), _open_within_timeout(self.job, self.settings) as stream:
            self._start(stream)
            # the face stage's own stall timeout is a backstop: a stalled decoder is reported by the face thread first
            stage = prefetch(self._tracked(stream), maxsize=32, name="au-annotate-face", nice=HELPER_NICE,
                             stall_s=self.settings.stall_timeout_s + FACE_STALL_EXTRA_S)
            with _stall_as_decode_error(self.job, self.settings), contextlib.closing(stage):  # threads stop first
                for item in stage:
                    if item is _NEXT_RANGE:
                        self._end_range()
                        continue
                    self._on_frame(*item)
            self._finish()
        return self._work(stream.info)

    def _start(self, stream: VideoStream) -> None:
        info = stream.info
        if self.on_start:
            self.on_start(info)
        self.fps = info.fps if info.fps > 0 else 30.0
        if self.job.ranges:  # clipped to the video; too short ones left out with a note; none left: the video fails
            try:
                self.ranges, self.notes = usable_ranges(self.job, info.duration_s, SHORT_VIDEO_S)
            except RangeError as e:
                raise DecodeError(one_line(e)) from None
        self.tracker = self._new_tracker()

    def _new_tracker(self) -> FaceTracker:
        s = self.settings
        return FaceTracker(self.fps, crop_size=s.crop_size, template_px=s.track_template_px,
                           search_margin=s.search_margin, redetect_below=s.redetect_below,
                           redetect_every_s=s.redetect_every_s, min_face_size=s.min_face_size,
                           max_faces=parse_faces(s.faces), detector=self.detector)

    def _tracked(self, stream: VideoStream) -> Iterator[tuple[int, float, list[AlignedFace], set[str]] | object]:
        """The face stage, run in its own thread: each frame's aligned faces and the ids the tracker remembers; between
        two ranges a _NEXT_RANGE marker, and a fresh tracker (a range is analysed as a video of its own)."""
        assert self.tracker is not None
        for n, span in enumerate(self.ranges or (None,)):
            if n:
                self.face_ids |= set(self.tracker.face_ids)
                self.tracker = self._new_tracker()
                yield _NEXT_RANGE
            frames = iter(stream) if span is None else stream.between(*span)
            decoded = prefetch(frames, nice=HELPER_NICE, stall_s=self.settings.stall_timeout_s)
            with contextlib.closing(decoded):
                while True:
                    t0 = time.perf_counter()
                    frame = next(decoded, None)
                    if frame is None:
                        break
                    t1 = time.perf_counter()
                    self.times.decode += t1 - t0  # waiting for the decode thread (not for the spotter: that is below)
                    faces = self.tracker.process_all(frame)
                    alive = self.tracker.track_ids()
                    self.times.face += time.perf_counter() - t1
                    yield frame.index, frame.pts_s, faces, alive
        self.face_ids |= set(self.tracker.face_ids)

    def _end_range(self) -> None:
        """A range ended: its face tracks are finished (their last windows flushed) and the next range starts afresh."""
        for face_id, spotter in self.tracks.items():
            self._flush(face_id, spotter)
        self.tracks = {}
        self._close_span()

    def _close_span(self) -> None:
        if self.span_first is not None:
            self.decoded_s += self.last_pts - self.span_first + 1.0 / self.fps
        self.span_first = None

    def _on_frame(self, index: int, pts_s: float, faces: list[AlignedFace], alive: set[str]) -> None:
        """One tracked frame: every known face's spotter sees it (None where that face is missing this frame)."""
        self.frames += 1
        self.with_face += bool(faces)
        self.last_pts, self.last_index = pts_s, index
        if self.span_first is None:
            self.span_first = pts_s
        present = {f.face_id: f for f in faces}
        for face_id in present:
            self.face_frames[face_id] = self.face_frames.get(face_id, 0) + 1
        for face_id in present.keys() - self.tracks.keys():
            self._new_track(face_id)
        for face_id, spotter in self.tracks.items():
            t0 = time.perf_counter()
            windows = spotter.process_frame(index, pts_s, present.get(face_id))
            self.times.spot += time.perf_counter() - t0
            self._emit(face_id, windows, spotter)
            if self.pictures:
                self._near_misses(face_id, spotter)
        if len(self.tracks) > len(present):
            for face_id in [f for f in self.tracks if f not in alive]:  # forgotten by the tracker: finish and drop
                self._flush(face_id, self.tracks.pop(face_id))
        self._pending_frames += 1
        if self.on_frames and self._pending_frames >= 25:
            self.on_frames(self._pending_frames)
            self._pending_frames = 0

    def _new_track(self, face_id: str) -> None:
        hook = self.signals if face_id == "face0" else None
        self.tracks[face_id] = self.spotter_factory(face_id, self.fps, hook)

    def _flush(self, face_id: str, spotter: Spotter) -> None:
        t0 = time.perf_counter()
        windows = spotter.flush()
        floor = spotter.detection_floor()
        self.times.spot += time.perf_counter() - t0
        known = self.floors.get(face_id)
        if floor is not None and (known is None or floor.steps > known.steps):  # a face id tracked twice: the longer
            self.floors[face_id] = floor
        self._emit(face_id, windows, spotter)
        if self.pictures:
            self._near_misses(face_id, spotter)

    def _pictured(self, face_id: str, w: Window, spotter: Spotter, reason: str = "", counted: bool = True) -> Window:
        """The window with its reason and, when a report is written, its frame strip and preview (strips.py); at most
        MAX_STRIPS_PER_VIDEO `counted` ones per video (the near misses have their own bound)."""
        strip = None
        if self.pictures and (not counted or self.strips_made < MAX_STRIPS_PER_VIDEO):
            t0 = time.perf_counter()
            strip = make_strip(w, spotter.face_at, spotter.time_at, self.last_index)
            self.times.flow += time.perf_counter() - t0
            self.strips_made += counted
        return dataclasses.replace(w, reason=reason or w.reason, strip=strip, face_id=face_id)

    def _near_misses(self, face_id: str, spotter: Spotter) -> None:
        """Keep the strongest MAX_NEAR_MISSES below-threshold peaks of a face, pictured while the ring holds them."""
        heap = self.near.setdefault(face_id, [])
        for w in spotter.near_misses():
            if len(heap) >= MAX_NEAR_MISSES and w.score <= heap[0][0]:
                continue
            item = (w.score, w.apex, w.onset, self._pictured(face_id, w, spotter, counted=False))  # a peak has one apex
            heapq.heappush(heap, item) if len(heap) < MAX_NEAR_MISSES else heapq.heapreplace(heap, item)

    def _emit(self, face_id: str, windows: list[Window], spotter: Spotter) -> None:
        """Closed windows -> flow samples, from the onset and apex crops still in the face spotter's ring."""
        if not windows:
            return
        t0 = time.perf_counter()

        def at(index: int, default: float) -> float:
            t = spotter.time_at(index)
            return default if t is None else t

        for w in windows:
            if w.kind == "blink" and not self.keep_blinks:
                self.unreported.append(self._pictured(face_id, w, spotter, "blink"))  # written only when asked (--blinks label)
                continue
            if w.quality != "ok" and not self.keep_gated:
                self.unreported.append(self._pictured(face_id, w, spotter, w.quality))  # head motion, ...: --gated label keeps it
                continue
            w = self._pictured(face_id, w, spotter)
            pair = spotter.face_pair(w.onset, w.apex)
            if pair is None:
                continue
            onset_face, apex_face = pair
            pic = picture_for(self.settings.input_layout, onset_face.crop, apex_face.crop, apex_face.landmarks,
                              self.settings.tvl1)
            offset_s = at(w.offset, self.last_pts if w.offset >= self.last_index else apex_face.pts_s)
            thumb = cv2.resize(apex_face.crop, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
            self.samples.append(FlowSample(face_id=apex_face.face_id, window=w, onset_s=at(w.onset, onset_face.pts_s),
                                           apex_s=at(w.apex, apex_face.pts_s), offset_s=offset_s, image=pic,
                                           apex_thumb=thumb))
        self.times.flow += time.perf_counter() - t0

    def _finish(self) -> None:
        for face_id, spotter in self.tracks.items():
            self._flush(face_id, spotter)
        self._close_span()
        if self.on_frames and self._pending_frames:
            self.on_frames(self._pending_frames)
            self._pending_frames = 0

    def _work(self, info: VideoInfo) -> VideoWork:
        if self.frames == 0:
            raise DecodeError(f"{self.job.path}: no decodable frames")
        if self.with_face == 0:
            raise NoFaceError(f"{self.job.path}: no face found in {self.frames} frames", self.frames, info)
        self.samples.sort(key=lambda s: (s.window.onset, s.window.apex, s.face_id))
        assert self.tracker is not None
        return VideoWork(job=self.job, info=info, samples=self.samples, frames=self.frames,
                         frames_with_face=self.with_face, faces=len(self.face_ids),
                         signal=self.signals.array(), times=self.times, notes=tuple(self.notes),
                         decoded_s=self.decoded_s if self.ranges else self.last_pts + 1.0 / self.fps,
                         unreported=tuple(sorted(self.unreported + [w for heap in self.near.values() for *_, w in heap],
                                                 key=lambda w: (w.onset, w.apex))),
                         floors=dict(sorted(self.floors.items())), face_frames=dict(sorted(self.face_frames.items())))


def process_video(
    job: VideoJob,
    settings: Settings,
    *,
    detector: FaceDetector | None = None,
    on_start: Callable[[VideoInfo], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> VideoWork:
    """Run decode -> face -> spot -> flow over one video and return its flow samples (no model here).

    Raises DecodeError for unreadable video and NoFaceError when no frame had a face."""
    return VideoRun(job, settings, detector=detector, on_start=on_start, on_frames=on_frames).run()


def _open_within_timeout(job: VideoJob, settings: Settings) -> VideoStream:
    """open_video in a helper thread, bounded by the stall timeout: opening a file on storage that stopped answering
    (and the luma probe's first frames) must fail that video, not hang the run. An abandoned open gives stderr back
    and never captures it again; if it completes later it closes its own stream; one stuck in native code stays
    behind as a daemon thread."""
    box: dict[str, object] = {}
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        try:
            stream = open_video(job.path, settings.decoder, gray=settings.luma)
        except BaseException as e:  # noqa: BLE001 - handed over to the caller below
            with lock:
                box["error"] = e
                done.set()
        else:
            with lock:
                if box.get("abandoned"):
                    stream.close()  # the caller gave up on it already
                else:
                    box["stream"] = stream
                done.set()
        finally:
            with lock:
                if box.get("abandoned"):
                    forget_abandoned_thread(threading.get_ident())  # its id may be reused by a healthy thread

    helper = threading.Thread(target=work, name="au-annotate-open", daemon=True)
    helper.start()

    def give_up() -> None:
        """Leave the open behind (under `lock`): it closes what it makes, and never holds stderr again."""
        box["abandoned"] = True
        abandon_native_stderr(helper.ident or 0)

    try:
        done.wait(min(settings.stall_timeout_s, threading.TIMEOUT_MAX))  # inf: no limit
    except BaseException:  # interrupted while waiting (Ctrl-C, a cancelled Ray task): nothing may leak
        with lock:
            late = box.pop("stream", None)
            if not done.is_set():
                give_up()
        if late is not None:
            late.close()  # type: ignore[attr-defined]
        raise
    with lock:
        if not done.is_set():
            give_up()
            raise DecodeError(f"{job.path}: opening stalled: no answer for {settings.stall_timeout_s:g} s (a hung "
                              "decoder or unreachable storage)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["stream"]  # type: ignore[return-value]


@contextlib.contextmanager
def _stall_as_decode_error(job: VideoJob, settings: Settings) -> Iterator[None]:
    """A stalled decode or face thread fails this video with a one-line reason (the run goes on with the others)."""
    try:
        yield
    except StallError as e:
        decode = "decode" in str(e)
        waited = settings.stall_timeout_s + (0.0 if decode else FACE_STALL_EXTRA_S)
        raise DecodeError(f"{job.path}: {'decoding' if decode else 'face tracking'} stalled: no frame for {waited:g} s "
                          "(a hung decoder or unreachable storage)") from None


class _Tuning:
    """What _single_threaded_opencv changed, and for how many running videos."""

    lock = threading.Lock()
    users = 0
    cv2_threads = 0


@contextlib.contextmanager
def _single_threaded_opencv() -> Iterator[None]:
    """OpenCV's thread pool off while at least one video runs: the pipeline's threads and worker processes already use
    the cores, and the pool's synchronisation on small images only costs CPU (measured: 15 % more CPU for the same
    frames/s). The first video in turns it off, the last one out restores it (process_video calls overlapping in one
    process, from an API user's threads, must not restore it under each other)."""
    with _Tuning.lock:
        if _Tuning.users == 0:
            _Tuning.cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _Tuning.users += 1
    try:
        yield
    finally:
        with _Tuning.lock:
            _Tuning.users -= 1
            if _Tuning.users == 0:
                cv2.setNumThreads(_Tuning.cv2_threads)


_DETECTOR: FaceDetector | None = None


def _shared_detector(min_face_size: int) -> FaceDetector:
    """One MTCNN per process (its nets load once), reused across videos."""
    global _DETECTOR
    if _DETECTOR is None or _DETECTOR._min_face != min_face_size:  # noqa: SLF001
        _DETECTOR = FaceDetector(min_face_size=min_face_size)
    return _DETECTOR


def run_video(
    job: VideoJob,
    settings: Settings,
    *,
    on_start: Callable[[VideoInfo], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> VideoWork | VideoFailure:
    """process_video that never raises for a bad video: failures come back as VideoFailure (picklable, for workers)."""
    import traceback

    t0 = time.perf_counter()
    try:
        work = process_video(job, settings, detector=_shared_detector(settings.min_face_size), on_start=on_start,
                             on_frames=on_frames)
    except NoFaceError as e:
        return VideoFailure(job, "no_face", str(e), time.perf_counter() - t0, frames=e.frames, info=e.info)
    except DecodeError as e:
        return VideoFailure(job, "failed", str(e), time.perf_counter() - t0)
    except MemoryError:
        return VideoFailure(job, "failed", f"{job.path}: out of memory", time.perf_counter() - t0)
    except Exception as e:  # one bad video must not cost the rest of the run
        return VideoFailure(job, "failed", f"{job.path}: {one_line(e, with_type=True)}", time.perf_counter() - t0,
                            detail=traceback.format_exc())
    work.elapsed_s = time.perf_counter() - t0
    return work
