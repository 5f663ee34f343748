"""Quality gating: windows explained by occlusion, head motion, lost tracking or lighting are labelled, not reported;
bad input (a face occluded throughout, a cut every second, 5 fps, a face at the frame edge) neither crashes nor
floods; the manifest gets a one-line warning."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from synth import PlantedEvent, crop_aligned, iter_frames

from au_annotate.pipeline import process_video
from au_annotate.quality import (
    INSENSITIVE_PCT_IOD,
    QUALITIES,
    FrameSignals,
    GateConfig,
    StepSignals,
    label_window,
    video_warning,
    video_warnings,
)
from au_annotate.records import AlignedFace, Segment, VideoInfo, VideoJob, VideoResult
from au_annotate.settings import DEFAULTS
from au_annotate.spot import ROI_NAMES, RoiFlowSpotter

pytest.importorskip("skimage")

SIZE = (320, 240)
CFG = GateConfig(spread_ratio=0.5)  # the whole-face spread rule as it was on by default before round 9


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
    # off by default (it gated real smiles): a whole-face residual is not occlusion without landmark evidence
    assert label_window(_frames(10), [StepSignals(0.1, 0.6)] * 6, 3, 1.0, 0.9, GateConfig()) == "ok"
    assert label_window(_frames(10), [StepSignals(1.5, 0.1)] * 6, 3, 1.0, 0.9, CFG) == "head_motion"
    assert set(QUALITIES) >= {"ok", "occlusion", "head_motion", "tracking_lost", "lighting"}


def test_video_warning_is_one_line() -> None:
    assert video_warning(30.0, 300, 300, 3, ["head_motion"]) is None
    w = video_warning(5.0, 300, 100, 1, ["occlusion"] * 6)
    assert w is not None and "\n" not in w and "fps" in w and "33 %" in w and "occlusion x6" in w


def test_video_warning_names_missing_landmarks() -> None:
    """Most windows without a landmark mesh (profile, occlusion, a tiny face): one line says so; a minority does not."""
    assert video_warning(30.0, 300, 300, 4, [], contexts=["no_landmarks", "", "speech", ""]) is None
    w = video_warning(30.0, 300, 300, 4, [], contexts=["no_landmarks", "no_landmarks", "", "no_landmarks"])
    assert w is not None and "3 of 4 windows" in w and "\n" not in w

def test_video_warning_names_missing_landmarks_by_sampled_frames() -> None:
    """With the track sampled every 2 s (>= 3 samples), the frames decide, whatever the windows say: a mesh on fewer
    than half of them is one line; on half or more, nothing (even with every window no_landmarks)."""
    w = video_warning(30.0, 300, 300, 0, [], mesh=(10, 4))
    assert w is not None and "no face on 6 of 10 frames" in w and "\n" not in w
    assert video_warning(30.0, 300, 300, 4, [], contexts=["no_landmarks"] * 4, mesh=(10, 5)) is None
    assert "2 of 3 windows" in (video_warning(30.0, 60, 60, 3, [], contexts=["no_landmarks"] * 2 + [""],
                                              mesh=(2, 2)) or "")


def test_video_warning_names_a_high_detection_floor() -> None:
    """A floor at or above INSENSITIVE_PCT_IOD of the eye distance is one note of the line, below it nothing."""
    assert video_warning(30.0, 300, 300, 3, [], floor_pct_iod=INSENSITIVE_PCT_IOD - 0.01) is None
    w = video_warning(30.0, 300, 300, 3, [], floor_pct_iod=4.25)
    assert w is not None and "\n" not in w and "4.2 % of the eye distance" in w


def _still_face(index: int, iod: float) -> AlignedFace:
    lm = np.array([[112 - iod / 2, 90], [112 + iod / 2, 90], [112, 125], [90, 160], [134, 160]], np.float32)
    return AlignedFace(index=index, pts_s=index / 30.0, face_id="face0", crop=np.full((224, 224), 128, np.uint8),
                       landmarks=lm, box=(0.0, 0.0, 224.0, 224.0), match=0.95)


@pytest.mark.parametrize("iod", [50.0, 90.0])
def test_detection_floor_is_p_times_each_regions_noise_over_the_eye_distance(
        monkeypatch: pytest.MonkeyPatch, iod: float) -> None:
    """Region r moving 0.1 (r + 1) px per k (224-px crop units) has a floor of 100 * p * 0.1 (r + 1) / IOD % (to the
    records' bin precision: 1.2 % for the threshold, 0.5 % for the IOD); the video's figure is the median over the regions; a still face sits at the
    threshold's own floor, min_motion_px."""
    motion = (0.1 * np.arange(1, len(ROI_NAMES) + 1, dtype=np.float32))[:, None] * np.array([[0.6, 0.8]], np.float32)
    monkeypatch.setattr(RoiFlowSpotter, "_region_motion", lambda self, a, b, lm, stats=False: motion)
    sp = RoiFlowSpotter(30.0)
    for i in range(300):
        sp.process_frame(i, i / 30.0, _still_face(i, iod))
    assert sp.flush() == []  # a constant motion never goes and comes back
    floor = sp.detection_floor()
    assert floor is not None and floor.steps > 200
    want = 100 * 4.0 * 0.1 * np.arange(1, len(ROI_NAMES) + 1) / iod
    got = np.array([v for _, v in floor.regions])
    assert [n for n, _ in floor.regions] == list(ROI_NAMES)
    np.testing.assert_allclose(got, want, rtol=0.018)
    assert floor.pct_iod == pytest.approx(float(np.median(got)), rel=1e-3)

    monkeypatch.setattr(RoiFlowSpotter, "_region_motion", lambda self, a, b, lm, stats=False: motion * 0)
    still = RoiFlowSpotter(30.0)
    for i in range(300):
        still.process_frame(i, i / 30.0, _still_face(i, iod))
    still.flush()
    floor = still.detection_floor()
    assert floor is not None and floor.pct_iod == pytest.approx(100 * 0.1 / iod, rel=0.018)


def test_landmark_coverage_is_sampled_every_two_seconds_of_the_track() -> None:
    """A rendered face for 4.5 s: the landmark model is run on frames 0, 60 and 120 and finds the face on each; with a
    black crop from 1.5 s on it finds it only on the first; with landmarks off nothing is sampled."""
    counts = []
    for dark, landmarks in ((False, "on"), (True, "on"), (False, "off")):
        sp = RoiFlowSpotter(30.0, {"landmarks": landmarks})
        for f in iter_frames(fps=30.0, duration_s=4.5, size=SIZE, noise_sigma=2.0, seed=4):
            face = crop_aligned(f, quantum=2.0)
            if dark and f.pts_s >= 1.5:
                face = dataclasses.replace(face, crop=np.zeros_like(face.crop))
            sp.process_frame(f.index, f.pts_s, face)
        sp.flush()
        floor = sp.detection_floor()
        assert floor is not None
        counts.append((floor.mesh_samples, floor.mesh_found))
    assert counts == [(3, 3), (3, 1), (0, 0)]
    assert "landmarks" not in floor.as_dict()


def test_detection_floor_rises_with_the_faces_own_motion() -> None:
    """Rendered faces: sensor noise of sigma 8 gives the flow more motion to ignore than sigma 2, so a higher floor;
    no face yet, no floor."""
    floors = []
    for sigma in (2.0, 8.0):
        sp = RoiFlowSpotter(30.0)
        assert sp.detection_floor() is None
        for f in iter_frames(fps=30.0, duration_s=3.0, size=SIZE, noise_sigma=sigma, seed=1):
            sp.process_frame(f.index, f.pts_s, crop_aligned(f, quantum=2.0))
        sp.flush()
        floor = sp.detection_floor()
        assert floor is not None
        floors.append(floor.pct_iod)
    assert floors[1] > 2 * floors[0], floors


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


def _done(tmp: Path, seconds: float, frames: int, n_frames: int | None = None, **kw: object) -> VideoResult:
    job = VideoJob(path=tmp / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=tmp)
    n = n_frames if n_frames is not None else frames
    info = VideoInfo(path=job.path, backend="test", width=640, height=480, fps=30.0, n_frames=n, duration_s=n / 30)
    return VideoResult(job=job, status="done", info=info, frames=frames, frames_with_face=frames,
                       decoded_s=seconds, **kw)  # type: ignore[arg-type]


def test_video_warnings_name_every_reason_one_line_each(tmp_path: Path) -> None:
    """A truncated decode, a video too short to judge, faces found but not (or briefly) tracked: one line each, naming
    the file; a plain video gets none."""
    assert video_warnings(_done(tmp_path, 10.0, 300)) == ()
    (short,) = video_warnings(_done(tmp_path, 0.3, 9))
    assert short.startswith(str(tmp_path / "v.mp4")) and "too short to judge" in short and "\n" not in short
    (cut,) = video_warnings(_done(tmp_path, 2.4, 71, n_frames=282))
    assert "decoding stopped after 71 of 282 frames" in cut and "2.4 of 9.4 s" in cut
    seg = Segment(video="v.mp4", face_id="face0", segment_id=0, kind="micro", onset_frame=30, apex_frame=33,
                  offset_frame=36, onset_s=1.0, apex_s=1.1, offset_s=1.2, duration_s=0.2, score=2.0,
                  au_names=("AU04",), probs=np.zeros(1), present=np.zeros(1, bool), aus="", emotion="")
    (faces,) = video_warnings(_done(tmp_path, 10.0, 300, faces=3, segments=(seg,),
                                    face_frames={"face0": 300, "face1": 12, "face2": 200}))
    assert "3 faces found" in faces and "face1 (0.4 s) tracked too briefly" in faces
    assert "face2 (6.7 s) tracked with no window" in faces and "face0" not in faces


def test_summary_lists_the_warnings(tmp_path: Path) -> None:
    from rich.console import Console

    from au_annotate.records import RunReport
    from au_annotate.ui import print_summary

    res = _done(tmp_path, 0.3, 9)
    res = dataclasses.replace(res, warnings=video_warnings(res))
    console = Console(record=True, width=200)
    print_summary(RunReport(results=(res,), out_dir=tmp_path, errors=("t.csv: 'x.mp4' is not among the inputs",)),
                  console)
    text = console.export_text()
    assert "warning: " + str(tmp_path / "v.mp4") + ": only 0.30 s of video" in text
    assert "error: t.csv: 'x.mp4' is not among the inputs" in text and "1 warnings" in text
