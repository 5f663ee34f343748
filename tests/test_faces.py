"""Several faces in one video: a track per person, stable ids, segments on the right face."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from synth import PlantedEvent, iter_frames

from au_annotate.pipeline import process_video
from au_annotate.records import VideoJob
from au_annotate.settings import DEFAULTS


def _write(path: Path, frames, fps: float = 30.0) -> None:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def _job(path: Path) -> VideoJob:
    return VideoJob(path=path, rel=PurePosixPath(path.name), out_dir=path.parent)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """Left: a larger face with a brow raise at 1.0 s; right: a mirrored, smaller face with a lip-corner pull at 2.6 s."""
    left = iter_frames(fps=30, duration_s=4.0, size=(480, 400), seed=3, noise_sigma=1.0, face_scale=1.0,
                       events=[PlantedEvent("brow_raise", 0.8, 1.0, 1.25, 3.0)])
    right = iter_frames(fps=30, duration_s=4.0, size=(480, 400), seed=4, noise_sigma=1.0, face_scale=0.8,
                        events=[PlantedEvent("lip_corner_pull", 2.4, 2.6, 2.85, 3.0)])
    path = tmp_path_factory.mktemp("faces") / "two.mp4"
    _write(path, (np.concatenate([a.image, b.image[:, ::-1]], axis=1) for a, b in zip(left, right, strict=True)))
    return path


def test_segments_land_on_the_right_face(two_faces: Path) -> None:
    work = process_video(_job(two_faces), DEFAULTS)
    assert work.faces == 2
    by_face: dict[str, list[float]] = {}
    for s in work.samples:
        by_face.setdefault(s.face_id, []).append(s.apex_s)
    assert any(abs(t - 1.0) <= 0.1 for t in by_face.get("face0", [])), by_face  # the larger (left) face
    assert any(abs(t - 2.6) <= 0.1 for t in by_face.get("face1", [])), by_face
    assert not any(abs(t - 2.6) <= 0.1 for t in by_face.get("face0", [])), by_face
    assert not any(abs(t - 1.0) <= 0.1 for t in by_face.get("face1", [])), by_face


def test_faces_largest_keeps_one_track(two_faces: Path) -> None:
    work = process_video(_job(two_faces), DEFAULTS.replace(faces="largest"))
    assert work.faces == 1
    assert {s.face_id for s in work.samples} <= {"face0"}
    assert any(abs(s.apex_s - 1.0) <= 0.1 for s in work.samples)


def test_face_that_leaves_and_returns_keeps_its_id(tmp_path: Path) -> None:
    frames = []
    for f in iter_frames(fps=30, duration_s=6.0, size=(480, 400), seed=5, noise_sigma=1.0,
                         events=[PlantedEvent("lip_corner_pull", 4.6, 4.8, 5.05, 3.0)]):
        img = f.image
        if 1.5 <= f.pts_s < 3.5:  # the person steps out of the shot for 2 s
            img = np.full_like(img, 120)
        frames.append(img)
    path = tmp_path / "leave.mp4"
    _write(path, frames)
    work = process_video(_job(path), DEFAULTS)
    assert work.faces == 1  # same id after the return, no face1
    assert 0.6 * 4 * 30 < work.frames_with_face < 4 * 30 + 5  # ~4 s of the 6 s have a face
    assert {s.face_id for s in work.samples} == {"face0"}
    assert any(abs(s.apex_s - 4.8) <= 0.1 for s in work.samples), [s.apex_s for s in work.samples]


def test_detector_sees_the_same_face_in_gray_as_in_colour() -> None:
    """Luma-only decoding feeds MTCNN gray frames: the same box (within 4 % of its size) and landmarks (within 2.5 px)
    as the colour picture. (2 px held until 2026-12-01; on 2026-12-02's machine the box edges differ by 3 px of 86.)"""
    from skimage import data

    from au_annotate.face import FaceDetector

    img = data.astronaut()
    det = FaceDetector()
    colour = det.detect(img, "rgb")
    gray = det.detect(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), "gray")
    assert len(colour) == len(gray) == 1
    a, b = colour[0], gray[0]
    assert max(abs(a.x - b.x), abs(a.y - b.y), abs(a.w - b.w), abs(a.h - b.h)) <= 0.04 * max(a.w, a.h)
    assert np.abs(a.landmarks - b.landmarks).max() <= 2.5 and b.confidence > 0.9


def _small_face_frame() -> np.ndarray:
    """A 3840x2160 wide shot with a ~53 px face: ~9 px at MTCNN's 640-px pass (under its 12-px window, so missed there
    on any machine), ~22 px at the 1600-px retry (found). A 45 px face in 2560x1440 (11 px at 640) was borderline:
    missed at 640 until 2026-12-01, found there on 2026-12-02's machine with OpenCV 4.14 or 5.1 and numpy 2.3 or 2.4."""
    from skimage import data

    frame = np.full((2160, 3840, 3), 110, np.uint8)
    frame[1080:1200, 1920:2010] = cv2.resize(data.astronaut()[30:230, 150:300], (90, 120), interpolation=cv2.INTER_AREA)
    return frame


def test_a_shared_detector_gives_each_video_the_result_of_a_fresh_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share one detector across videos (its nets load once), so its retry memory must be per video: after
    another video's 1080p frames without a face, a small face in a large frame is still found on its first frame, and
    after a video that needed the large pass the next one does not pay for it on every miss."""
    from au_annotate.face import DETECT_RETRY_MAX_SIDE, FaceDetector, FaceTracker
    from au_annotate.records import Frame

    large_passes = []
    plain = FaceDetector._detect_at  # noqa: SLF001

    def counting(self: FaceDetector, image: np.ndarray, max_side: int, order: str = "rgb") -> list:
        large_passes.append(max_side == DETECT_RETRY_MAX_SIDE)
        return plain(self, image, max_side, order)

    monkeypatch.setattr(FaceDetector, "_detect_at", counting)

    def video(frames: list[np.ndarray], detector: FaceDetector) -> tuple[list[int], int]:
        """Faces per frame and large passes, one tracker per video as the pipeline makes them."""
        large_passes.clear()
        tracker = FaceTracker(30.0, detector=detector)
        return [len(tracker.process_all(Frame(i, i / 30, img))) for i, img in enumerate(frames)], sum(large_passes)

    small, blank = [_small_face_frame()] * 3, [np.full((1080, 1920, 3), 90, np.uint8)] * 40
    fresh_small, fresh_blank = video(small, FaceDetector()), video(blank, FaceDetector())
    assert fresh_small == ([1, 1, 1], 1) and fresh_blank == ([0] * 40, 1)  # blank: 3 misses, one large pass
    shared = FaceDetector()
    assert video(blank, shared) == fresh_blank
    assert video(small, shared) == fresh_small  # found at once, although the detector missed 3 times before
    assert video(blank, shared) == fresh_blank  # and the small face seen before does not make this video costlier
