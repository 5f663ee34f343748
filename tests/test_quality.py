"""Quality gating: windows explained by occlusion, head motion, lost tracking or lighting are labelled, not reported;
bad input (a face occluded throughout, a cut every second, 5 fps, a face at the frame edge) neither crashes nor
floods; the manifest gets a one-line warning."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from synth import PlantedEvent, crop_aligned, iter_frames

from au_annotate.pipeline import process_video
from au_annotate.quality import QUALITIES, FrameSignals, GateConfig, StepSignals, label_window, video_warning
from au_annotate.records import VideoJob
from au_annotate.settings import DEFAULTS
from au_annotate.spot import RoiFlowSpotter

pytest.importorskip("skimage")

SIZE = (320, 240)
CFG = GateConfig()


def _frames(n: int, match: float = 0.9, bright: float = 120.0) -> list[FrameSignals | None]:
    return [FrameSignals(match, bright, 100.0, 100.0, 200.0) for _ in range(n)]


def test_label_window_rules() -> None:
    """Each rule fires on its own signal, in the documented order; a clean local event is ok."""
    steps = [StepSignals(0.1, 0.1)] * 6
    assert label_window(_frames(10), steps, 3, 1.0, 0.9, CFG) == "ok"
    assert label_window(_frames(4) + [None] + _frames(5), steps, 3, 1.0, 0.9, CFG) == "tracking_lost"
    assert label_window(_frames(10, match=0.6), steps, 3, 1.0, 0.9, CFG) == "tracking_lost"
    lit = _frames(5) + _frames(5, bright=140.0)
    assert label_window(lit, steps, 3, 1.0, 0.9, CFG) == "lighting"
    assert label_window(_frames(10), [StepSignals(0.1, 0.6)] * 6, 3, 1.0, 0.9, CFG) == "occlusion"
    assert label_window(_frames(10), [StepSignals(1.5, 0.1)] * 6, 3, 1.0, 0.9, CFG) == "head_motion"
    assert set(QUALITIES) >= {"ok", "occlusion", "head_motion", "tracking_lost", "lighting"}


def test_video_warning_is_one_line() -> None:
    assert video_warning(30.0, 300, 300, 3, ["head_motion"]) is None
    w = video_warning(5.0, 300, 100, 1, ["occlusion"] * 6)
    assert w is not None and "\n" not in w and "fps" in w and "33 %" in w and "occlusion x6" in w


def _spot(frames, fps: float) -> list:  # noqa: ANN001
    sp = RoiFlowSpotter(fps)
    out = []
    for f, face in frames:
        out += sp.process_frame(f.index, f.pts_s, face)
    return out + sp.flush()


def test_hand_over_the_face_is_occlusion_not_micro() -> None:
    """A dark textured 'hand' sweeping across the lower face in 0.4 s: no micro/macro window with quality ok."""
    fps = 30.0
    rng = np.random.default_rng(3)
    hand = (rng.random((120, 90)) * 60 + 60).astype(np.uint8)
    items = []
    for f in iter_frames(fps=fps, duration_s=4.0, size=SIZE, noise_sigma=2.0, seed=2):
        face = crop_aligned(f, quantum=2.0)
        t = f.pts_s - 2.0
        if 0 <= t < 0.4:
            crop = face.crop.copy()
            x = int(-90 + t / 0.4 * 314)
            x0, x1 = max(0, x), min(224, x + 90)
            if x1 > x0:
                crop[100:220, x0:x1] = hand[:, x0 - x : x1 - x]
            face = type(face)(**{**face.__dict__, "crop": crop})
        items.append((f, face))
    windows = _spot(items, fps)
    assert not [w for w in windows if w.kind in ("micro", "macro") and w.quality == "ok"], windows


def test_lighting_jump_is_labelled() -> None:
    """A flash (brightness x1.3 for 0.2 s) is not a micro-expression."""
    fps = 30.0
    items = []
    for f in iter_frames(fps=fps, duration_s=4.0, size=SIZE, noise_sigma=2.0, seed=5):
        face = crop_aligned(f, quantum=2.0)
        if 2.0 <= f.pts_s < 2.2:
            face = type(face)(**{**face.__dict__, "crop": cv2.convertScaleAbs(face.crop, alpha=1.3)})
        items.append((f, face))
    windows = _spot(items, fps)
    assert not [w for w in windows if w.kind in ("micro", "macro") and w.quality == "ok"], windows


def test_planted_event_stays_ok() -> None:
    """The gate leaves a clean local micro-expression alone."""
    fps = 30.0
    event = PlantedEvent("brow_raise", 2.0, 2.12, 2.3, 2.0)
    items = [(f, crop_aligned(f, quantum=2.0)) for f in iter_frames(fps=fps, duration_s=4.0, size=SIZE, events=[event],
                                                                    noise_sigma=2.0, seed=1)]
    windows = _spot(items, fps)
    assert [w.quality for w in windows if w.kind == "micro"] == ["ok"], windows


def _write(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR) if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def _run(path: Path):  # noqa: ANN202
    return process_video(VideoJob(path=path, rel=PurePosixPath(path.name), out_dir=path.parent), DEFAULTS)


@pytest.mark.parametrize("case", ["occluded", "cuts", "fps5", "edge"])
def test_bad_input_neither_crashes_nor_floods(tmp_path: Path, case: str) -> None:
    """Bad input: at most a couple of reported windows (these clips have no expression) and no exception."""
    from au_annotate.pipeline import NoFaceError

    fps = 5.0 if case == "fps5" else 30.0
    dur = 12.0 if case == "fps5" else 4.0
    frames = [f.image for f in iter_frames(fps=fps, duration_s=dur, size=(480, 360), noise_sigma=2.0, seed=9,
                                           head_motion_px=6.0)]
    if case == "occluded":
        frames = [cv2.rectangle(f.copy(), (120, 40), (360, 330), (128, 128, 128), -1) for f in frames]
    elif case == "cuts":  # a cut every second: the picture jumps between two framings
        frames = [f if int(i / fps) % 2 == 0 else np.ascontiguousarray(np.roll(f, 70, axis=1)[:, ::-1])
                  for i, f in enumerate(frames)]
    elif case == "edge":  # the face half out of the frame
        frames = [np.ascontiguousarray(np.roll(f, 190, axis=1)) for f in frames]
    path = _write(tmp_path / f"{case}.mp4", frames, fps)
    try:
        work = _run(path)
    except NoFaceError:
        assert case == "occluded"
        return
    reported = [s.window for s in work.samples if s.window.kind in ("micro", "macro")]
    assert len(reported) <= 2, reported
