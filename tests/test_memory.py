"""Memory stays bounded on long streams: the crop ring buffer, the decode prefetch queue and the spotter's state.

Each test feeds a long synthetic stream (thousands of frames or crops, no video file) and checks the structure never
holds more than its bound, so memory does not grow with video length (the benchmark measures the real process RSS).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from au_annotate.decode import prefetch
from au_annotate.records import AlignedFace, Frame


def _face(index: int, epoch: int = 0, side: int = 8) -> AlignedFace:
    return AlignedFace(index=index, pts_s=index / 30, face_id="face0", crop=np.zeros((side, side), np.uint8),
                       landmarks=np.zeros((5, 2), np.float32), box=(0.0, 0.0, 1.0, 1.0), match=1.0, epoch=epoch)


def _ring_spotter():  # noqa: ANN202 - RoiFlowSpotter
    from au_annotate.spot import make_spotter

    return make_spotter("roi-flow", 30.0, {"landmarks": "off"})


def _put(sp, face: AlignedFace) -> None:  # noqa: ANN001
    """A face into the spotter's ring as process_frame stores it (the flow parts unused here)."""
    sp.crops.put(face.index, (None, None, (face.face_id, face.epoch), face))
    sp.times.put(face.index, face.pts_s)


def test_the_spotter_ring_keeps_only_the_latest_faces_over_20k_frames() -> None:
    """The only ring of aligned faces is the spotter's: a window's onset and apex faces are at hand while the window
    can close, and evicted after; its size does not grow."""
    sp = _ring_spotter()
    n = sp.crop_ring_size
    for i in range(20_000):
        _put(sp, _face(i, epoch=i // 5000))
        if i % 997 == 0 and i % 5000 >= 60:
            onset, apex = sp.face_pair(i - 30, i - 10)
            assert onset.index == i - 30 and apex.index == i - 10
            assert sp.time_at(i - 10) == (i - 10) / 30
            if i > n + 100:
                assert sp.face_pair(i - n - 100, i - n - 50) is None  # evicted long ago
                assert sp.time_at(i - n - 5) is None
    assert sp.crops.size == n and len(sp.crops._vals) == n  # noqa: SLF001
    assert min(sp.crops._keys) == 20_000 - n  # noqa: SLF001 - the oldest kept is the last n-th


def test_face_pairs_stay_in_one_tracking_epoch() -> None:
    sp = _ring_spotter()
    for i in range(100):
        _put(sp, _face(i, epoch=0 if i < 90 else 1))
    onset, apex = sp.face_pair(85, 95)  # type: ignore[misc]
    assert apex.index == 95 and onset.epoch == apex.epoch == 1 and onset.index == 90
    onset, apex = sp.face_pair(86, 87)  # type: ignore[misc]
    assert (onset.index, apex.index) == (86, 87)


def test_prefetch_holds_at_most_maxsize_frames_over_20k_frames() -> None:
    produced = 0
    lock = threading.Lock()
    image = np.zeros((4, 4, 3), np.uint8)

    def frames() -> Iterator[Frame]:
        nonlocal produced
        for i in range(20_000):
            with lock:
                produced += 1
            yield Frame(index=i, pts_s=i / 30, image=image)

    maxsize = 8
    ahead = []
    consumed = 0
    for frame in prefetch(frames(), maxsize=maxsize):
        assert frame.index == consumed  # order kept
        consumed += 1
        if consumed % 2000 == 0:
            time.sleep(0.02)  # a slow consumer: the decode thread runs ahead as far as the queue lets it
            with lock:
                ahead.append(produced - consumed)
    assert consumed == 20_000
    # in memory at once: the queue, plus one frame in the thread's hand and one handed to the consumer
    assert max(ahead) <= maxsize + 2
    assert max(ahead) >= maxsize - 1  # the queue was really filled (the bound is what stopped it)


def test_prefetch_stops_its_thread_when_the_consumer_leaves() -> None:
    before = {t.ident for t in threading.enumerate()}

    def endless() -> Iterator[Frame]:
        i = 0
        while True:
            yield Frame(index=i, pts_s=i / 30, image=np.zeros((2, 2, 3), np.uint8))
            i += 1

    stream = prefetch(endless(), maxsize=4)
    for frame in stream:
        if frame.index == 100:
            break
    stream.close()  # what a `for` loop leaving a generator (or an exception) does
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(
            t.name == "au-annotate-decode" and t.ident not in before for t in threading.enumerate()):
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "au-annotate-decode" and t.ident not in before]


def _state_size(obj: object) -> tuple[int, int]:
    """(container elements, array bytes) held by an object graph, following attributes (cv2 objects and functions
    skipped). A stand-in for memory that does not depend on the allocator."""
    seen: set[int] = set()
    total = nbytes = 0
    todo: deque[object] = deque([obj])
    while todo:
        o = todo.pop()
        if id(o) in seen or o is None or isinstance(o, (int, float, str, bytes, bool, type)) or callable(o):
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            nbytes += o.nbytes
        elif isinstance(o, dict):
            total += len(o)
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset, deque)):
            total += len(o)
            todo.extend(o)
        elif hasattr(o, "__dict__") and type(o).__module__.startswith(("au_annotate", "builtins")):
            todo.extend(vars(o).values())
        elif hasattr(o, "__dataclass_fields__"):
            todo.extend(getattr(o, f) for f in o.__dataclass_fields__)  # type: ignore[attr-defined]
    return total, nbytes


def test_spotter_state_does_not_grow_over_12k_frames() -> None:
    """A spotter fed ~7 minutes of 30 fps face crops with a micro and a macro movement every 4 s keeps a bounded state."""
    from synth import PlantedEvent, crop_aligned, iter_frames

    from au_annotate.spot import make_spotter

    events = [PlantedEvent("brow_raise", 1.0, 1.15, 1.35, 2.0),
              PlantedEvent("lip_corner_pull", 2.0, 2.6, 3.2, 2.0, kind="macro")]
    cycle = [crop_aligned(f, crop_size=64) for f in iter_frames(fps=30, duration_s=4, size=(240, 180), events=events,
                                                                  noise_sigma=1.0, seed=1)]
    spotter = make_spotter("roi-flow", 30.0, {"flow_size": 32})
    n = 12_000
    sizes: list[tuple[int, int]] = []
    windows = 0
    for i in range(n):
        face = replace(cycle[i % len(cycle)], index=i, pts_s=i / 30)
        windows += len(spotter.process_frame(i, i / 30, face))
        if i % 500 == 499:
            sizes.append(_state_size(spotter))
    windows += len(spotter.flush())
    assert windows >= n // len(cycle)  # the stream really produced windows all along (state was exercised)
    for part in (0, 1):  # elements (a list that keeps every window would show here), then array bytes
        series = [s[part] for s in sizes]
        early = max(series[len(series) // 4 : len(series) // 2])  # after warm-up and the 30 s noise history filled
        late = max(series[len(series) // 2 :])
        assert 0 < late <= early * 1.02 + 32, (part, early, late, series)


def test_the_spotter_ring_covers_its_latency() -> None:
    """A window's onset face is still in the spotter's ring when the window closes (at most max_latency_frames after)."""
    sp = _ring_spotter()
    newest = 5000
    for i in range(newest + 1):
        _put(sp, _face(i, side=2))
    onset = newest - sp.max_latency_frames  # the oldest onset a window closing now may have
    pair = sp.face_pair(onset, onset + 1)
    assert pair is not None and pair[0].index == onset


def _pipeline_threads(before: set[int | None]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("au-annotate-") and t.ident not in before]


def test_pipeline_threads_stop_when_a_stage_fails(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """process_video runs decoding and face tracking in threads: an error in the face thread or in the spotter (the
    calling thread) comes back as that error, both threads are gone, and OpenCV's thread count is restored."""
    from pathlib import PurePosixPath

    import cv2
    import pytest
    from synth import make_video

    from au_annotate.face import FaceTracker
    from au_annotate.pipeline import process_video
    from au_annotate.records import VideoJob
    from au_annotate.settings import DEFAULTS
    from au_annotate.spot import RoiFlowSpotter

    clip = make_video(tmp_path / "v.mp4", fps=30, duration_s=2.0, size=(320, 240), seed=3).path
    job = VideoJob(path=clip, rel=PurePosixPath("v.mp4"), out_dir=tmp_path)
    threads_before = cv2.getNumThreads()
    work = process_video(job, DEFAULTS)  # the good path first: every frame arrives, in order
    assert work.frames == 60 and work.frames_with_face == 60

    for cls, method in ((FaceTracker, "process_all"), (RoiFlowSpotter, "process_frame")):
        original = getattr(cls, method)

        def failing(self, *args, _original=original, _method=method, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            index = args[0].index if _method == "process_all" else args[0]
            if index == 20:
                raise RuntimeError(f"boom in {_method}")
            return _original(self, *args, **kw)

        before = {t.ident for t in threading.enumerate()}
        monkeypatch.setattr(cls, method, failing)
        with pytest.raises(RuntimeError, match=f"boom in {method}"):
            process_video(job, DEFAULTS)
        monkeypatch.setattr(cls, method, original)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and _pipeline_threads(before):
            time.sleep(0.01)
        assert not _pipeline_threads(before)
        assert cv2.getNumThreads() == threads_before


def test_opencv_threads_are_restored_by_the_last_of_overlapping_videos() -> None:
    """Two videos processed at once in one process (API users' threads): OpenCV's pool stays off until the last one
    ends, and then is exactly what it was before."""
    import cv2

    from au_annotate.pipeline import _single_threaded_opencv

    before = cv2.getNumThreads()
    cv2.setNumThreads(max(2, before))
    try:
        first, second = _single_threaded_opencv(), _single_threaded_opencv()
        first.__enter__()
        second.__enter__()
        assert cv2.getNumThreads() == 1
        first.__exit__(None, None, None)  # the first video ends while the second still runs
        assert cv2.getNumThreads() == 1
        second.__exit__(None, None, None)
        assert cv2.getNumThreads() == max(2, before)
    finally:
        cv2.setNumThreads(before)


def test_prefetch_nice_lowers_only_the_helper_thread() -> None:
    """prefetch(nice=5) runs its thread 5 nice levels below the caller (Linux); the caller keeps its priority."""
    import os
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("thread priorities are set on Linux only")
    seen: list[int] = []

    def items() -> Iterator[int]:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        yield from range(3)

    def nested() -> Iterator[int]:  # a helper started from a helper (the pipeline's decode thread) is not lowered twice
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        yield from prefetch(items(), nice=5)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert list(prefetch(items(), nice=5)) == [0, 1, 2]
    assert seen == [min(19, mine + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    seen.clear()
    assert list(prefetch(nested(), nice=5)) == [0, 1, 2]
    assert seen == [min(19, mine + 5)] * 2


def test_a_hung_decoder_fails_its_video_after_the_stall_timeout(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A decoder that stops returning frames (stuck in native code) fails that video with a one-line reason once the
    stall timeout passes, instead of hanging the run; the stuck thread is left behind and the next video works."""
    from pathlib import PurePosixPath

    import pytest
    from synth import make_video

    import au_annotate.decode as decode
    import au_annotate.pipeline as pipeline
    from au_annotate.decode import DecodeError, VideoStream, open_video
    from au_annotate.pipeline import run_video
    from au_annotate.records import VideoJob
    from au_annotate.settings import DEFAULTS

    clip = make_video(tmp_path / "v.mp4", fps=30, duration_s=1.0, size=(320, 240), seed=4).path
    job = VideoJob(path=clip, rel=PurePosixPath("v.mp4"), out_dir=tmp_path)
    release = threading.Event()

    class Hangs(VideoStream):
        def __init__(self, real: VideoStream) -> None:
            self.real, self.info = real, real.info

        def __iter__(self) -> Iterator[Frame]:
            for frame in self.real:
                if frame.index == 10:
                    release.wait()  # what a decoder stuck in native code looks like from Python
                yield frame

        def close(self) -> None:
            self.real.close()

    monkeypatch.setattr(pipeline, "open_video", lambda *a, **kw: Hangs(open_video(*a, **kw)))
    monkeypatch.setattr(decode, "JOIN_TIMEOUT_S", 1.0)  # how long closing waits for the stuck thread (10 s in use)
    settings = DEFAULTS.replace(stall_timeout_s=1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(DecodeError, match=r"decoding stalled: no frame for 1 s"):
            pipeline.process_video(job, settings)
        assert time.monotonic() - t0 < 30  # the stall timeout plus the bounded wait for the stuck thread
        failure = run_video(job, settings)  # the engines' entry point: a failed video, one line, no traceback
        assert failure.status == "failed" and "\n" not in failure.error and str(clip) in failure.error  # type: ignore[union-attr]
    finally:
        release.set()  # let the abandoned threads finish
    monkeypatch.undo()
    work = pipeline.process_video(job, DEFAULTS)  # the next video (here the same file, not hung) is processed
    assert work.frames == 30


def test_a_video_whose_opening_hangs_fails_after_the_stall_timeout(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Opening a file (and the luma probe reading its first frames) is bounded by the stall timeout too: a file on
    storage that stopped answering fails its video with one line, stderr is given back (the stuck open had it
    captured), and an open that completes after all closes the stream it made."""
    import os
    from pathlib import PurePosixPath

    import cv2
    import pytest
    from synth import make_video

    import au_annotate.decode as decode
    import au_annotate.pipeline as pipeline
    from au_annotate.decode import DecodeError
    from au_annotate.records import VideoJob
    from au_annotate.settings import DEFAULTS

    clip = make_video(tmp_path / "v.mp4", fps=30, duration_s=0.5, size=(160, 120), seed=6).path
    job = VideoJob(path=clip, rel=PurePosixPath("v.mp4"), out_dir=tmp_path)
    release, closed = threading.Event(), threading.Event()
    real_capture, real_close = cv2.VideoCapture, decode.OpenCVStream.close

    def hanging_capture(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        release.wait()  # what opening a file on unreachable storage looks like from Python (inside the stderr capture)
        return real_capture(*a, **kw)

    def close(self) -> None:  # noqa: ANN001
        real_close(self)
        closed.set()

    monkeypatch.setattr(cv2, "VideoCapture", hanging_capture)
    monkeypatch.setattr(decode.OpenCVStream, "close", close)
    stderr_before = os.fstat(2)
    t0 = time.monotonic()
    with pytest.raises(DecodeError, match=r"v\.mp4: opening stalled: no answer for 1 s"):
        pipeline.process_video(job, DEFAULTS.replace(stall_timeout_s=1.0, decoder="opencv"))
    assert time.monotonic() - t0 < 10
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (stderr_before.st_dev, stderr_before.st_ino)  # not left in the capture
    release.set()  # the open completes after the caller gave up: its stream is closed, not leaked
    assert closed.wait(30)
    monkeypatch.undo()
    with pytest.raises(DecodeError, match="not a file"):  # an ordinary open error still comes through as itself
        pipeline.process_video(VideoJob(path=tmp_path / "nope.mp4", rel=PurePosixPath("nope.mp4"), out_dir=tmp_path),
                               DEFAULTS)
    assert pipeline.process_video(job, DEFAULTS).frames == 15


def _fd2() -> tuple[int, int]:
    import os

    st = os.fstat(2)
    return st.st_dev, st.st_ino


def test_stderr_captures_never_overlap_and_an_abandoned_thread_never_captures() -> None:
    """fd 2 is process-wide: a capture that starts while another thread captures stays out of the way (out-of-order
    ends would leave fd 2 on a deleted file), and a thread whose open was abandoned never redirects it again."""
    from au_annotate.decode import _NativeStderr, abandon_native_stderr, forget_abandoned_thread

    real = _fd2()
    first_in, second_done, first_release = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[int, int]] = {}

    def first() -> None:
        with _NativeStderr().capture():
            seen["first"] = _fd2()
            first_in.set()
            first_release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(10)
    with _NativeStderr().capture():  # overlaps the first, and ends first: must not touch fd 2
        seen["second"] = _fd2()
    second_done.set()
    first_release.set()
    t.join(10)
    assert seen["first"] != real and seen["second"] == seen["first"] and _fd2() == real

    def abandoned() -> None:
        with _NativeStderr().capture():
            seen["abandoned"] = _fd2()

    t = threading.Thread(target=lambda: (start.wait(10), abandoned()))
    start = threading.Event()
    t.start()
    abandon_native_stderr(t.ident or 0)  # given up on before it reached its capture (e.g. stuck in stat())
    start.set()
    t.join(10)
    forget_abandoned_thread(t.ident or 0)
    assert seen["abandoned"] == real and _fd2() == real


def test_an_infinite_stall_timeout_means_no_limit(tmp_path) -> None:  # noqa: ANN001
    """stall_timeout_s = inf (valid TOML) switches the timeout off instead of failing every video."""
    from pathlib import PurePosixPath

    from synth import make_video

    from au_annotate.pipeline import process_video
    from au_annotate.records import VideoJob
    from au_annotate.settings import DEFAULTS

    clip = make_video(tmp_path / "v.mp4", fps=30, duration_s=0.5, size=(160, 120), seed=7).path
    job = VideoJob(path=clip, rel=PurePosixPath("v.mp4"), out_dir=tmp_path)
    assert process_video(job, DEFAULTS.replace(stall_timeout_s=float("inf"))).frames == 15


def test_closing_never_releases_the_decoder_under_a_reading_thread(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """OpenCVStream.close() waits for a read in progress; if it does not end (a decoder hung in native code), the
    capture is left alone (releasing it under the reading thread could crash the process) and close returns."""
    import cv2
    import pytest
    from synth import make_video

    import au_annotate.decode as decode

    clip = make_video(tmp_path / "v.mp4", fps=30, duration_s=0.5, size=(160, 120), seed=5).path
    monkeypatch.setattr(decode, "JOIN_TIMEOUT_S", 0.3)
    stream = decode.open_video(clip, "opencv", gray=True)
    cap = stream._cap  # noqa: SLF001
    stream._reading.acquire()  # noqa: SLF001 - a read that never returns
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 2 and stream._cap is None  # noqa: SLF001
    assert cap.isOpened()  # not released under the "reading" thread
    stream._reading.release()  # noqa: SLF001
    with pytest.raises(decode.DecodeError, match="closed"):
        list(stream)  # a given-up stream decodes nothing more
    cap.release()
    other = decode.open_video(clip, "opencv", gray=True)
    other.close()  # the ordinary case: released at once
    assert other._cap is None and cv2 is not None  # noqa: SLF001
