"""One video, one pass: decode -> face -> spot -> flow -> flow samples. The recipe, top to bottom.

Frames stream through three threads joined by bounded queues: decoding, face tracking, and (here) spotting + flow, so
the stages overlap on several cores (OpenCV releases the GIL); OpenCV's own thread pool is turned off meanwhile, since
these threads and the worker processes already use the cores (FFmpeg's decoder still runs its own threads). The decode and face threads run at a lower priority
(HELPER_NICE): the spotter is the slowest stage, and they catch up whenever it waits for them. Nothing holds the whole
video. A ring buffer keeps the aligned crops of the last
`spotter.max_latency_frames` frames, so when the spotter closes a window its onset and apex crops are still at hand.
Everything here is NumPy/OpenCV on the CPU (no torch), so it can run in worker processes; the model runs later, in one
batch runner for all videos (api.py / infer.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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
from au_annotate.face import FaceDetector, FaceTracker, parse_faces
from au_annotate.flow import flow_picture, mosaic_picture
from au_annotate.records import AlignedFace, FlowSample, VideoInfo, VideoJob, Window
from au_annotate.settings import Settings
from au_annotate.spot import Spotter, make_spotter

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


@dataclass
class VideoFailure:
    """A video the CPU pipeline could not turn into samples: status failed or no_face, with a one-line reason."""

    job: VideoJob
    status: str  # "failed" | "no_face"
    error: str
    elapsed_s: float = 0.0
    detail: str = ""  # traceback text, shown with --verbose
    frames: int = 0
    info: VideoInfo | None = None


@dataclass
class StageTimes:
    """Seconds spent per stage, so the next bottleneck is visible. face runs in its own thread and decode is the time it
    waited for decoded frames; spot and flow run in the calling thread (which waits for faces in between)."""

    decode: float = 0.0
    face: float = 0.0
    spot: float = 0.0
    flow: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"decode": self.decode, "face": self.face, "spot": self.spot, "flow": self.flow}


@dataclass
class VideoWork:
    """What the CPU part of the pipeline produced for one video, before the model sees it."""

    job: VideoJob
    info: VideoInfo
    samples: list[FlowSample]
    frames: int
    frames_with_face: int
    faces: int
    signal: np.ndarray  # (N, 2) float32: frame index, spotting signal
    times: StageTimes = field(default_factory=StageTimes)
    elapsed_s: float = 0.0


class CropBuffer:
    """Bounded ring buffer of aligned faces by frame index (memory independent of video length)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(2, capacity)
        self._items: deque[AlignedFace] = deque(maxlen=self.capacity)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, face: AlignedFace) -> None:
        self._items.append(face)

    def pair(self, onset: int, apex: int) -> tuple[AlignedFace, AlignedFace] | None:
        """Crops for onset and apex: the apex's own (or nearest earlier) crop, and the onset crop nearest to `onset`
        in the same tracking epoch (flow across a re-detection would measure the jump). None when nothing fits."""
        items = list(self._items)
        apex_face = min((f for f in items if f.index <= apex), key=lambda f: apex - f.index, default=None)
        if apex_face is None:
            return None
        same = [f for f in items if f.epoch == apex_face.epoch and f.index <= apex_face.index]
        onset_face = min(same, key=lambda f: (abs(f.index - onset), f.index), default=None)
        if onset_face is None:
            return None
        return onset_face, apex_face


@dataclass
class _FaceState:
    """Per-face streaming state: that face's spotter and the ring buffer of its recent crops."""

    spotter: Spotter
    buffer: CropBuffer


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
    times = StageTimes()
    with _single_threaded_opencv(), _open_within_timeout(job, settings) as stream:
        info = stream.info
        if on_start:
            on_start(info)
        fps = info.fps if info.fps > 0 else 30.0
        tracker = FaceTracker(
            fps,
            crop_size=settings.crop_size,
            template_px=settings.track_template_px,
            search_margin=settings.search_margin,
            redetect_below=settings.redetect_below,
            redetect_every_s=settings.redetect_every_s,
            min_face_size=settings.min_face_size,
            max_faces=parse_faces(settings.faces),
            detector=detector,
        )
        signal = array("f")
        tracks: dict[str, _FaceState] = {}  # per face id: its own spotter and crop buffer
        times_s: deque[tuple[int, float]] = deque(maxlen=1)  # resized once the first spotter tells its latency
        samples: list[FlowSample] = []
        keep_blinks = str(settings.spot.get("blinks", "")) in ("label", "keep")
        frames = with_face = 0
        pending = 0

        def new_state(face_id: str) -> _FaceState:
            # the report's signal timeline follows face0 (the largest face at first detection)
            hook = (lambda i, v: signal.extend((float(i), float(v)))) if face_id == "face0" else None
            spotter = make_spotter(settings.spotter, fps, settings.spot, on_signal=hook)
            return _FaceState(spotter, CropBuffer(spotter.max_latency_frames + 2))

        def emit(windows: list[Window], state: _FaceState, last_pts: float) -> None:
            t0 = time.perf_counter()
            lookup = dict(times_s)
            for w in windows:
                if w.kind == "blink" and not keep_blinks:
                    continue  # blinks are not expressions: written only when asked (spot = {blinks = "label"})
                pair = state.buffer.pair(w.onset, w.apex)
                if pair is None:
                    continue
                onset_face, apex_face = pair
                if settings.input_layout == "mosaic":
                    pic = mosaic_picture(onset_face.crop, apex_face.crop, apex_face.landmarks)
                else:
                    pic = flow_picture(onset_face.crop, apex_face.crop)
                offset_s = lookup.get(w.offset, last_pts if w.offset >= frames - 1 else apex_face.pts_s)
                thumb = cv2.resize(apex_face.crop, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
                samples.append(FlowSample(face_id=apex_face.face_id, window=w,
                                          onset_s=lookup.get(w.onset, onset_face.pts_s),
                                          apex_s=lookup.get(w.apex, apex_face.pts_s), offset_s=offset_s, image=pic,
                                          apex_thumb=thumb))
            times.flow += time.perf_counter() - t0

        def tracked() -> Iterator[tuple[int, float, list[AlignedFace], set[str]]]:
            """The face stage, run in its own thread: each frame's aligned faces and the ids the tracker remembers."""
            decoded = prefetch(iter(stream), nice=HELPER_NICE, stall_s=settings.stall_timeout_s)
            with contextlib.closing(decoded):
                while True:
                    t0 = time.perf_counter()
                    frame = next(decoded, None)
                    if frame is None:
                        return
                    t1 = time.perf_counter()
                    times.decode += t1 - t0  # waiting for the decode thread (not for the spotter: that is below)
                    faces = tracker.process_all(frame)
                    alive = tracker.track_ids()
                    times.face += time.perf_counter() - t1
                    yield frame.index, frame.pts_s, faces, alive

        last_pts = 0.0
        # the face stage's own stall timeout is a backstop: a stalled decoder is reported by the face thread first
        stage = prefetch(tracked(), maxsize=32, name="au-annotate-face", nice=HELPER_NICE,
                         stall_s=settings.stall_timeout_s + FACE_STALL_EXTRA_S)
        with _stall_as_decode_error(job, settings), contextlib.closing(stage):  # threads stop before the file closes
            for index, pts_s, faces, alive in stage:
                t2 = time.perf_counter()
                frames += 1
                last_pts = pts_s
                times_s.append((index, pts_s))
                if faces:
                    with_face += 1
                present = {f.face_id: f for f in faces}
                for face_id in present.keys() - tracks.keys():
                    tracks[face_id] = new_state(face_id)
                    if times_s.maxlen is not None and times_s.maxlen < tracks[face_id].buffer.capacity + 1:
                        times_s = deque(times_s, maxlen=tracks[face_id].buffer.capacity + 1)
                for face_id, state in tracks.items():
                    face = present.get(face_id)
                    if face is not None:
                        state.buffer.add(face)
                    windows = state.spotter.process_frame(index, pts_s, face)
                    if windows:
                        times.spot += time.perf_counter() - t2
                        emit(windows, state, last_pts)
                        t2 = time.perf_counter()
                times.spot += time.perf_counter() - t2
                if len(tracks) > len(present):
                    for face_id in [f for f in tracks if f not in alive]:  # forgotten by the tracker: finish and drop
                        state = tracks.pop(face_id)
                        emit(state.spotter.flush(), state, last_pts)  # flow time is counted by emit itself
                pending += 1
                if on_frames and pending >= 25:
                    on_frames(pending)
                    pending = 0
        for state in tracks.values():
            t2 = time.perf_counter()
            windows = state.spotter.flush()
            times.spot += time.perf_counter() - t2
            emit(windows, state, last_pts)
        if on_frames and pending:
            on_frames(pending)
    if frames == 0:
        raise DecodeError(f"{job.path}: no decodable frames")
    if with_face == 0:
        raise NoFaceError(f"{job.path}: no face found in {frames} frames", frames, info)
    samples.sort(key=lambda s: (s.window.onset, s.window.apex, s.face_id))
    sig = np.frombuffer(signal, dtype=np.float32).reshape(-1, 2).copy() if len(signal) else np.zeros((0, 2), np.float32)
    return VideoWork(job=job, info=info, samples=samples, frames=frames, frames_with_face=with_face,
                     faces=len(tracker.face_ids), signal=sig, times=times)


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
        text = str(e).strip().splitlines()
        return VideoFailure(job, "failed", f"{job.path}: {type(e).__name__}: {text[0] if text else ''}".rstrip(": "),
                            time.perf_counter() - t0, detail=traceback.format_exc())
    work.elapsed_s = time.perf_counter() - t0
    return work
