"""Deterministic synthetic talking-head videos with planted facial movements, for tests, examples and the benchmark.

The face is a real photograph (`skimage.data.astronaut()`, public domain, shipped inside scikit-image), scaled so the face
is about half the frame height. Planted events are smooth local non-rigid warps (Gaussian-weighted displacement fields
placed from the face's 5 landmarks) with a raised-cosine time profile onset -> apex -> offset:

- brow_raise (AU1+2), brow_lower (AU4), lip_corner_pull (AU12), lip_corner_depress (AU15), lip_press (AU24),
  cheek_raise (AU6), lid_tighten (AU7): facial actions, `kind` "micro" (<= 0.5 s) or "macro".
- blink: upper lids close over the eyes (warp, the lid drawn over the eye and a lash line where the lids meet), a
  distractor with `kind` "blink"; the landmark model sees these eyes close (openness 0.34 -> 0.07).

Distractors on top: slow head translation and in-plane rotation, lighting drift (global gain + a horizontal gradient),
Gaussian sensor noise, and codec compression ("mp4v" through OpenCV, "h264" through Debian's `ffmpeg` when installed).
Everything derives from `seed`, so a call with the same arguments writes the same pixels.
"""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from au_annotate.fileio import atomic_open, atomic_path
from au_annotate.records import AlignedFace

# Geometry of the face in skimage.data.astronaut() (512x512), as MTCNN reports it.
SOURCE_BOX = (182.0, 63.0, 87.0, 111.0)  # x, y, w, h
SOURCE_LANDMARKS = np.array(
    [[206.0, 102.0], [249.0, 105.0], [227.0, 130.0], [204.0, 142.0], [247.0, 144.0]], dtype=np.float64
)  # left_eye, right_eye, nose, mouth_left, mouth_right (image left/right)
FACE_HEIGHT_FRACTION = 0.55  # face box height / frame height at face_scale 1

ACTIONS = (
    "brow_raise",
    "brow_lower",
    "lip_corner_pull",
    "lip_corner_depress",
    "lip_press",
    "cheek_raise",
    "lid_tighten",
    "blink",
)
FACIAL_ACTIONS = tuple(a for a in ACTIONS if a != "blink")  # the expressions benchmarks plant (blinks are distractors)
KINDS = ("micro", "macro", "blink")
CODECS = ("mp4v", "h264", "mjpg")


class SynthError(RuntimeError):
    """The synthetic video cannot be made as asked (bad event, missing encoder)."""


@dataclass(frozen=True)
class PlantedEvent:
    """One planted facial movement: times in seconds, peak displacement in frame pixels."""

    action: str
    onset_s: float
    apex_s: float
    offset_s: float
    amplitude_px: float
    kind: str = "micro"  # micro | macro | blink

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise SynthError(f"unknown action {self.action!r}; expected one of {', '.join(ACTIONS)}")
        if self.kind not in KINDS:
            raise SynthError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not (self.onset_s < self.apex_s < self.offset_s):
            raise SynthError(f"event needs onset < apex < offset, got {self.onset_s}, {self.apex_s}, {self.offset_s}")

    def profile(self, t: float) -> float:
        """Raised-cosine intensity in [0, 1] at time t (0 outside onset..offset, 1 at the apex)."""
        if t <= self.onset_s or t >= self.offset_s:
            return 0.0
        if t <= self.apex_s:
            return 0.5 * (1.0 - math.cos(math.pi * (t - self.onset_s) / (self.apex_s - self.onset_s)))
        return 0.5 * (1.0 + math.cos(math.pi * (t - self.apex_s) / (self.offset_s - self.apex_s)))


@dataclass(frozen=True)
class SynthVideo:
    """A written synthetic video and the events planted in it."""

    path: Path
    fps: float
    n_frames: int
    size: tuple[int, int]  # (width, height)
    events: tuple[PlantedEvent, ...]

    def gt_frames(self, include_blinks: bool = False) -> list[tuple[int, int, int, str]]:
        """Ground truth as (onset, apex, offset, kind) 0-based frame indices; blinks only when asked (distractors)."""
        out = []
        for e in self.events:
            if e.kind == "blink" and not include_blinks:
                continue
            onset, apex, offset = (min(self.n_frames - 1, max(0, round(v * self.fps))) for v in
                                   (e.onset_s, e.apex_s, e.offset_s))
            out.append((onset, apex, offset, e.kind))
        return out


@dataclass(frozen=True, eq=False)
class SynthFrame:
    """One rendered frame with its true face geometry (frame pixel coordinates)."""

    index: int
    pts_s: float
    image: np.ndarray  # RGB uint8 (H, W, 3)
    box: tuple[float, float, float, float]  # face box x, y, w, h (translated with the head, not rotated)
    landmarks: np.ndarray  # (5, 2) float32, true positions (rotation included)


@lru_cache(maxsize=1)
def _astronaut() -> np.ndarray:
    """The public-domain face photograph (RGB uint8 512x512), loaded from scikit-image's bundled data."""
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - scikit-image is a dev dependency
        raise SynthError("synthetic videos need scikit-image (pip install scikit-image)") from e
    return np.ascontiguousarray(data.astronaut())


@lru_cache(maxsize=4)
def _canvas(scale: float) -> np.ndarray:
    """The photograph upscaled once (cubic) so that per-frame warps sample at frame resolution."""
    img = _astronaut()
    side = int(round(img.shape[0] * scale))
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)


# Per action: list of (landmark index or "mc" for mouth centre, centre offset (x, y) in inter-ocular units,
# sigma (x, y) in inter-ocular units, direction (x, y)). Directions are for the image-left side; for mirrored
# pairs the right-side entry carries its own direction.
_PATTERNS: dict[str, list[tuple[int | str, tuple[float, float], tuple[float, float], tuple[float, float]]]] = {
    "brow_raise": [
        (0, (0.0, -0.32), (0.28, 0.15), (0.0, -1.0)),
        (1, (0.0, -0.32), (0.28, 0.15), (0.0, -1.0)),
    ],
    "brow_lower": [
        (0, (0.10, -0.30), (0.22, 0.14), (0.5, 0.866)),
        (1, (-0.10, -0.30), (0.22, 0.14), (-0.5, 0.866)),
    ],
    "lip_corner_pull": [
        (3, (0.0, 0.0), (0.18, 0.13), (-0.8, -0.6)),
        (4, (0.0, 0.0), (0.18, 0.13), (0.8, -0.6)),
    ],
    "lip_corner_depress": [
        (3, (0.0, 0.02), (0.18, 0.13), (-0.3, 0.954)),
        (4, (0.0, 0.02), (0.18, 0.13), (0.3, 0.954)),
    ],
    "lip_press": [
        ("mc", (0.0, -0.07), (0.30, 0.08), (0.0, 1.0)),
        ("mc", (0.0, 0.12), (0.30, 0.09), (0.0, -1.0)),
    ],
    "cheek_raise": [
        (0, (-0.05, 0.45), (0.25, 0.17), (0.0, -1.0)),
        (1, (0.05, 0.45), (0.25, 0.17), (0.0, -1.0)),
    ],
    "lid_tighten": [
        (0, (0.0, 0.10), (0.20, 0.07), (0.0, -1.0)),
        (1, (0.0, 0.10), (0.20, 0.07), (0.0, -1.0)),
    ],
    "blink": [
        (0, (0.0, -0.07), (0.24, 0.11), (0.0, 1.0)),
        (1, (0.0, -0.07), (0.24, 0.11), (0.0, 1.0)),
    ],
}


def _smooth_path(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """Random (amplitude weight, period s, phase) terms of a slow 1-D wander, weights summing to 1."""
    weights = rng.dirichlet(np.ones(n))
    return [(float(w), float(rng.uniform(4.0, 12.0)), float(rng.uniform(0, 2 * math.pi))) for w in weights]


def _eval_path(terms: list[tuple[float, float, float]], t: float) -> float:
    """Value in [-1, 1] of a slow wander at time t (0 at t = 0 so clips start at rest)."""
    return sum(w * (math.sin(2 * math.pi * t / p + ph) - math.sin(ph)) / 2 for w, p, ph in terms)


class _Renderer:
    """Renders frames of one synthetic clip; holds the precomputed canvas, grid and event displacement patterns."""

    def __init__(self, *, fps: float, duration_s: float, size: tuple[int, int], events: Sequence[PlantedEvent],
                 head_motion_px: float, head_rotation_deg: float, lighting_drift: float, noise_sigma: float,
                 seed: int, face_scale: float) -> None:
        if fps <= 0 or duration_s <= 0:
            raise SynthError(f"fps and duration must be positive, got fps={fps}, duration_s={duration_s}")
        self.fps = float(fps)
        self.n_frames = max(1, int(round(duration_s * fps)))
        self.w, self.h = int(size[0]), int(size[1])
        self.events = tuple(events)
        self.head_motion_px = float(head_motion_px)
        self.head_rotation_deg = float(head_rotation_deg)
        self.lighting_drift = float(lighting_drift)
        self.noise_sigma = float(noise_sigma)
        self.rng = np.random.default_rng(seed)
        self.scale = face_scale * FACE_HEIGHT_FRACTION * self.h / SOURCE_BOX[3]
        self.canvas = _canvas(round(self.scale, 4))
        bx, by, bw, bh = SOURCE_BOX
        centre_src = np.array([bx + bw / 2, by + bh / 2])
        self.centre = np.array([self.w / 2, self.h / 2])  # face centre in frame coordinates (at rest)
        self.offset = centre_src * self.scale - self.centre  # canvas = frame-face + offset
        self.landmarks = (SOURCE_LANDMARKS - centre_src) * self.scale + self.centre
        self.box = ((bx - centre_src[0]) * self.scale + self.centre[0], (by - centre_src[1]) * self.scale
                    + self.centre[1], bw * self.scale, bh * self.scale)
        self.iod = float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))
        ys, xs = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.gx, self.gy = xs, ys
        self.patterns = {a: self._pattern(a) for a in {e.action for e in self.events}}
        self.path_x, self.path_y, self.path_r = (_smooth_path(self.rng, 3) for _ in range(3))
        self.light_g, self.light_x = _smooth_path(self.rng, 2), _smooth_path(self.rng, 2)
        self.noise_seed = int(self.rng.integers(1, 2**30))
        self.xramp = ((xs[0] - self.w / 2) / self.w).astype(np.float32)[None, :, None]
        if "blink" in self.patterns:
            self.eye_mask = self._eye_mask()
            cheek = (self.landmarks[0] + np.array([0.0, 0.45 * self.iod]) + self.offset).astype(int)
            patch = self.canvas[cheek[1] - 4 : cheek[1] + 5, cheek[0] - 4 : cheek[0] + 5]
            self.lid_colour = patch.reshape(-1, 3).mean(0).astype(np.float32) * 0.85

    def _pattern(self, action: str) -> tuple[np.ndarray, int, int]:
        """Unit-amplitude displacement field of an action in frame-face coordinates, cropped to where it is non-zero:
        (field (h, w, 2) float32, x0, y0)."""
        mc = (self.landmarks[3] + self.landmarks[4]) / 2
        parts = []
        for anchor, (ox, oy), (sx, sy), (dx, dy) in _PATTERNS[action]:
            base = mc if anchor == "mc" else self.landmarks[anchor]
            cx, cy = base[0] + ox * self.iod, base[1] + oy * self.iod
            parts.append((cx, cy, sx * self.iod, sy * self.iod, dx, dy))
        x0 = int(max(0, min(cx - 4 * sx for cx, _, sx, _, _, _ in parts)))
        x1 = int(min(self.w, max(cx + 4 * sx + 1 for cx, _, sx, _, _, _ in parts)))
        y0 = int(max(0, min(cy - 4 * sy for _, cy, _, sy, _, _ in parts)))
        y1 = int(min(self.h, max(cy + 4 * sy + 1 for _, cy, _, sy, _, _ in parts)))
        field = np.zeros((max(1, y1 - y0), max(1, x1 - x0), 2), np.float32)
        for cx, cy, sxp, syp, dx, dy in parts:
            gx = np.exp(-0.5 * ((np.arange(x0, x0 + field.shape[1]) - cx) / sxp) ** 2)
            gy = np.exp(-0.5 * ((np.arange(y0, y0 + field.shape[0]) - cy) / syp) ** 2)
            wgt = np.outer(gy, gx).astype(np.float32)
            field[..., 0] += wgt * dx
            field[..., 1] += wgt * dy
        return field, x0, y0

    def _eye_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """Soft elliptical masks (H, W) over both eyes, where a closing lid covers the eye, and the closed lids' lash
        line (a thin dark arc along the lower edge of the lid), so a closed eye looks closed, not smudged."""
        mask = np.zeros((self.h, self.w), np.float32)
        lash = np.zeros((self.h, self.w), np.float32)
        for k in (0, 1):
            cx, cy = self.landmarks[k]
            sx, sy = 0.2 * self.iod, 0.09 * self.iod
            mask = np.maximum(mask, np.exp(-0.5 * (((self.gx - cx) / sx) ** 2 + ((self.gy - cy) / sy) ** 2)))
            arc = cy + 0.03 * self.iod + 0.25 * ((self.gx - cx) / (0.2 * self.iod)) ** 2 * 0.05 * self.iod
            lash = np.maximum(lash, np.exp(-0.5 * (((self.gx - cx) / (0.16 * self.iod)) ** 4
                                                  + ((self.gy - arc) / (0.012 * self.iod)) ** 2)))
        return mask, lash

    def head(self, t: float) -> tuple[np.ndarray, float]:
        """Head translation (frame px) and in-plane rotation (degrees) at time t."""
        tx = self.head_motion_px * _eval_path(self.path_x, t)
        ty = 0.5 * self.head_motion_px * _eval_path(self.path_y, t)
        return np.array([tx, ty]), self.head_rotation_deg * _eval_path(self.path_r, t)

    def geometry(self, t: float) -> tuple[tuple[float, float, float, float], np.ndarray]:
        """True face box (translated) and landmarks (translated and rotated) at time t."""
        shift, angle = self.head(t)
        rot = cv2.getRotationMatrix2D((float(self.centre[0]), float(self.centre[1])), -angle, 1.0)
        lm = self.landmarks @ rot[:, :2].T + rot[:, 2] + shift
        x, y, w, h = self.box
        return (x + shift[0], y + shift[1], w, h), lm.astype(np.float32)

    def frame(self, index: int) -> SynthFrame:
        """Render frame `index`: head transform, event warps, blink shading, lighting, noise.

        The whole frame is one affine warp of the canvas; where events are active, that region is re-rendered with
        the same single resampling from the canvas, through the head transform and the event displacement."""
        t = index / self.fps
        shift, angle = self.head(t)
        # inverse head transform: frame pixel -> frame-face coordinates (identity at rest)
        inv = cv2.getRotationMatrix2D((float(self.centre[0] + shift[0]), float(self.centre[1] + shift[1])), angle, 1.0)
        inv[:, 2] -= shift
        to_canvas = inv.copy()
        to_canvas[:, 2] += self.offset
        img = cv2.warpAffine(self.canvas, to_canvas, (self.w, self.h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT101)
        active = [(e, a) for e in self.events if (a := e.profile(t)) > 0.0]
        closure = max((a for e, a in active if e.action == "blink"), default=0.0)
        region = None
        if active:
            fwd = cv2.invertAffineTransform(inv)  # face -> frame
            corners = []
            for e, _ in active:
                f, x0, y0 = self.patterns[e.action]
                for cx, cy in ((x0, y0), (x0 + f.shape[1], y0), (x0, y0 + f.shape[0]), (x0 + f.shape[1], y0 + f.shape[0])):
                    corners.append(fwd @ np.array([cx, cy, 1.0]))
            c = np.array(corners)
            rx0, ry0 = (max(0, int(v) - 3) for v in c.min(0))
            rx1, ry1 = int(min(self.w, c[:, 0].max() + 4)), int(min(self.h, c[:, 1].max() + 4))
            if rx1 > rx0 and ry1 > ry0:
                region = (slice(ry0, ry1), slice(rx0, rx1))
                a00, a01, a02, a10, a11, a12 = (float(v) for v in inv.ravel())
                gx, gy = self.gx[region], self.gy[region]
                fx = a00 * gx + a01 * gy + a02
                fy = a10 * gx + a11 * gy + a12
                mx, my = fx.copy(), fy.copy()
                for e, a in active:
                    f, x0, y0 = self.patterns[e.action]
                    d = cv2.remap(f, fx - np.float32(x0), fy - np.float32(y0), cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                    amp = np.float32(a * e.amplitude_px)
                    mx -= amp * d[..., 0]
                    my -= amp * d[..., 1]
                img[region] = cv2.remap(self.canvas, mx + np.float32(self.offset[0]), my + np.float32(self.offset[1]),
                                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
                if closure > 0:
                    mask, lash = (cv2.remap(a, fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                                  for a in self.eye_mask)
                    m = (np.float32(min(1.0, closure)) * mask)[..., None]
                    out = img[region].astype(np.float32) * (1 - m) + self.lid_colour * m
                    d = (np.float32(0.7 * min(1.0, closure) ** 2) * lash)[..., None]  # lashes show once lids meet
                    img[region] = cv2.convertScaleAbs(out * (1 - d) + np.float32(25.0) * d)
        if self.lighting_drift > 0 or self.noise_sigma > 0:
            out = img.astype(np.float32)
            if self.lighting_drift > 0:
                gain = 1.0 + self.lighting_drift * _eval_path(self.light_g, t)
                tilt = self.lighting_drift * _eval_path(self.light_x, t)
                out *= np.float32(gain) + np.float32(tilt) * self.xramp
            if self.noise_sigma > 0:
                cv2.setRNGSeed(int(self.noise_seed + index) % 2_147_483_647)  # per-frame seed: deterministic, fast
                noise = np.empty((self.h, self.w, 1), np.float32)  # luminance noise, shared by the channels
                cv2.randn(noise, 0.0, self.noise_sigma)
                out += noise
            img = cv2.convertScaleAbs(out)  # round + saturate to uint8
        box, lm = self.geometry(t)
        return SynthFrame(index=index, pts_s=t, image=img, box=box, landmarks=lm)


def iter_frames(*, fps: float = 30.0, duration_s: float = 4.0, size: tuple[int, int] = (640, 480),
                events: Sequence[PlantedEvent] = (), head_motion_px: float = 0.0, head_rotation_deg: float = 0.0,
                lighting_drift: float = 0.0, noise_sigma: float = 0.0, seed: int = 0,
                face_scale: float = 1.0) -> Iterator[SynthFrame]:
    """Render the clip frame by frame in memory (RGB), with the true face geometry of each frame."""
    r = _Renderer(fps=fps, duration_s=duration_s, size=size, events=events, head_motion_px=head_motion_px,
                  head_rotation_deg=head_rotation_deg, lighting_drift=lighting_drift, noise_sigma=noise_sigma,
                  seed=seed, face_scale=face_scale)
    for i in range(r.n_frames):
        yield r.frame(i)


def crop_aligned(frame: SynthFrame, crop_size: int = 224, expand: float = 1.15, quantum: float = 1.0,
                 face_id: str = "face0") -> AlignedFace:
    """An AlignedFace like the face stage makes: the face box expanded, moved with the head (positions rounded to
    `quantum` frame pixels, as a template tracker would), cropped, grayscale, resized; landmarks mapped into the crop."""
    x, y, w, h = frame.box
    side = max(w, h) * expand
    cx, cy = x + w / 2, y + h / 2
    x0 = round((cx - side / 2) / quantum) * quantum
    y0 = round((cy - side / 2) / quantum) * quantum
    s = crop_size / side
    mat = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
    gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
    crop = cv2.warpAffine(gray, mat, (crop_size, crop_size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    lm = ((frame.landmarks - np.array([x0, y0])) * s).astype(np.float32)
    return AlignedFace(index=frame.index, pts_s=frame.pts_s, face_id=face_id, crop=crop, landmarks=lm,
                       box=(float(x0), float(y0), float(side), float(side)), match=1.0)


def _ffmpeg_writer(path: Path, fps: float, size: tuple[int, int], crf: int) -> subprocess.Popen[bytes]:
    """An ffmpeg process encoding raw BGR frames from stdin to H.264 (yuv420p) at `path`."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SynthError(f"{path}: codec 'h264' needs the ffmpeg program (apt-get install ffmpeg); use codec='mp4v'")
    cmd = [exe, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size[0]}x{size[1]}",
           "-r", f"{fps}", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt",
           "yuv420p", "-f", "mp4", str(path)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)


def make_video(path: str | Path, *, fps: float = 30.0, duration_s: float = 4.0, size: tuple[int, int] = (640, 480),
               events: Sequence[PlantedEvent] = (), head_motion_px: float = 0.0, head_rotation_deg: float = 0.0,
               lighting_drift: float = 0.0, noise_sigma: float = 0.0, seed: int = 0, codec: str = "mp4v",
               face_scale: float = 1.0, crf: int = 23) -> SynthVideo:
    """Write a synthetic talking-head clip with planted events (atomically) and return its description.

    codec: "mp4v" (OpenCV, always available), "mjpg" (OpenCV, .avi), or "h264" (needs the ffmpeg program)."""
    if codec not in CODECS:
        raise SynthError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    out = Path(path)
    r = _Renderer(fps=fps, duration_s=duration_s, size=size, events=events, head_motion_px=head_motion_px,
                  head_rotation_deg=head_rotation_deg, lighting_drift=lighting_drift, noise_sigma=noise_sigma,
                  seed=seed, face_scale=face_scale)
    wh = (r.w, r.h)
    with atomic_path(out) as tmp:
        if codec == "h264":
            proc = _ffmpeg_writer(tmp, fps, wh, crf)
            assert proc.stdin is not None
            try:
                for i in range(r.n_frames):
                    proc.stdin.write(cv2.cvtColor(r.frame(i).image, cv2.COLOR_RGB2BGR).tobytes())
            finally:
                proc.stdin.close()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                rc = proc.wait()
            if rc != 0:
                raise SynthError(f"{out}: ffmpeg failed ({rc}): {err.strip().splitlines()[-1:] or ''}")
        else:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if codec == "mjpg" else "mp4v"))
            writer = cv2.VideoWriter(str(tmp), fourcc, fps, wh)
            if not writer.isOpened():
                raise SynthError(f"{out}: OpenCV cannot open a {codec} writer")
            try:
                for i in range(r.n_frames):
                    writer.write(cv2.cvtColor(r.frame(i).image, cv2.COLOR_RGB2BGR))
            finally:
                writer.release()
    return SynthVideo(path=out, fps=float(fps), n_frames=r.n_frames, size=wh, events=tuple(events))


def write_ground_truth_csv(videos: Sequence[SynthVideo], path: str | Path, root: str | Path) -> None:
    """Write the evaluator's ground-truth CSV (video, onset_frame, apex_frame, offset_frame, kind); blinks omitted.

    `video` is each file's path relative to `root` (posix), matching the `video` column of our segment CSVs."""
    root_p = Path(root).resolve()
    with atomic_open(path) as fh:
        w = csv.writer(fh)
        w.writerow(["video", "onset_frame", "apex_frame", "offset_frame", "kind"])
        for v in videos:
            rel = PurePosixPath(Path(v.path).resolve().relative_to(root_p).as_posix())
            for onset, apex, offset, kind in v.gt_frames():
                w.writerow([str(rel), onset, apex, offset, kind])
