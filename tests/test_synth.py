"""The synthetic talking-head generator: determinism, geometry, planted motion where it should be, files and GT CSV."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
from synth import (
    PlantedEvent,
    SynthError,
    crop_aligned,
    iter_frames,
    make_video,
    write_ground_truth_csv,
)

pytest.importorskip("skimage")


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _region_motion(flow: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    x, y = (int(round(v)) for v in centre)
    patch = flow[y - half : y + half, x - half : x + half].reshape(-1, 2)
    mags = np.linalg.norm(patch, axis=1)
    return patch[np.argsort(mags)[-max(1, len(mags) // 10) :]].mean(0)  # mean of the strongest 10 %


def test_same_seed_same_pixels_and_noise_depends_on_seed() -> None:
    kw = dict(duration_s=0.3, noise_sigma=4.0, lighting_drift=0.1, head_motion_px=5.0, head_rotation_deg=2.0)
    a = [f.image for f in iter_frames(seed=1, **kw)]
    b = [f.image for f in iter_frames(seed=1, **kw)]
    c = [f.image for f in iter_frames(seed=2, **kw)]
    assert len(a) == 9
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[5], c[5])


def test_face_size_and_landmarks_follow_frame_size() -> None:
    f640 = next(iter_frames(duration_s=0.1, size=(640, 480)))
    f720 = next(iter_frames(duration_s=0.1, size=(1280, 720)))
    assert f640.image.shape == (480, 640, 3) and f720.image.shape == (720, 1280, 3)
    assert 200 <= f640.box[3] <= 300 and 330 <= f720.box[3] <= 450
    le, re_, nose, ml, mr = f640.landmarks
    assert le[0] < nose[0] < re_[0] and nose[1] > le[1] and ml[1] > nose[1] and ml[0] < mr[0]


def test_planted_brow_raise_moves_brows_up_and_not_the_mouth() -> None:
    amp = 3.0
    ev = PlantedEvent("brow_raise", 0.1, 0.3, 0.5, amp)
    frames = list(iter_frames(fps=30.0, duration_s=0.6, events=[ev]))
    rest, apex = frames[0], frames[9]
    flow = _flow(rest.image, apex.image)
    iod = float(np.linalg.norm(rest.landmarks[1] - rest.landmarks[0]))
    brow = rest.landmarks[0] + np.array([0.0, -0.32 * iod])
    up = _region_motion(flow, brow, 12)
    assert up[1] == pytest.approx(-amp, abs=0.8) and abs(up[0]) < 0.6
    mouth = _region_motion(flow, rest.landmarks[3], 12)
    assert np.linalg.norm(mouth) < 0.3
    # and the face is back at rest after the offset
    assert np.abs(frames[-1].image.astype(int) - rest.image.astype(int)).max() <= 1


def test_lip_corner_pull_moves_corners_outward_and_up() -> None:
    ev = PlantedEvent("lip_corner_pull", 0.0, 0.2, 0.4, 3.0)
    frames = list(iter_frames(duration_s=0.4, events=[ev]))
    flow = _flow(frames[0].image, frames[6].image)
    left = _region_motion(flow, frames[0].landmarks[3], 10)
    right = _region_motion(flow, frames[0].landmarks[4], 10)
    assert left[0] < -1.0 and right[0] > 1.0 and left[1] < -0.5 and right[1] < -0.5


def test_head_motion_moves_box_and_landmarks() -> None:
    frames = list(iter_frames(duration_s=3.0, fps=10.0, head_motion_px=20.0, head_rotation_deg=4.0, seed=3))
    xs = np.array([f.box[0] for f in frames])
    assert xs[0] == pytest.approx(frames[0].box[0]) and np.ptp(xs) > 3.0
    eye_vec = np.array([f.landmarks[1] - f.landmarks[0] for f in frames])
    angles = np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0]))
    assert np.ptp(angles) > 0.5


def test_crop_aligned_maps_landmarks_into_crop() -> None:
    f = next(iter_frames(duration_s=0.1))
    face = crop_aligned(f, crop_size=224)
    assert face.crop.shape == (224, 224) and face.crop.dtype == np.uint8
    assert np.all(face.landmarks > 20) and np.all(face.landmarks < 204)
    assert face.landmarks[0, 0] < face.landmarks[1, 0]


def test_event_validation() -> None:
    with pytest.raises(SynthError, match="onset < apex < offset"):
        PlantedEvent("brow_raise", 1.0, 0.5, 2.0, 1.0)
    with pytest.raises(SynthError, match="unknown action"):
        PlantedEvent("wink", 0.0, 0.1, 0.2, 1.0)
    with pytest.raises(SynthError, match="unknown codec"):
        make_video("/nonexistent/x.mp4", codec="vp9")


def test_make_video_writes_readable_mp4v_and_ground_truth(tmp_path) -> None:
    events = [
        PlantedEvent("brow_lower", 0.3, 0.45, 0.6, 2.0),
        PlantedEvent("blink", 0.8, 0.87, 1.0, 5.0, kind="blink"),
        PlantedEvent("cheek_raise", 0.2, 0.8, 1.4, 5.0, kind="macro"),
    ]
    v = make_video(tmp_path / "sub" / "a.mp4", fps=25.0, duration_s=1.6, size=(320, 240), events=events)
    assert v.n_frames == 40 and v.size == (320, 240)
    cap = cv2.VideoCapture(str(v.path))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (240, 320, 3)
        n += 1
    cap.release()
    assert n == 40
    assert v.gt_frames() == [(8, 11, 15, "micro"), (5, 20, 35, "macro")]
    assert (20, 22, 25, "blink") in v.gt_frames(include_blinks=True)
    gt = tmp_path / "gt.csv"
    write_ground_truth_csv([v], gt, root=tmp_path)
    rows = list(csv.DictReader(gt.open()))
    assert [r["video"] for r in rows] == ["sub/a.mp4", "sub/a.mp4"]
    assert rows[0] == {"video": "sub/a.mp4", "onset_frame": "8", "apex_frame": "11", "offset_frame": "15",
                       "kind": "micro"}


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg program not installed")
def test_h264_through_ffmpeg(tmp_path) -> None:
    v = make_video(tmp_path / "h.mp4", duration_s=0.5, size=(320, 240), codec="h264", noise_sigma=2.0)
    cap = cv2.VideoCapture(str(v.path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == v.n_frames
    cap.release()
