"""Bad faces, end to end through the pipeline (`VideoRun`, what `process_video` runs; no model): a dark or backlit face,
a 60-px face, a face turned towards profile, sunglasses (worn throughout, or for 2 s), a hand held over the mouth for
3 s, a beard, and the light going out (the face tracked, the landmark model lost). No clip has an expression: none may
crash or flood (at most 2 reported windows), and where the landmark model finds no face on most of the clip the video's
warnings say so in one line. (Occluded throughout, cuts, 5 fps, the face half out of the frame and a 0.4 s hand sweep
are in test_quality.py.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
from synth import SynthFrame, iter_frames

from au_annotate.pipeline import NoFaceError, VideoRun
from au_annotate.quality import video_warnings
from au_annotate.records import AlignedFace, Segment, VideoJob, VideoResult, Window
from au_annotate.settings import DEFAULTS
from au_annotate.spot import Spotter, make_spotter

pytest.importorskip("skimage")

FPS = 30.0
SIZE = (320, 240)  # the face is ~130 px high, ~50 px between the eyes
MESH_EVERY = 5  # the landmark model's presence is sampled on every 5th tracked crop (6 Hz)
MAX_REPORTED = 2


# -- the clips -----------------------------------------------------------------------------------------------------


def _clip(duration_s: float, size: tuple[int, int] = SIZE, seed: int = 21, face_scale: float = 1.0) -> list[SynthFrame]:
    """The synthetic head (the astronaut photograph), no expression: slight head motion and sensor noise."""
    return list(iter_frames(fps=FPS, duration_s=duration_s, size=size, seed=seed, head_motion_px=1.5,
                            noise_sigma=2.0, face_scale=face_scale))


def _iod(f: SynthFrame) -> float:
    return float(np.linalg.norm(f.landmarks[1] - f.landmarks[0]))


def _follow(f0: SynthFrame, f: SynthFrame) -> np.ndarray:
    """The head's similarity transform (2x3) from the first frame to `f`, from the true landmarks."""
    m, _ = cv2.estimateAffinePartial2D(f0.landmarks, f.landmarks)
    return m


def _overlay(frames: list[SynthFrame], rgb: np.ndarray, alpha: np.ndarray,
             on: Callable[[float], float] = lambda t: 1.0,
             shift: Callable[[float], tuple[float, float]] = lambda t: (0.0, 0.0)) -> list[np.ndarray]:
    """Paint `rgb` with opacity `alpha` (drawn on the first frame's face) on every frame, moving with the head, times
    `on(t)` (0..1), plus a translation `shift(t)` of its own (frame px)."""
    h, w = frames[0].image.shape[:2]
    out = []
    for f in frames:
        a = on(f.pts_s)
        if a <= 0:
            out.append(f.image)
            continue
        m = _follow(frames[0], f).copy()
        m[:, 2] += shift(f.pts_s)
        col = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        al = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None] * np.float32(a)
        out.append(cv2.convertScaleAbs(f.image.astype(np.float32) * (1 - al) + col * al))
    return out


def _texture(shape: tuple[int, int], seed: int, blur: tuple[float, float]) -> np.ndarray:
    """Smooth random texture in about -1..1 (float32), blurred by (sigma_x, sigma_y)."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigmaX=blur[0], sigmaY=blur[1])
    return t / max(1e-6, float(np.abs(t).max()))


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.convertScaleAbs(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape[:2] + (1,)).astype(np.float32))


def dark(frames: list[SynthFrame]) -> list[np.ndarray]:
    """A dim room: gamma 1.6, then x0.35 (the frame and the face both at a mean of ~17 % of full scale), then fresh
    sensor noise of sigma 4 (high gain) on every frame."""
    lut = np.array([255 * 0.35 * (v / 255) ** 1.6 for v in range(256)], np.float32).clip(0, 255).astype(np.uint8)
    return [_noisy(cv2.LUT(f.image, lut), 4.0, f.index) for f in frames]


def lights_out(frames: list[SynthFrame], dim_s: tuple[float, float] = (1.0, 1.4), level: float = 0.03) -> list[np.ndarray]:
    """The light goes down: a normally lit face dims over `dim_s` to `level` x (after gamma 2: a mean of ~1 % of full
    scale, the face a dim shape in the noise), sensor noise sigma 3 throughout. The tracker keeps the face it found
    while lit; the landmark model does not find it in the dark."""
    out = []
    for f in frames:
        u = min(max((f.pts_s - dim_s[0]) / (dim_s[1] - dim_s[0]), 0.0), 1.0)
        gain, gamma = (1 - u) + u * level, 1.0 + u
        img = 255 * gain * (f.image.astype(np.float32) / 255) ** gamma
        out.append(_noisy(img, 3.0, f.index))
    return out


def _head_mask(f: SynthFrame, grow: float = 1.0) -> np.ndarray:
    """A soft mask (H, W) float32 over the head, neck and shoulders of frame `f`."""
    h, w = f.image.shape[:2]
    x, y, bw, bh = f.box
    mask = np.zeros((h, w), np.float32)
    cx, cy = x + bw / 2, y + bh / 2
    cv2.ellipse(mask, (int(cx), int(cy - 0.1 * bh)), (int(0.75 * bw * grow), int(0.72 * bh * grow)), 0, 0, 360, 1.0, -1)
    cv2.rectangle(mask, (int(cx - 0.4 * bw), int(cy)), (int(cx + 0.4 * bw), h), 1.0, -1)  # neck
    cv2.ellipse(mask, (int(cx), h), (int(1.6 * bw), int(0.5 * bh)), 0, 180, 360, 1.0, -1)  # shoulders
    return cv2.GaussianBlur(mask, (0, 0), 0.04 * bh)


def backlit(frames: list[SynthFrame]) -> list[np.ndarray]:
    """A window behind the subject: the background near white (~245), the head a dark silhouette (x0.3, gamma 1.4),
    the bright background bleeding 6 % into its edges; sensor noise sigma 3."""
    mask = _head_mask(frames[0])
    h, w = mask.shape
    bright = np.full(frames[0].image.shape, 245, np.float32) + 8 * _texture((h, w), 5, (6, 6))[..., None]
    lut = np.array([255 * 0.3 * (v / 255) ** 1.4 for v in range(256)], np.float32).clip(0, 255).astype(np.uint8)
    out = []
    for f in frames:
        mk = cv2.warpAffine(mask, _follow(frames[0], f), (w, h), borderValue=0)[..., None]
        face = cv2.LUT(f.image, lut).astype(np.float32)
        halo = np.float32(0.24) * mk * (1 - mk) * bright  # bloom at the silhouette's edge (6 % at its middle)
        out.append(_noisy(face * mk + bright * (1 - mk) + halo, 3.0, f.index))
    return out


def small(duration_s: float) -> list[np.ndarray]:
    """A 60-px face (23 px between the eyes) in a 640x360 frame: the 320x240 clip shrunk to 145x109 on a plain wall
    (rendering the picture at that scale would tile the frame with mirrored copies of the face), then sensor noise."""
    frames = _clip(duration_s)
    k = 60 / frames[0].box[3]
    w, h = round(SIZE[0] * k), round(SIZE[1] * k)
    wall = (118 + 10 * _texture((360, 640), 3, (20, 20)))[..., None] * np.array([1.0, 0.97, 0.92], np.float32)
    x0, y0 = (640 - w) // 2, (360 - h) // 2
    out = []
    for f in frames:
        img = wall.copy()
        img[y0 : y0 + h, x0 : x0 + w] = cv2.resize(f.image, (w, h), interpolation=cv2.INTER_AREA)
        out.append(_noisy(img, 2.0, f.index))
    assert 18 < _iod(frames[0]) * k < 26
    return out


def yawed(frames: list[SynthFrame]) -> list[np.ndarray]:
    """A strong yaw, approximated: the half of the face (and head) right of the nose is squeezed to 35 % of its
    width (cos 70 deg ~ 0.34), shaded x0.75 (turned from the light), and the background beyond it slides in.
    How close to a real profile: the far half's foreshortening and shading match a ~70 deg turn, but nothing is
    hidden (the far eye stays visible, squeezed; a real profile hides it behind the nose bridge), the nose does not
    stick out past the cheek, the near half is not widened and the ear does not appear; so this is a 3/4 view with
    a profile's asymmetry, not a true 90 deg profile."""
    h, w = frames[0].image.shape[:2]
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    out = []
    for f in frames:
        x, y, bw, bh = f.box
        cx = float(f.landmarks[2, 0])  # the nose
        half = 0.85 * bw  # nose to the far side of the head, hair included
        c = 0.35
        src = xs.copy()
        inside = (xs >= cx) & (xs < cx + c * half)
        src[inside] = cx + (xs[inside] - cx) / c
        beyond = xs >= cx + c * half
        src[beyond] = xs[beyond] + (1 - c) * half
        wy = np.clip(1.0 - np.abs(ys - (y + 0.45 * bh)) / (1.1 * bh), 0.0, 1.0) ** 0.5  # the head's height, soft
        map_x = xs[None, :] + wy[:, None] * (src - xs)[None, :]
        map_y = np.repeat(ys[:, None], w, axis=1)
        img = cv2.remap(f.image, map_x.astype(np.float32), map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        shade = np.ones((h, w), np.float32)
        shade[:, xs >= cx] = 0.75
        shade = 1 - (1 - cv2.GaussianBlur(shade, (0, 0), 3)) * wy[:, None]
        out.append(cv2.convertScaleAbs(img * shade[..., None]))
    return out


def half_face(frames: list[SynthFrame]) -> list[np.ndarray]:
    """The other profile approximation: over the head's height, everything right of the nose line is replaced by the
    background beyond the head's far edge, mirrored back and forth (one eye, half a nose and mouth: what a camera sees
    of a profile, though the silhouette is a straight cut, not a nose, lips and chin contour)."""
    h, w = frames[0].image.shape[:2]
    xs = np.arange(w, dtype=np.float32)
    out = []
    for f in frames:
        x, y, bw, bh = f.box
        cx = float(f.landmarks[2, 0]) + 0.05 * bw
        edge = min(x + 1.4 * bw, w - 8.0)  # the head's far edge, hair included
        span = w - 1 - edge
        d = np.mod(xs - cx, 2 * span)
        src = np.where(xs >= cx, edge + span - np.abs(d - span), xs).astype(np.float32)
        img = f.image.copy()
        y0, y1 = max(0, int(y - 0.45 * bh)), min(h, int(y + 1.5 * bh))
        band = cv2.remap(f.image[y0:y1], np.repeat(src[None, :], y1 - y0, 0),
                         np.repeat(np.arange(y1 - y0, dtype=np.float32)[:, None], w, 1), cv2.INTER_LINEAR)
        img[y0:y1] = band
        out.append(img)
    return out


def glasses(frames: list[SynthFrame], on: Callable[[float], float] = lambda t: 1.0) -> list[np.ndarray]:
    """Sunglasses: two opaque dark lenses (0.9 x 0.6 eye distances) and a bridge over the eyes, with a faint sheen."""
    f0 = frames[0]
    iod = _iod(f0)
    h, w = f0.image.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    for k in (0, 1):
        cx, cy = f0.landmarks[k]
        cv2.ellipse(alpha, (int(cx), int(cy + 0.03 * iod)), (int(0.45 * iod), int(0.3 * iod)), 0, 0, 360, 1.0, -1)
    (lx, ly), (rx, ry) = f0.landmarks[0], f0.landmarks[1]
    cv2.line(alpha, (int(lx), int(ly - 0.12 * iod)), (int(rx), int(ry - 0.12 * iod)), 1.0, max(2, int(0.06 * iod)))
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    sheen = np.linspace(12, 40, h, dtype=np.float32)[:, None, None] + 6 * _texture((h, w), 7, (4, 4))[..., None]
    rgb = np.broadcast_to(sheen, (h, w, 3)).astype(np.float32) + np.array([0, 2, 6], np.float32)
    return _overlay(frames, rgb, alpha, on)


def _hand(f0: SynthFrame) -> tuple[np.ndarray, np.ndarray]:
    """A hand held flat over the mouth, fingers across the face: skin tone, skin texture, the dark creases between four
    fingers, soft edges; 2.6 x 1.25 eye distances, from under the nose to below the chin (drawn on frame `f0`)."""
    iod = _iod(f0)
    h, w = f0.image.shape[:2]
    mc = (f0.landmarks[3] + f0.landmarks[4]) / 2
    x0, x1 = int(mc[0] - 1.3 * iod), int(mc[0] + 1.3 * iod)
    y0, y1 = int(f0.landmarks[2, 1] + 0.18 * iod), int(mc[1] + 1.05 * iod)
    alpha = np.zeros((h, w), np.float32)
    r = (y1 - y0) // 8  # four fingers, rounded tips on the left, the palm's edge on the right
    cv2.rectangle(alpha, (x0 + r, y0), (x1, y1), 1.0, -1)
    for i in range(4):
        cv2.circle(alpha, (x0 + r, int(y0 + (2 * i + 1) * r)), r, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.5)
    skin = np.array([206, 158, 132], np.float32)
    tex = 0.08 * _texture((h, w), 11, (3, 3)) + 0.04 * _texture((h, w), 12, (1, 1))
    shade = 1 + tex
    for i in range(1, 4):  # creases between the fingers (horizontal: the hand comes from the side)
        yc = y0 + i * (y1 - y0) / 4
        shade -= 0.2 * np.exp(-0.5 * ((np.arange(h, dtype=np.float32) - yc) / (0.025 * iod + 0.5)) ** 2)[:, None]
    shade *= np.linspace(0.92, 1.05, w, dtype=np.float32)[None, :]  # lit from one side
    return skin * shade[..., None], alpha


def hand_over_mouth(frames: list[SynthFrame], enter_s: float, hold_s: float, slide_s: float = 0.3) -> list[np.ndarray]:
    """The hand slides in from the right edge of the frame in `slide_s`, stays `hold_s` over the mouth (following the
    head, with a 0.6 px sway of its own at 0.7 Hz), then slides out the way it came."""
    rgb, alpha = _hand(frames[0])
    w = frames[0].image.shape[1]
    cols = np.flatnonzero(alpha.max(0) > 0.01)
    away = float(w - cols[0] + 2)  # far enough right to be out of the frame

    def out_by(t: float) -> float:  # 0: in place over the mouth, 1: out of the frame
        u = min(max((enter_s + slide_s - t) / slide_s, 0.0), 1.0)
        v = min(max((t - enter_s - slide_s - hold_s) / slide_s, 0.0), 1.0)
        return max(u, v)

    def shift(t: float) -> tuple[float, float]:
        sway = 0.6 * np.sin(2 * np.pi * 0.7 * t)
        return away * out_by(t) + sway, 0.4 * sway

    return _overlay(frames, rgb, alpha, on=lambda t: 1.0 if out_by(t) < 1 else 0.0, shift=shift)


def beard(frames: list[SynthFrame]) -> list[np.ndarray]:
    """A full dark beard: jaw, chin and moustache covered with coarse dark hair texture (the lips left bare)."""
    f0 = frames[0]
    iod = _iod(f0)
    h, w = f0.image.shape[:2]
    mc = (f0.landmarks[3] + f0.landmarks[4]) / 2
    mw = float(np.linalg.norm(f0.landmarks[4] - f0.landmarks[3]))
    nose = f0.landmarks[2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (int(mc[0]), int(mc[1] + 0.2 * iod)), (int(1.05 * iod), int(0.85 * iod)), 0, 0, 180, 1.0, -1)
    cv2.rectangle(alpha, (int(mc[0] - 1.05 * iod), int(nose[1] + 0.25 * iod)),
                  (int(mc[0] + 1.05 * iod), int(mc[1] + 0.2 * iod)), 1.0, -1)  # cheeks and jaw sides
    cv2.rectangle(alpha, (int(mc[0] - 0.5 * mw - 0.15 * iod), int(nose[1] + 0.1 * iod)),
                  (int(mc[0] + 0.5 * mw + 0.15 * iod), int(mc[1])), 1.0, -1)  # moustache
    lips = np.zeros((h, w), np.float32)
    cv2.ellipse(lips, (int(mc[0]), int(mc[1] + 0.04 * iod)), (int(0.55 * mw), int(0.12 * iod)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(np.clip(alpha - lips, 0, 1), (0, 0), 1.2) * np.float32(0.92)
    hair = 40 + 28 * _texture((h, w), 13, (0.6, 2.5)) + 10 * _texture((h, w), 14, (4, 4))  # strands run downwards
    rgb = hair[..., None] * np.array([1.0, 0.85, 0.75], np.float32)
    return _overlay(frames, rgb, alpha)


# -- running them --------------------------------------------------------------------------------------------------


def _write(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class _Sampled:
    """The default spotter, keeping every MESH_EVERY-th frame's aligned crop (None: no face tracked there)."""

    def __init__(self, inner: Spotter, crops: list[np.ndarray | None]) -> None:
        self.inner, self.crops = inner, crops

    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]:
        if index % MESH_EVERY == 0:
            self.crops.append(None if face is None else face.crop)
        return self.inner.process_frame(index, pts_s, face)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@dataclass
class Outcome:
    """One clip through the pipeline: its windows (reported first), warnings and the landmark model's presence."""

    status: str  # done | no_face
    reported: list[Window]  # micro/macro windows with quality ok: what the outputs count
    others: list[Window]  # every other window found (gated, blinks), not the below-threshold near misses
    warnings: tuple[str, ...]
    presence: float  # share of sampled frames (tracked or not) where the landmark model found a face
    frames: int
    with_face: int

    def describe(self) -> str:
        def one(w: Window) -> str:
            return (f"{w.kind}/{w.quality} {w.onset / FPS:.2f}-{w.offset / FPS:.2f}s apex {w.apex / FPS:.2f} "
                    f"score {w.score:.2f} ctx={w.context or '-'} regions={','.join(w.regions)}")

        return (f"{self.status}: face {self.with_face}/{self.frames} frames, landmarks {self.presence:.0%}; reported "
                f"{[one(w) for w in self.reported]}; others {[one(w) for w in self.others]}; warnings {self.warnings}")


def run(path: Path) -> Outcome:
    """The clip through the default pipeline (no model: the windows are the spotter's), as the manifest sees it."""
    from au_annotate.landmarks import FaceMesh

    job = VideoJob(path=path, rel=PurePosixPath(path.name), out_dir=path.parent)
    crops: list[np.ndarray | None] = []
    s = DEFAULTS

    def factory(face_id: str, fps: float, on_signal: Callable[[str, int, float], None] | None) -> Spotter:
        inner = make_spotter(s.spotter, fps, s.spot, on_signal=on_signal, near_misses=s.report)
        return _Sampled(inner, crops) if face_id == "face0" else inner  # type: ignore[return-value]

    try:
        work = VideoRun(job, s, spotter_factory=factory).run()
    except NoFaceError as e:
        res = VideoResult(job=job, status="no_face", error=str(e), frames=e.frames, info=e.info)
        return Outcome("no_face", [], [], video_warnings(res), 0.0, e.frames, 0)
    segs = tuple(Segment(video=job.rel.as_posix(), face_id=x.face_id, segment_id=i, kind=x.window.kind,
                         onset_frame=x.window.onset, apex_frame=x.window.apex, offset_frame=x.window.offset,
                         onset_s=x.onset_s, apex_s=x.apex_s, offset_s=x.offset_s, duration_s=x.offset_s - x.onset_s,
                         score=x.window.score, au_names=(), probs=np.zeros(0), present=np.zeros(0, bool), aus="",
                         emotion="", quality=x.window.quality, context=x.window.context, regions=x.window.regions)
                 for i, x in enumerate(work.samples))
    res = VideoResult(job=job, status="done", info=work.info, segments=segs, frames=work.frames,
                      frames_with_face=work.frames_with_face, faces=work.faces, unreported=work.unreported,
                      decoded_s=work.decoded_s, floors=work.floors, face_frames=work.face_frames)
    mesh = FaceMesh()
    found = [c is not None and mesh(c).ok for c in crops]  # frames before the track started count as missing
    sampled = -(-work.frames // MESH_EVERY)
    windows = [x.window for x in work.samples] + [w for w in work.unreported if w.reason != "below_threshold"]
    reported = [w for w in windows if w.kind in ("micro", "macro") and w.quality == "ok"]
    return Outcome("done", reported, [w for w in windows if w not in reported], work.notes + video_warnings(res),
                   sum(found) / max(1, sampled), work.frames, work.frames_with_face)


# -- the cases -----------------------------------------------------------------------------------------------------

HAND_ENTER_S, HAND_HOLD_S, HAND_SLIDE_S = 1.2, 3.0, 0.3
HAND_GAP = ("KNOWN product gap, measured: 2 ok windows caused by a hand held 3 s over the mouth: macro 0.13-1.90 s "
            "(apex 0.80 s, mouth_l+lips, score 1.18: its K-back leg is noise, 0.09 px, its partner the hand's arrival, "
            "5.1 px) and micro 1.43-1.60 s (mouth_l, score 8.44: the arrival itself, a step); the landmark model's "
            "presence is 1.00 on every frame (it draws a closed mouth under the hand: aperture 0.128 -> 0.003 IOD), so "
            "neither is labelled occlusion (with the held-expression detector of an earlier working tree a third, "
            "macro 4.60-5.40 s ctx=held, the departure, was reported too)")

CASES: dict[str, Callable[[], list[np.ndarray]]] = {
    "dark": lambda: dark(_clip(4.0)),
    "backlit": lambda: backlit(_clip(4.0)),
    "small_60px": lambda: small(4.0),
    "yaw_squeezed": lambda: yawed(_clip(4.0)),
    "half_face": lambda: half_face(_clip(4.0)),
    "sunglasses": lambda: glasses(_clip(4.0)),
    "sunglasses_2s": lambda: glasses(_clip(5.0), on=lambda t: float(1.5 <= t < 3.5)),
    "hand_over_mouth_3s": lambda: hand_over_mouth(_clip(5.5), HAND_ENTER_S, HAND_HOLD_S, HAND_SLIDE_S),
    "beard": lambda: beard(_clip(4.0)),
}
DIM_END_S = 1.4
# near black (mean ~1.3-1.7 % of full scale): the tracker keeps the face, the landmark model does not find it; several
# levels, since what the spotter makes of the noise changes from one to the next
LIGHTS_OUT = (0.022, 0.026, 0.03, 0.034)
for _level in LIGHTS_OUT:
    CASES[f"lights_out_{_level}"] = lambda lv=_level: lights_out(_clip(5.0), dim_s=(1.0, DIM_END_S), level=lv)

LIGHTS_OUT_GAP = ("KNOWN product gap, measured: with the face tracked on 150/150 frames and the landmark model finding it "
                  "on 30-37 % of the sampled frames (the lit first ~1.4 s), level 0.026 reports 3 ok micro windows in "
                  "the dark noise (2.17, 3.17, 3.70 s; each labelled no_landmarks since a window needs a mesh on half "
                  "its samples, so the flood is labelled but one over the limit of 2)")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Outcome]:
    """Each case's clip written and run once per module (several tests look at the same run)."""
    folder = tmp_path_factory.mktemp("badfaces")
    done: dict[str, Outcome] = {}

    def get(name: str) -> Outcome:
        if name not in done:
            done[name] = run(_write(folder / f"{name}.mp4", CASES[name]()))
        return done[name]

    return get


def _landmark_lines(o: Outcome) -> list[str]:
    return [w for w in o.warnings if "landmark model found no face" in w]


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("lights_out")])
def test_bad_face_is_tracked_without_a_flood(outcome: Callable[[str], Outcome], case: str) -> None:
    """No crash, the face tracked, at most 2 reported windows (no clip has an expression), missing landmarks warned."""
    o = outcome(case)
    assert o.status == "done" and o.with_face >= 0.9 * o.frames, o.describe()
    assert len(o.reported) <= MAX_REPORTED, o.describe()
    if o.presence < 0.5:
        assert len(_landmark_lines(o)) == 1 and "\n" not in _landmark_lines(o)[0], o.describe()


@pytest.mark.xfail(strict=True, reason=HAND_GAP)
def test_hand_over_the_mouth_is_not_an_expression(outcome: Callable[[str], Outcome]) -> None:
    """No ok micro/macro window within 0.3 s of the hand arriving or leaving (as for the 0.4 s sweep in test_quality)."""
    o = outcome("hand_over_mouth_3s")
    leave = HAND_ENTER_S + HAND_SLIDE_S + HAND_HOLD_S
    moves = [(HAND_ENTER_S - 0.3, HAND_ENTER_S + HAND_SLIDE_S + 0.3), (leave - 0.3, leave + HAND_SLIDE_S + 0.3)]
    hand = [w for w in o.reported if any(w.onset / FPS <= b and w.offset / FPS >= a for a, b in moves)]
    assert not hand, o.describe()


@pytest.mark.parametrize("level", LIGHTS_OUT)
def test_lights_out_keeps_the_face_but_loses_the_landmarks(outcome: Callable[[str], Outcome], level: float) -> None:
    """Near black after a lit start: no crash, the face still tracked, the landmark model lost on most frames."""
    o = outcome(f"lights_out_{level}")
    assert o.status == "done" and o.with_face >= 0.95 * o.frames, o.describe()
    assert o.presence < 0.5, o.describe()


def test_lights_out_is_warned_in_one_line(outcome: Callable[[str], Outcome]) -> None:
    """Landmarks missing on most of the clip: one warning line says so (the spotter samples the landmark model on the
    track every 2 s, so the line does not depend on how many windows there were)."""
    for level in LIGHTS_OUT:
        o = outcome(f"lights_out_{level}")
        assert len(_landmark_lines(o)) == 1, f"level {level}: {o.describe()}"


@pytest.mark.xfail(strict=True, reason=LIGHTS_OUT_GAP)
def test_lights_out_is_labelled_not_flooded(outcome: Callable[[str], Outcome]) -> None:
    """Landmarks missing on most of the clip: at most 2 windows, each in the dark labelled no_landmarks."""
    failures = []
    for level in LIGHTS_OUT:
        o = outcome(f"lights_out_{level}")
        dark_ok = [w for w in o.reported if w.onset / FPS >= DIM_END_S and "no_landmarks" not in w.context.split("+")]
        if len(o.reported) > MAX_REPORTED or dark_ok:
            failures.append(f"level {level}: {o.describe()}")
    assert not failures, "\n".join(failures)
