"""Decode videos as a stream of frames with true presentation times.

Backends share one small interface (`open_video(path, backend)` -> `VideoStream`, iterate for `Frame`s in order);
OpenCV `VideoCapture` is the default (`auto`), decord the fallback. Frames are read strictly sequentially (no `seek`:
decord's seek lands on keyframes) and time-stamped from the container (variable frame rate safe). Colour frames come as
the backend decodes them (OpenCV BGR, decord RGB; `Frame.order` says which). With `gray=True` the OpenCV backend hands
over the luma plane only (`CAP_PROP_CONVERT_RGB` off: no YUV -> BGR conversion, a third of the bytes), after comparing
its first frames (up to 30) with a colour decode; limited-range luma comes with the LUT to the values a BGR -> gray
conversion gives (`Frame.levels`), applied by `Frame.gray()` or, by the face tracker, only where it reads.
A bounded prefetch thread overlaps decoding with the rest of the pipeline without holding the video in memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from au_annotate.errors import one_line
from au_annotate.native import NativeStderr
from au_annotate.records import Frame, VideoInfo

BACKENDS = ("decord", "opencv")
T = TypeVar("T")
log = logging.getLogger("au_annotate")

_QUIET_OPENCV = "OPENCV_LOG_LEVEL" not in os.environ  # the user did not choose a level: keep OpenCV quiet
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # OpenCV's FFmpeg: silent; we report problems ourselves
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _quiet_opencv(cv2: object) -> None:
    """OpenCV reads OPENCV_LOG_LEVEL when cv2 is first imported; if that happened before this module, lower the level
    now. Luma-only reads log "unsupported picture format ... treated as 8UC1" on every frame otherwise."""
    if _QUIET_OPENCV:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # type: ignore[attr-defined]


class DecodeError(RuntimeError):
    """A video cannot be opened or decoded; the message is one line naming the file and the cause."""


class StallError(RuntimeError):
    """A prefetch thread produced nothing for its stall timeout (a hung decoder, unreachable storage)."""


class VideoStream(ABC):
    """An open video: `info`, then frames in presentation order by iteration. Close it (or use `with`)."""

    info: VideoInfo

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    def between(self, start_s: float, end_s: float) -> Iterator[Frame]:
        """The frames whose time is in [start_s, end_s), with their indices and times on the video's own axis. This
        default reads from the start and drops what comes before (exact for any file; backends that can seek override
        it, so decode time follows the range)."""
        for frame in self:
            if frame.pts_s >= end_s:
                return
            if frame.pts_s >= start_s:
                yield frame

    @abstractmethod
    def close(self) -> None:
        """Release the decoder."""

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Native messages that mean something to a user, translated (decord's C++ checks are not meant for people).
_KNOWN_CAUSES = (
    ("cannot find video stream", "no video stream (an audio-only file?)"),
    ("avcodec_send_packet", "corrupt video data"),
    ("moov atom not found", "moov atom not found (a truncated or unfinished recording)"),
    ("invalid data found when processing input", "invalid data (not a video, or a damaged file)"),
)


def clean_cause(text: str, path: Path | None = None) -> str:
    """A native decoder message as a short human reason: no timestamps, C++ source locations or file paths."""
    low = text.lower()
    for needle, reason in _KNOWN_CAUSES:
        if needle in low:
            return reason
    if path is not None:
        text = text.replace(str(path), "")
    text = re.sub(r"\[\d{2}:\d{2}:\d{2}\]\s*", "", text)
    text = re.sub(r"\S*\.(cc|cpp|h):\d+:\s*", "", text)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.strip())
    return text.strip(" .:")[:160] or "unreadable"


class _NativeStderr(NativeStderr):
    """NativeStderr (au_annotate.native) that turns what FFmpeg or dmlc wrote into our one-line reason."""

    def reason(self) -> str:
        """The most telling captured line, without FFmpeg's '[mov,mp4 @ 0x..]' prefixes and file paths."""
        lines = []
        for line in self.text.splitlines():
            line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
            line = re.sub(r"^\S*video_reader\.cc:\d+:\s*", "", line)
            line = re.sub(r"^ERROR opening:\s*[^,]*,\s*", "", line)
            if line and "No such file" not in line:
                lines.append(line)
        return clean_cause(lines[-1]) if lines else ""


def abandon_native_stderr(thread_id: int) -> None:
    """An open running in `thread_id` was given up on (stall timeout): see _NativeStderr.abandon."""
    NativeStderr.abandon(thread_id)


def forget_abandoned_thread(thread_id: int) -> None:
    """An abandoned open's thread is about to end: see _NativeStderr.forget."""
    NativeStderr.forget(thread_id)


class DecordStream(VideoStream):
    """decord.VideoReader read sequentially with `next()`; times from the container's per-frame timestamps."""

    def __init__(self, path: Path) -> None:
        try:
            import decord
        except ImportError as e:  # pragma: no cover - decord is a dependency, but wheels are missing on some platforms
            raise DecodeError(f"{path}: decord is not installed ({e})") from None
        self._decord = decord
        native = _NativeStderr()
        try:
            decord.logging.set_level(decord.logging.ERROR)
            with native.capture():
                self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
                n = len(self._vr)
                if n <= 0:
                    raise DecodeError(f"{path}: no video frames")
                first = self._vr[0].shape
                ts = self._vr.get_frame_timestamp(n - 1)
                fps = float(self._vr.get_avg_fps() or 0.0)
        except DecodeError:
            raise
        except Exception as e:
            cause = native.reason() or clean_cause(one_line(e), path)
            raise DecodeError(f"{path}: cannot open as a video: {cause}") from None
        finally:
            decord.logging.set_level(decord.logging.QUIET)  # damaged frames later are concealed, not printed
        height, width = int(first[0]), int(first[1])
        duration = float(ts[1]) if ts is not None else (n / fps if fps > 0 else 0.0)
        if fps <= 0 and duration > 0:
            fps = n / duration
        self._path = path
        self._turns = _decord_turns(path, self._vr)
        if self._turns % 2:
            height, width = width, height
        self.info = VideoInfo(path=path, backend="decord", width=width, height=height, fps=fps, n_frames=n,
                              duration_s=duration)

    def __iter__(self) -> Iterator[Frame]:
        # A fresh reader starts at frame 0; we never call decord's seek (it can land on a keyframe instead of the frame
        # asked for).
        try:
            vr = self._decord.VideoReader(str(self._path), ctx=self._decord.cpu(0), num_threads=1)
        except Exception as e:
            raise DecodeError(f"{self._path}: cannot open with decord: {clean_cause(one_line(e), self._path)}") from None
        self._vr = vr
        n = self.info.n_frames
        for i in range(n):
            try:
                img = vr.next().asnumpy()
                t = float(vr.get_frame_timestamp(i)[0])
            except StopIteration:
                _warn_short(self._path, i, n, "the stream ended early")
                return
            except Exception as e:
                cause = clean_cause(one_line(e), self._path)
                # decord's decoder stops for good at a damaged packet (and notices it a varying number of frames late,
                # in its decoding thread); OpenCV's FFmpeg conceals what it can, so it takes over from frame i. The
                # frames decoded in all is then what OpenCV manages, the same on every run.
                got = yield from self._opencv_from(i)
                if i + got == 0:
                    raise DecodeError(f"{self._path}: no decodable frames ({cause})") from None
                _warn_short(self._path, i + got, n, cause)
                return
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            if self._turns:
                img = np.ascontiguousarray(np.rot90(img, self._turns))
            yield Frame(index=i, pts_s=t, image=img)

    def _opencv_from(self, start: int) -> Generator[Frame, None, int]:
        """Frames `start`, `start + 1`, ... decoded by OpenCV (read sequentially from the first); returns how many."""
        try:
            stream = OpenCVStream(self._path)
        except DecodeError:
            return 0
        count = 0
        try:
            for frame in stream.frames(warn=False):
                if frame.index >= start:
                    yield frame
                    count += 1
        except DecodeError:
            pass
        finally:
            stream.close()
        return count

    def close(self) -> None:
        self._vr = None  # type: ignore[assignment]


class OpenCVStream(VideoStream):
    """cv2.VideoCapture read sequentially; times from CAP_PROP_POS_MSEC (the frame's own timestamp).

    `gray=True` asks for luma-only frames (order "gray"); the stream falls back to colour when the file's pixel format
    does not decode to a plain 8-bit luma plane (10-bit, 16-bit, RGB video) or its first frames leave the range
    undecided: `self.gray` says what it delivers."""

    def __init__(self, path: Path, gray: bool = False) -> None:
        import cv2

        self._cv2 = cv2
        _quiet_opencv(cv2)
        native = _NativeStderr()
        with native.capture():
            cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cause = native.reason() or "not a video, or an unsupported codec"
            raise DecodeError(f"{path}: cannot open as a video: {cause}")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if width <= 0 or height <= 0:
            cap.release()
            raise DecodeError(f"{path}: no video stream")
        self._cap = cap
        self._path = path
        self._reading = threading.Lock()  # held while the decoder runs: close() never releases it mid-read
        self._lut: np.ndarray | None = None
        self.gray = False
        if gray:
            mapping = _luma_mapping(path)
            if mapping is not None and cap.set(cv2.CAP_PROP_CONVERT_RGB, 0):
                self.gray = True
                self._lut = None if mapping == "full" else _LIMITED_TO_FULL
        self.info = VideoInfo(path=path, backend="opencv", width=width, height=height, fps=fps if fps > 0 else 30.0,
                              n_frames=n, duration_s=n / fps if fps > 0 else 0.0, pixels="gray" if self.gray else "color")

    def __iter__(self) -> Iterator[Frame]:
        return self.frames(warn=True)

    def between(self, start_s: float, end_s: float) -> Iterator[Frame]:
        """Frames in [start_s, end_s): a seek to the frame at start_s (FFmpeg seeks to the keyframe before it and
        decodes forward to it), checked against that frame's own timestamp; when the container's timestamps do not
        agree with the nominal frame rate (variable rate, odd containers) the seek is not trusted and the frames are
        read from the start instead, so the indices stay those of a sequential decode."""
        fps = self.info.fps
        target = int(math.floor(start_s * fps + 1e-6))
        if target <= 0:
            yield from super().between(start_s, end_s)
            return
        for frame in self.frames(warn=False, start=target):
            if frame.index == target and abs(frame.pts_s - target / fps) > 0.5 / fps:
                log.debug("%s: seek to frame %d landed at %.3f s: reading from the start", self._path, target,
                          frame.pts_s)
                yield from super().between(start_s, end_s)
                return
            if frame.pts_s >= end_s:
                return
            if frame.pts_s >= start_s - 0.5 / fps:
                yield frame

    def frames(self, *, warn: bool = True, start: int = 0) -> Iterator[Frame]:
        """Frames in order from frame `start` (0: the first; else by a seek); `warn` logs when the stream ends before
        the container's frame count."""
        cv2 = self._cv2
        cap = self._cap
        if cap is None:
            raise DecodeError(f"{self._path}: the video was closed")
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        fps = self.info.fps
        i = start
        last_t = -1.0
        while True:
            with self._reading:
                if self._cap is None:  # closed (or given up on) meanwhile
                    return
                ok, img = cap.read()
                t = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0 if ok else 0.0
            if not ok or img is None:
                if i == start:
                    raise DecodeError(f"{self._path}: no decodable frames" + (f" from frame {start}" if start else ""))
                if warn:
                    _warn_short(self._path, i, self.info.n_frames, "damaged or truncated data")
                return
            if not np.isfinite(t) or t <= last_t or (i == start > 0 and t <= 0):
                t = last_t + 1.0 / fps if last_t >= 0 else i / fps  # containers without timestamps: nominal rate
            last_t = t
            if self.gray:
                if img.dtype != np.uint8:  # not the 8-bit plane the first frames showed (a format change mid-stream)
                    raise DecodeError(f"{self._path}: luma-only decoding met a {img.dtype} frame; set luma = false")
                if img.ndim != 2:  # the backend ignored CONVERT_RGB after all
                    yield Frame(index=i, pts_s=t, image=cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), order="gray")
                else:  # limited-range luma (16..235) carries its LUT to the 0..255 gray of a BGR decode: Frame.gray()
                    # maps it, and the face tracker maps only the areas it reads (a full 720p frame costs ~0.3 ms)
                    yield Frame(index=i, pts_s=t, image=img, order="gray", levels=self._lut)
            else:
                if img.ndim == 2:
                    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                yield Frame(index=i, pts_s=t, image=img, order="bgr")  # as decoded: stages convert the parts they use
            i += 1

    def close(self) -> None:
        """Release the decoder, unless a read is still running after JOIN_TIMEOUT_S (a hung decoder): then it is left alone,
        since releasing it under the reading thread could crash the process; that thread is abandoned."""
        if getattr(self, "_cap", None) is None:
            return
        if not self._reading.acquire(timeout=JOIN_TIMEOUT_S):
            log.warning("%s: the decoder did not return; leaving it", self._path)
            self._cap = None
            return
        try:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
        finally:
            self._reading.release()


# Video luma is usually "limited range" (16..235); a BGR decode stretches it to 0..255, and so does this table.
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


def _luma_mapping(path: Path, max_frames: int = 30) -> str | None:
    """"full" or "limited": how this file's luma plane relates to the gray of its BGR decode; None when OpenCV's
    luma-only output is not a plain 8-bit luma plane for this pixel format (then decode in colour).

    OpenCV documents CONVERT_RGB=0 for FFmpeg as "at your own risk": it returns the first plane of the decoder's native
    format, which is the 8-bit luma for 8-bit YUV (almost all video), and 16-bit or garbage for gray16, 10-bit or packed
    RGB. So the first frames are decoded both ways and compared: the right mapping has a median error of at most 2 grey
    levels (chroma rounding), no mapping within 6 means it is not a luma plane. A frame whose levels fit both mappings
    (a uniform grey slate: they differ little around 110) decides nothing; the first frame where one mapping is clearly
    better (by >= 3 levels) decides; still undecided after `max_frames` -> colour."""
    import cv2

    ref_cap, luma_cap = cv2.VideoCapture(str(path)), cv2.VideoCapture(str(path))
    try:
        if not luma_cap.set(cv2.CAP_PROP_CONVERT_RGB, 0):
            return None
        tables = (("full", np.arange(256, dtype=np.uint8)), ("limited", _LIMITED_TO_FULL))
        for _ in range(max_frames):
            ok_a, bgr = ref_cap.read()
            ok_b, y = luma_cap.read()
            if not ok_a or not ok_b or bgr is None or y is None:
                return None
            if y.dtype != np.uint8 or bgr.dtype != np.uint8 or y.ndim != 2 or bgr.ndim != 3 or y.shape != bgr.shape[:2]:
                return None
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.int16)
            errors = sorted((float(np.median(np.abs(lut[y].astype(np.int16) - gray))), name) for name, lut in tables)
            (best, name), (other, _) = errors
            if best > 6.0:
                return None  # neither mapping: not a luma plane
            if best <= 2.0 and other - best >= 3.0:
                return name
        return None
    finally:
        ref_cap.release()
        luma_cap.release()


def _warn_short(path: Path, decoded: int, expected: int, cause: str) -> None:
    """Log that decoding stopped before the container's frame count (a damaged or truncated file)."""
    if expected > 0 and decoded < expected - max(1, expected // 100):
        # the run manifest records the loss for the user; the cause is kept for --verbose
        log.info("%s: decoding stopped after %d of %d frames (%s)", path, decoded, expected, cause)


def _decord_turns(path: Path, vr: object) -> int:
    """Quarter turns (np.rot90 k) that make decord's frames upright like FFmpeg's display: 0 unless the container
    has rotation metadata that this decord build ignores (some builds apply it, some do not; OpenCV always does)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        meta = float(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0.0) if cap.isOpened() else 0.0
        if meta <= 0 or round(meta) % 360 == 0:
            return 0
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        ok, ref = cap.read()
    finally:
        cap.release()
    if not ok or ref is None:
        return 0
    ref = cv2.cvtColor(ref, cv2.COLOR_BGR2RGB).astype(np.float32)
    first = vr[0].asnumpy()  # type: ignore[attr-defined]
    if first.ndim == 2:
        first = np.repeat(first[..., None], 3, axis=2)
    errors = {}
    for k in range(4):
        cand = np.rot90(first, k)
        if cand.shape == ref.shape:
            errors[k] = float(np.abs(cand.astype(np.float32) - ref).mean())
    return min(errors, key=lambda k: errors[k]) if errors else 0


def open_video(path: str | Path, backend: str = "auto", *, gray: bool = False) -> VideoStream:
    """Open a video with the named backend, or with `auto`: OpenCV first, decord when OpenCV cannot open it.

    `gray=True`: the OpenCV backend delivers luma-only frames where the file allows (see OpenCVStream); decord always
    decodes colour.

    OpenCV first because decord decodes ahead of a slower consumer without bound (dmlc/decord#157, #304): on a long
    video its decoded frames pile up in memory (measured: +2.9 MB per 720p frame), which breaks "memory independent of
    video length"; OpenCV's FFmpeg reader is also faster here. `--decoder decord` stays for short clips."""
    path = Path(path)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown decoder {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if path.is_symlink() and not path.exists():
        raise DecodeError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)")
    if not path.is_file():
        raise DecodeError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    if backend == "decord":
        return DecordStream(path)
    if backend == "opencv":
        return OpenCVStream(path, gray=gray)
    try:
        return OpenCVStream(path, gray=gray)
    except DecodeError:
        return DecordStream(path)  # decord's one-line reason is the more telling one when neither can open the file


_END = object()
JOIN_TIMEOUT_S = 10.0  # how long closing a prefetch waits for its thread before leaving it behind


def _lower_thread_priority(increment: int) -> None:
    """Make the calling thread `increment` nicer than the process's main thread (Linux, where setpriority takes a thread
    id; elsewhere a no-op). A helper started from another helper inherits its nice value and is not lowered twice.

    Helper threads that run ahead through a bounded queue can yield to the thread that is the bottleneck: they catch up
    whenever it waits for them, so nothing is lost, and others' processes only ever see us nicer."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's: nested helpers do not add up
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, max(base + increment, os.getpriority(os.PRIO_PROCESS, tid))))


def prefetch(frames: Iterator[T], maxsize: int = 16, name: str = "au-annotate-decode", nice: int = 0,
             stall_s: float | None = None) -> Iterator[T]:
    """Run an iterator ahead in a thread with a bounded queue (at most `maxsize` items in memory); errors re-raise here.

    Used for decoding, and for a pipeline stage over decoded frames (prefetch of a generator that reads a prefetch):
    closing the outer one stops and joins both threads. `nice` > 0 lowers the thread's scheduling priority (Linux).
    `stall_s`: waiting that long for one item raises StallError (the thread, stuck in native code, is abandoned: a
    daemon thread cannot be killed, but the caller can go on with its next video)."""
    q: queue.Queue[object] = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Hand an item over unless the consumer left (then never block: nobody will read it)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        if nice:
            _lower_thread_priority(nice)
        try:
            for f in frames:
                if not put(f):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:  # a generator (e.g. a stage over an inner prefetch): stop its threads here, now
                close()

    t = threading.Thread(target=worker, name=name, daemon=True)
    t.start()
    try:
        while True:
            if stall_s is None:
                item = q.get()
            else:
                waited = time.monotonic()
                while True:
                    try:
                        item = q.get(timeout=1.0)
                        break
                    except queue.Empty:
                        if time.monotonic() - waited > stall_s:
                            raise StallError(f"{name}: nothing for {stall_s:g} s") from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while t.is_alive() and time.monotonic() < deadline:
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
        if t.is_alive():  # stuck in native code (a hung decoder): left behind as a daemon thread
            log.warning("%s thread did not stop; leaving it behind", name)
