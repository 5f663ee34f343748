"""Discover, decode, face alignment and flow encoding, each on real inputs with known answers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from au_annotate.decode import DecodeError, open_video, prefetch
from au_annotate.discover import DiscoverError, discover
from au_annotate.flow import encode_flow, farneback_flow, flow_picture, images_to_input
from au_annotate.records import Frame


def test_discover_mirrors_layout_and_skips_non_videos(tmp_path: Path) -> None:
    for rel in ("a/interview.mp4", "b/interview.MP4", "b/deep/x.mkv", "b/readme.txt", "c.avi"):
        p = tmp_path / "in" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    out = tmp_path / "out"
    d = discover([tmp_path / "in"], out)
    rels = [j.rel.as_posix() for j in d.jobs]
    assert rels == ["a/interview.mp4", "b/deep/x.mkv", "b/interview.MP4", "c.avi"]
    assert [p.name for p in d.skipped] == ["readme.txt"]
    assert d.jobs[0].out_dir == out / "a" and d.jobs[2].out_dir == out / "b"
    assert len({(j.out_dir, j.stem) for j in d.jobs}) == 4  # the two interview.mp4 never collide
    assert [j.rel.as_posix() for j in discover([tmp_path / "in"], out, recursive=False).jobs] == ["c.avi"]


def test_discover_missing_path_and_symlink_loop(tmp_path: Path) -> None:
    with pytest.raises(DiscoverError, match="no such file"):
        discover([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "v.mp4").write_bytes(b"x")
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    d = discover([tmp_path / "in"], tmp_path / "out")
    assert [j.rel.as_posix() for j in d.jobs] == ["v.mp4"]


def test_discover_ignores_output_folder_inside_input(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.mp4").write_bytes(b"x")
    assert [j.rel.as_posix() for j in discover([tmp_path], tmp_path / "out").jobs] == ["v.mp4"]


def _write_clip(path: Path, n: int = 12, fps: float = 25.0) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(n):
        img = np.full((48, 64, 3), 0, np.uint8)
        img[:, : (i + 1) * 4] = 200
        w.write(img)
    w.release()


@pytest.mark.parametrize("backend", ["decord", "opencv", "auto"])
def test_decode_streams_frames_with_times(tmp_path: Path, backend: str) -> None:
    p = tmp_path / "c.mp4"
    _write_clip(p)
    with open_video(p, backend) as s:
        assert (s.info.width, s.info.height) == (64, 48)
        assert s.info.fps == pytest.approx(25.0)
        frames = list(prefetch(iter(s), maxsize=2))
    assert [f.index for f in frames] == list(range(12))
    assert np.allclose([f.pts_s for f in frames], np.arange(12) / 25.0, atol=1e-3)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    # content is in order: the bright band grows by 4 px per frame
    widths = [int((f.rgb()[24, :, 0] > 100).sum()) for f in frames]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_decode_backends_agree(tmp_path: Path) -> None:
    p = tmp_path / "c.mp4"
    _write_clip(p)
    a = [f.rgb() for f in open_video(p, "decord")]
    b = [f.rgb() for f in open_video(p, "opencv")]
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _write_face_clip(path: Path, fourcc: str, n: int = 6, slate: int = 0) -> None:
    """n frames of a moving 160-px astronaut face, after `slate` uniform grey (113) frames."""
    from skimage import data

    face = cv2.cvtColor(cv2.resize(data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (160, 160))
    for _ in range(slate):
        w.write(np.full_like(face, 113))
    for i in range(n):
        w.write(np.roll(face, 2 * i, axis=1))
    w.release()


@pytest.mark.parametrize(("fourcc", "ext", "luma"), [("mp4v", "mp4", True), ("MJPG", "avi", True), ("png ", "avi", False)])
def test_luma_decoding_matches_the_gray_of_colour_decoding(tmp_path: Path, fourcc: str, ext: str, luma: bool) -> None:
    """Luma-only frames equal the gray of a BGR decode for limited-range (mp4v) and full-range (MJPEG) YUV; a packed
    RGB video (PNG codec), whose first plane is not a luma plane, is decoded in colour instead."""
    p = tmp_path / f"c.{ext}"
    _write_face_clip(p, fourcc)
    with open_video(p, "opencv", gray=True) as s:
        frames = list(s)
        assert s.gray is luma  # type: ignore[attr-defined]
    with open_video(p, "opencv") as s:
        reference = [f.gray() for f in s]
    assert len(frames) == len(reference) == 6
    assert {f.order for f in frames} == {"gray" if luma else "bgr"}
    for f, ref in zip(frames, reference, strict=True):
        diff = np.abs(f.gray().astype(int) - ref.astype(int))
        assert f.gray().shape == (160, 160) and np.median(diff) <= 1 and np.percentile(diff, 99) <= 3


def test_limited_range_frames_are_mapped_only_where_the_tracker_reads_them(tmp_path: Path) -> None:
    """Limited-range luma arrives with its LUT pending (Frame.levels): the face tracker maps only its search areas,
    and its crops are exactly those of frames mapped whole (a moving head, so the areas move)."""
    import dataclasses

    from synth import make_video

    from au_annotate.face import FaceTracker

    clip = make_video(tmp_path / "m.mp4", fps=30, duration_s=1.5, size=(640, 480), head_motion_px=6.0, seed=8,
                      face_scale=0.6).path  # a face small enough for the search areas to be a part of the frame
    region, whole = FaceTracker(30.0), FaceTracker(30.0)
    n = 0
    with open_video(clip, "opencv", gray=True) as s:
        for f in s:
            assert f.levels is not None  # mp4v is limited range
            mapped = dataclasses.replace(f, image=f.gray(), levels=None)
            a, b = region.process_all(f), whole.process_all(mapped)
            assert len(a) == len(b) == 1
            assert n < 2 or not region._gray(f)[1]  # noqa: SLF001 - the partial mapping is what is tested here
            assert np.array_equal(a[0].crop, b[0].crop) and np.array_equal(a[0].landmarks, b[0].landmarks)
            n += 1
    assert n == 45


def test_luma_range_is_decided_past_a_grey_slate(tmp_path: Path) -> None:
    """Limited- and full-range luma differ by little around grey level 110: a clip that opens on a uniform grey slate
    must not be taken for full range on its first frame (its face frames would then be off by up to 20 levels)."""
    p = tmp_path / "slate.mp4"
    _write_face_clip(p, "mp4v", n=6, slate=6)
    with open_video(p, "opencv", gray=True) as s:
        frames = list(s)
        assert s.gray  # type: ignore[attr-defined]
    with open_video(p, "opencv") as s:
        reference = [f.gray() for f in s]
    for f, ref in zip(frames, reference, strict=True):
        diff = np.abs(f.gray().astype(int) - ref.astype(int))
        assert np.percentile(diff, 99) <= 3  # taken for full range, the face frames were off by a median of 9
        assert np.median(diff) <= (2 if f.index < 6 else 1)


def test_luma_decoding_falls_back_to_colour_for_16_bit_gray(tmp_path: Path) -> None:
    """A gray16 video's first plane is 16-bit: luma-only decoding must decode it in colour (8-bit), not fail."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs the ffmpeg program")
    p = tmp_path / "g16.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
                    "-frames:v", "5", "-c:v", "ffv1", "-pix_fmt", "gray16le", str(p)], check=True)
    with open_video(p, "auto", gray=True) as s:
        frames = list(s)
        assert not getattr(s, "gray", False)
    assert len(frames) == 5 and frames[0].image.dtype == np.uint8 and frames[0].gray().shape == (48, 64)


def test_luma_decoding_is_silent_even_when_cv2_was_imported_first(tmp_path: Path) -> None:
    """OpenCV logs a warning per luma-only frame at its default level; the decoder keeps stderr clean even when the
    caller imported cv2 before au_annotate (so OPENCV_LOG_LEVEL from the package came too late)."""
    import subprocess
    import sys

    p = tmp_path / "c.mp4"
    _write_face_clip(p, "mp4v")
    code = ("import cv2\nfrom au_annotate.decode import open_video\n"
            f"s = open_video({str(p)!r}, 'opencv', gray=True)\nprint(s.gray, len(list(s)))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENCV_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "6"] and run.stderr.strip() == ""


@pytest.mark.parametrize("content", [b"", b"this is text, not a video\n" * 10])
def test_decode_bad_files_raise_one_line(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(DecodeError) as e:
        open_video(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    """Sub-pixel translation between two images (cross-correlation; the phase-normalised kind finds no peak on face
    cuts whose content leaves the edges, and reports 0 for any shift)."""
    from skimage.registration import phase_cross_correlation

    shift = phase_cross_correlation(a.astype(np.float32), b.astype(np.float32), upsample_factor=20, normalization=None)
    return float(np.hypot(*shift[0]))


def _fixed_cut_drift(frames: list[np.ndarray], box: tuple[float, float, float, float]) -> float:
    """How far the picture moves between the first and last frame inside one fixed square (no alignment)."""
    x, y, side = int(box[0]), int(box[1]), int(box[2])
    cuts = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[y : y + side, x : x + side], (224, 224))
            for f in (frames[0], frames[-1])]
    return _shift(*cuts)


def _first_face(tracker, frame: Frame):  # noqa: ANN001, ANN202
    """The tracked face of a one-face frame (the lowest id), or None."""
    faces = tracker.process_all(frame)
    return faces[0] if faces else None


def test_alignment_residual_motion_under_one_pixel() -> None:
    """A face translating by sub-pixel steps gives aligned crops that stay within 1 px of each other."""
    from skimage import data

    from au_annotate.face import FaceTracker

    big = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    tracker = FaceTracker(30.0)
    crops, frames, first_box = [], [], None
    for i in range(30):
        dx, dy = 0.37 * i, -0.23 * i  # 11 px right, 7 px up over the clip
        m = np.float32([[1, 0, -100 + dx], [0, 1, -50 + dy]])
        img = cv2.warpAffine(big, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        face = _first_face(tracker, Frame(i, i / 30, img))
        assert face is not None and face.crop.shape == (224, 224)
        crops.append(face.crop.astype(np.float32))
        frames.append(img)
        first_box = first_box or face.box
    assert tracker.detections == 1  # tracked by template matching, not re-detected
    residual = [_shift(crops[0], c) for c in crops[1:]]
    assert max(residual) < 1.0, residual
    # without alignment the crops would have moved: the same square cut at the first crop's place drifts by ~11 px
    assert _fixed_cut_drift(frames, first_box) > 8.0


@pytest.mark.parametrize(("size", "zoom", "step"), [((1280, 720), 3.0, (0.61, -0.37)), ((1920, 1080), 4.0, (1.1, -0.7))])
def test_alignment_holds_for_large_faces(size: tuple[int, int], zoom: float, step: tuple[float, float]) -> None:
    """Big faces are matched on a ~64-px template (an integer area reduction), yet the crops stay sub-pixel aligned."""
    from skimage import data

    from au_annotate.face import FaceTracker

    big = cv2.resize(data.astronaut(), (int(512 * zoom),) * 2, interpolation=cv2.INTER_CUBIC)
    tracker = FaceTracker(30.0)
    crops, frames, first_box = [], [], None
    for i in range(20):
        m = np.float32([[1, 0, -50 * zoom + step[0] * i], [0, 1, -25 * zoom + step[1] * i]])
        img = cv2.warpAffine(big, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        face = _first_face(tracker, Frame(i, i / 30, img))
        assert face is not None
        crops.append(face.crop.astype(np.float32))
        frames.append(img)
        first_box = first_box or face.box
    track = tracker._tracks[0]  # noqa: SLF001 - the tracking scale is the point of this test
    assert track.factor >= 3 and 40 <= track.template.shape[0] <= 100
    assert tracker.detections == 1
    residual = [_shift(crops[0], c) for c in crops[1:]]
    assert max(residual) < 0.5, residual
    assert _fixed_cut_drift(frames, first_box) > 2.0  # unaligned, the face moved


def test_tracker_gives_the_same_crops_for_bgr_and_rgb_frames() -> None:
    """OpenCV frames stay BGR (no per-frame conversion); the face stage converts what it reads, so results match."""
    from skimage import data

    from au_annotate.face import FaceTracker

    rgb = cv2.resize(data.astronaut(), (640, 640), interpolation=cv2.INTER_CUBIC)[:480]
    a, b = FaceTracker(30.0), FaceTracker(30.0)
    for i in range(3):
        img = np.roll(rgb, i, axis=1)
        fa = _first_face(a, Frame(i, i / 30, img))
        fb = _first_face(b, Frame(i, i / 30, np.ascontiguousarray(img[..., ::-1]), order="bgr"))
        assert fa is not None and fb is not None
        assert np.array_equal(fa.crop, fb.crop) and np.allclose(fa.landmarks, fb.landmarks)


def test_tracker_reports_no_face_without_crashing() -> None:
    from au_annotate.face import FaceTracker

    tracker = FaceTracker(30.0)
    blank = np.full((240, 320, 3), 90, np.uint8)
    assert all(tracker.process_all(Frame(i, i / 30, blank)) == [] for i in range(40))
    assert tracker.detections >= 2  # keeps retrying, but not on every frame
    assert tracker.detections < 40


def test_flow_encoding_pure_horizontal_shift() -> None:
    """Rightward motion has angle 0 -> hue 0 (red); V is min-max normalised, so it reaches 255; RGB order."""
    flow = np.zeros((224, 224, 2), np.float32)
    flow[..., 0] = 1.0
    flow[80:150, 80:150, 0] = 3.0  # a faster patch so min-max has a range
    pic = encode_flow(flow)
    assert pic.shape == (28, 28, 3) and pic.dtype == np.uint8
    assert pic.max() == 255
    centre = pic[14, 14]
    assert tuple(centre) == (255, 0, 0)  # red first: RGB, not BGR
    assert np.all(pic[..., 1] == 0) and np.all(pic[..., 2] == 0)  # hue 0 everywhere: only the red channel


def test_flow_encoding_matches_reference_formula() -> None:
    """Pixel-exact against the seed's formula computed independently (float64 NumPy, no OpenCV polar conversion):
    hue = truncate(angle in degrees / 2), value = truncate(255 * min-max normalised magnitude), full saturation, then
    OpenCV's HSV -> RGB and an 8x area reduction to 28 px. The flow is constant on each 8x8 block (the area reduction keeps it
    exact) and its angles and magnitudes sit 0.2-0.3 of a step away from the truncation edges: a hue off by one step
    (2 degrees), rounding instead of truncating, or BGR order all change pixels, while cartToPolar's ~0.3 degree
    angle error cannot."""
    rng = np.random.default_rng(0)
    hue = rng.integers(0, 180, (28, 28))  # the intended hue step of each block
    value = rng.integers(1, 255, (28, 28))  # the intended value (0 and 255 are the min and max blocks below)
    value[0, 0], value[0, 1] = 0, 255
    ang = np.radians(2 * hue + 1.4)  # 0.7 of a hue step: truncates to `hue`, rounds to hue + 1
    lo, hi = 0.5, 3.0  # magnitudes of the min and max blocks
    frac = np.where((value == 0) | (value == 255), 0.0, 0.7)  # also 0.7 of a value step
    mag = lo + (value + frac) / 255 * (hi - lo)
    block = np.stack([mag * np.cos(ang), mag * np.sin(ang)], axis=-1)
    flow = np.repeat(np.repeat(block, 8, axis=0), 8, axis=1).astype(np.float32)
    # the reference, block by block
    m64 = np.hypot(flow[::8, ::8, 0].astype(np.float64), flow[::8, ::8, 1].astype(np.float64))
    deg = np.degrees(np.arctan2(flow[::8, ::8, 1].astype(np.float64), flow[::8, ::8, 0].astype(np.float64))) % 360
    hsv = np.zeros((28, 28, 3), np.uint8)
    hsv[..., 0] = np.floor(deg / 2)
    hsv[..., 1] = 255
    hsv[..., 2] = np.floor((m64 - m64.min()) / (m64.max() - m64.min()) * 255)
    assert np.array_equal(hsv[..., 0], hue) and np.array_equal(hsv[..., 2], value)  # the flow says what was meant
    # OpenCV's HSV -> RGB, at full size (its vector and scalar code paths may round a channel differently)
    ref = cv2.cvtColor(np.repeat(np.repeat(hsv, 8, axis=0), 8, axis=1), cv2.COLOR_HSV2RGB)[::8, ::8]
    got = encode_flow(flow)
    assert got.shape == (28, 28, 3) and got.dtype == np.uint8
    assert np.array_equal(got, ref), int(np.abs(got.astype(int) - ref).max())


def test_farneback_sees_a_real_shift_and_input_is_float_nchw() -> None:
    from skimage import data

    face = cv2.resize(cv2.cvtColor(data.astronaut()[40:200, 160:300], cv2.COLOR_RGB2GRAY), (224, 224))
    shifted = np.roll(face, 2, axis=1)
    f = farneback_flow(face, shifted)
    assert f.shape == (224, 224, 2)
    assert np.median(f[40:180, 40:180, 0]) == pytest.approx(2.0, abs=0.3)
    pic = flow_picture(face, shifted)
    x = images_to_input(pic[None])
    assert x.shape == (1, 3, 28, 28) and x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert np.allclose(x[0, 0], pic[..., 0] / 255.0)


def test_small_face_in_a_4k_frame_is_found() -> None:
    """A ~50x70 px face in a 3840x2160 frame shrinks below MTCNN's reach at 640 px; the larger retry finds it."""
    from skimage import data

    from au_annotate.face import FaceDetector

    frame = np.full((2160, 3840, 3), 110, np.uint8)
    frame[1000:1120, 2000:2090] = cv2.resize(data.astronaut()[30:230, 150:300], (90, 120))
    detector = FaceDetector()
    assert detector._detect_at(frame, 640) == []  # the cheap pass alone misses it
    faces = detector.detect(frame)
    assert len(faces) == 1
    f = faces[0]
    assert 1990 < f.x < 2060 and 990 < f.y < 1080 and 40 < f.h < 100
